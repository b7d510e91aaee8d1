package redisstore_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/pgsidecar/pgsidecar/internal/testenv"
	"github.com/pgsidecar/pgsidecar/resultcache"
	"github.com/pgsidecar/pgsidecar/resultcache/redisstore"
)

// env is the Redis server shared by the tests that do not stop theirs.
var env testenv.Shared

func TestMain(m *testing.M) {
	code := m.Run()
	env.Close()
	if code == 0 {
		if err := goleak.Find(goleak.IgnoreAnyFunction(testenv.WaiterFunc)); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// uniqueDB is a database name no other test (or run) uses.
func uniqueDB(prefix string) string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return prefix + "_" + hex.EncodeToString(b)
}

func newStore(t *testing.T, url string) *redisstore.Store {
	t.Helper()
	s, err := redisstore.New(testCtx(t), url)
	if err != nil {
		t.Fatalf("redisstore.New: %v", err)
	}
	return s
}

// newCache builds a Cache on its own Store of url, closed in t.Cleanup.
func newCache(t *testing.T, url string, cfg resultcache.Config) *resultcache.Cache {
	t.Helper()
	c, err := resultcache.New(cfg, newStore(t, url))
	if err != nil {
		t.Fatalf("resultcache.New: %v", err)
	}
	t.Cleanup(c.Close)
	eventually(t, 10*time.Second, "first sync", func() bool { return c.Stats().SyncOK })
	return c
}

func rawClient(t *testing.T, rd *testenv.Redis) *redis.Client {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: rd.Addr(), DisableIdentity: true, Protocol: 2})
	t.Cleanup(func() { c.Close() })
	return c
}

func key(s string) resultcache.Key {
	var b resultcache.KeyBuilder
	b.AddString(s)
	return b.Sum()
}

func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		<-tick.C
	}
}

func TestStoreFetchRoundTrip(t *testing.T) {
	rd := env.Redis(t)
	ctx := testCtx(t)
	s := newStore(t, rd.URL())
	defer s.Close()
	if err := s.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	db := uniqueDB("rt")
	st, err := s.State(ctx)
	if err != nil || st.Boot == "" {
		t.Fatalf("State = %+v, %v", st, err)
	}

	res, err := s.Fetch(ctx, db, key("absent"), []string{"t", "*"})
	if err != nil || res.Entry != nil || !slices.Equal(res.Versions, []uint64{0, 0}) || res.Boot != st.Boot {
		t.Fatalf("Fetch of nothing = %+v, %v", res, err)
	}
	if err := s.Store(ctx, db, key("k"), []byte("entry bytes"), time.Minute); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Bump(ctx, db, []string{"t"}, []uint64{4}); err != nil {
		t.Fatal(err)
	}
	res, err = s.Fetch(ctx, db, key("k"), []string{"t", "*"})
	if err != nil || string(res.Entry) != "entry bytes" || !slices.Equal(res.Versions, []uint64{5, 0}) {
		t.Fatalf("Fetch = %+v, %v", res, err)
	}
	ttl := rawClient(t, rd).PTTL(ctx, redisstore.EntryKey(db, key("k"))).Val()
	if ttl <= 0 || ttl > time.Minute {
		t.Errorf("entry PTTL = %v, want (0, 1m]", ttl)
	}
}

func TestBumpScriptMonotonic(t *testing.T) {
	rd := env.Redis(t)
	ctx := testCtx(t)
	s := newStore(t, rd.URL())
	defer s.Close()
	db := uniqueDB("bump")
	st0, _ := s.State(ctx)
	for _, step := range []struct {
		tables []string
		floors []uint64
		want   []uint64
	}{
		{[]string{"a"}, []uint64{0}, []uint64{1}},
		{[]string{"a"}, []uint64{0}, []uint64{2}},                          // above Redis: +1
		{[]string{"a"}, []uint64{10}, []uint64{11}},                        // a higher floor wins
		{[]string{"a", "b"}, []uint64{5, 7}, []uint64{12, 8}},              // a lower floor never lowers
		{[]string{"*", "b"}, []uint64{1 << 40, 0}, []uint64{1<<40 + 1, 9}}, // big values are exact
	} {
		got, err := s.Bump(ctx, db, step.tables, step.floors)
		if err != nil || !slices.Equal(got, step.want) {
			t.Fatalf("Bump(%v, %v) = %v, %v; want %v", step.tables, step.floors, got, err, step.want)
		}
	}
	st, _ := s.State(ctx)
	if st.Epoch < st0.Epoch+5 || st.Boot != st0.Boot {
		t.Errorf("State %+v after 5 bumps from %+v", st, st0)
	}
	maps, err := s.Versions(ctx, []string{db, uniqueDB("empty")})
	if err != nil {
		t.Fatal(err)
	}
	if want := map[string]uint64{"a": 12, "b": 9, "*": 1<<40 + 1}; fmt.Sprint(maps[0]) != fmt.Sprint(want) || len(maps[1]) != 0 {
		t.Errorf("Versions = %v, want [%v map[]]", maps, want)
	}
}

func TestKeyNames(t *testing.T) {
	if got := redisstore.VersionKey("app"); got != "pgsidecar:{app}:v" {
		t.Errorf("VersionKey = %q", got)
	}
	if got := redisstore.EntryKey("app", resultcache.Key{}); got != "pgsidecar:{app}:e:"+hex.EncodeToString(make([]byte, 32)) {
		t.Errorf("EntryKey = %q", got)
	}
	if got := redisstore.VersionKey("a}b"); got != "pgsidecar:{\x00617d62}:v" {
		t.Errorf("VersionKey of a name with a brace = %q", got)
	}
}

func TestNewURLs(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	for _, url := range []string{
		"redis://127.0.0.1:1/0",
		"127.0.0.1:1",
		"127.0.0.1:1,127.0.0.1:2",
		"redis+cluster://user:pw@127.0.0.1:1,127.0.0.1:2/?dial_timeout=1s",
	} {
		s, err := redisstore.New(ctx, url) // unreachable: New still succeeds
		if err != nil {
			t.Errorf("New(%q): %v", url, err)
			continue
		}
		if err := s.Ping(ctx); err == nil {
			t.Errorf("Ping(%q) succeeded on a closed port", url)
		}
		s.Close()
	}
	for _, url := range []string{"", "http://x"} {
		if _, err := redisstore.New(ctx, url); err == nil {
			t.Errorf("New(%q) accepted it", url)
		}
	}
}

// Two caches on one Redis: a bump through A makes the Redis tier refuse the
// old answer at once, and B's memory tier within MaxStaleness.
func TestTwoCachesShareRedis(t *testing.T) {
	rd := env.Redis(t)
	ctx := testCtx(t)
	cfg := resultcache.Config{MaxStaleness: 150 * time.Millisecond, RedisTimeout: 200 * time.Millisecond}
	a, b := newCache(t, rd.URL(), cfg), newCache(t, rd.URL(), cfg)
	db, tables, k := uniqueDB("share"), []string{"t"}, key("q")

	a.Put(a.Snapshot(db, tables), k, 7, []byte("old"), time.Minute)
	eventually(t, 5*time.Second, "B to see A's answer in Redis", func() bool {
		_, tier, ok := b.Get(ctx, db, k, tables)
		return ok && tier == resultcache.TierRedis
	})
	if data, tier, ok := b.Get(ctx, db, k, tables); !ok || tier != resultcache.TierMemory || string(data) != "old" {
		t.Fatalf("B's second Get = %q, %v, %v; want the promoted copy", data, tier, ok)
	}

	a.Bump(ctx, db, tables)
	acked := time.Now()
	if st := a.Stats(); st.Untrusted != 0 {
		t.Fatalf("A's bump did not reach Redis: %+v", st)
	}
	c := newCache(t, rd.URL(), cfg) // nothing in memory: only the Redis tier can answer
	if _, _, ok := c.Get(ctx, db, k, tables); ok {
		t.Fatal("the Redis tier served an answer older than an acknowledged bump")
	}
	if _, _, ok := a.Get(ctx, db, k, tables); ok {
		t.Fatal("the writer served its old answer after its own bump")
	}
	// B: within MaxStaleness of the acknowledgement, whatever the timing of
	// its syncs. (Waiting for the deadline is the point of this check.)
	time.Sleep(time.Until(acked.Add(cfg.MaxStaleness)))
	if _, tier, ok := b.Get(ctx, db, k, tables); ok {
		t.Fatalf("B still served the old answer from %v, MaxStaleness after the bump", tier)
	}

	// A new answer under the new versions is shared again.
	b.Put(b.Snapshot(db, tables), k, 7, []byte("new"), time.Minute)
	eventually(t, 5*time.Second, "C to see B's new answer", func() bool {
		data, _, ok := c.Get(ctx, db, k, tables)
		return ok && string(data) == "new"
	})
}

// Redis killed: a Get is a quick miss, a Bump marks its tables untrusted;
// Redis back (empty, so with a new boot id): every cache resets, the retry
// pushes the versions, and the tables are trusted again.
func TestRedisDownAndBack(t *testing.T) {
	rd := testenv.NewRedis(t)
	ctx := testCtx(t)
	cfg := resultcache.Config{RedisTimeout: 20 * time.Millisecond, MaxStaleness: 200 * time.Millisecond}
	c := newCache(t, rd.URL(), cfg)
	db, tables, k := uniqueDB("down"), []string{"t"}, key("q")
	c.Bump(ctx, db, tables)
	c.Put(c.Snapshot(db, tables), k, 1, []byte("x"), time.Minute)

	if err := rd.Down(ctx); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, _, ok := c.Get(ctx, db, key("other"), tables)
	if elapsed := time.Since(start); ok || elapsed > cfg.RedisTimeout+100*time.Millisecond {
		t.Fatalf("Get with Redis down: ok %v after %v (RedisTimeout %v)", ok, elapsed, cfg.RedisTimeout)
	}
	c.Bump(ctx, db, tables)
	if st := c.Stats(); st.Untrusted == 0 || st.RedisErrors+st.RedisTimeouts == 0 {
		t.Fatalf("after a bump with Redis down: %+v", st)
	}
	eventually(t, 5*time.Second, "the memory tier to stop serving", func() bool {
		_, _, ok := c.Get(ctx, db, k, tables)
		return !ok && !c.Stats().SyncOK
	})

	if err := rd.Up(ctx); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "the retry to land", func() bool {
		st := c.Stats()
		return st.SyncOK && st.Untrusted == 0 && st.RedisResets == 1
	})
	v, err := rawClient(t, rd).HGet(ctx, redisstore.VersionKey(db), "t").Uint64()
	if err != nil || v < 3 {
		t.Errorf("version of t in the new Redis = %d, %v; want the pushed one", v, err)
	}
	c.Put(c.Snapshot(db, tables), k, 1, []byte("y"), time.Minute)
	other := newCache(t, rd.URL(), cfg)
	eventually(t, 5*time.Second, "the Redis tier to work again", func() bool {
		data, _, ok := other.Get(ctx, db, k, tables)
		return ok && string(data) == "y"
	})
}

// The boot id disappearing (FLUSHALL) resets every cache: no memory entry
// survives.
func TestBootIDLossResets(t *testing.T) {
	rd := testenv.NewRedis(t)
	ctx := testCtx(t)
	cfg := resultcache.Config{MaxStaleness: 200 * time.Millisecond}
	c := newCache(t, rd.URL(), cfg)
	db, tables, k := uniqueDB("boot"), []string{"t"}, key("q")
	c.Put(c.Snapshot(db, tables), k, 1, []byte("x"), time.Minute)
	if _, _, ok := c.Get(ctx, db, k, tables); !ok {
		t.Fatal("miss before the loss")
	}
	if err := rawClient(t, rd).FlushAll(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "the reset", func() bool { return c.Stats().RedisResets == 1 })
	if _, _, ok := c.Get(ctx, db, k, tables); ok {
		t.Fatal("a memory entry survived Redis losing its data")
	}
}

// A Redis that accepts connections and never answers: a Get costs about
// RedisTimeout and counts a timeout.
func TestSlowRedisTimeout(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	var conns []net.Conn
	go func() {
		defer close(done)
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			conns = append(conns, conn)
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-done
		for _, c := range conns {
			c.Close()
		}
	})
	ctx := testCtx(t)
	nctx, ncancel := context.WithTimeout(ctx, 20*time.Millisecond)
	s, err := redisstore.New(nctx, "redis://"+ln.Addr().String()+"/0")
	ncancel()
	if err != nil {
		t.Fatal(err)
	}
	cfg := resultcache.Config{RedisTimeout: 20 * time.Millisecond, MaxStaleness: 100 * time.Millisecond}
	c, err := resultcache.New(cfg, s)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// With no boot id known the Redis tier is not even tried: test the Store
	// directly, as Get would call it.
	fctx, cancel := context.WithTimeout(ctx, cfg.RedisTimeout)
	start := time.Now()
	_, err = s.Fetch(fctx, "app", key("q"), []string{"*"})
	cancel()
	if elapsed := time.Since(start); err == nil || elapsed > cfg.RedisTimeout+100*time.Millisecond {
		t.Fatalf("Fetch from a silent server: %v after %v", err, elapsed)
	}
	start = time.Now()
	c.Bump(ctx, "app", []string{"t"})
	if elapsed := time.Since(start); elapsed > cfg.RedisTimeout+100*time.Millisecond {
		t.Errorf("Bump against a silent server took %v", elapsed)
	}
	if st := c.Stats(); st.RedisTimeouts == 0 || st.Untrusted != 1 {
		t.Errorf("Stats = %+v", st)
	}
}
