package resultcache

import (
	"sync/atomic"
	"testing"
)

func newTestCell() *cell { return &cell{table: "t", nDirty: new(atomic.Int64)} }

func (c *cell) state() (v, conf uint64, trusted bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.v.Load(), c.conf, c.trustedLocked()
}

func TestCellPushOK(t *testing.T) {
	c := newTestCell()
	f := c.bump(true)
	if v, _, trusted := c.state(); v != 1 || f != 1 || trusted {
		t.Fatalf("after bump: v %d floor %d trusted %v", v, f, trusted)
	}
	c.pushed(0, f, 2)
	if v, conf, trusted := c.state(); v != 2 || conf != 2 || !trusted {
		t.Fatalf("after push: v %d conf %d trusted %v", v, conf, trusted)
	}
}

// While a push is in flight, a Redis value equal to the local-only one (or
// above it) moves the local version past it.
func TestCellObserveDuringPush(t *testing.T) {
	for _, r := range []uint64{1, 5} {
		c := newTestCell()
		f := c.bump(true) // v = 1, in flight
		c.observe(0, r)
		v, _, trusted := c.state()
		if v <= r || trusted {
			t.Errorf("observe(%d) during a push: v %d trusted %v", r, v, trusted)
		}
		c.pushed(0, f, r+1) // our push landed after the other write
		v, conf, _ := c.state()
		if v <= r+1-1 || v < conf {
			t.Errorf("after push: v %d conf %d", v, conf)
		}
		// v moved past the Redis value: nothing is in flight, so the pair is
		// dirty until pushed again.
		if v > conf && !c.dirty {
			t.Errorf("local-only v %d > conf %d, not dirty", v, conf)
		}
	}
}

func TestCellFailedPushThenRetry(t *testing.T) {
	c := newTestCell()
	f := c.bump(true)
	c.pushFailed(f)
	if c.nDirty.Load() != 1 {
		t.Fatal("failed push not dirty")
	}
	c.observe(0, 1) // Redis reached the same number through another write
	if v, _, trusted := c.state(); v <= 1 || trusted {
		t.Fatalf("dirty cell after observe(1): v %d trusted %v", v, trusted)
	}
	floor, ok := c.beginRetry()
	if !ok {
		t.Fatal("beginRetry: nothing to push")
	}
	c.pushed(0, floor, floor+1)
	if v, conf, trusted := c.state(); !trusted || v != floor+1 || conf != v || c.nDirty.Load() != 0 {
		t.Fatalf("after retry: v %d conf %d trusted %v dirty %d", v, conf, trusted, c.nDirty.Load())
	}
}

// A local bump made after the floor was read keeps the cell untrusted until
// its own push lands; a local-only value left over after the last push (the
// cell cannot tell it from a write) is pushed by the retry.
func TestCellConcurrentBumps(t *testing.T) {
	c := newTestCell()
	f1 := c.bump(true) // 1
	f2 := c.bump(true) // 2
	c.pushed(0, f1, 2) // Redis 2 from floor 1: equals our local-only 2
	if v, _, trusted := c.state(); v == 2 || trusted {
		t.Fatalf("v %d trusted %v after the first push", v, trusted)
	}
	c.pushed(0, f2, 3) // max(2, 2)+1
	if v, conf, trusted := c.state(); trusted || v <= conf || !c.dirty {
		t.Fatalf("after both pushes: v %d conf %d trusted %v dirty %v", v, conf, trusted, c.dirty)
	}
	floor, _ := c.beginRetry()
	c.pushed(0, floor, floor+1)
	if v, conf, trusted := c.state(); !trusted || v != conf {
		t.Fatalf("after the retry: v %d conf %d trusted %v", v, conf, trusted)
	}
}

func TestCellStaleGenerationIgnored(t *testing.T) {
	c := newTestCell()
	f := c.bump(true)
	c.reset(1) // Redis lost its data while the push was in flight
	c.pushed(0, f, 7)
	if v, conf, trusted := c.state(); trusted || conf != 0 || v != 1 {
		t.Fatalf("push from an old generation applied: v %d conf %d trusted %v", v, conf, trusted)
	}
	if c.observe(0, 9) {
		t.Fatal("observe from an old generation applied")
	}
}
