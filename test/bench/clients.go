package main

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// Clients the bench logs in itself, with pgconn: to fill a session-mode
// pool before a run, and to hold idle clients for the memory probe.
const (
	loginConcurrency = 64               // logins in flight at once
	loginTimeout     = 10 * time.Second // one login
)

// openIdle logs n clients in to the proxy on port, loginConcurrency at a
// time, and returns those that reached ReadyForQuery. It stops at the
// first failure and returns it with the clients opened so far.
func openIdle(ctx context.Context, port, n int) ([]*pgconn.PgConn, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	conns := make([]*pgconn.PgConn, n)
	var (
		next     atomic.Int64
		errOnce  sync.Once
		firstErr error
		wg       sync.WaitGroup
	)
	for range min(loginConcurrency, n) {
		wg.Go(func() {
			for ctx.Err() == nil {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				c, err := connectIdle(ctx, port)
				if err != nil {
					errOnce.Do(func() { firstErr = err; cancel() })
					return
				}
				conns[i] = c
			}
		})
	}
	wg.Wait()
	return slices.DeleteFunc(conns, func(c *pgconn.PgConn) bool { return c == nil }), firstErr
}

// connectIdle logs one client in (trust authentication) and returns it at
// ReadyForQuery.
func connectIdle(ctx context.Context, port int) (*pgconn.PgConn, error) {
	ctx, cancel := context.WithTimeout(ctx, loginTimeout)
	defer cancel()
	return pgconn.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%d user=%s dbname=%s sslmode=disable", port, benchUser, benchDB))
}

func closeAll(conns []*pgconn.PgConn) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, c := range conns {
		c.Close(ctx)
	}
}
