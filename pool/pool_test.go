package pool_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pgsidecar/pgsidecar/internal/testenv"
	"github.com/pgsidecar/pgsidecar/pool"
)

func TestAcquireReleaseReusesAndResets(t *testing.T) {
	t.Parallel()
	pg := env.Postgres(t)
	ctx := testCtx(t)
	a := newAdmin(t, ctx, pg)
	m := newManager(t, pool.Config{Upstream: superURL(pg, "postgres"), PoolSize: 1})
	defaultWorkMem := a.value("SHOW work_mem")

	c := acquire(t, ctx, m, superKey)
	pid := c.PID()
	if !a.alive(pid) {
		t.Fatalf("backend %d is not in pg_stat_activity", pid)
	}
	if c.Key() != superKey {
		t.Errorf("Key() = %+v, want %+v", c.Key(), superKey)
	}
	for _, sql := range []string{"SET work_mem = '1234kB'", "CREATE TEMP TABLE pool_reset_probe (x int)"} {
		if res, err := c.Exec(ctx, sql); err != nil || res.TxStatus != 'I' {
			t.Fatalf("Exec(%q) = %+v, %v", sql, res, err)
		}
	}
	if got := mustQuery(t, ctx, c, "SHOW work_mem"); got != "1234kB" {
		t.Fatalf("work_mem after SET = %q", got)
	}
	m.Release(ctx, c)

	c = acquire(t, ctx, m, superKey)
	defer m.Release(ctx, c)
	if c.PID() != pid {
		t.Errorf("second Acquire got backend %d, want the released one, %d", c.PID(), pid)
	}
	if got := mustQuery(t, ctx, c, "SHOW work_mem"); got != defaultWorkMem {
		t.Errorf("work_mem after Release = %q, want the default %q (reset query not run?)", got, defaultWorkMem)
	}
	_, err := c.Exec(ctx, "SELECT * FROM pool_reset_probe")
	if code := pgCode(err); code != "42P01" {
		t.Errorf("temp table after Release: %v, want SQLSTATE 42P01 (undefined_table)", err)
	}
	s := m.Stats()
	if s.Connects != 1 || s.ResetFailures != 0 || s.Destroyed != 0 {
		t.Errorf("Stats = %+v, want 1 connect and no reset failure or destroy", s)
	}
	if ps := poolStats(m, superKey); ps.Acquires != 2 || ps.Total != 1 || ps.InUse != 1 || ps.Max != 1 {
		t.Errorf("pool stats = %+v, want 2 acquires of one connection, in use, max 1", ps)
	}
}

func TestReleaseDisablingResetQueryKeepsSessionState(t *testing.T) {
	t.Parallel()
	pg := env.Postgres(t)
	ctx := testCtx(t)
	m := newManager(t, pool.Config{Upstream: superURL(pg, "postgres"), PoolSize: 1, ResetQuery: "-"})

	c := acquire(t, ctx, m, superKey)
	if _, err := c.Exec(ctx, "SET work_mem = '1234kB'"); err != nil {
		t.Fatal(err)
	}
	m.Release(ctx, c)
	c = acquire(t, ctx, m, superKey)
	defer m.Release(ctx, c)
	if got := mustQuery(t, ctx, c, "SHOW work_mem"); got != "1234kB" {
		t.Errorf("work_mem = %q with ResetQuery \"-\", want the session's 1234kB", got)
	}
}

func TestReleaseInTransactionClosesTheBackend(t *testing.T) {
	t.Parallel()
	pg := env.Postgres(t)
	tests := []struct {
		name       string
		resetQuery string
		session    []string
	}{
		// DISCARD ALL refuses to run in a transaction block.
		{name: "open transaction", session: []string{"BEGIN"}},
		{name: "failed transaction", session: []string{"BEGIN", "SELECT 1/0"}},
		// A reset query that succeeds in a transaction still leaves it
		// open: the status check must catch it.
		{name: "reset query succeeds in transaction", resetQuery: "RESET ALL", session: []string{"BEGIN"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ctx := testCtx(t)
			a := newAdmin(t, ctx, pg)
			m := newManager(t, pool.Config{Upstream: superURL(pg, "postgres"), PoolSize: 1, ResetQuery: tt.resetQuery})

			c := acquire(t, ctx, m, superKey)
			pid := c.PID()
			var last pool.Result
			for _, sql := range tt.session {
				last, _ = c.Exec(ctx, sql)
			}
			if last.TxStatus == 'I' {
				t.Fatalf("session %q left the backend idle; the test needs a transaction", tt.session)
			}
			m.Release(ctx, c)
			if got := m.Stats().ResetFailures; got != 1 {
				t.Errorf("ResetFailures = %d, want 1", got)
			}
			a.waitGone(pid)

			c = acquire(t, ctx, m, superKey)
			defer m.Release(ctx, c)
			if c.PID() == pid {
				t.Fatalf("the backend released in a transaction (pid %d) was handed out again", pid)
			}
			res, err := c.Exec(ctx, "SELECT 1")
			if err != nil || res.TxStatus != 'I' {
				t.Errorf("next conn: Exec(SELECT 1) = %+v, %v; want transaction status 'I'", res, err)
			}
		})
	}
}

func TestDestroyClosesTheBackend(t *testing.T) {
	t.Parallel()
	pg := env.Postgres(t)
	ctx := testCtx(t)
	a := newAdmin(t, ctx, pg)
	m := newManager(t, pool.Config{Upstream: superURL(pg, "postgres"), PoolSize: 1})

	c := acquire(t, ctx, m, superKey)
	pid := c.PID()
	if !a.alive(pid) {
		t.Fatalf("backend %d is not in pg_stat_activity", pid)
	}
	m.Destroy(c)
	a.waitGone(pid)
	if got := m.Stats().Destroyed; got != 1 {
		t.Errorf("Destroyed = %d, want 1", got)
	}
	eventually(t, 5*time.Second, "the pool to be empty", func() bool { return poolStats(m, superKey).Total == 0 })

	// The slot is free again.
	c = acquire(t, ctx, m, superKey)
	defer m.Release(ctx, c)
	if c.PID() == pid {
		t.Errorf("a destroyed backend came back")
	}
}

func TestReleaseOrDestroyTwicePanics(t *testing.T) {
	t.Parallel()
	pg := env.Postgres(t)
	ctx := testCtx(t)
	m := newManager(t, pool.Config{Upstream: superURL(pg, "postgres"), PoolSize: 1})
	c := acquire(t, ctx, m, superKey)
	m.Release(ctx, c)
	for name, f := range map[string]func(){
		"Release": func() { m.Release(ctx, c) },
		"Destroy": func() { m.Destroy(c) },
	} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("%s of a released Conn did not panic", name)
				}
			}()
			f()
		}()
	}
}

func TestAcquireTimeout(t *testing.T) {
	t.Parallel()
	pg := env.Postgres(t)
	ctx := testCtx(t)
	m := newManager(t, pool.Config{Upstream: superURL(pg, "postgres"), PoolSize: 1})

	held := acquire(t, ctx, m, superKey)

	short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	c, err := m.Acquire(short, superKey)
	if !errors.Is(err, pool.ErrAcquireTimeout) {
		t.Fatalf("Acquire with the only backend held = %v, %v; want ErrAcquireTimeout", c, err)
	}
	if waited := time.Since(start); waited < 90*time.Millisecond {
		t.Errorf("Acquire gave up after %v, before its 100ms deadline", waited)
	}
	if got := m.Stats().AcquireTimeouts; got != 1 {
		t.Errorf("AcquireTimeouts = %d, want 1", got)
	}

	// A caller that gives up (rather than running out of time) is not a
	// timeout.
	canceled, cancelNow := context.WithCancel(ctx)
	cancelNow()
	if _, err := m.Acquire(canceled, superKey); !errors.Is(err, context.Canceled) || errors.Is(err, pool.ErrAcquireTimeout) {
		t.Errorf("Acquire with a canceled context = %v, want context.Canceled", err)
	}
	if got := m.Stats().AcquireTimeouts; got != 1 {
		t.Errorf("AcquireTimeouts = %d after a cancel, want still 1", got)
	}

	// A waiter gets the backend when it is released.
	type result struct {
		c   *pool.Conn
		err error
	}
	got := make(chan result, 1)
	go func() {
		c, err := m.Acquire(ctx, superKey)
		got <- result{c, err}
	}()
	select {
	case r := <-got:
		t.Fatalf("Acquire returned %v, %v while the only backend was held", r.c, r.err)
	default:
	}
	pid := held.PID()
	m.Release(ctx, held)
	select {
	case r := <-got:
		if r.err != nil {
			t.Fatalf("waiter: %v", r.err)
		}
		if r.c.PID() != pid {
			t.Errorf("waiter got backend %d, want the released %d", r.c.PID(), pid)
		}
		m.Release(ctx, r.c)
	case <-time.After(10 * time.Second):
		t.Fatal("the waiter did not get the released backend")
	}
}

func TestConnectErrors(t *testing.T) {
	t.Parallel()

	// checkFailed checks err and that the failed connect left key's pool
	// with no slot taken.
	checkFailed := func(t *testing.T, m *pool.Manager, key pool.Key, err error, wantCode string) {
		t.Helper()
		var ce *pool.ConnectError
		if !errors.As(err, &ce) {
			t.Fatalf("Acquire = %v (%T), want a *pool.ConnectError", err, err)
		}
		if ce.Key != key {
			t.Errorf("ConnectError.Key = %+v, want %+v", ce.Key, key)
		}
		if code := pgCode(err); code != wantCode {
			t.Errorf("Acquire = %v: SQLSTATE %q, want %q", err, code, wantCode)
		}
		if got := m.Stats().ConnectErrors; got != 1 {
			t.Errorf("ConnectErrors = %d, want 1", got)
		}
		if ps := poolStats(m, key); ps.Total != 0 || ps.Constructing != 0 || ps.InUse != 0 {
			t.Errorf("after a failed connect pool stats = %+v, want no connection", ps)
		}
	}

	t.Run("wrong password", func(t *testing.T) {
		t.Parallel()
		pg := env.Postgres(t)
		ctx := testCtx(t)
		role, password := uniqueName("pool_pw"), uniqueName("secret")
		if err := pg.CreateRole(ctx, role, "not-"+password); err != nil {
			t.Fatal(err)
		}
		m := newManager(t, pool.Config{Upstream: pg.URL(role, password, "postgres"), PoolSize: 1})
		key := pool.Key{Database: "postgres", User: role}

		_, err := m.Acquire(ctx, key)
		checkFailed(t, m, key, err, "28P01")
		if strings.Contains(err.Error(), password) {
			t.Errorf("the error shows the password: %v", err)
		}

		// Once the password is right, the single slot is free for it.
		if err := pg.Exec(ctx, "ALTER ROLE "+role+" PASSWORD '"+password+"'"); err != nil {
			t.Fatal(err)
		}
		c := acquire(t, ctx, m, key)
		defer m.Release(ctx, c)
		if got := mustQuery(t, ctx, c, "SELECT current_user"); got != role {
			t.Errorf("current_user = %q, want %q", got, role)
		}
	})

	t.Run("no such database", func(t *testing.T) {
		t.Parallel()
		pg := env.Postgres(t)
		ctx := testCtx(t)
		db := uniqueName("pool_db")
		t.Cleanup(func() { _ = pg.Exec(context.Background(), "DROP DATABASE IF EXISTS "+db+" WITH (FORCE)") })
		// The upstream URL names no database: the client's is used.
		m := newManager(t, pool.Config{Upstream: superURL(pg, ""), PoolSize: 1})
		key := pool.Key{Database: db, User: "postgres"}

		_, err := m.Acquire(ctx, key)
		checkFailed(t, m, key, err, "3D000")

		if err := pg.Exec(ctx, "CREATE DATABASE "+db); err != nil {
			t.Fatal(err)
		}
		c := acquire(t, ctx, m, key)
		defer m.Release(ctx, c)
		if got := mustQuery(t, ctx, c, "SELECT current_database()"); got != db {
			t.Errorf("current_database() = %q, want %q", got, db)
		}
	})

	t.Run("server down", func(t *testing.T) {
		t.Parallel()
		pg := testenv.NewPostgres(t, testenv.PostgresOptions{})
		ctx := testCtx(t)
		m := newManager(t, pool.Config{Upstream: superURL(pg, "postgres"), PoolSize: 1, ConnectTimeout: 5 * time.Second})
		if err := pg.Down(ctx); err != nil {
			t.Fatal(err)
		}

		_, err := m.Acquire(ctx, superKey)
		checkFailed(t, m, superKey, err, "")
		var opErr *net.OpError
		if !errors.As(err, &opErr) {
			t.Errorf("Acquire with the server down = %v, want a *net.OpError inside", err)
		}

		if err := pg.Up(ctx); err != nil {
			t.Fatal(err)
		}
		c := acquire(t, ctx, m, superKey)
		m.Release(ctx, c)
	})

	t.Run("unparsable upstream hides its password", func(t *testing.T) {
		t.Parallel()
		// Validate accepts it (it is a postgres URL); pgconn does not.
		m := newManager(t, pool.Config{Upstream: "postgres://u:hunter2@127.0.0.1:1/db?sslmode=bogus"})
		_, err := m.Acquire(context.Background(), superKey)
		var ce *pool.ConnectError
		if !errors.As(err, &ce) {
			t.Fatalf("Acquire = %v, want a *pool.ConnectError", err)
		}
		if strings.Contains(err.Error(), "hunter2") {
			t.Errorf("the error shows the password: %v", err)
		}
	})
}

func TestLoginAsClientUser(t *testing.T) {
	t.Parallel()
	pg := env.Postgres(t)
	ctx := testCtx(t)
	alice, bob := uniqueName("pool_alice"), uniqueName("pool_bob")
	passwords := map[string]string{alice: uniqueName("pw"), bob: uniqueName("pw")}
	for role, pw := range passwords {
		if err := pg.CreateRole(ctx, role, pw); err != nil {
			t.Fatal(err)
		}
	}
	realDB := uniqueName("pool_real")
	if err := pg.Exec(ctx, "CREATE DATABASE "+realDB); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = pg.Exec(context.Background(), "DROP DATABASE IF EXISTS "+realDB+" WITH (FORCE)") })

	m := newManager(t, pool.Config{
		// No user and no database: both come from the Key.
		Upstream: pg.URL("", "", ""),
		Databases: map[string]string{
			// An alias for another database, still as the client's user.
			"alias": pg.URL("", "", realDB),
			// A database whose URL names its own user.
			"as_super": superURL(pg, "postgres"),
		},
		Passwords: func(user string) (string, bool) {
			pw, ok := passwords[user]
			return pw, ok
		},
		PoolSize: 2,
	})

	tests := []struct {
		key          pool.Key
		wantUser     string
		wantDatabase string
	}{
		{pool.Key{Database: "postgres", User: alice}, alice, "postgres"},
		{pool.Key{Database: "postgres", User: bob}, bob, "postgres"},
		{pool.Key{Database: "alias", User: alice}, alice, realDB},
		{pool.Key{Database: "as_super", User: bob}, pg.SuperUser, "postgres"},
	}
	for _, tt := range tests {
		c := acquire(t, ctx, m, tt.key)
		user := mustQuery(t, ctx, c, "SELECT current_user")
		db := mustQuery(t, ctx, c, "SELECT current_database()")
		m.Release(ctx, c)
		if user != tt.wantUser || db != tt.wantDatabase {
			t.Errorf("%+v: logged in as %s to %s, want %s to %s", tt.key, user, db, tt.wantUser, tt.wantDatabase)
		}
	}
	if got := len(m.Stats().Pools); got != len(tests) {
		t.Errorf("%d pools, want one per key (%d)", got, len(tests))
	}

	// A user Passwords does not know logs in with no password and is refused.
	stranger := pool.Key{Database: "postgres", User: uniqueName("pool_stranger")}
	if err := pg.CreateRole(ctx, stranger.User, "whatever"); err != nil {
		t.Fatal(err)
	}
	_, err := m.Acquire(ctx, stranger)
	var ce *pool.ConnectError
	if !errors.As(err, &ce) || pgCode(err) != "28P01" {
		t.Errorf("Acquire as a user with no known password = %v, want a *pool.ConnectError with SQLSTATE 28P01", err)
	}
}

func TestCheckDelayReplacesADeadBackend(t *testing.T) {
	t.Parallel()
	pg := env.Postgres(t)

	// killIdle acquires and releases a backend, then terminates it
	// directly on the server while it sits idle in the pool.
	killIdle := func(t *testing.T, ctx context.Context, a *admin, m *pool.Manager) uint32 {
		t.Helper()
		c := acquire(t, ctx, m, superKey)
		pid := c.PID()
		m.Release(ctx, c)
		if got := a.value(fmt.Sprintf("SELECT pg_terminate_backend(%d)", pid)); got != "t" {
			t.Fatalf("pg_terminate_backend(%d) = %q", pid, got)
		}
		a.waitGone(pid)
		return pid
	}

	t.Run("checked", func(t *testing.T) {
		t.Parallel()
		ctx := testCtx(t)
		a := newAdmin(t, ctx, pg)
		m := newManager(t, pool.Config{Upstream: superURL(pg, "postgres"), PoolSize: 1, CheckDelay: time.Nanosecond})
		dead := killIdle(t, ctx, a, m)

		c := acquire(t, ctx, m, superKey)
		defer m.Release(ctx, c)
		if c.PID() == dead {
			t.Fatalf("Acquire handed out the terminated backend %d", dead)
		}
		if res, err := c.Exec(ctx, "SELECT 1"); err != nil || res.TxStatus != 'I' {
			t.Errorf("Exec on the replacement = %+v, %v", res, err)
		}
		if got := m.Stats().CheckFailures; got < 1 {
			t.Errorf("CheckFailures = %d, want at least 1", got)
		}
	})

	t.Run("never checked", func(t *testing.T) {
		t.Parallel()
		ctx := testCtx(t)
		a := newAdmin(t, ctx, pg)
		m := newManager(t, pool.Config{Upstream: superURL(pg, "postgres"), PoolSize: 1, CheckDelay: -1})
		dead := killIdle(t, ctx, a, m)

		// Without the check the dead backend comes back, and the holder
		// finds out.
		c := acquire(t, ctx, m, superKey)
		if c.PID() != dead {
			t.Fatalf("Acquire got backend %d, want the dead %d back", c.PID(), dead)
		}
		_, err := c.Exec(ctx, "SELECT 1")
		if err == nil {
			t.Errorf("Exec on a terminated backend succeeded")
		}
		m.Destroy(c)
		if got := m.Stats().CheckFailures; got != 0 {
			t.Errorf("CheckFailures = %d with CheckDelay < 0, want 0", got)
		}
	})
}

func TestMaintainerReapsIdleAndOldBackends(t *testing.T) {
	t.Parallel()
	pg := env.Postgres(t)
	tests := []struct {
		name                  string
		idleTimeout, lifetime time.Duration
	}{
		{"idle timeout", 50 * time.Millisecond, -1},
		{"lifetime", -1, 50 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ctx := testCtx(t)
			a := newAdmin(t, ctx, pg)
			m := newManager(t, pool.Config{
				Upstream:            superURL(pg, "postgres"),
				IdleTimeout:         tt.idleTimeout,
				Lifetime:            tt.lifetime,
				MaintenanceInterval: 20 * time.Millisecond,
			})
			c := acquire(t, ctx, m, superKey)
			pid := c.PID()
			m.Release(ctx, c)

			eventually(t, 10*time.Second, "the maintainer to close the idle backend", func() bool {
				return poolStats(m, superKey).Total == 0
			})
			if got := m.Stats().Reaped; got != 1 {
				t.Errorf("Reaped = %d, want 1", got)
			}
			a.waitGone(pid)
		})
	}
}

func TestLifetimeClosesOnRelease(t *testing.T) {
	t.Parallel()
	pg := env.Postgres(t)
	ctx := testCtx(t)
	a := newAdmin(t, ctx, pg)
	// The maintainer never runs during the test: Release alone must retire
	// the backend.
	m := newManager(t, pool.Config{Upstream: superURL(pg, "postgres"), PoolSize: 1, Lifetime: time.Nanosecond, MaintenanceInterval: time.Hour})

	c := acquire(t, ctx, m, superKey)
	pid := c.PID()
	m.Release(ctx, c)
	a.waitGone(pid)
	if got := m.Stats().Reaped; got != 1 {
		t.Errorf("Reaped = %d after releasing a backend past its lifetime, want 1", got)
	}
	c = acquire(t, ctx, m, superKey)
	defer m.Release(ctx, c)
	if c.PID() == pid {
		t.Errorf("a backend past its lifetime was handed out again")
	}
}

func TestMinPoolSize(t *testing.T) {
	t.Parallel()
	pg := env.Postgres(t)
	const interval = 20 * time.Millisecond

	newMin := func(t *testing.T, idleTimeout time.Duration) *pool.Manager {
		return newManager(t, pool.Config{
			Upstream:            superURL(pg, "postgres"),
			PoolSize:            4,
			MinPoolSize:         2,
			IdleTimeout:         idleTimeout,
			MaintenanceInterval: interval,
		})
	}
	// steady waits for the pool to hold 2 idle backends, then checks over
	// the idle timeout and 10 more maintenance rounds that it keeps exactly
	// those, closing and opening none.
	steady := func(t *testing.T, m *pool.Manager, idleTimeout time.Duration, wantConnects, wantReaped int64) {
		t.Helper()
		eventually(t, 10*time.Second, "the pool to hold 2 idle backends", func() bool {
			ps := poolStats(m, superKey)
			return ps.Total == 2 && ps.Idle == 2
		})
		tick := time.NewTicker(interval / 2)
		defer tick.Stop()
		for end := time.Now().Add(idleTimeout + 10*interval); time.Now().Before(end); <-tick.C {
			if ps := poolStats(m, superKey); ps.Total != 2 {
				t.Fatalf("pool stats = %+v, want 2 backends kept open", ps)
			}
		}
		if s := m.Stats(); s.Connects != wantConnects || s.Reaped != wantReaped {
			t.Errorf("Connects = %d, Reaped = %d; want %d and %d", s.Connects, s.Reaped, wantConnects, wantReaped)
		}
	}

	t.Run("tops up", func(t *testing.T) {
		t.Parallel()
		ctx := testCtx(t)
		// An idle timeout far shorter than the maintenance interval: every
		// backend is always past it.
		m := newMin(t, time.Millisecond)
		m.Release(ctx, acquire(t, ctx, m, superKey))
		steady(t, m, time.Millisecond, 2, 0)
	})

	t.Run("reaps down to it", func(t *testing.T) {
		t.Parallel()
		ctx := testCtx(t)
		// Long enough that nothing is reaped while the four are being
		// acquired (the maintainer tops up meanwhile); the four are then
		// released together and pass it in the same rounds.
		const idleTimeout = 500 * time.Millisecond
		m := newMin(t, idleTimeout)
		var conns []*pool.Conn
		for range 4 {
			conns = append(conns, acquire(t, ctx, m, superKey))
		}
		for _, c := range conns {
			m.Release(ctx, c)
		}
		steady(t, m, idleTimeout, 4, 2)
	})
}

func TestProbeAndReachable(t *testing.T) {
	t.Parallel()
	pg := env.Postgres(t)
	deadPort, err := testenv.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	dead := "127.0.0.1:" + strconv.Itoa(deadPort)

	tests := []struct {
		name     string
		upstream string
		wantErr  bool
	}{
		{"login", superURL(pg, "postgres"), false},
		{"tcp only", pg.URL("", "", ""), false},
		{"login, dead port", "postgres://u:p@" + dead + "/db?sslmode=disable", true},
		{"tcp only, dead port", "postgres://" + dead + "/db?sslmode=disable", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ctx := testCtx(t)
			m := newManager(t, pool.Config{Upstream: tt.upstream, ConnectTimeout: 5 * time.Second})
			if m.Reachable() {
				t.Fatal("Reachable before any connection or probe")
			}
			err := m.Probe(ctx)
			if (err != nil) != tt.wantErr {
				t.Fatalf("Probe = %v, want error: %v", err, tt.wantErr)
			}
			if m.Reachable() != !tt.wantErr {
				t.Errorf("Reachable = %v after Probe = %v", m.Reachable(), err)
			}
			if s := m.Stats(); s.Connects != 0 || len(s.Pools) != 0 {
				t.Errorf("Probe touched the pools: %+v", s)
			}
		})
	}

	t.Run("a backend connection makes it reachable", func(t *testing.T) {
		t.Parallel()
		ctx := testCtx(t)
		m := newManager(t, pool.Config{Upstream: superURL(pg, "postgres")})
		if m.Reachable() {
			t.Fatal("Reachable before any connection")
		}
		m.Release(ctx, acquire(t, ctx, m, superKey))
		if !m.Reachable() {
			t.Error("not Reachable after a backend connected")
		}
	})
}

func TestClose(t *testing.T) {
	t.Parallel()
	pg := env.Postgres(t)
	ctx := testCtx(t)
	a := newAdmin(t, ctx, pg)
	lentKey := pool.Key{Database: "other", User: "x"}
	m := newManager(t, pool.Config{
		Upstream:  superURL(pg, "postgres"),
		Databases: map[string]string{"other": superURL(pg, "postgres")},
	})

	idle := acquire(t, ctx, m, superKey)
	idlePID := idle.PID()
	m.Release(ctx, idle)
	lent := acquire(t, ctx, m, lentKey)
	lentPID := lent.PID()

	closed := make(chan struct{})
	go func() {
		defer close(closed)
		m.Close()
	}()
	// The idle backend goes at once, even while another is lent.
	a.waitGone(idlePID)
	neverUsed := pool.Key{Database: "postgres", User: "never"}
	for _, key := range []pool.Key{superKey, lentKey, neverUsed} {
		if _, err := m.Acquire(ctx, key); !errors.Is(err, pool.ErrClosed) {
			t.Errorf("Acquire(%+v) while closing = %v, want ErrClosed", key, err)
		}
	}

	// The lent one is closed when it comes back, and then Close is done.
	if !a.alive(lentPID) {
		t.Errorf("Close closed a lent backend under its holder")
	}
	m.Release(ctx, lent)
	a.waitGone(lentPID)
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not return after the lent backend came back")
	}

	m.Close() // idempotent
	if _, err := m.Acquire(ctx, superKey); !errors.Is(err, pool.ErrClosed) {
		t.Errorf("Acquire after Close = %v, want ErrClosed", err)
	}
}
