package pool

import (
	"context"
	"errors"
	"sync"
	"time"
)

// Direct handoff. Once every connection of a pool is lent, a client that
// needs one waits in a FIFO queue, and whoever gives a connection back hands
// it straight to the first waiter instead of parking it in puddle for the
// waiter to acquire. In transaction mode with more clients than backends
// that is most acquisitions, so the wait is kept cheap: a Waiter (a channel
// and a timer) is made once per client and reused, and no context with a
// deadline is built per wait. Pools with a reserve keep puddle's own
// waiting (see takeSlot).

// Waiter waits for a connection on behalf of one goroutine at a time.
type Waiter struct {
	ch         chan *Conn // a connection, or nil: "a slot is yours, open one"
	timer      *time.Timer
	prev, next *Waiter  // in keyPool's queue, guarded by its wmu
	queued     bool     // guarded by wmu
	kp         *keyPool // the pool of the last wait, to skip the lookup
}

// NewWaiter returns a Waiter for repeated use by one goroutine.
func NewWaiter() *Waiter {
	t := time.NewTimer(time.Hour)
	t.Stop()
	return &Waiter{ch: make(chan *Conn, 1), timer: t}
}

// handoff is the per-pool state of direct handoff.
type handoff struct {
	wmu        sync.Mutex
	lent       int // connections lent or promised to a waiter
	head, tail *Waiter
}

func (h *handoff) push(w *Waiter) {
	w.prev, w.next, w.queued = h.tail, nil, true
	if h.tail != nil {
		h.tail.next = w
	} else {
		h.head = w
	}
	h.tail = w
}

func (h *handoff) remove(w *Waiter) {
	if w.prev != nil {
		w.prev.next = w.next
	} else {
		h.head = w.next
	}
	if w.next != nil {
		w.next.prev = w.prev
	} else {
		h.tail = w.prev
	}
	w.prev, w.next, w.queued = nil, nil, false
}

// AcquireWait is Acquire for a goroutine that waits often: it waits with w
// (made by NewWaiter, not shared) at most timeout, and returns early with
// ctx's error when ctx is done.
func (m *Manager) AcquireWait(ctx context.Context, w *Waiter, key Key, timeout time.Duration) (*Conn, error) {
	kp := w.kp
	if kp == nil || kp.m != m || kp.key != key || m.closed.Load() {
		var err error
		if kp, err = m.pool(key); err != nil {
			return nil, err
		}
		w.kp = kp
	}
	if kp.slots != nil {
		actx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		return m.Acquire(actx, key)
	}
	h := &kp.handoff
	h.wmu.Lock()
	if h.lent < m.cfg.PoolSize && h.head == nil {
		// Room: one is idle or can be opened, so puddle will not wait.
		h.lent++
		h.wmu.Unlock()
		return m.acquireSlotted(ctx, kp)
	}
	h.push(w)
	h.wmu.Unlock()
	w.timer.Reset(timeout)
	var c *Conn
	select {
	case c = <-w.ch:
		w.timer.Stop()
	case <-w.timer.C:
		if !m.giveUp(h, w) {
			c = <-w.ch // handed over just now
			break
		}
		m.stats.acquireTimeouts.Add(1)
		return nil, ErrAcquireTimeout
	case <-ctx.Done():
		w.timer.Stop()
		if !m.giveUp(h, w) {
			if c = <-w.ch; c != nil {
				m.Recycle(c)
			} else {
				m.unlend(kp)
			}
		}
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			m.stats.acquireTimeouts.Add(1)
			return nil, ErrAcquireTimeout
		}
		return nil, ctx.Err()
	}
	if c == nil {
		// A connection was closed: its slot is ours, open a new one.
		return m.acquireSlotted(ctx, kp)
	}
	return c, nil
}

// giveUp takes w out of the queue; false means it was already handed
// something, which is waiting in w.ch.
func (m *Manager) giveUp(h *handoff, w *Waiter) bool {
	h.wmu.Lock()
	defer h.wmu.Unlock()
	if !w.queued {
		return false
	}
	h.remove(w)
	return true
}

// acquireSlotted gets a connection from puddle for a slot already counted
// in lent: an idle one, or a new one (dialling is bounded by
// ConnectTimeout), so it needs no deadline of its own.
func (m *Manager) acquireSlotted(ctx context.Context, kp *keyPool) (*Conn, error) {
	c, err := m.checkedAcquire(ctx, kp)
	if err != nil {
		m.unlend(kp)
	}
	return c, err
}

// unlend frees a slot counted in lent: the first waiter gets it (and opens
// a connection), or the count drops.
func (m *Manager) unlend(kp *keyPool) {
	h := &kp.handoff
	h.wmu.Lock()
	if w := h.head; w != nil {
		h.remove(w)
		h.wmu.Unlock()
		w.ch <- nil
		return
	}
	h.lent--
	h.wmu.Unlock()
}

// handOver gives c to the first waiter, if there is one.
func (m *Manager) handOver(c *Conn) bool {
	kp := c.pool
	if kp.slots != nil {
		return false
	}
	h := &kp.handoff
	h.wmu.Lock()
	w := h.head
	if w == nil {
		h.lent--
		h.wmu.Unlock()
		return false
	}
	h.remove(w)
	h.wmu.Unlock()
	w.ch <- c
	return true
}
