package testenv

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"syscall"
	"time"
)

// lifecycle is the Down/Up/Restart/Stop state that Postgres and Redis
// share: one child process that may be taken down and brought back on the
// same port, and the temporary directory removed by Stop.
type lifecycle struct {
	external bool   // reused, not started: never stopped
	dir      string // temporary directory, removed by Stop

	stopSig   syscall.Signal                  // the server's clean shutdown
	stopGrace time.Duration                   // bound on a Down whose ctx has no deadline
	upTimeout time.Duration                   // bound on an Up
	start     func(ctx context.Context) error // starts the process and sets proc

	mu      sync.Mutex
	proc    *proc // nil while down
	stopped bool
}

// Down stops the server, keeping its port (and data, if any) for Up. It does
// nothing when the server is already down.
func (l *lifecycle) Down(ctx context.Context) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.external {
		return ErrExternal
	}
	return l.down(ctx)
}

func (l *lifecycle) down(ctx context.Context) error {
	if l.proc == nil {
		return nil
	}
	grace := l.stopGrace
	if d, ok := ctx.Deadline(); ok {
		grace = max(time.Until(d), 0)
	}
	err := l.proc.stop(l.stopSig, grace)
	l.proc = nil
	if err != nil {
		return fmt.Errorf("testenv: %w", err)
	}
	return nil
}

// Up starts a server that is down again, on the same port, and waits until
// it answers. It does nothing when the server is up.
func (l *lifecycle) Up(ctx context.Context) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.upLocked(ctx)
}

func (l *lifecycle) upLocked(ctx context.Context) error {
	switch {
	case l.external:
		return ErrExternal
	case l.stopped:
		return ErrStopped
	case l.proc != nil && !l.proc.exited():
		return nil
	}
	l.proc = nil
	ctx, cancel := context.WithTimeout(ctx, l.upTimeout)
	defer cancel()
	return l.start(ctx)
}

// Restart is Down then Up, on the same port.
func (l *lifecycle) Restart(ctx context.Context) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.external {
		return ErrExternal
	}
	if err := l.down(ctx); err != nil {
		return err
	}
	return l.upLocked(ctx)
}

// Stop shuts the server down (a kill of its process group if it lingers)
// and removes its directory. It is idempotent, and does nothing on a reused
// server.
func (l *lifecycle) Stop() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.stopped || l.external {
		l.stopped = true
		return nil
	}
	l.stopped = true
	ctx, cancel := context.WithTimeout(context.Background(), l.stopGrace)
	defer cancel()
	err := l.down(ctx)
	if rmErr := os.RemoveAll(l.dir); rmErr != nil {
		err = errors.Join(err, fmt.Errorf("testenv: %w", rmErr))
	}
	return err
}
