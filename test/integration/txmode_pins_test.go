package integration

// Session state a backend cannot share in transaction mode: by default the
// client is pinned to its backend once it makes some (LISTEN, a session
// advisory lock, a temporary table); with RejectSessionState the statement
// is refused with 0A000 instead, and the session goes on.

import (
	"context"
	"errors"
	"maps"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgsidecar/pgsidecar/pool"
	"github.com/pgsidecar/pgsidecar/proxy"
)

// checkMessages is expectMessages that lets the test go on.
func checkMessages(t testing.TB, what string, got, want []string) {
	t.Helper()
	if !slices.Equal(got, want) {
		t.Errorf("%s:\ngot  %q\nwant %q", what, got, want)
	}
}

// waitPins waits until sc has counted want pins in all, by reason; the
// count is taken once the pinning transaction ended, which may be just
// after the client saw its ReadyForQuery.
func waitPins(t testing.TB, sc *sidecar, want map[string]int64) {
	t.Helper()
	eventually(t, 5*time.Second, "pins counted", func() (bool, error) {
		return maps.Equal(sc.Server.Stats().Pins, want), nil
	})
}

// advisoryKey is an advisory lock key no other test takes.
func advisoryKey() int64 { return 1<<30 + seq.Add(1) }

// advisoryHolders lists the pids holding the session advisory lock key
// (a single bigint key below 2^32 is objid, with classid 0).
func advisoryHolders(t testing.TB, direct *pgx.Conn, key int64) []int32 {
	t.Helper()
	rows, err := direct.Query(ctxT(t), `select pid from pg_locks
		where locktype = 'advisory' and classid = 0 and objid = $1 and objsubid = 1 and granted`, key)
	if err != nil {
		t.Fatal(err)
	}
	pids, err := pgx.CollectRows(rows, pgx.RowTo[int32])
	if err != nil {
		t.Fatal(err)
	}
	return pids
}

func TestTxPinnedSessions(t *testing.T) {
	t.Parallel()
	pg := env.Postgres(t)
	const poolSize = 2

	t.Run("LISTEN", func(t *testing.T) {
		t.Parallel()
		sc := txSidecar(t, pg, poolSize, proxy.Config{}, pool.Config{})
		ctx := ctxT(t)
		ch := uniq("txch")
		l := pgxConnect(t, sc.SuperURL(pg), pgx.QueryExecModeCacheStatement)
		mustExec(t, l, "LISTEN "+ch)
		waitPins(t, sc, map[string]int64{"LISTEN": 1})
		pid := backendPID(t, l)

		// Other clients share the remaining backend meanwhile.
		o := pgxConnect(t, sc.SuperURL(pg), pgx.QueryExecModeCacheStatement)
		for range 5 {
			selectOne(t, o)
		}
		// The listener is idle; notifications reach it, from outside the
		// sidecar and from another of its clients.
		direct := pgDirect(t, pg)
		mustExec(t, direct, "NOTIFY "+ch+", 'direct'")
		if _, err := o.Exec(ctx, "select pg_notify($1, 'sidecar')", ch); err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{"direct", "sidecar"} {
			wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			n, err := l.WaitForNotification(wctx)
			cancel()
			if err != nil {
				t.Fatalf("waiting for the %q notification: %v", want, err)
			}
			if n.Channel != ch || n.Payload != want {
				t.Fatalf("notification %q %q, want %q %q", n.Channel, n.Payload, ch, want)
			}
		}
		// The listener stays on its backend, still listening.
		for range 3 {
			if got := backendPID(t, l); got != pid {
				t.Fatalf("pinned listener moved from backend %d to %d", pid, got)
			}
		}
		expectString(t, "listener", l, "select string_agg(c, ',') from pg_listening_channels() c", ch)
		if st := sc.Server.Stats(); !maps.Equal(st.Pins, map[string]int64{"LISTEN": 1}) {
			t.Errorf("Pins = %v, want LISTEN: 1", st.Pins)
		}
	})

	t.Run("advisory lock", func(t *testing.T) {
		t.Parallel()
		sc := txSidecar(t, pg, poolSize, proxy.Config{}, pool.Config{})
		ctx := ctxT(t)
		direct := pgDirect(t, pg)
		key := advisoryKey()
		k := pgxConnect(t, sc.SuperURL(pg), pgx.QueryExecModeCacheStatement)
		// Through a named statement: the pin comes with its Bind.
		if _, err := k.Exec(ctx, "select pg_advisory_lock($1)", key); err != nil {
			t.Fatal(err)
		}
		waitPins(t, sc, map[string]int64{"session advisory lock": 1})
		pid := backendPID(t, k)
		for i := range 3 {
			selectOne(t, k)
			if got := advisoryHolders(t, direct, key); len(got) != 1 || got[0] != pid {
				t.Fatalf("after transaction %d the lock is held by %v, want [%d] (the client's backend)", i, got, pid)
			}
		}
		o := pgxConnect(t, sc.SuperURL(pg), pgx.QueryExecModeCacheStatement)
		var got bool
		if err := o.QueryRow(ctx, "select pg_try_advisory_xact_lock($1)", key).Scan(&got); err != nil || got {
			t.Fatalf("another client took the held lock: %v, %v", got, err)
		}
		if err := k.QueryRow(ctx, "select pg_advisory_unlock($1)", key).Scan(&got); err != nil || !got {
			t.Fatalf("unlock by the holder: %v, %v", got, err)
		}
		if got := advisoryHolders(t, direct, key); len(got) != 0 {
			t.Fatalf("lock still held by %v after unlock", got)
		}
		// A lock the client leaves behind goes with it.
		if _, err := k.Exec(ctx, "select pg_advisory_lock($1)", key); err != nil {
			t.Fatal(err)
		}
		k.Close(ctx)
		eventually(t, 5*time.Second, "the lock released after the client left", func() (bool, error) {
			return len(advisoryHolders(t, direct, key)) == 0, nil
		})
	})

	t.Run("temporary table", func(t *testing.T) {
		t.Parallel()
		sc := txSidecar(t, pg, poolSize, proxy.Config{}, pool.Config{})
		ctx := ctxT(t)
		c := pgxConnect(t, sc.SuperURL(pg), pgx.QueryExecModeCacheStatement)
		// ON COMMIT DROP ends with the transaction: no pin.
		tx, err := c.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, sql := range []string{"create temp table tx_scratch (v int) on commit drop", "insert into tx_scratch values (1)"} {
			if _, err := tx.Exec(ctx, sql); err != nil {
				t.Fatal(err)
			}
		}
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
		selectOne(t, c)
		if st := sc.Server.Stats(); len(st.Pins) != 0 {
			t.Fatalf("ON COMMIT DROP temp table pinned: %v", st.Pins)
		}

		mustExec(t, c, "create temp table tx_kept (v int)")
		waitPins(t, sc, map[string]int64{"temporary table": 1})
		for i := 1; i <= 5; i++ {
			if _, err := c.Exec(ctx, "insert into tx_kept values ($1)", i); err != nil {
				t.Fatalf("insert %d into the temp table: %v", i, err)
			}
		}
		expectString(t, "temp table", c, "select sum(v)::text from tx_kept", "15")
		// Other clients meanwhile use the other backend, and do not see it.
		o := pgxConnect(t, sc.SuperURL(pg), pgx.QueryExecModeCacheStatement)
		expectString(t, "other client", o, "select coalesce(to_regclass('tx_kept')::text, 'none')", "none")
	})

	t.Run("SQL PREPARE and WITH HOLD cursor", func(t *testing.T) {
		t.Parallel()
		sc := txSidecar(t, pg, 3, proxy.Config{}, pool.Config{})
		ctx := ctxT(t)
		p := pgxConnect(t, sc.SuperURL(pg), pgx.QueryExecModeCacheStatement)
		mustExec(t, p, "PREPARE tx_sql_prep(int) AS select $1 * 3")
		h := pgxConnect(t, sc.SuperURL(pg), pgx.QueryExecModeCacheStatement)
		tx, err := h.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec(ctx, "DECLARE tx_hold CURSOR WITH HOLD FOR select g from generate_series(1, 3) g"); err != nil {
			t.Fatal(err)
		}
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
		waitPins(t, sc, map[string]int64{"SQL PREPARE": 1, "WITH HOLD cursor": 1})
		for i := 1; i <= 3; i++ {
			expectString(t, "EXECUTE", p, "EXECUTE tx_sql_prep(7)", "21")
			var g int
			if err := h.QueryRow(ctx, "FETCH NEXT FROM tx_hold", pgx.QueryExecModeSimpleProtocol).Scan(&g); err != nil || g != i {
				t.Fatalf("FETCH %d from the WITH HOLD cursor: %d, %v", i, g, err)
			}
		}
	})

	t.Run("RejectSessionState", func(t *testing.T) {
		t.Parallel()
		sc := txSidecar(t, pg, poolSize, proxy.Config{RejectSessionState: true}, pool.Config{})
		ctx := ctxT(t)
		direct := pgDirect(t, pg)
		c := pgxConnect(t, sc.SuperURL(pg), pgx.QueryExecModeCacheStatement)
		key := advisoryKey()
		for _, tc := range []struct {
			sql     string
			args    []any
			feature string
		}{
			{"LISTEN " + uniq("txch"), nil, "LISTEN"},
			{"select pg_advisory_lock($1)", []any{key}, "session advisory lock"}, // extended: refused at Parse
			{"create temp table tx_refused (v int)", nil, "temporary table"},
			{"PREPARE tx_refused AS select 1", nil, "SQL PREPARE"},
		} {
			_, err := c.Exec(ctx, tc.sql, tc.args...)
			var pgErr *pgconn.PgError
			if !errors.As(err, &pgErr) {
				t.Fatalf("%s: %v; want an error", tc.sql, err)
			}
			if want := tc.feature + " is not supported in transaction pooling mode"; pgErr.Code != "0A000" || pgErr.Message != want || pgErr.Severity != "ERROR" {
				t.Fatalf("%s: %s %s %q; want ERROR 0A000 %q", tc.sql, pgErr.Severity, pgErr.Code, pgErr.Message, want)
			}
			selectOne(t, c)
		}
		if got := advisoryHolders(t, direct, key); len(got) != 0 {
			t.Errorf("refused advisory lock is held by %v", got)
		}
		st := sc.Server.Stats()
		want := map[string]int64{"LISTEN": 1, "session advisory lock": 1, "temporary table": 1, "SQL PREPARE": 1}
		if !maps.Equal(st.Refusals, want) || len(st.Pins) != 0 {
			t.Errorf("Refusals = %v, Pins = %v; want Refusals %v and no pins", st.Refusals, st.Pins, want)
		}
	})

	// Regression (fixed): a refused statement is
	// answered by pgsidecar without the server knowing, so the transaction
	// it was part of is not aborted as an error would abort it on
	// PostgreSQL: ReadyForQuery says 'T' (not 'E'), and COMMIT commits the
	// work before the refusal; in an extended batch, the implicit
	// transaction of the statements before it commits too.
	t.Run("refusal aborts the transaction like any error", func(t *testing.T) {
		t.Parallel()
		sc := txSidecar(t, pg, poolSize, proxy.Config{RejectSessionState: true}, pool.Config{})
		table := createTable(t, pg, "txrefuse", "v int")
		r := rawConnect(t, sc, pg, nil)
		expectMessages(t, "begin", r.query("BEGIN"), []string{"C BEGIN", "Z T"})
		expectMessages(t, "insert", r.query("insert into "+table+" values (1)"), []string{"C INSERT 0 1", "Z T"})
		checkMessages(t, "LISTEN in a transaction", r.query("LISTEN tx_refused"), []string{"E 0A000", "Z E"})
		got := r.query("COMMIT")
		checkMessages(t, "COMMIT after the refusal", got, []string{"C ROLLBACK", "Z I"})
		if got[len(got)-1] != "Z I" {
			r.query("ROLLBACK")
		}
		direct := pgDirect(t, pg)
		var n int
		if err := direct.QueryRow(ctxT(t), "select count(*) from "+table).Scan(&n); err != nil || n != 0 {
			t.Errorf("the transaction with the refused statement committed %d rows (%v); want 0", n, err)
		}

		r.send(
			&pgproto3.Parse{Query: "insert into " + table + " values (2)"}, &pgproto3.Bind{}, &pgproto3.Execute{},
			&pgproto3.Parse{Query: "LISTEN tx_refused"}, &pgproto3.Bind{}, &pgproto3.Execute{},
			&pgproto3.Sync{},
		)
		checkMessages(t, "batch with a refused statement", r.untilReady(), []string{"1", "2", "C INSERT 0 1", "E 0A000", "Z I"})
		if err := direct.QueryRow(ctxT(t), "select count(*) from "+table+" where v = 2").Scan(&n); err != nil || n != 0 {
			t.Errorf("the batch with the refused statement committed %d rows (%v); want 0", n, err)
		}
		expectMessages(t, "session usable", r.query("select 1 as one"), []string{"T one", "D 1", "C SELECT 1", "Z I"})
	})
}
