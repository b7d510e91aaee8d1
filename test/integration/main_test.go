// Package integration drives pgsidecar end to end: a real PostgreSQL started
// by internal/testenv, the real proxy and pool (in process, on loopback
// ports, or the built binary where the process itself is under test), and
// real client drivers (pgx, lib/pq, psql, pgbench) plus raw pgproto3 for
// protocol corner cases.
package integration

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pgsidecar/pgsidecar/internal/clientauth"
	"github.com/pgsidecar/pgsidecar/internal/testenv"
	"github.com/pgsidecar/pgsidecar/pool"
	"github.com/pgsidecar/pgsidecar/proxy"
)

var env testenv.Shared

func TestMain(m *testing.M) {
	code := m.Run()
	env.Close()
	removeCacheBinary()
	os.Exit(code)
}

// sidecar is an in-process pgsidecar in front of a test server.
type sidecar struct {
	Addr   string
	Host   string
	Port   int
	Server *proxy.Server
	Pool   *pool.Manager
}

// sidecarOptions tune startSidecar. Zero values give the package defaults,
// except where noted.
type sidecarOptions struct {
	Proxy proxy.Config
	Pool  pool.Config
	// Upstream overrides the upstream URL. Zero: the superuser on pg.
	Upstream string
}

// startSidecar runs a proxy and pool in this process on a free loopback
// port, torn down by t.Cleanup.
func startSidecar(t testing.TB, pg *testenv.Postgres, opts sidecarOptions) *sidecar {
	t.Helper()
	logger := slog.New(slog.NewTextHandler(testLogWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	pcfg := opts.Pool
	if pcfg.Upstream == "" {
		pcfg.Upstream = opts.Upstream
	}
	if pcfg.Upstream == "" {
		pcfg.Upstream = pg.URL(pg.SuperUser, pg.SuperPassword, "postgres")
	}
	if pcfg.Logger == nil {
		pcfg.Logger = logger
	}
	if pcfg.Passwords == nil && opts.Proxy.Users != nil {
		users := opts.Proxy.Users
		pcfg.Passwords = func(user string) (string, bool) {
			c, ok := users.Lookup(user)
			return c.Password, ok && c.Password != ""
		}
	}
	m, err := pool.New(pcfg)
	if err != nil {
		t.Fatal(err)
	}
	xcfg := opts.Proxy
	if xcfg.PoolMode == "" {
		xcfg.PoolMode = suitePoolMode()
	}
	xcfg.ListenAddr = "127.0.0.1:0"
	if xcfg.Logger == nil {
		xcfg.Logger = logger
	}
	srv, err := proxy.New(xcfg, m)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := srv.Listen()
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(context.Background(), ln) }()
	t.Cleanup(func() {
		if t.Failed() {
			// A hang in the relay shows up here as the stacks of its
			// session goroutines, which is what a CI flake needs.
			logProxyStacks(t)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		<-done
		m.Close()
	})
	addr := ln.Addr().(*net.TCPAddr)
	return &sidecar{Addr: addr.String(), Host: "127.0.0.1", Port: addr.Port, Server: srv, Pool: m}
}

// suitePoolMode is the pool mode of sidecars whose test does not choose
// one: PGSIDECAR_TEST_POOL_MODE, so `make test` runs the whole suite in
// session mode and again in transaction mode. Zero: session.
func suitePoolMode() proxy.PoolMode {
	if m := os.Getenv("PGSIDECAR_TEST_POOL_MODE"); m != "" {
		return proxy.PoolMode(m)
	}
	return proxy.PoolModeSession
}

// URL is a postgres:// URL for user on the sidecar.
func (s *sidecar) URL(user, password, database string, params ...string) string {
	cred := user
	if password != "" {
		cred += ":" + password
	}
	q := "sslmode=disable"
	if len(params) > 0 {
		q = strings.Join(params, "&")
		if !strings.Contains(q, "sslmode=") {
			q += "&sslmode=disable"
		}
	}
	return fmt.Sprintf("postgres://%s@%s/%s?%s", cred, s.Addr, database, q)
}

// SuperURL is a URL for pg's superuser through the sidecar (which logs in
// to the backend with the upstream URL's credentials).
func (s *sidecar) SuperURL(pg *testenv.Postgres, params ...string) string {
	return s.URL(pg.SuperUser, "", "postgres", params...)
}

// testLogWriter sends the sidecar's logs to the test log, so they show up
// only for failing tests (or with -v).
type testLogWriter struct{ t testing.TB }

func (w testLogWriter) Write(p []byte) (int, error) {
	w.t.Logf("%s", strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// uniq returns a name unique within this test binary, for roles, databases
// and tables that tests create on the shared server.
func uniq(prefix string) string {
	return fmt.Sprintf("%s_%d_%d", prefix, os.Getpid(), seq.Add(1))
}

var seq atomic.Int64

// users builds a credential store from user -> secret pairs.
func users(t testing.TB, pairs ...string) clientauth.MapStore {
	t.Helper()
	s := clientauth.MapStore{}
	for i := 0; i+1 < len(pairs); i += 2 {
		c, err := clientauth.NewCredential(pairs[i], pairs[i+1])
		if err != nil {
			t.Fatal(err)
		}
		s[pairs[i]] = c
	}
	return s
}

// ctxT bounds a test's calls. Parallel subtests may share their parent's
// context and start only once other parallel tests free a slot, so the
// bound is generous: it catches hangs, not slowness.
func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// logProxyStacks logs the stacks of goroutines running proxy or pool code.
func logProxyStacks(t testing.TB) {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "pgsidecar/proxy.") || strings.Contains(g, "pgsidecar/pool.") {
			t.Logf("proxy goroutine:\n%s", g)
		}
	}
}
