package pool_test

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/pgsidecar/pgsidecar/pool"
)

// BenchmarkAcquireRecycle is a transaction-mode attach and detach with no
// one waiting: AcquireWait of an idle backend, then Recycle.
func BenchmarkAcquireRecycle(b *testing.B) {
	pg := env.Postgres(b)
	m, err := pool.New(pool.Config{Upstream: pg.URL(pg.SuperUser, pg.SuperPassword, "postgres"), PoolSize: 4, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	defer m.Close()
	key := pool.Key{Database: "postgres", User: pg.SuperUser}
	w := pool.NewWaiter()
	ctx := context.Background()
	c, err := m.AcquireWait(ctx, w, key, time.Second)
	if err != nil {
		b.Fatal(err)
	}
	m.Recycle(c)
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		c, err := m.AcquireWait(ctx, w, key, time.Second)
		if err != nil {
			b.Fatal(err)
		}
		m.Recycle(c)
	}
}

// BenchmarkAcquireHandoff is transaction mode's usual case under load: more
// clients than backends, so most attaches wait in the queue and are handed
// a backend directly by the client detaching it.
func BenchmarkAcquireHandoff(b *testing.B) {
	pg := env.Postgres(b)
	m, err := pool.New(pool.Config{Upstream: pg.URL(pg.SuperUser, pg.SuperPassword, "postgres"), PoolSize: 2, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	defer m.Close()
	key := pool.Key{Database: "postgres", User: pg.SuperUser}
	ctx := context.Background()
	b.ReportAllocs()
	b.SetParallelism(8)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		w := pool.NewWaiter()
		for pb.Next() {
			c, err := m.AcquireWait(ctx, w, key, time.Minute)
			if err != nil {
				b.Error(err)
				return
			}
			m.Recycle(c)
		}
	})
}
