package integration

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgsidecar/pgsidecar/pool"
	"github.com/pgsidecar/pgsidecar/proxy"
)

// connect opens a pgx connection that the test closes at the end.
func connect(t testing.TB, url string) (*pgx.Conn, error) {
	t.Helper()
	ctx := ctxT(t)
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn, nil
}

// connectEventually retries connect until it succeeds, within bound: for a
// slot that frees up asynchronously after another client left.
func connectEventually(t testing.TB, url string, bound time.Duration) *pgx.Conn {
	t.Helper()
	var conn *pgx.Conn
	var last error
	eventually(t, bound, "a connection", func() (bool, error) {
		conn, last = connect(t, url)
		if last != nil {
			t.Logf("connect: %v", last)
		}
		return last == nil, nil
	})
	return conn
}

func TestLimitPoolExhausted(t *testing.T) {
	t.Parallel()
	pg := env.Postgres(t)
	sc := startSidecar(t, pg, sidecarOptions{
		Pool:  pool.Config{PoolSize: 1},
		Proxy: proxy.Config{PoolMode: proxy.PoolModeSession, QueryWaitTimeout: 300 * time.Millisecond},
	})
	ctx := ctxT(t)
	a, err := connect(t, sc.SuperURL(pg))
	if err != nil {
		t.Fatal(err)
	}
	selectOne(t, a)

	start := time.Now()
	_, err = connect(t, sc.SuperURL(pg))
	waited := time.Since(start)
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "53300" {
		t.Fatalf("second client with the only backend taken: %v; want SQLSTATE 53300", err)
	}
	if !strings.Contains(pe.Message, "query_wait_timeout") {
		t.Errorf("message %q does not mention query_wait_timeout", pe.Message)
	}
	if waited < 250*time.Millisecond || waited > 3*time.Second {
		t.Errorf("refused after %s; want about query_wait_timeout (300ms)", waited)
	}
	if n := sc.Pool.Stats().AcquireTimeouts; n != 1 {
		t.Errorf("pool counted %d acquire timeouts, want 1", n)
	}
	// The waiter's refusal does not disturb the holder.
	selectOne(t, a)

	if err := a.Close(ctx); err != nil {
		t.Fatal(err)
	}
	b := connectEventually(t, sc.SuperURL(pg), 5*time.Second)
	selectOne(t, b)
}

func TestLimitMaxClientConn(t *testing.T) {
	t.Parallel()
	pg := env.Postgres(t)
	sc := startSidecar(t, pg, sidecarOptions{Proxy: proxy.Config{MaxClientConn: 2}})
	ctx := ctxT(t)
	a, err := connect(t, sc.SuperURL(pg))
	if err != nil {
		t.Fatal(err)
	}
	b, err := connect(t, sc.SuperURL(pg))
	if err != nil {
		t.Fatal(err)
	}

	_, err = connect(t, sc.SuperURL(pg))
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "53300" {
		t.Fatalf("third client with max_client_conn 2: %v; want SQLSTATE 53300", err)
	}
	if !strings.Contains(pe.Message, "too many clients") {
		t.Errorf("message %q does not say too many clients", pe.Message)
	}
	if n := sc.Server.Stats().RefusedFull; n != 1 {
		t.Errorf("RefusedFull = %d, want 1", n)
	}
	selectOne(t, a)
	selectOne(t, b)

	if err := a.Close(ctx); err != nil {
		t.Fatal(err)
	}
	c := connectEventually(t, sc.SuperURL(pg), 5*time.Second)
	selectOne(t, c)
	selectOne(t, b)
}

// beginInsert opens a transaction on conn with one uncommitted row in a new
// table, and returns the table.
func beginInsert(t testing.TB, conn *pgx.Conn) string {
	t.Helper()
	ctx := ctxT(t)
	table := uniq("t_drain")
	if _, err := conn.Exec(ctx, "create table "+table+" (id int)"); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "begin"); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "insert into "+table+" values (1)"); err != nil {
		t.Fatal(err)
	}
	if s := conn.PgConn().TxStatus(); s != 'T' {
		t.Fatalf("transaction status %q, want 'T'", s)
	}
	return table
}

type shutdownResult struct {
	cut int
	err error
}

func shutdownAsync(sc *sidecar, d time.Duration) <-chan shutdownResult {
	done := make(chan shutdownResult, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), d)
		defer cancel()
		cut, err := sc.Server.Shutdown(ctx)
		done <- shutdownResult{cut, err}
	}()
	return done
}

func TestLimitShutdownDrainsTransaction(t *testing.T) {
	t.Parallel()
	pg := env.Postgres(t)
	sc := startSidecar(t, pg, sidecarOptions{})
	ctx := ctxT(t)
	conn, err := connect(t, sc.SuperURL(pg))
	if err != nil {
		t.Fatal(err)
	}
	table := beginInsert(t, conn)
	if !sc.Server.Ready() {
		t.Fatal("not ready before shutdown")
	}

	done := shutdownAsync(sc, 5*time.Second)
	eventually(t, 2*time.Second, "readiness false", func() (bool, error) { return !sc.Server.Ready(), nil })

	_, err = connect(t, sc.SuperURL(pg, "connect_timeout=2"))
	if err == nil {
		t.Fatal("new client accepted while shutting down")
	}
	if code := pgCode(err); code != "" && code != "57P01" {
		t.Fatalf("new client while shutting down: %v; want 57P01 or a refused connection", err)
	}

	select {
	case r := <-done:
		t.Fatalf("shutdown returned (%d, %v) with a transaction open", r.cut, r.err)
	default:
	}
	if _, err := conn.Exec(ctx, "insert into "+table+" values (2)"); err != nil {
		t.Fatalf("statement inside the open transaction during shutdown: %v", err)
	}
	if _, err := conn.Exec(ctx, "commit"); err != nil {
		t.Fatalf("commit during shutdown: %v", err)
	}
	var r shutdownResult
	select {
	case r = <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("shutdown did not return after the transaction ended")
	}
	if r.cut != 0 || r.err != nil {
		t.Fatalf("Shutdown = (%d, %v), want (0, nil)", r.cut, r.err)
	}
	if _, err := conn.Exec(ctx, "select 1"); err == nil {
		t.Fatal("session still open after the drain")
	} else if code := pgCode(err); code != "" && code != "57P01" {
		t.Fatalf("after the drain: %v; want 57P01 or a closed connection", err)
	}

	direct := pgDirect(t, pg)
	var n int
	if err := direct.QueryRow(ctx, "select count(*) from "+table).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 2 {
		t.Fatalf("committed rows: %d, want 2", n)
	}
}

func TestLimitShutdownCutsStuckTransaction(t *testing.T) {
	t.Parallel()
	pg := env.Postgres(t)
	sc := startSidecar(t, pg, sidecarOptions{})
	ctx := ctxT(t)
	conn, err := connect(t, sc.SuperURL(pg))
	if err != nil {
		t.Fatal(err)
	}
	idle, err := connect(t, sc.SuperURL(pg))
	if err != nil {
		t.Fatal(err)
	}
	selectOne(t, idle)
	table := beginInsert(t, conn)

	start := time.Now()
	var r shutdownResult
	select {
	case r = <-shutdownAsync(sc, 500*time.Millisecond):
	case <-time.After(5 * time.Second):
		t.Fatal("shutdown did not return")
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("shutdown with a 500ms bound took %s", d)
	}
	// The idle session ended on its own; only the transaction was cut.
	if r.cut != 1 {
		t.Fatalf("Shutdown cut %d sessions, want 1 (err %v)", r.cut, r.err)
	}
	if !errors.Is(r.err, context.DeadlineExceeded) {
		t.Errorf("Shutdown error %v, want context.DeadlineExceeded", r.err)
	}
	if _, err := conn.Exec(ctx, "commit"); err == nil {
		t.Fatal("cut session still commits")
	}
	direct := pgDirect(t, pg)
	var n int
	if err := direct.QueryRow(ctx, "select count(*) from "+table).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Fatalf("cut transaction committed %d rows", n)
	}
}

func TestLimitShutdownGraceRefusesNewClients(t *testing.T) {
	t.Parallel()
	pg := env.Postgres(t)
	sc := startSidecar(t, pg, sidecarOptions{Proxy: proxy.Config{ShutdownGrace: time.Second}})
	idle, err := connect(t, sc.SuperURL(pg))
	if err != nil {
		t.Fatal(err)
	}
	selectOne(t, idle)

	done := shutdownAsync(sc, 5*time.Second)
	eventually(t, 2*time.Second, "readiness false", func() (bool, error) { return !sc.Server.Ready(), nil })
	// During the grace period the listener still accepts, and says why it
	// will not serve.
	_, err = connect(t, sc.SuperURL(pg))
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "57P01" || pe.Severity != "FATAL" {
		t.Fatalf("new client during shutdown grace: %v; want FATAL 57P01", err)
	}
	select {
	case r := <-done:
		if r.cut != 0 || r.err != nil {
			t.Fatalf("Shutdown = (%d, %v), want (0, nil): the only session was idle", r.cut, r.err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("shutdown did not return")
	}
	if _, err := idle.Exec(ctxT(t), "select 1"); err == nil {
		t.Fatal("idle session still open after shutdown")
	}
}
