// Package testenv starts real, throwaway servers for tests and developer
// tools: a PostgreSQL cluster (initdb + postgres) and a Redis server, each on
// 127.0.0.1 on a free port, each in its own temporary directory, each torn
// down by Stop.
//
// # Ownership and lifetime
//
// A *Postgres or *Redis owns its child process, the process group the child
// leads, and its temporary directory. Stop asks the server to shut down
// (PostgreSQL: fast shutdown), kills the process group if it lingers, and
// removes the directory; it is idempotent. (PostgreSQL backends put
// themselves in their own process groups; they exit when the postmaster
// dies.) The children are started with a
// parent-death signal from a goroutine locked to its OS thread, so a test
// binary that crashes or is killed does not leave servers behind (the
// temporary directory may remain under os.TempDir, named pgsidecar-*).
// The context given to a Start function bounds startup only: the server
// outlives it and lives until Stop.
//
// When the process runs as root (as CI does), PostgreSQL, which refuses to
// run as root, is run as the "postgres" OS user (falling back to "nobody"),
// and its directory is chowned to that user.
//
// # Missing servers
//
// When initdb/postgres or redis-server cannot be found, the Start functions
// return an error that wraps ErrNotInstalled. SkipOrFail turns that into a
// skip on a developer machine and a failure under CI=true, so CI can never go
// green by skipping everything. Shared does the same for lazily started,
// per-test-binary servers and also skips in -short mode.
//
// # Reusing an existing server
//
// SharedPostgres and SharedRedis (and so Shared) reuse the servers named by
// PGSIDECAR_TEST_PG_URL and PGSIDECAR_TEST_REDIS_URL instead of starting new
// ones. A reused server is never stopped, and Down, Up and Restart return
// ErrExternal on it.
//
// # Concurrency
//
// All methods of Postgres, Redis and Shared are safe for concurrent use.
// The package has no package-level mutable state.
//
// Each running server owns one goroutine, which waits for its process and
// exits when the process does (its function is WaiterFunc, for goleak).
package testenv
