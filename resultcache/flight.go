package resultcache

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

const flightShards = 64

type flightShard struct {
	mu sync.Mutex
	m  map[Key]*Flight
}

// Flight is one query being run to fill the cache for a key. The leader (the
// caller Claim returned true to) runs the query and calls Done exactly once,
// after its Put or on failure. Followers call Wait, then Get again; on a
// second miss they run the query themselves, without waiting again.
type Flight struct {
	c    *Cache
	key  Key
	done chan struct{}
	over atomic.Bool
}

// Claim returns the flight for key and whether the caller leads it (it is
// new). No goroutine is started.
func (c *Cache) Claim(key Key) (*Flight, bool) {
	s := &c.flights[key[0]%flightShards]
	s.mu.Lock()
	defer s.mu.Unlock()
	if f := s.m[key]; f != nil {
		return f, false
	}
	f := &Flight{c: c, key: key, done: make(chan struct{})}
	s.m[key] = f
	return f, true
}

// Done ends the flight and releases its followers; the next Claim of the key
// starts a new flight. Only the leader calls it, once: a second call panics.
func (f *Flight) Done() {
	if f.over.Swap(true) {
		panic("resultcache: Flight.Done called twice")
	}
	s := &f.c.flights[f.key[0]%flightShards]
	s.mu.Lock()
	if s.m[f.key] == f {
		delete(s.m, f.key)
	}
	s.mu.Unlock()
	close(f.done)
}

// Wait blocks until the leader calls Done, maxWait passes or ctx is done,
// and reports whether the leader finished.
func (f *Flight) Wait(ctx context.Context, maxWait time.Duration) bool {
	f.c.st.flightWaits.Add(1)
	select {
	case <-f.done:
		return true
	default:
	}
	t := time.NewTimer(maxWait)
	defer t.Stop()
	select {
	case <-f.done:
		return true
	case <-t.C:
		return false
	case <-ctx.Done():
		return false
	}
}
