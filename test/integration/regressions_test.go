package integration

// Regressions from the relay review (commit "Relay fixes from review:
// stalled clients, cancel races, COPY syncs, drain"). Each test is named
// after what broke, and each fails on the tree before that commit.

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgsidecar/pgsidecar/pool"
	"github.com/pgsidecar/pgsidecar/proxy"
)

// A client that sent a query with a large result and then Terminate, and
// never read the answer, kept its backend forever: the relay blocked writing
// the result to it. Now the client gets drain_timeout (5s) to take what it
// is owed, then counts as gone, and the backend serves the next client.
func TestRegressionTerminateWithoutReadingFreesBackend(t *testing.T) {
	t.Parallel()
	pg := env.Postgres(t)
	sc := startSidecar(t, pg, sidecarOptions{
		Pool:  pool.Config{PoolSize: 1},
		Proxy: proxy.Config{QueryWaitTimeout: 15 * time.Second},
	})

	// About 20MB of rows: far more than the socket buffers between the
	// sidecar and a client that does not read hold.
	stalled := rawConnect(t, sc, pg, nil)
	stalled.send(
		&pgproto3.Query{String: "select repeat('x', 1000) from generate_series(1, 20000)"},
		&pgproto3.Terminate{},
	)
	// The stalled client keeps its socket open and reads nothing.

	start := time.Now()
	next, err := connect(t, sc.SuperURL(pg))
	waited := time.Since(start)
	if err != nil {
		t.Fatalf("next client, %s after a terminated client stopped reading a large result: %v; "+
			"the backend is still pinned by the stalled client", waited.Round(time.Millisecond), err)
	}
	if waited > 10*time.Second {
		t.Fatalf("next client got the backend after %s; want about drain_timeout (5s)", waited.Round(time.Millisecond))
	}
	selectOne(t, next)

	// The stalled client was let go, not kept.
	expectClosed(t, stalled.nc, 5*time.Second)
}

// libpq's extended COPY FROM STDIN (PQexecParams) sends Sync right after the
// Execute; PostgreSQL ignores that Sync during the copy. The session counted
// it, waited for a ReadyForQuery that never came, and so never looked idle
// again: after Terminate the backend sat out drain_timeout and was closed.
// Now it goes straight back to the pool, and the next client gets the same
// backend at once.
func TestRegressionExtendedCopyFromStdinLeavesSessionIdle(t *testing.T) {
	t.Parallel()
	pg := env.Postgres(t)
	sc := startSidecar(t, pg, sidecarOptions{
		Pool:  pool.Config{PoolSize: 1},
		Proxy: proxy.Config{QueryWaitTimeout: 10 * time.Second},
	})
	table := createTable(t, pg, "regr_copy", "a int")

	r := rawConnect(t, sc, pg, nil)
	pid := r.queryValue("select pg_backend_pid()")

	// Parse, Bind, Execute and Sync in one write, as libpq sends them.
	r.send(&pgproto3.Parse{Query: "copy " + table + " from stdin"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{})
	expectMessages(t, "extended copy", r.untilCopyIn(), []string{"1", "2", "G"})
	r.send(&pgproto3.CopyData{Data: []byte("1\n2\n")}, &pgproto3.CopyDone{}, &pgproto3.Sync{})
	expectMessages(t, "extended copy done", r.untilReady(), []string{"C COPY 2", "Z I"})
	r.send(&pgproto3.Terminate{})

	start := time.Now()
	next, err := connect(t, sc.SuperURL(pg))
	if err != nil {
		t.Fatalf("next client after an extended COPY and Terminate: %v", err)
	}
	nextPID := backendPID(t, next)
	rows := queryString(t, next, "select string_agg(a::text, ',' order by a) from "+table)
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("next client connected and queried after %s; want well under drain_timeout (5s): "+
			"the session did not look idle after the COPY", took.Round(time.Millisecond))
	}
	if got := strconv.Itoa(int(nextPID)); got != pid {
		t.Errorf("next client on backend pid %s, want %s: the backend was closed, not returned clean to the pool", got, pid)
	}
	if rows != "1,2" {
		t.Errorf("table holds %q after the COPY, want \"1,2\"", rows)
	}
}

// A client that logged in while Shutdown was already waking idle sessions
// (it was waiting for a backend then) cleared Shutdown's read deadline when
// its login finished, sat reading its client, and was cut when the drain
// timed out. Now a check before every read catches it: it is ended with
// 57P01 and the drain completes with nothing cut.
//
// Not parallel: it finds the waiting login among the goroutines of the whole
// test binary, so no other test may have one at the same time.
func TestRegressionDrainWhileWaitingForBackend(t *testing.T) {
	pg := env.Postgres(t)
	sc := startSidecar(t, pg, sidecarOptions{
		Pool:  pool.Config{PoolSize: 1},
		Proxy: proxy.Config{PoolMode: proxy.PoolModeSession, QueryWaitTimeout: 5 * time.Second},
	})

	holder := rawConnect(t, sc, pg, nil) // holds the only backend, idle
	waiter := dialRawConn(t, sc)
	waiter.send(rawStartup(pg, pgproto3.ProtocolVersion30, nil))
	eventually(t, 5*time.Second, "the second client waiting for a backend", func() (bool, error) {
		return loginsWaitingForBackend() == 1, nil
	})

	done := shutdownAsync(sc, 5*time.Second)

	// The holder is idle: drained at once, with 57P01. Its backend then goes
	// to the waiter.
	holder.nc.SetReadDeadline(time.Now().Add(4 * time.Second))
	if got, e := readUntilClosed(holder); e == nil || e.Code != "57P01" {
		t.Errorf("idle holder during shutdown got %v, closed without 57P01", got)
	}

	// The waiter must be drained too, well before the shutdown deadline
	// (5s) would cut it.
	waiter.nc.SetReadDeadline(time.Now().Add(4 * time.Second))
	got, e := readUntilClosed(waiter)
	if e == nil {
		t.Fatalf("client that was waiting for a backend when Shutdown began got %v and no ErrorResponse; "+
			"want FATAL 57P01 as soon as it is between transactions", got)
	}
	if e.Code != "57P01" || e.Severity != "FATAL" {
		t.Fatalf("client that was waiting for a backend when Shutdown began got %s %s %q; want FATAL 57P01", e.Severity, e.Code, e.Message)
	}

	select {
	case r := <-done:
		if r.cut != 0 || r.err != nil {
			t.Fatalf("Shutdown = (%d, %v); want (0, nil): every session was idle and should have been drained", r.cut, r.err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Shutdown did not return")
	}
}

// client_login_timeout covered the wait for a backend: a client that
// authenticated at once but waited longer than the login timeout for the
// pool was refused with 08P01 "did not finish startup within
// client_login_timeout", although query_wait_timeout had not passed. The
// login deadline now ends at authentication.
func TestRegressionLoginTimeoutDoesNotCutBackendWait(t *testing.T) {
	t.Parallel()
	pg := env.Postgres(t)
	const loginTimeout = 300 * time.Millisecond
	sc := startSidecar(t, pg, sidecarOptions{
		Pool:  pool.Config{PoolSize: 1},
		Proxy: proxy.Config{ClientLoginTimeout: loginTimeout, QueryWaitTimeout: 5 * time.Second},
	})
	direct := pgDirect(t, pg)

	// The holder runs a 1.5s statement and terminates: the backend is busy
	// for that long, then released.
	tag := uniq("regr_login_wait")
	holder := rawConnect(t, sc, pg, nil)
	holder.send(&pgproto3.Query{String: "select pg_sleep(1.5) /* " + tag + " */"}, &pgproto3.Terminate{})
	waitActive(t, direct, tag)

	start := time.Now()
	conn, err := connect(t, sc.SuperURL(pg))
	waited := time.Since(start)
	if err != nil {
		t.Fatalf("client that waited %s for the only backend (query_wait_timeout 5s, client_login_timeout %s): %v",
			waited.Round(time.Millisecond), loginTimeout, err)
	}
	if waited < loginTimeout {
		t.Fatalf("the client got a backend after %s, within client_login_timeout: the test did not exercise a long wait", waited)
	}
	selectOne(t, conn)
}

// A client that went away in the middle of a message left the backend
// waiting for the rest of it; the session then waited drain_timeout (5s) for
// a ReadyForQuery that could never come before closing it. Now the backend
// is closed at once and the next client gets a new one.
func TestRegressionClientGoneMidMessageClosesBackendAtOnce(t *testing.T) {
	t.Parallel()
	pg := env.Postgres(t)
	sc := startSidecar(t, pg, sidecarOptions{
		Pool:  pool.Config{PoolSize: 1},
		Proxy: proxy.Config{PoolMode: proxy.PoolModeSession, QueryWaitTimeout: 10 * time.Second},
	})

	c := rawConnect(t, sc, pg, nil)
	// Counted before the client leaves: the sidecar may close the backend
	// before this goroutine runs again.
	destroyedBefore := sc.Pool.Stats().Destroyed
	// A Query whose header declares 100 bytes of body, and 20 of them.
	half := binary.BigEndian.AppendUint32([]byte{'Q'}, 4+100)
	half = append(half, bytes.Repeat([]byte{'x'}, 20)...)
	if _, err := c.nc.Write(half); err != nil {
		t.Fatal(err)
	}
	c.nc.Close()

	start := time.Now()
	next, err := connect(t, sc.SuperURL(pg))
	if err != nil {
		t.Fatalf("next client after one left mid-message: %v", err)
	}
	selectOne(t, next)
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("next client connected and queried after %s; want well under drain_timeout (5s): "+
			"the half-sent message's backend was not closed at once", took.Round(time.Millisecond))
	}
	if d := sc.Pool.Stats().Destroyed; d != destroyedBefore+1 {
		t.Errorf("pool destroyed %d backends after the client left mid-message, want 1", d-destroyedBefore)
	}
}

// readUntilClosed reads r until the sidecar closes the connection (or r's
// deadline passes, which fails the test). It returns the summaries of what
// came before the close, and the last ErrorResponse.
func readUntilClosed(r *rawConn) ([]string, *pgproto3.ErrorResponse) {
	r.t.Helper()
	var got []string
	var last *pgproto3.ErrorResponse
	for {
		m, err := r.fe.Receive()
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				r.t.Fatalf("connection still open at the read deadline (received %v); want it closed", got)
			}
			return got, last
		}
		got = append(got, describe(m))
		if e, ok := m.(*pgproto3.ErrorResponse); ok {
			c := *e
			last = &c
		}
	}
}

// loginsWaitingForBackend counts goroutines in this test binary that are in
// a client's login, waiting in pool.Manager.Acquire for a backend. Nothing
// the sidecar exposes says that a client is waiting, so the stacks do.
func loginsWaitingForBackend() int {
	buf := make([]byte, 1<<16)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	n := 0
	for _, g := range bytes.Split(buf, []byte("\n\n")) {
		if bytes.Contains(g, []byte("/proxy.(*clientConn).login(")) && bytes.Contains(g, []byte("/pool.(*Manager).Acquire(")) {
			n++
		}
	}
	return n
}
