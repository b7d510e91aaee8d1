package pool_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/pgsidecar/pgsidecar/pool"
)

// A client that waits longer than reserve_pool_timeout gets a reserve
// connection; once the reserve is lent too, the next one waits for
// query_wait_timeout like any other.
func TestReservePool(t *testing.T) {
	t.Parallel()
	pg := env.Postgres(t)
	ctx := testCtx(t)
	m := newManager(t, pool.Config{Upstream: superURL(pg, "postgres"), PoolSize: 1,
		ReservePoolSize: 1, ReservePoolTimeout: 100 * time.Millisecond})

	first := acquire(t, ctx, m, superKey)
	start := time.Now()
	second := acquire(t, ctx, m, superKey)
	if waited := time.Since(start); waited < 100*time.Millisecond {
		t.Errorf("reserve lent after %s, before reserve_pool_timeout", waited)
	}
	if first.PID() == second.PID() {
		t.Fatal("reserve loan is the connection already lent")
	}
	if got := m.Stats().ReserveUsed; got != 1 {
		t.Errorf("ReserveUsed = %d, want 1", got)
	}

	wctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	_, err := m.Acquire(wctx, superKey)
	cancel()
	if !errors.Is(err, pool.ErrAcquireTimeout) {
		t.Fatalf("third acquire with pool and reserve lent: %v, want ErrAcquireTimeout", err)
	}

	// Giving back the reserve loan frees the reserve, not an ordinary slot:
	// the next client still waits out the reserve timeout, then gets it.
	m.Recycle(second)
	third := acquire(t, ctx, m, superKey)
	if got := m.Stats().ReserveUsed; got != 2 {
		t.Errorf("ReserveUsed = %d, want 2", got)
	}
	m.Recycle(third)
	m.Recycle(first)
	// With the ordinary slot free, no reserve is needed.
	c := acquire(t, ctx, m, superKey)
	defer m.Recycle(c)
	if got := m.Stats().ReserveUsed; got != 2 {
		t.Errorf("ReserveUsed = %d after an ordinary loan, want 2", got)
	}
}
