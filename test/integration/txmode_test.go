package integration

// Transaction pooling (proxy.PoolModeTransaction) with real drivers: many
// clients share a pool of one to three backends, so every statement a
// client prepared, every setting it made and every transaction it left may
// meet another client's on the same backend. Each test starts its own
// sidecar in transaction mode whatever PGSIDECAR_TEST_POOL_MODE says.
//
// This file holds the shared helpers and the prepared-statement tests;
// txmode_settings_test.go, txmode_pins_test.go, txmode_protocol_test.go,
// txmode_faults_test.go and txmode_load_test.go hold the rest. Tests whose
// comment starts "Regression" each reproduced a fault the proxy had when
// they were written (fixed since), described there.

import (
	"database/sql"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgsidecar/pgsidecar/internal/testenv"
	"github.com/pgsidecar/pgsidecar/pool"
	"github.com/pgsidecar/pgsidecar/proxy"
)

// txSidecar starts a sidecar in transaction mode with poolSize backends.
// cfg and pcfg tune the rest; their PoolMode and PoolSize are overridden.
func txSidecar(t testing.TB, pg *testenv.Postgres, poolSize int, cfg proxy.Config, pcfg pool.Config) *sidecar {
	t.Helper()
	cfg.PoolMode = proxy.PoolModeTransaction
	pcfg.PoolSize = poolSize
	return startSidecar(t, pg, sidecarOptions{Proxy: cfg, Pool: pcfg})
}

// holdBackend keeps the backend whose PostgreSQL pid is pid busy, so that
// the next transaction of every other client lands on another backend. It
// opens clients through sc, each in an open transaction, until one of them
// sits on pid, and ends the others' transactions. It needs pid to be idle
// (or to become so) and returns a func that commits the holder.
func holdBackend(t testing.TB, sc *sidecar, pg *testenv.Postgres, pid int32, poolSize int) (release func()) {
	t.Helper()
	ctx := ctxT(t)
	var others []pgx.Tx
	defer func() {
		for _, tx := range others {
			if err := tx.Commit(ctx); err != nil {
				t.Errorf("holder commit: %v", err)
			}
		}
	}()
	for range poolSize {
		conn := pgxConnect(t, sc.SuperURL(pg), pgx.QueryExecModeSimpleProtocol)
		tx, err := conn.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var got int32
		if err := tx.QueryRow(ctx, "select pg_backend_pid()").Scan(&got); err != nil {
			t.Fatal(err)
		}
		if got == pid {
			return func() {
				if err := tx.Commit(ctx); err != nil {
					t.Errorf("holder commit: %v", err)
				}
			}
		}
		others = append(others, tx)
	}
	t.Fatalf("no client got backend %d in %d tries", pid, poolSize)
	return nil
}

// txPID runs f in a transaction on conn and returns the pid of the backend
// it ran on.
func txPID(t testing.TB, conn *pgx.Conn, f func(tx pgx.Tx)) int32 {
	t.Helper()
	ctx := ctxT(t)
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	f(tx)
	var pid int32
	if err := tx.QueryRow(ctx, "select pg_backend_pid()").Scan(&pid); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	return pid
}

// fillTable inserts rows (id, 'n'||id) for id 1..n into table directly.
func fillTable(t testing.TB, pg *testenv.Postgres, table string, n int) {
	t.Helper()
	if err := pg.Exec(ctxT(t), fmt.Sprintf("insert into %s select g, 'n' || g from generate_series(1, %d) g", table, n)); err != nil {
		t.Fatal(err)
	}
}

// runParallel runs f(i) for i in [0, n) in goroutines and waits for all.
// f reports failures with t.Errorf (t.Fatal must not be called off the
// test goroutine).
func runParallel(n int, f func(i int)) {
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f(i)
		}()
	}
	wg.Wait()
}

// sharedStatementWork runs a few parameterised statements through conn and
// reports any wrong answer. Client i and round r give each statement
// distinct arguments, so an answer meant for another client shows.
func sharedStatementWork(t testing.TB, conn *pgx.Conn, table string, i, r int) error {
	ctx := ctxT(t)
	id := (i*31+r)%100 + 1
	var n int
	if err := conn.QueryRow(ctx, "select $1::int * 2", id).Scan(&n); err != nil {
		return fmt.Errorf("double: %w", err)
	}
	if n != 2*id {
		return fmt.Errorf("select %d * 2 = %d", id, n)
	}
	var name string
	if err := conn.QueryRow(ctx, "select name from "+table+" where id = $1", id).Scan(&name); err != nil {
		return fmt.Errorf("name: %w", err)
	}
	if want := fmt.Sprintf("n%d", id); name != want {
		return fmt.Errorf("name of %d = %q, want %q", id, name, want)
	}
	if err := conn.QueryRow(ctx, "select count(*) from "+table+" where id <= $1", id).Scan(&n); err != nil {
		return fmt.Errorf("count: %w", err)
	}
	if n != id {
		return fmt.Errorf("count(id <= %d) = %d", id, n)
	}
	var s string
	if err := conn.QueryRow(ctx, "select $1::text || '-' || $2::int", fmt.Sprintf("c%d", i), r).Scan(&s); err != nil {
		return fmt.Errorf("concat: %w", err)
	}
	if want := fmt.Sprintf("c%d-%d", i, r); s != want {
		return fmt.Errorf("concat = %q, want %q", s, want)
	}
	return nil
}

// TestTxPgxStatementsSharedAcrossClients: pgx's own prepared statements
// (its statement cache) and its describe cache, from many clients at once
// through two backends.
func TestTxPgxStatementsSharedAcrossClients(t *testing.T) {
	t.Parallel()
	pg := env.Postgres(t)
	table := createTable(t, pg, "txshare", "id int primary key, name text")
	fillTable(t, pg, table, 100)
	for _, m := range []struct {
		name  string
		mode  pgx.QueryExecMode
		named bool // the mode prepares named statements
	}{
		{"CacheStatement", pgx.QueryExecModeCacheStatement, true},
		{"CacheDescribe", pgx.QueryExecModeCacheDescribe, false},
	} {
		t.Run(m.name, func(t *testing.T) {
			t.Parallel()
			const poolSize, clients, rounds = 2, 6, 25
			sc := txSidecar(t, pg, poolSize, proxy.Config{}, pool.Config{})
			conns := make([]*pgx.Conn, clients)
			for i := range conns {
				conns[i] = pgxConnect(t, sc.SuperURL(pg), m.mode)
			}
			runParallel(clients, func(i int) {
				for r := range rounds {
					if err := sharedStatementWork(t, conns[i], table, i, r); err != nil {
						t.Errorf("client %d round %d: %v", i, r, err)
						return
					}
				}
			})
			if t.Failed() {
				return
			}
			st := sc.Server.Stats()
			t.Logf("stats after the concurrent phase: %+v", st)
			if m.named {
				// 6 clients each parse the same 4 texts with the same
				// settings: on 2 backends at most 8 of those 24 Parses
				// can reach a server.
				if st.ParsesShared < clients*4-poolSize*4 {
					t.Errorf("ParsesShared = %d, want at least %d", st.ParsesShared, clients*4-poolSize*4)
				}
				if st.Parses > poolSize*4 {
					t.Errorf("Parses = %d, want at most %d (one per statement per backend)", st.Parses, poolSize*4)
				}
			} else if st.Parses != 0 || st.ParsesShared != 0 || st.LazyParses != 0 {
				t.Errorf("unnamed statements only, yet Parses %d, ParsesShared %d, LazyParses %d", st.Parses, st.ParsesShared, st.LazyParses)
			}

			// One client prepares a statement no one else has, inside a
			// transaction so that it knows the backend (X).
			ctx := ctxT(t)
			a := conns[0]
			tagged := "select $1::int + 1000, pg_backend_pid() /* " + uniq("tag") + " */"
			run := func(arg int) int32 {
				t.Helper()
				var n int
				var pid int32
				if err := a.QueryRow(ctx, tagged, arg).Scan(&n, &pid); err != nil {
					t.Fatalf("tagged statement: %v", err)
				}
				if n != 1000+arg {
					t.Fatalf("tagged statement with %d = %d", arg, n)
				}
				return pid
			}
			var pidX int32
			txPID(t, a, func(tx pgx.Tx) {
				var n int
				if err := tx.QueryRow(ctx, tagged, 1).Scan(&n, &pidX); err != nil || n != 1001 {
					t.Fatalf("tagged statement in a transaction: %d, %v", n, err)
				}
			})
			// With X busy in another client's transaction, the statement
			// runs on the other backend (Y), where it was never parsed.
			lazyBefore := sc.Server.Stats().LazyParses
			release := holdBackend(t, sc, pg, pidX, poolSize)
			pidY := run(2)
			release()
			if pidY == pidX {
				t.Fatalf("the statement ran on backend %d, which another client held", pidX)
			}
			lazy := sc.Server.Stats().LazyParses - lazyBefore
			if m.named && lazy != 1 {
				t.Errorf("the statement ran on a backend without it, but LazyParses grew by %d, want 1", lazy)
			}
			if !m.named && lazy != 0 {
				t.Errorf("LazyParses grew by %d with unnamed statements only", lazy)
			}
			// Back on X, after the holder's transaction there.
			release = holdBackend(t, sc, pg, pidY, poolSize)
			if pid := run(3); pid != pidX {
				t.Fatalf("the statement ran on backend %d, want %d", pid, pidX)
			}
			release()
		})
	}
}

// TestTxPqPreparedStatements: lib/pq prepares db.Prepare's statements under
// names of its own, once per connection of database/sql's pool; many
// goroutines use them through two backends.
func TestTxPqPreparedStatements(t *testing.T) {
	t.Parallel()
	pg := env.Postgres(t)
	const poolSize = 2
	sc := txSidecar(t, pg, poolSize, proxy.Config{}, pool.Config{})
	table := createTable(t, pg, "txpq", "id int primary key, name text")
	fillTable(t, pg, table, 100)
	ctx := ctxT(t)
	db := pqOpen(t, sc.SuperURL(pg))
	db.SetMaxOpenConns(6)
	db.SetMaxIdleConns(6)

	byID, err := db.PrepareContext(ctx, "select name from "+table+" where id = $1")
	if err != nil {
		t.Fatal(err)
	}
	defer byID.Close()
	upTo, err := db.PrepareContext(ctx, "select id from "+table+" where id <= $1 order by id")
	if err != nil {
		t.Fatal(err)
	}
	defer upTo.Close()

	// Three database/sql connections prepare the same text: on two
	// backends at least one of those Parses finds the statement there.
	var held []*sql.Conn
	for range 3 {
		c, err := db.Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
	}
	shared := "select $1::int * 3 /* " + uniq("pq") + " */"
	for _, c := range held {
		s, err := c.PrepareContext(ctx, shared)
		if err != nil {
			t.Fatal(err)
		}
		var n int
		if err := s.QueryRowContext(ctx, 5).Scan(&n); err != nil || n != 15 {
			t.Fatalf("shared statement: %d, %v", n, err)
		}
		s.Close()
	}
	for _, c := range held {
		c.Close()
	}
	if st := sc.Server.Stats(); st.ParsesShared < 1 {
		t.Errorf("three clients parsed one text on two backends, but ParsesShared = %d", st.ParsesShared)
	}

	const goroutines, rounds = 12, 30
	runParallel(goroutines, func(g int) {
		for r := range rounds {
			id := (g*7+r)%100 + 1
			var name string
			if err := byID.QueryRowContext(ctx, id).Scan(&name); err != nil {
				t.Errorf("goroutine %d: byID(%d): %v", g, id, err)
				return
			}
			if want := fmt.Sprintf("n%d", id); name != want {
				t.Errorf("goroutine %d: byID(%d) = %q, want %q", g, id, name, want)
				return
			}
			rows, err := upTo.QueryContext(ctx, id%10+1)
			if err != nil {
				t.Errorf("goroutine %d: upTo: %v", g, err)
				return
			}
			var got []int
			for rows.Next() {
				var v int
				if err := rows.Scan(&v); err != nil {
					t.Errorf("goroutine %d: scan: %v", g, err)
				}
				got = append(got, v)
			}
			if err := rows.Err(); err != nil {
				t.Errorf("goroutine %d: upTo rows: %v", g, err)
			}
			rows.Close()
			if len(got) != id%10+1 || got[0] != 1 || got[len(got)-1] != id%10+1 {
				t.Errorf("goroutine %d: upTo(%d) = %v", g, id%10+1, got)
				return
			}
		}
	})
	t.Logf("stats: %+v", sc.Server.Stats())
}

// TestTxPreparedStatementOnAnotherBackend: a statement prepared on one
// backend is described and executed on the other one, where pgsidecar must
// prepare it first.
func TestTxPreparedStatementOnAnotherBackend(t *testing.T) {
	t.Parallel()
	pg := env.Postgres(t)
	const poolSize = 2
	sc := txSidecar(t, pg, poolSize, proxy.Config{}, pool.Config{})

	t.Run("raw", func(t *testing.T) {
		r := rawConnect(t, sc, pg, nil)
		query := "select $1::int * 10 as v, pg_backend_pid() as pid /* " + uniq("raw") + " */"
		expectMessages(t, "begin", r.query("BEGIN"), []string{"C BEGIN", "Z T"})
		r.send(&pgproto3.Parse{Name: "s1", Query: query}, &pgproto3.Sync{})
		expectMessages(t, "parse", r.untilReady(), []string{"1", "Z T"})
		pidX, err := strconv.Atoi(r.queryValue("select pg_backend_pid()"))
		if err != nil {
			t.Fatal(err)
		}
		expectMessages(t, "commit", r.query("COMMIT"), []string{"C COMMIT", "Z I"})

		lazyBefore := sc.Server.Stats().LazyParses
		release := holdBackend(t, sc, pg, int32(pidX), poolSize)
		defer release()
		// Describe first, alone: the other backend never saw s1.
		r.send(&pgproto3.Describe{ObjectType: 'S', Name: "s1"}, &pgproto3.Sync{})
		expectMessages(t, "describe on the other backend", r.untilReady(),
			[]string{"*pgproto3.ParameterDescription", "T v,pid", "Z I"})
		r.send(&pgproto3.Bind{PreparedStatement: "s1", Parameters: [][]byte{[]byte("4")}},
			&pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{}, &pgproto3.Sync{})
		got := r.untilReady()
		if len(got) != 5 || !strings.HasPrefix(got[2], "D 40,") || got[2] == fmt.Sprintf("D 40,%d", pidX) {
			t.Fatalf("execute on the other backend: %q; want a row 40 from a backend other than %d", got, pidX)
		}
		expectMessages(t, "execute", []string{got[0], got[1], got[3], got[4]}, []string{"2", "T v,pid", "C SELECT 1", "Z I"})
		if lazy := sc.Server.Stats().LazyParses - lazyBefore; lazy != 1 {
			t.Errorf("LazyParses grew by %d, want 1 (s1 prepared once on the other backend)", lazy)
		}
	})

	t.Run("pgx", func(t *testing.T) {
		ctx := ctxT(t)
		conn := pgxConnect(t, sc.SuperURL(pg), pgx.QueryExecModeCacheStatement)
		query := "select $1::text || '!' as e, pg_backend_pid() as pid /* " + uniq("pgx") + " */"
		pidX := txPID(t, conn, func(tx pgx.Tx) {
			if _, err := tx.Prepare(ctx, "greet", query); err != nil {
				t.Fatal(err)
			}
		})
		release := holdBackend(t, sc, pg, pidX, poolSize)
		defer release()
		for _, arg := range []string{"a", "b", "c"} {
			var e string
			var pid int32
			if err := conn.QueryRow(ctx, "greet", arg).Scan(&e, &pid); err != nil {
				t.Fatalf("greet(%s) on the other backend: %v", arg, err)
			}
			if e != arg+"!" || pid == pidX {
				t.Fatalf("greet(%s) = %q on backend %d; want %q from a backend other than %d", arg, e, pid, arg+"!", pidX)
			}
		}
	})
}

// TestTxMaxPreparedStatementsEvicts: with room for three statements per
// backend, clients cycling through six each keep getting right answers,
// and the backend never holds more than three.
func TestTxMaxPreparedStatementsEvicts(t *testing.T) {
	t.Parallel()
	pg := env.Postgres(t)
	const limit = 3
	sc := txSidecar(t, pg, 1, proxy.Config{}, pool.Config{MaxPreparedStatements: limit})
	ctx := ctxT(t)
	conns := []*pgx.Conn{
		pgxConnect(t, sc.SuperURL(pg), pgx.QueryExecModeCacheStatement),
		pgxConnect(t, sc.SuperURL(pg), pgx.QueryExecModeCacheStatement),
	}
	runParallel(len(conns), func(c int) {
		for round := range 8 {
			for k := 1; k <= 6; k++ {
				var n int
				sql := fmt.Sprintf("select $1::int + %d /* client %d */", 100*c+k, c)
				if err := conns[c].QueryRow(ctx, sql, round).Scan(&n); err != nil {
					t.Errorf("client %d, statement %d, round %d: %v", c, k, round, err)
					return
				}
				if n != round+100*c+k {
					t.Errorf("client %d, statement %d, round %d: got %d, want %d", c, k, round, n, round+100*c+k)
					return
				}
			}
		}
	})
	if t.Failed() {
		return
	}
	st := sc.Server.Stats()
	t.Logf("stats: %+v", st)
	if st.Evictions == 0 {
		t.Errorf("12 statements through a backend with room for %d, but no evictions", limit)
	}
	// The pool has one backend: the catalogue view is that backend's.
	// The simple protocol prepares nothing of its own.
	var total, foreign int
	if err := conns[0].QueryRow(ctx, "select count(*), count(*) filter (where name not like 'pgsc\\_%') from pg_prepared_statements",
		pgx.QueryExecModeSimpleProtocol).Scan(&total, &foreign); err != nil {
		t.Fatal(err)
	}
	if total < 1 || total > limit || foreign != 0 {
		t.Errorf("the backend holds %d prepared statements (%d not pgsidecar's); want 1..%d, all pgsidecar's", total, foreign, limit)
	}
}

// TestTxDeallocateAndDiscardForgetStatements: DEALLOCATE name, DEALLOCATE
// ALL and DISCARD ALL sent as SQL drop the client's protocol-level
// statements as they would on PostgreSQL: a Bind to one then fails with
// 26000, and a Parse under the same name works again. Another client's
// statement on the same backend survives.
func TestTxDeallocateAndDiscardForgetStatements(t *testing.T) {
	t.Parallel()
	pg := env.Postgres(t)
	sc := txSidecar(t, pg, 1, proxy.Config{}, pool.Config{})
	r := rawConnect(t, sc, pg, nil)
	other := rawConnect(t, sc, pg, nil)
	otherQuery := "select 'other'::text as o /* " + uniq("other") + " */"
	other.send(&pgproto3.Parse{Name: "s1", Query: otherQuery}, &pgproto3.Sync{})
	expectMessages(t, "other client's parse", other.untilReady(), []string{"1", "Z I"})
	otherRuns := func(what string) {
		t.Helper()
		other.send(&pgproto3.Bind{PreparedStatement: "s1"}, &pgproto3.Execute{}, &pgproto3.Sync{})
		expectMessages(t, "other client's s1 after "+what, other.untilReady(), []string{"2", "D other", "C SELECT 1", "Z I"})
	}

	parse := func(name string, v int) {
		t.Helper()
		r.send(&pgproto3.Parse{Name: name, Query: fmt.Sprintf("select %d as v", v)}, &pgproto3.Sync{})
		expectMessages(t, "parse "+name, r.untilReady(), []string{"1", "Z I"})
	}
	execute := func(name string) []string {
		t.Helper()
		r.send(&pgproto3.Bind{PreparedStatement: name}, &pgproto3.Execute{}, &pgproto3.Sync{})
		return r.untilReady()
	}
	gone := func(what, name string) {
		t.Helper()
		expectMessages(t, name+" after "+what, execute(name), []string{"E 26000", "Z I"})
	}

	// DEALLOCATE name: pgsidecar answers it.
	parse("s1", 1)
	expectMessages(t, "s1", execute("s1"), []string{"2", "D 1", "C SELECT 1", "Z I"})
	expectMessages(t, "DEALLOCATE s1", r.query("DEALLOCATE s1"), []string{"C DEALLOCATE", "Z I"})
	gone("DEALLOCATE", "s1")
	parse("s1", 11)
	expectMessages(t, "s1 parsed again", execute("s1"), []string{"2", "D 11", "C SELECT 1", "Z I"})
	// Folded like an identifier, and the PREPARE noise word.
	expectMessages(t, "DEALLOCATE PREPARE S1", r.query("DEALLOCATE PREPARE S1;"), []string{"C DEALLOCATE", "Z I"})
	gone("DEALLOCATE PREPARE S1", "s1")
	// A name the client never prepared: the server's own answer.
	expectMessages(t, "DEALLOCATE unknown", r.query("DEALLOCATE nosuch"), []string{"E 26000", "Z I"})
	otherRuns("DEALLOCATE")

	for _, sql := range []string{"DEALLOCATE ALL", "DISCARD ALL"} {
		parse("s1", 1)
		parse("s2", 2)
		expectMessages(t, sql, r.query(sql), []string{"C " + sql, "Z I"})
		gone(sql, "s1")
		gone(sql, "s2")
		parse("s1", 21)
		parse("s2", 22)
		expectMessages(t, "s1 after "+sql, execute("s1"), []string{"2", "D 21", "C SELECT 1", "Z I"})
		expectMessages(t, "s2 after "+sql, execute("s2"), []string{"2", "D 22", "C SELECT 1", "Z I"})
		// The server dropped every statement on the backend, the other
		// client's too; pgsidecar prepares it again.
		otherRuns(sql)
		expectMessages(t, "close s1", r.send2(&pgproto3.Close{ObjectType: 'S', Name: "s1"}, &pgproto3.Close{ObjectType: 'S', Name: "s2"}, &pgproto3.Sync{}),
			[]string{"3", "3", "Z I"})
	}

	t.Run("pgx", func(t *testing.T) {
		ctx := ctxT(t)
		conn := pgxConnect(t, sc.SuperURL(pg), pgx.QueryExecModeCacheStatement)
		pc := conn.PgConn()
		for _, sql := range []string{"DEALLOCATE p1", "DEALLOCATE ALL", "DISCARD ALL"} {
			if _, err := pc.Prepare(ctx, "p1", "select $1::int + 1", nil); err != nil {
				t.Fatalf("prepare p1 before %s: %v", sql, err)
			}
			res := pc.ExecPrepared(ctx, "p1", [][]byte{[]byte("41")}, nil, nil).Read()
			if res.Err != nil || len(res.Rows) != 1 || string(res.Rows[0][0]) != "42" {
				t.Fatalf("p1(41) before %s: %q, %v", sql, res.Rows, res.Err)
			}
			if _, err := pc.Exec(ctx, sql).ReadAll(); err != nil {
				t.Fatalf("%s: %v", sql, err)
			}
			res = pc.ExecPrepared(ctx, "p1", [][]byte{[]byte("41")}, nil, nil).Read()
			if code := pgCode(res.Err); code != "26000" {
				t.Fatalf("p1 after %s: rows %q, err %v; want SQLSTATE 26000", sql, res.Rows, res.Err)
			}
		}
		if _, err := pc.Prepare(ctx, "p1", "select $1::int + 2", nil); err != nil {
			t.Fatalf("prepare p1 after DISCARD ALL: %v", err)
		}
	})
}

// send2 sends msgs and returns the summaries through ReadyForQuery.
func (r *rawConn) send2(msgs ...pgproto3.FrontendMessage) []string {
	r.t.Helper()
	r.send(msgs...)
	return r.untilReady()
}

// ddlOutcome prepares (through pgx's statement cache) a select * from a
// one-column table, adds a column from another connection, and describes
// what the next executions return, then what a new client running the
// same query gets.
func ddlOutcome(t testing.TB, pg *testenv.Postgres, url string) []string {
	t.Helper()
	ctx := ctxT(t)
	table := createTable(t, pg, "txddl", "a int")
	if err := pg.Exec(ctx, "insert into "+table+" values (1)"); err != nil {
		t.Fatal(err)
	}
	query := "select * from " + table + " where a = $1"
	run := func(conn *pgx.Conn) string {
		rows, err := conn.Query(ctx, query, 1)
		if err == nil {
			var vals []string
			for rows.Next() {
				vs, err := rows.Values()
				if err != nil {
					break
				}
				for _, v := range vs {
					if v == nil {
						vals = append(vals, "NULL")
					} else {
						vals = append(vals, fmt.Sprint(v))
					}
				}
			}
			rows.Close()
			if err = rows.Err(); err == nil {
				var cols []string
				for _, f := range rows.FieldDescriptions() {
					cols = append(cols, f.Name)
				}
				return strings.Join(cols, ",") + "=" + strings.Join(vals, ",")
			}
		}
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) {
			return "ERROR " + pgErr.Code + " " + pgErr.Message
		}
		return "error: " + err.Error()
	}
	conn := pgxConnect(t, url, pgx.QueryExecModeCacheStatement)
	out := []string{run(conn)}
	if err := pg.Exec(ctx, "alter table "+table+" add column b int"); err != nil {
		t.Fatal(err)
	}
	out = append(out, run(conn), run(conn), run(conn))
	var one int
	if err := conn.QueryRow(ctx, "select 1").Scan(&one); err != nil || one != 1 {
		out = append(out, fmt.Sprintf("select 1: %d, %v", one, err))
	} else {
		out = append(out, "usable")
	}
	return append(out, run(pgxConnect(t, url, pgx.QueryExecModeCacheStatement)))
}

// TestTxDDLChangesPreparedResultType: a prepared select * whose table
// gains a column. PostgreSQL answers the next execution with 0A000 "cached
// plan must not change result type"; pgx then drops the statement from its
// cache and prepares it again, which works on PostgreSQL. Through the
// sidecar the client must get the same: correct rows or a clear 0A000,
// then correct rows once pgx prepared the statement again, a usable
// session, and a new client running the same query must get rows.
//
// Regression (fixed): the sidecar shares server
// statements by text, parameter types and settings, so pgx's re-Parse is
// answered with a synthetic ParseComplete for the old server statement,
// whose Describe and Bind fail with 0A000 for this client and every other
// one with the same text, until the statement is evicted or the backend
// closed. Re-preparing automatically, so that not even the first execution
// after the DDL fails, is a follow-up beyond that.
func TestTxDDLChangesPreparedResultType(t *testing.T) {
	t.Parallel()
	pg := env.Postgres(t)
	sc := txSidecar(t, pg, 1, proxy.Config{}, pool.Config{})
	direct := ddlOutcome(t, pg, directURL(pg))
	t.Logf("directly on PostgreSQL: %q", direct)
	got := ddlOutcome(t, pg, sc.SuperURL(pg))
	t.Logf("through the sidecar:    %q", got)
	const newRows, changed = "a,b=1,NULL", "ERROR 0A000 cached plan must not change result type"
	if got[0] != "a=1" {
		t.Fatalf("before the DDL: %q", got[0])
	}
	if got[4] != "usable" {
		t.Fatalf("session after the DDL: %s", got[4])
	}
	for i, o := range got[1:4] {
		if o != newRows && o != changed {
			t.Errorf("execution %d after the DDL: %q; want %q or %q", i+1, o, newRows, changed)
		}
	}
	if got[3] != newRows {
		t.Errorf("after pgx prepared the statement again it still gets %q (directly: %q)", got[3], direct[3])
	}
	if got[5] != newRows {
		t.Errorf("a new client running the query gets %q (directly: %q)", got[5], direct[5])
	}
}

// TestTxParseInFailedTransaction: in a failed transaction PostgreSQL
// refuses every Parse with 25P02 before it looks at the name. pgx meets
// this after an error inside a transaction: it re-prepares the statements
// the error invalidated under their old names (the Close it would send
// first waits for the transaction to end).
//
// Regression (fixed): pgsidecar answers a Parse of a
// name the client has with its own 42P05 "prepared statement already
// exists", so the client sees a different error than on PostgreSQL.
func TestTxParseInFailedTransaction(t *testing.T) {
	t.Parallel()
	pg := env.Postgres(t)
	sc := txSidecar(t, pg, 1, proxy.Config{}, pool.Config{})
	run := func(r *rawConn) []string {
		var out []string
		r.send(&pgproto3.Parse{Name: "s1", Query: "select 1 as v"}, &pgproto3.Sync{})
		out = append(out, r.untilReady()...)
		out = append(out, r.query("BEGIN")...)
		out = append(out, r.query("select 1/0")...)
		r.send(&pgproto3.Parse{Name: "s1", Query: "select 1 as v"}, &pgproto3.Sync{})
		out = append(out, r.untilReady()...)
		r.send(&pgproto3.Parse{Name: "s2", Query: "select 2 as v"}, &pgproto3.Sync{})
		out = append(out, r.untilReady()...)
		out = append(out, r.query("ROLLBACK")...)
		r.send(&pgproto3.Bind{PreparedStatement: "s1"}, &pgproto3.Execute{}, &pgproto3.Bind{PreparedStatement: "s2"}, &pgproto3.Execute{}, &pgproto3.Sync{})
		return append(out, r.untilReady()...)
	}
	want := run(rawDirect(t, pg))
	got := run(rawConnect(t, sc, pg, nil))
	expectMessages(t, "through the sidecar vs directly", got, want)
}
