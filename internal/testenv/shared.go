package testenv

import (
	"context"
	"os"
	"sync"
	"testing"
	"time"
)

// SharedPostgres is for a TestMain that wants one server for the whole test
// binary. When PGSIDECAR_TEST_PG_URL is set it reuses that server (Exec and
// CreateRole then act as that URL's user, and stop leaves it running);
// otherwise it starts one with opts. stop is never nil, even with an error.
func SharedPostgres(ctx context.Context, opts PostgresOptions) (pg *Postgres, stop func(), err error) {
	if raw := os.Getenv(EnvPostgresURL); raw != "" {
		pg, err = reusePostgres(ctx, raw)
	} else {
		pg, err = StartPostgres(ctx, opts)
	}
	if err != nil {
		return nil, func() {}, err
	}
	return pg, func() { _ = pg.Stop() }, nil
}

// SharedRedis is SharedPostgres for Redis, honouring PGSIDECAR_TEST_REDIS_URL.
func SharedRedis(ctx context.Context) (rd *Redis, stop func(), err error) {
	if raw := os.Getenv(EnvRedisURL); raw != "" {
		rd, err = reuseRedis(ctx, raw)
	} else {
		rd, err = StartRedis(ctx)
	}
	if err != nil {
		return nil, func() {}, err
	}
	return rd, func() { _ = rd.Stop() }, nil
}

// Shared lazily starts one PostgreSQL and one Redis for a whole test binary,
// on first use by a test, through SharedPostgres and SharedRedis. A test
// package declares one and closes it after m.Run:
//
//	var env testenv.Shared
//
//	func TestMain(m *testing.M) {
//		code := m.Run()
//		env.Close()
//		os.Exit(code)
//	}
//
//	func TestSomething(t *testing.T) {
//		pg := env.Postgres(t) // skipped in -short mode and when not installed (failed under CI=true)
//		...
//	}
//
// Tests share the servers: give each test its own roles and databases, and
// use NewPostgres for a test that stops, restarts or reconfigures its server.
// The zero value is ready to use; a Shared is safe for concurrent use.
type Shared struct {
	// PostgresOptions configure the PostgreSQL server; set before first use.
	PostgresOptions PostgresOptions

	mu             sync.Mutex
	pgDone, rdDone bool
	pg             *Postgres
	rd             *Redis
	pgErr, rdErr   error
	pgStop, rdStop func()
}

// sharedStartTimeout bounds a shared server's start.
const sharedStartTimeout = 2 * time.Minute

// Postgres returns the shared PostgreSQL server, starting it on first use.
// It skips tb in -short mode, and applies SkipOrFail when there is none.
func (s *Shared) Postgres(tb testing.TB) *Postgres {
	tb.Helper()
	skipShort(tb, "PostgreSQL")
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.pgDone {
		s.pgDone = true
		ctx, cancel := context.WithTimeout(context.Background(), sharedStartTimeout)
		s.pg, s.pgStop, s.pgErr = SharedPostgres(ctx, s.PostgresOptions)
		cancel()
	}
	SkipOrFail(tb, s.pgErr)
	return s.pg
}

// Redis returns the shared Redis server, starting it on first use. It skips
// tb in -short mode, and applies SkipOrFail when there is none.
func (s *Shared) Redis(tb testing.TB) *Redis {
	tb.Helper()
	skipShort(tb, "Redis")
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.rdDone {
		s.rdDone = true
		ctx, cancel := context.WithTimeout(context.Background(), sharedStartTimeout)
		s.rd, s.rdStop, s.rdErr = SharedRedis(ctx)
		cancel()
	}
	SkipOrFail(tb, s.rdErr)
	return s.rd
}

// Close stops the servers Shared started. It is idempotent; a server asked
// for after Close is started again.
func (s *Shared) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.pgStop != nil {
		s.pgStop()
	}
	if s.rdStop != nil {
		s.rdStop()
	}
	s.pgDone, s.rdDone = false, false
	s.pg, s.rd = nil, nil
	s.pgErr, s.rdErr = nil, nil
	s.pgStop, s.rdStop = nil, nil
}

// NewPostgres starts a PostgreSQL server for one test and stops it in
// tb.Cleanup. It never reuses PGSIDECAR_TEST_PG_URL, so the test may stop,
// restart or reconfigure it. It skips tb in -short mode, and applies
// SkipOrFail when the server cannot be started.
func NewPostgres(tb testing.TB, opts PostgresOptions) *Postgres {
	tb.Helper()
	skipShort(tb, "PostgreSQL")
	ctx, cancel := context.WithTimeout(context.Background(), sharedStartTimeout)
	defer cancel()
	pg, err := StartPostgres(ctx, opts)
	SkipOrFail(tb, err)
	tb.Cleanup(func() {
		if err := pg.Stop(); err != nil {
			tb.Errorf("stop postgres: %v", err)
		}
	})
	return pg
}

// NewRedis starts a Redis server for one test and stops it in tb.Cleanup.
// It never reuses PGSIDECAR_TEST_REDIS_URL. It skips tb in -short mode, and
// applies SkipOrFail when the server cannot be started.
func NewRedis(tb testing.TB) *Redis {
	tb.Helper()
	skipShort(tb, "Redis")
	ctx, cancel := context.WithTimeout(context.Background(), sharedStartTimeout)
	defer cancel()
	rd, err := StartRedis(ctx)
	SkipOrFail(tb, err)
	tb.Cleanup(func() {
		if err := rd.Stop(); err != nil {
			tb.Errorf("stop redis: %v", err)
		}
	})
	return rd
}

func skipShort(tb testing.TB, what string) {
	tb.Helper()
	if testing.Short() {
		tb.Skipf("needs a real %s server: skipped in -short mode", what)
	}
}
