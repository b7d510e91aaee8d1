package main

import (
	"context"
	"log/slog"
	"time"
)

// prober is what the startup probe needs from the pool: *pool.Manager.
type prober interface {
	Probe(ctx context.Context) error
}

// backoff is an exponential delay between attempts: First, then doubling,
// never above Max.
type backoff struct {
	First, Max time.Duration
}

// How often the upstream is probed while it is down.
const (
	probeFirstDelay = 250 * time.Millisecond
	probeMaxDelay   = 10 * time.Second
)

// delay is the wait after the attempt-th failure (1-based).
func (b backoff) delay(attempt int) time.Duration {
	d := b.First
	for i := 1; i < attempt && d < b.Max; i++ {
		d *= 2
	}
	return min(d, b.Max)
}

// sleepFunc waits d or until ctx is done, returning ctx.Err() in that case.
// Tests replace it so that no test waits on the clock.
type sleepFunc func(ctx context.Context, d time.Duration) error

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// probeUntilReachable probes p until it succeeds (returning nil) or ctx is
// done (returning ctx.Err()), logging each failure at Warn.
func probeUntilReachable(ctx context.Context, p prober, b backoff, sleep sleepFunc, log *slog.Logger) error {
	for attempt := 1; ; attempt++ {
		err := p.Probe(ctx)
		if err == nil {
			log.Info("upstream reachable", "attempts", attempt)
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		d := b.delay(attempt)
		log.Warn("upstream probe failed", "attempt", attempt, "retry_in", d, "err", err)
		if err := sleep(ctx, d); err != nil {
			return err
		}
	}
}
