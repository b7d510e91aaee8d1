package resultcache_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pgsidecar/pgsidecar/resultcache"
)

// N concurrent misses of one key run the query once; everyone gets the
// answer.
func TestSingleFlight(t *testing.T) {
	const n = 16
	c := newMemCache(t, resultcache.Config{}, newFakeClock())
	k, tables := key("q"), []string{"t"}
	var runs atomic.Int32
	var wg sync.WaitGroup
	answers := make(chan string, n)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if data, _, ok := c.Get(ctx, "app", k, tables); ok {
				answers <- string(data)
				return
			}
			f, leader := c.Claim(k)
			if !leader {
				f.Wait(ctx, time.Minute)
				if data, _, ok := c.Get(ctx, "app", k, tables); ok {
					answers <- string(data)
					return
				}
			}
			// The query: the leader waits until every other goroutine is
			// either waiting on it or already done, so the test proves
			// coalescing rather than luck.
			runs.Add(1)
			if leader {
				eventually(t, 10*time.Second, "followers", func() bool {
					return int(c.Stats().FlightWaits)+int(c.Stats().MemoryHits) >= n-1
				})
			}
			snap := c.Snapshot("app", tables)
			c.Put(snap, k, 1, []byte("answer"), time.Minute)
			if leader {
				f.Done()
			}
			answers <- "answer"
		}()
	}
	wg.Wait()
	close(answers)
	for a := range answers {
		if a != "answer" {
			t.Errorf("got %q", a)
		}
	}
	if got := runs.Load(); got != 1 {
		t.Errorf("the query ran %d times, want 1", got)
	}
	if f, leader := c.Claim(k); !leader {
		t.Error("a flight outlived its Done")
	} else {
		f.Done()
	}
}

func TestFlightWaitBounded(t *testing.T) {
	c := newMemCache(t, resultcache.Config{}, newFakeClock())
	f, leader := c.Claim(key("q"))
	if !leader {
		t.Fatal("first Claim does not lead")
	}
	defer f.Done()
	g, leader := c.Claim(key("q"))
	if leader || g != f {
		t.Fatal("second Claim leads a new flight")
	}
	if g.Wait(ctx, time.Millisecond) {
		t.Error("Wait reported Done before it")
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if g.Wait(cctx, time.Hour) {
		t.Error("Wait with a cancelled ctx reported Done")
	}
	if got := c.Stats().FlightWaits; got != 2 {
		t.Errorf("FlightWaits = %d, want 2", got)
	}
}

func TestFlightDoneTwicePanics(t *testing.T) {
	c := newMemCache(t, resultcache.Config{}, newFakeClock())
	f, _ := c.Claim(key("q"))
	f.Done()
	defer func() {
		if recover() == nil {
			t.Error("a second Done did not panic")
		}
	}()
	f.Done()
}
