package resultcache_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/pgsidecar/pgsidecar/resultcache"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// fakeClock is a clock the test moves.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{t: time.Unix(1_700_000_000, 0)} }

func (f *fakeClock) Now() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.t
}

func (f *fakeClock) Advance(d time.Duration) {
	f.mu.Lock()
	f.t = f.t.Add(d)
	f.mu.Unlock()
}

var errDown = errors.New("fake remote: down")

// fakeRemote is an in-memory Remote with Redis's semantics (as redisstore
// implements them) and switchable failure.
type fakeRemote struct {
	mu       sync.Mutex
	down     bool
	boot     string
	epoch    uint64
	versions map[string]map[string]uint64
	entries  map[string][]byte
	stores   int
	fetches  int
	bumps    int
	closed   bool
}

func newFakeRemote() *fakeRemote {
	return &fakeRemote{boot: "boot-1", versions: map[string]map[string]uint64{}, entries: map[string][]byte{}}
}

func (f *fakeRemote) setDown(down bool) {
	f.mu.Lock()
	f.down = down
	f.mu.Unlock()
}

// set sets a version directly (as another instance's bump would) and
// advances the epoch.
func (f *fakeRemote) set(db, table string, v uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.versions[db] == nil {
		f.versions[db] = map[string]uint64{}
	}
	f.versions[db][table] = v
	f.epoch++
}

func (f *fakeRemote) version(db, table string) uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.versions[db][table]
}

// lose simulates Redis losing its data: everything gone, a new boot id.
func (f *fakeRemote) lose(newBoot string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.boot = newBoot
	f.epoch = 0
	f.versions = map[string]map[string]uint64{}
	f.entries = map[string][]byte{}
}

func (f *fakeRemote) counts() (stores, fetches, bumps int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.stores, f.fetches, f.bumps
}

func (f *fakeRemote) Fetch(ctx context.Context, db string, key resultcache.Key, tables []string) (resultcache.RemoteFetch, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.down {
		return resultcache.RemoteFetch{}, errDown
	}
	f.fetches++
	res := resultcache.RemoteFetch{Boot: f.boot, Versions: make([]uint64, len(tables))}
	if e, ok := f.entries[db+"/"+key.String()]; ok {
		res.Entry = append([]byte(nil), e...)
	}
	for i, t := range tables {
		res.Versions[i] = f.versions[db][t]
	}
	return res, nil
}

func (f *fakeRemote) Store(ctx context.Context, db string, key resultcache.Key, entry []byte, ttl time.Duration) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.down {
		return errDown
	}
	f.stores++
	f.entries[db+"/"+key.String()] = append([]byte(nil), entry...)
	return nil
}

func (f *fakeRemote) Bump(ctx context.Context, db string, tables []string, floors []uint64) ([]uint64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.down {
		return nil, errDown
	}
	f.bumps++
	if f.versions[db] == nil {
		f.versions[db] = map[string]uint64{}
	}
	out := make([]uint64, len(tables))
	for i, t := range tables {
		v := max(f.versions[db][t], floors[i]) + 1
		f.versions[db][t] = v
		out[i] = v
	}
	f.epoch++
	return out, nil
}

func (f *fakeRemote) State(ctx context.Context) (resultcache.RemoteState, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.down {
		return resultcache.RemoteState{}, errDown
	}
	return resultcache.RemoteState{Boot: f.boot, Epoch: f.epoch}, nil
}

func (f *fakeRemote) Versions(ctx context.Context, dbs []string) ([]map[string]uint64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.down {
		return nil, errDown
	}
	out := make([]map[string]uint64, len(dbs))
	for i, db := range dbs {
		out[i] = map[string]uint64{}
		for t, v := range f.versions[db] {
			out[i][t] = v
		}
	}
	return out, nil
}

func (f *fakeRemote) Close() error {
	f.mu.Lock()
	f.closed = true
	f.mu.Unlock()
	return nil
}

// newMemCache is a memory-only cache, closed in t.Cleanup.
func newMemCache(t *testing.T, cfg resultcache.Config, clk *fakeClock) *resultcache.Cache {
	t.Helper()
	c, err := resultcache.NewManual(cfg, nil, clk)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(c.Close)
	return c
}

// newRemoteCache is a cache on r with manual syncs, synced once, closed in
// t.Cleanup.
func newRemoteCache(t *testing.T, r resultcache.Remote, clk *fakeClock) *resultcache.Cache {
	t.Helper()
	c, err := resultcache.NewManual(resultcache.Config{MaxStaleness: time.Second}, r, clk)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(c.Close)
	c.SyncNow()
	if !c.Stats().SyncOK {
		t.Fatalf("first sync failed")
	}
	return c
}

func key(s string) resultcache.Key {
	var b resultcache.KeyBuilder
	b.AddString(s)
	return b.Sum()
}

var ctx = context.Background()

// put snapshots tables of db, then stores data under k.
func put(c *resultcache.Cache, db string, tables []string, k resultcache.Key, data string) {
	c.Put(c.Snapshot(db, tables), k, 1, []byte(data), time.Minute)
}

// wantHit fails t unless Get returns data from tier.
func wantHit(t *testing.T, c *resultcache.Cache, db string, k resultcache.Key, tables []string, data string, tier resultcache.Tier) {
	t.Helper()
	got, gotTier, ok := c.Get(ctx, db, k, tables)
	if !ok || string(got) != data || gotTier != tier {
		t.Fatalf("Get(%s, %v) = %q, %v, %v; want %q from %v", db, tables, got, gotTier, ok, data, tier)
	}
}

func wantMiss(t *testing.T, c *resultcache.Cache, db string, k resultcache.Key, tables []string) {
	t.Helper()
	if got, tier, ok := c.Get(ctx, db, k, tables); ok {
		t.Fatalf("Get(%s, %v) = %q from %v; want a miss", db, tables, got, tier)
	}
}

// eventually polls cond until it holds, failing t after timeout.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		<-tick.C
	}
}

func waitStores(t *testing.T, r *fakeRemote, n int) {
	t.Helper()
	eventually(t, 5*time.Second, strconv.Itoa(n)+" stores in the remote", func() bool {
		s, _, _ := r.counts()
		return s >= n
	})
}

var _ = fmt.Sprint
