package resultcache_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/pgsidecar/pgsidecar/resultcache"
)

func TestHitMiss(t *testing.T) {
	c := newMemCache(t, resultcache.Config{}, newFakeClock())
	k := key("q1")
	tables := []string{"users", "orders"}
	wantMiss(t, c, "app", k, tables)
	put(c, "app", tables, k, "answer")
	wantHit(t, c, "app", k, tables, "answer", resultcache.TierMemory)
	// The same tables in another order, with duplicates and "*": the same set.
	wantHit(t, c, "app", k, []string{"orders", "*", "users", "orders"}, "answer", resultcache.TierMemory)
	wantMiss(t, c, "other", k, tables)                         // another database
	wantMiss(t, c, "app", k, []string{"users"})                // fewer tables
	wantMiss(t, c, "app", k, []string{"users", "x", "orders"}) // more tables
	wantMiss(t, c, "app", key("q2"), tables)

	c.CleanUp() // otter applies weights asynchronously
	st := c.Stats()
	if st.MemoryHits != 2 || st.Misses != 5 || st.Stores != 1 || st.Entries != 1 || st.Bytes == 0 {
		t.Errorf("Stats = %+v", st)
	}
}

func TestPutCopiesData(t *testing.T) {
	c := newMemCache(t, resultcache.Config{}, newFakeClock())
	data := []byte("abc")
	c.Put(c.Snapshot("app", nil), key("q"), 1, data, time.Minute)
	data[0] = 'X'
	wantHit(t, c, "app", key("q"), nil, "abc", resultcache.TierMemory)
}

func TestBumpInvalidates(t *testing.T) {
	c := newMemCache(t, resultcache.Config{}, newFakeClock())
	k1, k2, k3 := key("users"), key("orders"), key("both")
	put(c, "app", []string{"users"}, k1, "u")
	put(c, "app", []string{"orders"}, k2, "o")
	put(c, "app", []string{"users", "orders"}, k3, "uo")
	put(c, "other", []string{"users"}, k1, "other-u") // same key, other db: replaces

	c.Bump(ctx, "app", []string{"users"})
	wantMiss(t, c, "app", k3, []string{"users", "orders"})
	wantHit(t, c, "app", k2, []string{"orders"}, "o", resultcache.TierMemory)
	wantHit(t, c, "other", k1, []string{"users"}, "other-u", resultcache.TierMemory)

	c.Bump(ctx, "app", []string{"*"})
	wantMiss(t, c, "app", k2, []string{"orders"})
	wantHit(t, c, "other", k1, []string{"users"}, "other-u", resultcache.TierMemory)

	if got := c.Stats().Invalidations; got != 2 {
		t.Errorf("Invalidations = %d, want 2", got)
	}
}

// A snapshot taken before a bump is never served after it, whether the Put
// comes before or after the bump.
func TestSnapshotBeforeBumpNeverServed(t *testing.T) {
	c := newMemCache(t, resultcache.Config{}, newFakeClock())
	tables := []string{"t"}

	snap := c.Snapshot("app", tables)
	c.Bump(ctx, "app", tables) // a write committed while the query ran
	c.Put(snap, key("late"), 1, []byte("old"), time.Minute)
	wantMiss(t, c, "app", key("late"), tables)
	if got := c.Stats().StoreSkips; got != 1 {
		t.Errorf("StoreSkips = %d, want 1 (stale snapshot)", got)
	}

	snap = c.Snapshot("app", tables)
	c.Put(snap, key("early"), 1, []byte("old"), time.Minute)
	c.Bump(ctx, "app", tables)
	wantMiss(t, c, "app", key("early"), tables)
	c.Put(snap, key("early"), 1, []byte("old"), time.Minute) // a second Put of the same old snapshot
	wantMiss(t, c, "app", key("early"), tables)

	// A "*" bump kills snapshots of every table.
	snap = c.Snapshot("app", tables)
	c.Bump(ctx, "app", []string{"*"})
	c.Put(snap, key("star"), 1, []byte("old"), time.Minute)
	wantMiss(t, c, "app", key("star"), tables)
}

func TestTTLExpiry(t *testing.T) {
	clk := newFakeClock()
	c := newMemCache(t, resultcache.Config{}, clk)
	c.Put(c.Snapshot("app", nil), key("short"), 1, []byte("s"), time.Second)
	c.Put(c.Snapshot("app", nil), key("long"), 1, []byte("l"), time.Hour)
	c.Put(c.Snapshot("app", nil), key("none"), 1, []byte("n"), 0) // ttl <= 0: not stored
	wantHit(t, c, "app", key("short"), nil, "s", resultcache.TierMemory)
	wantMiss(t, c, "app", key("none"), nil)
	clk.Advance(2 * time.Second)
	wantMiss(t, c, "app", key("short"), nil)
	wantHit(t, c, "app", key("long"), nil, "l", resultcache.TierMemory)
}

func TestMaxEntryBytes(t *testing.T) {
	c := newMemCache(t, resultcache.Config{MaxEntryBytes: 10}, newFakeClock())
	c.Put(c.Snapshot("app", nil), key("big"), 1, make([]byte, 11), time.Minute)
	c.Put(c.Snapshot("app", nil), key("fits"), 1, make([]byte, 10), time.Minute)
	wantMiss(t, c, "app", key("big"), nil)
	if _, _, ok := c.Get(ctx, "app", key("fits"), nil); !ok {
		t.Errorf("an answer of exactly MaxEntryBytes was not stored")
	}
	if st := c.Stats(); st.StoreSkips != 1 || st.Stores != 1 {
		t.Errorf("StoreSkips, Stores = %d, %d; want 1, 1", st.StoreSkips, st.Stores)
	}
}

func TestByteBudgetEviction(t *testing.T) {
	const budget = 64 << 10
	c := newMemCache(t, resultcache.Config{MemoryBytes: budget, MaxEntryBytes: 8 << 10}, newFakeClock())
	data := make([]byte, 4<<10)
	for i := range 100 {
		c.Put(c.Snapshot("app", nil), key(fmt.Sprint(i)), 1, data, time.Minute)
	}
	c.CleanUp()
	st := c.Stats()
	if st.Bytes > budget || st.Entries >= 100 || st.Entries == 0 {
		t.Errorf("after 100 × 4 KiB in a 64 KiB budget: Bytes %d, Entries %d", st.Bytes, st.Entries)
	}
	hits := 0
	for i := range 100 {
		if _, _, ok := c.Get(ctx, "app", key(fmt.Sprint(i)), nil); ok {
			hits++
		}
	}
	if hits == 0 || hits > budget/len(data) {
		t.Errorf("%d entries still served, want between 1 and %d", hits, budget/len(data))
	}
}

func TestPurgeFingerprint(t *testing.T) {
	c := newMemCache(t, resultcache.Config{}, newFakeClock())
	for i := range 6 {
		c.Put(c.Snapshot("app", nil), key(fmt.Sprint(i)), uint64(i%2), []byte("x"), time.Minute)
	}
	if n := c.PurgeFingerprint(1); n != 3 {
		t.Errorf("PurgeFingerprint(1) = %d, want 3", n)
	}
	wantMiss(t, c, "app", key("1"), nil)
	wantHit(t, c, "app", key("0"), nil, "x", resultcache.TierMemory)
}

func TestConfigValidation(t *testing.T) {
	_, err := resultcache.New(resultcache.Config{
		MaxEntryBytes: -1,
		RedisTimeout:  -time.Second,
		MaxStaleness:  time.Second,
		SyncInterval:  2 * time.Second,
	}, nil)
	if err == nil {
		t.Fatal("New accepted a bad config")
	}
	for _, want := range []string{"MaxEntryBytes", "RedisTimeout", "SyncInterval"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %s", err, want)
		}
	}
	c, err := resultcache.New(resultcache.Config{}, nil)
	if err != nil {
		t.Fatalf("New with defaults: %v", err)
	}
	defer c.Close()
	if c.DefaultTTL() != resultcache.DefaultTTL {
		t.Errorf("DefaultTTL = %v", c.DefaultTTL())
	}
	c.Close() // idempotent
}

func TestTierString(t *testing.T) {
	for tier, want := range map[resultcache.Tier]string{resultcache.TierNone: "none", resultcache.TierMemory: "memory", resultcache.TierRedis: "redis", 9: "Tier(9)"} {
		if got := tier.String(); got != want {
			t.Errorf("%d.String() = %q, want %q", tier, got, want)
		}
	}
}

func TestNoMemoryTierNeedsRedis(t *testing.T) {
	if _, err := resultcache.New(resultcache.Config{MemoryBytes: -1}, nil); err == nil {
		t.Fatal("a cache with neither tier was accepted")
	}
}
