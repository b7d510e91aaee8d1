package resultcache_test

import (
	"testing"
	"time"

	"github.com/pgsidecar/pgsidecar/resultcache"
)

// Two instances on one remote: an answer stored by A is served by B from the
// Redis tier, then from B's memory.
func TestRedisTierAndPromotion(t *testing.T) {
	r, clk := newFakeRemote(), newFakeClock()
	a, b := newRemoteCache(t, r, clk), newRemoteCache(t, r, clk)
	tables := []string{"t"}
	put(a, "app", tables, key("q"), "answer")
	waitStores(t, r, 1)
	wantHit(t, b, "app", key("q"), tables, "answer", resultcache.TierRedis)
	wantHit(t, b, "app", key("q"), tables, "answer", resultcache.TierMemory)
	wantMiss(t, b, "app", key("q"), []string{"t", "u"}) // another table set: not this entry
	if st := b.Stats(); st.RedisHits != 1 || st.MemoryHits != 1 {
		t.Errorf("B stats = %+v", st)
	}
}

// A bump through A: the Redis tier refuses the old entry at once, the memory
// tier of B after its next sync.
func TestCrossInstanceBump(t *testing.T) {
	r, clk := newFakeRemote(), newFakeClock()
	a, b := newRemoteCache(t, r, clk), newRemoteCache(t, r, clk)
	tables := []string{"t"}
	put(a, "app", tables, key("q"), "old")
	waitStores(t, r, 1)
	wantHit(t, b, "app", key("q"), tables, "old", resultcache.TierRedis) // now in B's memory too

	c := newRemoteCache(t, r, clk) // a third instance with nothing in memory
	a.Bump(ctx, "app", tables)
	wantMiss(t, c, "app", key("q"), tables) // Redis tier: immediately
	wantMiss(t, a, "app", key("q"), tables) // the writer: immediately

	// B's memory still has it until B syncs (within MaxStaleness) ...
	wantHit(t, b, "app", key("q"), tables, "old", resultcache.TierMemory)
	b.SyncNow()
	wantMiss(t, b, "app", key("q"), tables)
	if got, want := b.LocalVersion("app", "t"), r.version("app", "t"); got != want {
		t.Errorf("B's version after sync = %d, Redis's = %d", got, want)
	}
}

// The memory tier serves only while the last successful sync started at most
// MaxStaleness ago.
func TestStalenessGate(t *testing.T) {
	r, clk := newFakeRemote(), newFakeClock()
	c := newRemoteCache(t, r, clk) // MaxStaleness 1s
	tables := []string{"t"}
	put(c, "app", tables, key("q"), "x")
	waitStores(t, r, 1)
	wantHit(t, c, "app", key("q"), tables, "x", resultcache.TierMemory)

	r.setDown(true)
	clk.Advance(900 * time.Millisecond)
	c.SyncNow() // fails: the gate still counts from the last good one
	wantHit(t, c, "app", key("q"), tables, "x", resultcache.TierMemory)
	clk.Advance(200 * time.Millisecond)
	wantMiss(t, c, "app", key("q"), tables) // memory gated, Redis down
	st := c.Stats()
	if st.SyncOK || st.RedisErrors == 0 {
		t.Errorf("Stats with Redis down = %+v", st)
	}

	r.setDown(false)
	c.SyncNow()
	wantHit(t, c, "app", key("q"), tables, "x", resultcache.TierMemory)
}

// Versions merge with max: a sync never lowers a local version, and a higher
// one kills the entries stored under the old.
func TestMonotonicMerge(t *testing.T) {
	r, clk := newFakeRemote(), newFakeClock()
	c := newRemoteCache(t, r, clk)
	tables := []string{"t"}
	c.Bump(ctx, "app", tables)
	c.Bump(ctx, "app", tables)
	v := c.LocalVersion("app", "t")
	if v == 0 || r.version("app", "t") != v {
		t.Fatalf("local %d, Redis %d after two bumps", v, r.version("app", "t"))
	}
	put(c, "app", tables, key("q"), "x")

	r.set("app", "t", 1) // a late, lower value (as after a replica's lag)
	c.SyncNow()
	if got := c.LocalVersion("app", "t"); got != v {
		t.Fatalf("a lower Redis version moved the local one from %d to %d", v, got)
	}
	wantHit(t, c, "app", key("q"), tables, "x", resultcache.TierMemory)

	r.set("app", "t", v+5) // another instance's write
	c.SyncNow()
	if got := c.LocalVersion("app", "t"); got != v+5 {
		t.Fatalf("local version %d after Redis went to %d", got, v+5)
	}
	wantMiss(t, c, "app", key("q"), tables)

	// A bump moves the local version one up and pushes it as the floor:
	// Redis goes to max(Redis, floor)+1, and the local one follows.
	c.Bump(ctx, "app", tables)
	if got, want := r.version("app", "t"), v+7; got != want || c.LocalVersion("app", "t") != want {
		t.Errorf("Redis %d, local %d after a bump, want %d", got, c.LocalVersion("app", "t"), want)
	}
}

// A bump that cannot reach Redis: local versions still move, the pair is
// untrusted (no Redis tier) until the retry lands.
func TestUntrustedFailClosed(t *testing.T) {
	r, clk := newFakeRemote(), newFakeClock()
	a, b := newRemoteCache(t, r, clk), newRemoteCache(t, r, clk)
	tables := []string{"t"}
	put(b, "app", tables, key("q"), "old")
	waitStores(t, r, 1)
	wantHit(t, a, "app", key("q"), tables, "old", resultcache.TierRedis)

	r.setDown(true)
	a.Bump(ctx, "app", tables)
	r.setDown(false)
	if st := a.Stats(); st.Untrusted != 1 || st.RedisErrors == 0 {
		t.Fatalf("after a failed bump: Stats = %+v", st)
	}
	// Redis still holds the old entry under its current versions: A must not
	// take it (its own write is not in Redis), nor write to Redis for t.
	_, fetches0, _ := r.counts()
	wantMiss(t, a, "app", key("q"), tables)
	if _, fetches, _ := r.counts(); fetches != fetches0 {
		t.Errorf("A read Redis for an untrusted table")
	}
	stores0, _, _ := r.counts()
	put(a, "app", tables, key("q2"), "new")
	wantHit(t, a, "app", key("q2"), tables, "new", resultcache.TierMemory) // memory is fine
	put(a, "app", []string{"u"}, key("q3"), "other table")
	waitStores(t, r, stores0+1)
	if s, _, _ := r.counts(); s != stores0+1 {
		t.Errorf("%d entries written to Redis, want only the one of the trusted table", s-stores0)
	}

	// The retry in the next sync pushes the bump; Redis moves past the old
	// entry's version, and the pair is trusted again.
	before := r.version("app", "t")
	a.SyncNow()
	if st := a.Stats(); st.Untrusted != 0 {
		t.Fatalf("after the retry: Untrusted = %d", st.Untrusted)
	}
	if got := r.version("app", "t"); got <= before || got != a.LocalVersion("app", "t") {
		t.Errorf("Redis %d (was %d), local %d after the retry", got, before, a.LocalVersion("app", "t"))
	}
	c := newRemoteCache(t, r, clk)          // nothing in memory
	wantMiss(t, c, "app", key("q"), tables) // the Redis tier refuses the old entry for everyone
	b.SyncNow()
	wantMiss(t, b, "app", key("q"), tables) // and b's memory, once synced
	put(a, "app", tables, key("q4"), "after")
	waitStores(t, r, stores0+2)
	wantHit(t, c, "app", key("q4"), tables, "after", resultcache.TierRedis)
}

// A value read from Redis that equals a local value not yet pushed must not
// make entries stored under the local value servable: it may be another
// instance's write.
func TestLocalOnlyVersionNeverMatchesRedis(t *testing.T) {
	r, clk := newFakeRemote(), newFakeClock()
	c := newRemoteCache(t, r, clk)
	tables := []string{"t"}
	r.setDown(true)
	c.Bump(ctx, "app", tables) // local 1, not in Redis
	r.setDown(false)
	v := c.LocalVersion("app", "t")
	put(c, "app", tables, key("q"), "local")
	wantHit(t, c, "app", key("q"), tables, "local", resultcache.TierMemory)

	r.set("app", "t", v) // another instance's write reached the same number
	c.SyncNow()          // merges it, then retries the push
	if got := c.LocalVersion("app", "t"); got <= v {
		t.Fatalf("local version %d after Redis reached %d with a local-only %d", got, v, v)
	}
	wantMiss(t, c, "app", key("q"), tables)
	if got := c.Stats().Untrusted; got != 0 {
		t.Errorf("Untrusted = %d after the retry", got)
	}
	if got, want := r.version("app", "t"), c.LocalVersion("app", "t"); got != want {
		t.Errorf("Redis %d, local %d", got, want)
	}
}

// Redis losing its data (new boot id): every memory entry dies, versions are
// pushed to the new Redis, and entries stored before are never served.
func TestBootReset(t *testing.T) {
	r, clk := newFakeRemote(), newFakeClock()
	a, b := newRemoteCache(t, r, clk), newRemoteCache(t, r, clk)
	tables := []string{"t"}
	a.Bump(ctx, "app", tables)
	a.Bump(ctx, "app", tables)
	b.SyncNow()
	snap := a.Snapshot("app", tables) // taken before the loss, stored after
	put(a, "app", tables, key("q"), "before")
	put(b, "app", []string{"u"}, key("q2"), "before")
	// Both Redis writes land before the loss: a write still queued then
	// would be counted below as the late one.
	waitStores(t, r, 2)

	r.lose("boot-2")
	a.SyncNow()
	b.SyncNow()
	wantMiss(t, a, "app", key("q"), tables)
	wantMiss(t, b, "app", key("q2"), []string{"u"})
	if st := a.Stats(); st.RedisResets != 1 || st.Untrusted != 0 {
		t.Errorf("A after the reset: %+v", st)
	}
	// The versions are in the new Redis, above what A had.
	if got := r.version("app", "t"); got <= 2 || got != a.LocalVersion("app", "t") {
		t.Errorf("new Redis has t=%d, A has %d", got, a.LocalVersion("app", "t"))
	}
	stores0, _, _ := r.counts()
	a.Put(snap, key("late"), 1, []byte("before"), time.Minute)
	wantMiss(t, a, "app", key("late"), tables)
	if s, _, _ := r.counts(); s != stores0 {
		t.Errorf("a snapshot from before the loss was written to the new Redis")
	}
}

// Another instance's entry from before the loss, in the new Redis (a write
// that crossed the loss), is refused by its boot id.
func TestEntryFromOldBootRefused(t *testing.T) {
	r, clk := newFakeRemote(), newFakeClock()
	a := newRemoteCache(t, r, clk)
	tables := []string{"t"}
	put(a, "app", tables, key("q"), "old boot")
	waitStores(t, r, 1)
	r.mu.Lock()
	kept := r.entries
	r.mu.Unlock()
	r.lose("boot-2")
	r.mu.Lock()
	r.entries = kept
	r.mu.Unlock()
	b := newRemoteCache(t, r, clk)
	wantMiss(t, b, "app", key("q"), tables)
}

func TestRedisGetTimeoutIsAMiss(t *testing.T) {
	r, clk := newFakeRemote(), newFakeClock()
	c := newRemoteCache(t, r, clk)
	r.setDown(true)
	wantMiss(t, c, "app", key("q"), []string{"t"})
	if st := c.Stats(); st.RedisErrors != 1 || st.Misses != 1 {
		t.Errorf("Stats = %+v", st)
	}
}

func TestCloseClosesRemote(t *testing.T) {
	r := newFakeRemote()
	c, err := resultcache.New(resultcache.Config{}, r)
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "first sync", func() bool { return c.Stats().SyncOK })
	c.Close()
	c.Close()
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.closed {
		t.Error("Close did not close the remote")
	}
}

// With no memory tier every hit comes from Redis, and a bump through
// another instance is seen at once.
func TestRedisOnly(t *testing.T) {
	r, clk := newFakeRemote(), newFakeClock()
	a := newRemoteCache(t, r, clk)
	b, err := resultcache.NewManual(resultcache.Config{MemoryBytes: -1, MaxStaleness: time.Second}, r, clk)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(b.Close)
	b.SyncNow()
	tables := []string{"t"}
	put(b, "app", tables, key("q"), "answer")
	waitStores(t, r, 1)
	wantHit(t, b, "app", key("q"), tables, "answer", resultcache.TierRedis)
	wantHit(t, b, "app", key("q"), tables, "answer", resultcache.TierRedis)
	if st := b.Stats(); st.MemoryHits != 0 || st.Stores != 0 || st.Entries != 0 {
		t.Errorf("memory tier used: %+v", st)
	}
	a.Bump(ctx, "app", tables)
	wantMiss(t, b, "app", key("q"), tables)
}
