package integration

// Transaction mode when clients misbehave or wait too long: a client that
// leaves inside a transaction or while its query runs, the three timeouts,
// and pipelines whose transactions begin, fail and end inside one write.

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgsidecar/pgsidecar/pool"
	"github.com/pgsidecar/pgsidecar/proxy"
)

// expectFatal reads r until the sidecar closes it and fails t unless the
// last message was a FATAL ErrorResponse with code and message.
func expectFatal(t testing.TB, r *rawConn, code, message string) {
	t.Helper()
	got, last := readUntilClosed(r)
	if last == nil || last.Severity != "FATAL" || last.Code != code || last.Message != message {
		t.Fatalf("before the close: %q, last error %+v; want FATAL %s %q", got, last, code, message)
	}
}

// backendState is pg_stat_activity's state of the backend pid.
func backendState(t testing.TB, direct *pgx.Conn, pid int) string {
	t.Helper()
	var state string
	if err := direct.QueryRow(ctxT(t), "select coalesce(state, '') from pg_stat_activity where pid = $1", pid).Scan(&state); err != nil {
		if errors.Is(err, pgx.ErrNoRows) {
			return "gone"
		}
		t.Fatal(err)
	}
	return state
}

func TestTxClientLeavesMidTransaction(t *testing.T) {
	t.Parallel()
	pg := env.Postgres(t)
	for _, leave := range []struct {
		name string
		do   func(r *rawConn)
	}{
		{"socket closed", func(r *rawConn) { r.nc.Close() }},
		{"Terminate", func(r *rawConn) { r.send(&pgproto3.Terminate{}) }},
	} {
		t.Run(leave.name, func(t *testing.T) {
			t.Parallel()
			sc := txSidecar(t, pg, 1, proxy.Config{}, pool.Config{})
			direct := pgDirect(t, pg)
			table := createTable(t, pg, "txgone", "id int primary key")

			r := rawConnect(t, sc, pg, nil)
			pid := r2i(t, r.queryValue("select pg_backend_pid()"))
			expectMessages(t, "begin", r.query("BEGIN"), []string{"C BEGIN", "Z T"})
			expectMessages(t, "insert", r.query("insert into "+table+" values (1)"), []string{"C INSERT 0 1", "Z T"})
			leave.do(r)

			// The next client gets the single backend, idle: no
			// transaction, no lock on the key the first client
			// inserted, no row.
			n := rawConnect(t, sc, pg, nil)
			if got := r2i(t, n.queryValue("select pg_backend_pid()")); got != pid {
				t.Fatalf("next client on backend %d, want the single backend %d", got, pid)
			}
			if got := n.queryValue("select (txid_current_if_assigned() is null)::text || ' ' || count(*) from " + table); got != "true 0" {
				t.Fatalf("next client: no transaction and no rows = %q, want \"true 0\"", got)
			}
			expectMessages(t, "insert the same key", n.query("insert into "+table+" values (1)"), []string{"C INSERT 0 1", "Z I"})
			if st := backendState(t, direct, pid); st != "idle" {
				t.Fatalf("backend %d state %q, want idle", pid, st)
			}
		})
	}
}

func TestTxClientLeavesMidQuery(t *testing.T) {
	t.Parallel()
	pg := env.Postgres(t)
	sc := txSidecar(t, pg, 1, proxy.Config{}, pool.Config{})
	direct := pgDirect(t, pg)
	r := rawConnect(t, sc, pg, nil)
	tag := uniq("txsleep")
	r.send(&pgproto3.Query{String: "select pg_sleep(30) /* " + tag + " */"})
	waitActive(t, direct, tag)
	r.nc.Close()
	eventually(t, 5*time.Second, "the abandoned query ends", func() (bool, error) {
		n, err := activeWith(ctxT(t), direct, tag)
		return n == 0, err
	})
	// The pool's single slot is free again.
	n := rawConnect(t, sc, pg, nil)
	expectMessages(t, "next client", n.query("select 1 as one"), []string{"T one", "D 1", "C SELECT 1", "Z I"})
}

// r2i parses a decimal the test itself asked the server for.
func r2i(t testing.TB, s string) int {
	t.Helper()
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// quietFor reports an error if the sidecar sends r anything, or closes
// it, within d.
func quietFor(r *rawConn, d time.Duration) error {
	r.nc.SetReadDeadline(time.Now().Add(d))
	defer r.nc.SetReadDeadline(time.Now().Add(rawDeadline))
	m, err := r.fe.Receive()
	if err == nil {
		if e, ok := m.(*pgproto3.ErrorResponse); ok {
			return fmt.Errorf("got ErrorResponse %s %s %q, want nothing for %s", e.Severity, e.Code, e.Message, d)
		}
		return fmt.Errorf("got %s, want nothing for %s", describe(m), d)
	}
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		return fmt.Errorf("connection ended within %s: %w", d, err)
	}
	return nil
}

func TestTxTimeouts(t *testing.T) {
	t.Parallel()
	pg := env.Postgres(t)
	const tmo = 300 * time.Millisecond

	t.Run("IdleTransactionTimeout", func(t *testing.T) {
		t.Parallel()
		sc := txSidecar(t, pg, 1, proxy.Config{IdleTransactionTimeout: tmo}, pool.Config{})
		table := createTable(t, pg, "txidle", "id int primary key")
		// Idle outside a transaction is no concern of this timeout.
		idle := rawConnect(t, sc, pg, nil)
		if err := quietFor(idle, 2*tmo); err != nil {
			t.Fatalf("idle client without a transaction: %v", err)
		}
		expectMessages(t, "idle client", idle.query("select 1 as one"), []string{"T one", "D 1", "C SELECT 1", "Z I"})

		r := rawConnect(t, sc, pg, nil)
		expectMessages(t, "begin", r.query("BEGIN"), []string{"C BEGIN", "Z T"})
		expectMessages(t, "insert", r.query("insert into "+table+" values (1)"), []string{"C INSERT 0 1", "Z T"})
		start := time.Now()
		expectFatal(t, r, "25P03", "terminating connection due to idle-in-transaction timeout (idle_transaction_timeout)")
		if d := time.Since(start); d < tmo-50*time.Millisecond || d > 5*time.Second {
			t.Errorf("cut after %s, want about %s", d, tmo)
		}
		// Rolled back, and the backend serves the next client.
		expectMessages(t, "after the timeout", idle.query("insert into "+table+" values (1)"), []string{"C INSERT 0 1", "Z I"})
	})

	t.Run("ClientIdleTimeout", func(t *testing.T) {
		t.Parallel()
		sc := txSidecar(t, pg, 1, proxy.Config{ClientIdleTimeout: tmo}, pool.Config{})
		r := rawConnect(t, sc, pg, nil)
		start := time.Now()
		expectFatal(t, r, "57P05", "terminating connection due to idle-session timeout (client_idle_timeout)")
		if d := time.Since(start); d < tmo-50*time.Millisecond || d > 5*time.Second {
			t.Errorf("cut after %s, want about %s", d, tmo)
		}
	})

	// Regression (fixed): the client read deadline
	// is set only when the timeout for the session's state is non-zero,
	// so the deadline armed in the other state stays: with only
	// ClientIdleTimeout, a client idle inside a transaction is cut with
	// 25P03 (idle-in-transaction) about ClientIdleTimeout after its last
	// message before the transaction; with only IdleTransactionTimeout, a
	// client idle after COMMIT is cut with 57P05 (idle-session).
	t.Run("each timeout only in its own state", func(t *testing.T) {
		t.Parallel()
		sc := txSidecar(t, pg, 1, proxy.Config{ClientIdleTimeout: tmo}, pool.Config{})
		r := rawConnect(t, sc, pg, nil)
		expectMessages(t, "begin", r.query("BEGIN"), []string{"C BEGIN", "Z T"})
		if err := quietFor(r, 2*tmo); err != nil {
			t.Errorf("with only ClientIdleTimeout, a client inside a transaction: %v", err)
		} else {
			expectMessages(t, "commit", r.query("COMMIT"), []string{"C COMMIT", "Z I"})
		}

		sc = txSidecar(t, pg, 1, proxy.Config{IdleTransactionTimeout: tmo}, pool.Config{})
		r = rawConnect(t, sc, pg, nil)
		expectMessages(t, "begin", r.query("BEGIN"), []string{"C BEGIN", "Z T"})
		expectMessages(t, "commit", r.query("COMMIT"), []string{"C COMMIT", "Z I"})
		if err := quietFor(r, 2*tmo); err != nil {
			t.Errorf("with only IdleTransactionTimeout, a client idle after COMMIT: %v", err)
		}
	})

	t.Run("QueryTimeout", func(t *testing.T) {
		t.Parallel()
		sc := txSidecar(t, pg, 1, proxy.Config{QueryTimeout: tmo}, pool.Config{})
		direct := pgDirect(t, pg)
		r := rawConnect(t, sc, pg, nil)
		tag := uniq("txqt")
		start := time.Now()
		r.send(&pgproto3.Query{String: "select pg_sleep(5) /* " + tag + " */"})
		expectFatal(t, r, "57014", "canceling statement due to query_timeout; closing the connection")
		if d := time.Since(start); d > 3*time.Second {
			t.Errorf("cut after %s, want about %s", d, tmo)
		}
		eventually(t, 3*time.Second, "the timed-out query ends on the server", func() (bool, error) {
			n, err := activeWith(ctxT(t), direct, tag)
			return n == 0, err
		})
		n := rawConnect(t, sc, pg, nil)
		expectMessages(t, "next client", n.query("select 1 as one"), []string{"T one", "D 1", "C SELECT 1", "Z I"})
	})

	// Regression (fixed): the time a batch was sent
	// is recorded only when the backend owed nothing after the batch was
	// queued, which is never, so every wait counts from the zero time and
	// any query slower than about a millisecond is cut with 57014 at once.
	t.Run("QueryTimeout spares faster queries", func(t *testing.T) {
		t.Parallel()
		sc := txSidecar(t, pg, 1, proxy.Config{QueryTimeout: tmo}, pool.Config{})
		for _, sleep := range []string{"0.01", "0.1"} {
			r := rawConnect(t, sc, pg, nil)
			start := time.Now()
			r.send(&pgproto3.Query{String: "select pg_sleep(" + sleep + ")::text as s"})
			var got []string
			for {
				m, err := r.fe.Receive()
				if err != nil {
					got = append(got, err.Error())
					break
				}
				got = append(got, describe(m))
				if e, ok := m.(*pgproto3.ErrorResponse); ok {
					got[len(got)-1] += " " + e.Message
				}
				if _, ok := m.(*pgproto3.ReadyForQuery); ok {
					break
				}
			}
			checkMessages(t, fmt.Sprintf("pg_sleep(%s) with QueryTimeout %s, answered after %s", sleep, tmo, time.Since(start)),
				got, []string{"T s", "D ", "C SELECT 1", "Z I"})
		}
	})
}

// batchWithTransaction runs a pgx batch that begins, inserts, commits and
// reads, then one whose transaction fails, and describes every result.
func batchWithTransaction(t testing.TB, conn *pgx.Conn, table string) []string {
	t.Helper()
	ctx := ctxT(t)
	var out []string
	note := func(what string, err error) {
		var pgErr *pgconn.PgError
		switch {
		case errors.As(err, &pgErr):
			out = append(out, "ERROR "+pgErr.Code)
		case err != nil:
			out = append(out, "error: "+err.Error())
		default:
			out = append(out, what)
		}
	}
	for _, failing := range []bool{false, true} {
		b := &pgx.Batch{}
		b.Queue("begin")
		b.Queue("insert into "+table+" values ($1)", 1)
		if failing {
			b.Queue("select 1 / $1::int", 0)
		}
		b.Queue("commit")
		b.Queue("select count(*) from " + table)
		br := conn.SendBatch(ctx, b)
		for range b.Len() - 1 {
			ct, err := br.Exec()
			note(ct.String(), err)
		}
		var n int
		err := br.QueryRow().Scan(&n)
		note(fmt.Sprintf("count=%d", n), err)
		note("closed", br.Close())
		out = append(out, "status "+string(conn.PgConn().TxStatus()))
		if failing {
			// The error skipped the rest of the pipeline, COMMIT
			// included: the transaction is open and failed.
			_, err := conn.Exec(ctx, "rollback")
			note("rolled back", err)
		}
		var one int
		err = conn.QueryRow(ctx, "select count(*) from "+table).Scan(&one)
		note(fmt.Sprintf("rows=%d", one), err)
	}
	return out
}

// rawPipeline sends several Sync groups in one write, one of them failing
// in the middle of an explicit transaction, and returns the summaries of
// every answer.
func rawPipeline(r *rawConn, table string) []string {
	stmt := func(sql string, args ...string) []pgproto3.FrontendMessage {
		var params [][]byte
		for _, a := range args {
			params = append(params, []byte(a))
		}
		return []pgproto3.FrontendMessage{&pgproto3.Parse{Query: sql}, &pgproto3.Bind{Parameters: params}, &pgproto3.Execute{}}
	}
	insert := "insert into " + table + " values ($1::int)"
	var msgs []pgproto3.FrontendMessage
	group := func(parts ...[]pgproto3.FrontendMessage) {
		for _, p := range parts {
			msgs = append(msgs, p...)
		}
		msgs = append(msgs, &pgproto3.Sync{})
	}
	group(stmt(insert, "1"))
	group(stmt("BEGIN"), stmt(insert, "2"))
	group(stmt(insert, "3"), stmt("select 1 / 0"), stmt(insert, "4"))
	group(stmt("COMMIT"))
	group(stmt(insert, "5"), stmt("select 1 / 0"))
	group(
		[]pgproto3.FrontendMessage{&pgproto3.Parse{Name: "cnt", Query: "select count(*) from " + table + " where v >= $1::int"}},
		[]pgproto3.FrontendMessage{&pgproto3.Bind{PreparedStatement: "cnt", Parameters: [][]byte{[]byte("1")}}, &pgproto3.Execute{}},
	)
	group([]pgproto3.FrontendMessage{&pgproto3.Bind{PreparedStatement: "cnt", Parameters: [][]byte{[]byte("2")}}, &pgproto3.Execute{}})
	group([]pgproto3.FrontendMessage{&pgproto3.Close{ObjectType: 'S', Name: "cnt"}})
	r.send(msgs...)
	var out []string
	for range 8 {
		out = append(out, r.untilReady()...)
	}
	return out
}

func TestTxPipelinesWithTransactionBoundaries(t *testing.T) {
	t.Parallel()
	pg := env.Postgres(t)
	sc := txSidecar(t, pg, 1, proxy.Config{}, pool.Config{})

	for _, m := range []struct {
		name string
		mode pgx.QueryExecMode
	}{
		{"pgx CacheStatement", pgx.QueryExecModeCacheStatement},
		{"pgx SimpleProtocol", pgx.QueryExecModeSimpleProtocol},
	} {
		t.Run(m.name, func(t *testing.T) {
			got := batchWithTransaction(t, pgxConnect(t, sc.SuperURL(pg), m.mode), createTable(t, pg, "txbatch", "v int"))
			want := batchWithTransaction(t, pgxConnect(t, directURL(pg), m.mode), createTable(t, pg, "txbatch", "v int"))
			if !slices.Equal(got, want) {
				t.Fatalf("through the sidecar: %q\ndirectly:            %q", got, want)
			}
			if got[3] != "count=1" || got[len(got)-1] != "rows=1" {
				t.Fatalf("outcome %q: want the first transaction committed and the failing one rolled back", got)
			}
		})
	}

	t.Run("raw several syncs", func(t *testing.T) {
		// Another client takes turns on the same backend meanwhile.
		other := rawConnect(t, sc, pg, nil)
		got := rawPipeline(rawConnect(t, sc, pg, nil), createTable(t, pg, "txpipe", "v int"))
		expectMessages(t, "other client", other.query("select 1 as one"), []string{"T one", "D 1", "C SELECT 1", "Z I"})
		want := rawPipeline(rawDirect(t, pg), createTable(t, pg, "txpipe", "v int"))
		expectMessages(t, "pipeline through the sidecar vs directly", got, want)
		if !slices.Contains(want, "E 22012") || !slices.Contains(want, "C ROLLBACK") || !slices.Contains(want, "D 1") {
			t.Fatalf("direct outcome %q: want the failed group's transaction rolled back and one row kept", want)
		}
	})
}
