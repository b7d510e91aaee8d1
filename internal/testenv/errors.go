package testenv

import (
	"errors"
	"os"
	"strconv"
	"testing"
)

// Environment variables read by this package.
const (
	// EnvCI, when true (CI=true), turns a missing server binary from a skip
	// into a test failure.
	EnvCI = "CI"
	// EnvPostgresURL names an existing PostgreSQL server, as a postgres:// URL
	// whose user is a superuser, for SharedPostgres and Shared to reuse.
	EnvPostgresURL = "PGSIDECAR_TEST_PG_URL"
	// EnvRedisURL names an existing Redis server, as a redis:// URL, for
	// SharedRedis and Shared to reuse.
	EnvRedisURL = "PGSIDECAR_TEST_REDIS_URL"
	// EnvPostgresBinDir overrides where initdb and postgres are looked for.
	EnvPostgresBinDir = "PGSIDECAR_PG_BINDIR"
	// EnvRedisServer overrides the redis-server binary (a path).
	EnvRedisServer = "PGSIDECAR_REDIS_SERVER"
)

// WaiterFunc is the function of the one goroutine each running server owns,
// for goleak.IgnoreAnyFunction in tests that check for leaks while a shared
// server is still up.
const WaiterFunc = "github.com/pgsidecar/pgsidecar/internal/testenv.(*proc).run"

var (
	// ErrNotInstalled is wrapped by Start errors when a server binary
	// (initdb, postgres, redis-server) cannot be found.
	ErrNotInstalled = errors.New("testenv: server binary not installed")
	// ErrExternal is returned by Down, Up and Restart on a server reused from
	// PGSIDECAR_TEST_PG_URL or PGSIDECAR_TEST_REDIS_URL, which this package
	// does not control.
	ErrExternal = errors.New("testenv: server is external (reused from the environment)")
	// ErrStopped is returned by Up and Restart after Stop.
	ErrStopped = errors.New("testenv: server was stopped")
)

// InCI reports whether CI is set to a true value (CI=true, CI=1).
func InCI() bool {
	ci, err := strconv.ParseBool(os.Getenv(EnvCI))
	return err == nil && ci
}

// SkipOrFail is the one policy for servers a test cannot get. It does
// nothing when err is nil. When err wraps ErrNotInstalled it skips the test,
// unless InCI, where it fails it: CI must never go green by skipping. Any
// other error fails the test.
func SkipOrFail(tb testing.TB, err error) {
	tb.Helper()
	if err == nil {
		return
	}
	if errors.Is(err, ErrNotInstalled) && !InCI() {
		tb.Skipf("skipping: %v (run `make deps` to install; with CI=true this fails)", err)
		return
	}
	tb.Fatalf("testenv: %v", err)
}
