package integration

// Result cache, one sidecar: a write made through the sidecar is seen by
// the next read on any connection, a transaction sees its own writes and
// keeps its own snapshot, and no cached answer outlives a write of any kind
// (UPDATE, INSERT, DELETE, MERGE, data-modifying CTE, TRUNCATE, COPY, and
// writes hidden in functions, triggers, DO blocks and behind views).
//
// Each test warms the read and asserts a cache hit before the write, so a
// "cache" that never caches cannot pass.

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgsidecar/pgsidecar/internal/testenv"
)

// kvTable creates a table (id int primary key, v text) holding rows, given
// as id -> v, dropped when the test ends.
func kvTable(t testing.TB, pg *testenv.Postgres, prefix string, rows ...string) string {
	t.Helper()
	table := createTable(t, pg, prefix, "id int primary key, v text")
	if len(rows) > 0 {
		var vals []string
		for i, v := range rows {
			vals = append(vals, fmt.Sprintf("(%d, '%s')", i+1, v))
		}
		if err := pg.Exec(ctxT(t), "insert into "+table+" values "+strings.Join(vals, ", ")); err != nil {
			t.Fatal(err)
		}
	}
	return table
}

// TestCacheWriteVisibleToOtherConnection: after an UPDATE (INSERT, DELETE)
// through the sidecar is acknowledged, a read on another connection, whose
// answer was cached, sees the new data.
func TestCacheWriteVisibleToOtherConnection(t *testing.T) {
	t.Parallel()
	pg := env.Postgres(t)
	forEachCacheTier(t, pg, func(t *testing.T, sc *cacheSidecar) {
		forEachCacheProtocol(t, func(t *testing.T, p cacheProtocol) {
			table := kvTable(t, pg, "cache_upd", "old", "other")
			reader := p.connect(t, sc.SuperURL(pg))
			writer := p.connect(t, sc.SuperURL(pg))
			byID := "select v from " + table + " where id = $1"

			sc.readUntilHit(t, "reader warms id 1", func() {
				expectRows(t, "reader", reader, []string{"old"}, byID, 1)
			})
			// Another parameter value is another answer.
			expectRows(t, "reader, id 2", reader, []string{"other"}, byID, 2)

			writer.Exec(t, "update "+table+" set v = $1 where id = $2", "new", 1)
			expectRows(t, "reader after the UPDATE", reader, []string{"new"}, byID, 1)
			expectRows(t, "reader after the UPDATE, again", reader, []string{"new"}, byID, 1)
			expectRows(t, "writer after its UPDATE", writer, []string{"new"}, byID, 1)
			expectRows(t, "reader, id 2 after the UPDATE of id 1", reader, []string{"other"}, byID, 2)

			// A read without parameters (lib/pq: a simple query).
			all := "select id::text, v from " + table + " order by id"
			sc.readUntilHit(t, "reader warms the whole table", func() {
				expectRows(t, "reader", reader, []string{"1|new", "2|other"}, all)
			})
			writer.Exec(t, "insert into "+table+" values ($1, $2)", 3, "three")
			expectRows(t, "reader after the INSERT", reader, []string{"1|new", "2|other", "3|three"}, all)
			sc.readUntilHit(t, "reader warms the table after the INSERT", func() {
				expectRows(t, "reader", reader, []string{"1|new", "2|other", "3|three"}, all)
			})
			writer.Exec(t, "delete from "+table+" where id = $1", 1)
			expectRows(t, "reader after the DELETE", reader, []string{"2|other", "3|three"}, all)
			expectRows(t, "reader after the DELETE, by id", reader, nil, byID, 1)
		})
	})
}

// TestCacheTransactionSeesItsOwnWrites: inside a transaction a read sees the
// transaction's uncommitted write, others do not; after ROLLBACK everyone
// sees the old value, after COMMIT everyone sees the new one.
func TestCacheTransactionSeesItsOwnWrites(t *testing.T) {
	t.Parallel()
	pg := env.Postgres(t)
	forEachCacheTier(t, pg, func(t *testing.T, sc *cacheSidecar) {
		forEachCacheProtocol(t, func(t *testing.T, p cacheProtocol) {
			table := kvTable(t, pg, "cache_tx", "old")
			a := p.connect(t, sc.SuperURL(pg))
			b := p.connect(t, sc.SuperURL(pg))
			read := "select v from " + table + " where id = $1"
			update := "update " + table + " set v = $1 where id = $2"

			sc.readUntilHit(t, "A warms", func() { expectRows(t, "A", a, []string{"old"}, read, 1) })
			sc.readUntilHit(t, "B warms", func() { expectRows(t, "B", b, []string{"old"}, read, 1) })

			a.Exec(t, "begin")
			a.Exec(t, update, "mine", 1)
			expectRows(t, "A in its transaction", a, []string{"mine"}, read, 1)
			expectRows(t, "A in its transaction, again", a, []string{"mine"}, read, 1)
			expectRows(t, "B while A's write is uncommitted", b, []string{"old"}, read, 1)
			a.Exec(t, "rollback")
			expectRows(t, "A after ROLLBACK", a, []string{"old"}, read, 1)
			expectRows(t, "B after A's ROLLBACK", b, []string{"old"}, read, 1)

			a.Exec(t, "begin")
			a.Exec(t, update, "committed", 1)
			expectRows(t, "A in its second transaction", a, []string{"committed"}, read, 1)
			expectRows(t, "B before A's COMMIT", b, []string{"old"}, read, 1)
			a.Exec(t, "commit")
			expectRows(t, "B after A's COMMIT", b, []string{"committed"}, read, 1)
			expectRows(t, "A after its COMMIT", a, []string{"committed"}, read, 1)
		})
	})
}

// TestCacheImplicitTransactionSeesItsOwnWrites: a write and a read sent
// together (a pgx batch: one pipeline with one Sync; a simple-protocol
// query string with two statements) run in one implicit transaction, so the
// read sees the write even though its answer was cached before.
func TestCacheImplicitTransactionSeesItsOwnWrites(t *testing.T) {
	t.Parallel()
	pg := env.Postgres(t)
	forEachCacheTier(t, pg, func(t *testing.T, sc *cacheSidecar) {
		for _, p := range []struct {
			name string
			mode pgx.QueryExecMode
		}{
			{"simple", pgx.QueryExecModeSimpleProtocol},
			{"prepared", pgx.QueryExecModeCacheStatement},
			{"unnamed", pgx.QueryExecModeExec},
		} {
			t.Run("batch/"+p.name, func(t *testing.T) {
				ctx := ctxT(t)
				table := kvTable(t, pg, "cache_batch", "old")
				conn := pgxConnect(t, sc.SuperURL(pg), p.mode)
				other := pgxCacheClient{pgxConnect(t, sc.SuperURL(pg), p.mode), p.mode}
				read := "select v from " + table + " where id = $1"
				sc.readUntilHit(t, "warm", func() { expectRows(t, "other", other, []string{"old"}, read, 1) })

				b := &pgx.Batch{}
				b.Queue("update "+table+" set v = $1 where id = $2", "batched", 1)
				b.Queue(read, 1)
				br := conn.SendBatch(ctx, b)
				if _, err := br.Exec(); err != nil {
					t.Fatalf("batched UPDATE: %v", err)
				}
				var got string
				if err := br.QueryRow().Scan(&got); err != nil {
					t.Fatalf("batched read: %v", err)
				}
				if err := br.Close(); err != nil {
					t.Fatal(err)
				}
				if got != "batched" {
					t.Fatalf("read batched after its UPDATE = %q, want %q", got, "batched")
				}
				expectRows(t, "other after the batch", other, []string{"batched"}, read, 1)
			})
		}
		t.Run("multi-statement query", func(t *testing.T) {
			ctx := ctxT(t)
			table := kvTable(t, pg, "cache_multi", "old")
			conn := pgxConnect(t, sc.SuperURL(pg), pgx.QueryExecModeSimpleProtocol)
			read := "select v from " + table + " where id = 1"
			sc.readUntilHit(t, "warm", func() { expectString(t, "warm", conn, read, "old") })
			results, err := conn.PgConn().Exec(ctx, "update "+table+" set v = 'multi' where id = 1; "+read).ReadAll()
			if err != nil {
				t.Fatal(err)
			}
			if len(results) != 2 || len(results[1].Rows) != 1 || string(results[1].Rows[0][0]) != "multi" {
				t.Fatalf("UPDATE; SELECT in one query: the SELECT answered %v, want [[multi]]", resultRows(results))
			}
			expectString(t, "after the query", conn, read, "multi")
		})
	})
}

// resultRows renders pgconn results' rows as text, for messages.
func resultRows(results []*pgconn.Result) [][]string {
	var out [][]string
	for _, r := range results {
		var rows []string
		for _, row := range r.Rows {
			var cols []string
			for _, v := range row {
				cols = append(cols, string(v))
			}
			rows = append(rows, strings.Join(cols, "|"))
		}
		out = append(out, rows)
	}
	return out
}

// TestCachePreparedStatementAfterWrite: a statement prepared long ago and
// executed again (Bind/Execute only, text and binary results) sees a write
// made since by another connection; SQL PREPARE/EXECUTE too, and two
// connections' statements of the same name and different text never share
// an answer.
func TestCachePreparedStatementAfterWrite(t *testing.T) {
	t.Parallel()
	pg := env.Postgres(t)
	forEachCacheTier(t, pg, func(t *testing.T, sc *cacheSidecar) {
		t.Run("protocol", func(t *testing.T) {
			ctx := ctxT(t)
			table := kvTable(t, pg, "cache_prep", "old")
			a := pgxConnect(t, sc.SuperURL(pg), pgx.QueryExecModeCacheStatement).PgConn()
			writer := pgxCacheClient{pgxConnect(t, sc.SuperURL(pg), pgx.QueryExecModeCacheStatement), pgx.QueryExecModeCacheStatement}
			if _, err := a.Prepare(ctx, "s1", "select v from "+table+" where id = $1", nil); err != nil {
				t.Fatal(err)
			}
			exec := func(who string, format int16, want string) {
				t.Helper()
				res := a.ExecPrepared(ctx, "s1", [][]byte{[]byte("1")}, nil, []int16{format}).Read()
				if res.Err != nil {
					t.Fatalf("%s: execute s1: %v", who, res.Err)
				}
				if len(res.Rows) != 1 || string(res.Rows[0][0]) != want {
					t.Fatalf("%s: execute s1 (format %d) = %q, want %q", who, format, resultRows([]*pgconn.Result{res}), want)
				}
			}
			for _, format := range []int16{0, 1} { // a text column's binary form is its text
				sc.readUntilHit(t, "warm s1", func() { exec("warm", format, "old") })
			}
			writer.Exec(t, "update "+table+" set v = $1 where id = $2", "new", 1)
			exec("s1 after the UPDATE", 0, "new")
			exec("s1 after the UPDATE", 1, "new")
		})
		t.Run("SQL PREPARE", func(t *testing.T) {
			t1 := kvTable(t, pg, "cache_sqlprep", "from t1")
			t2 := kvTable(t, pg, "cache_sqlprep", "from t2")
			a := pgxConnect(t, sc.SuperURL(pg), pgx.QueryExecModeSimpleProtocol)
			b := pgxConnect(t, sc.SuperURL(pg), pgx.QueryExecModeSimpleProtocol)
			mustExec(t, a, "prepare p as select v from "+t1+" where id = 1")
			mustExec(t, b, "prepare p as select v from "+t2+" where id = 1")
			// EXECUTE's text does not say what it runs (and SQL PREPARE
			// pins the session to its backend): never answered from the
			// cache, and answers must stay each session's own.
			sc.expectNoHits(t, "EXECUTE of SQL-prepared statements", func() {
				expectString(t, "A", a, "execute p", "from t1")
				expectString(t, "A again", a, "execute p", "from t1")
				expectString(t, "B, same EXECUTE, other statement", b, "execute p", "from t2")
				expectString(t, "B again", b, "execute p", "from t2")
				expectString(t, "A again", a, "execute p", "from t1")
				mustExec(t, b, "update "+t1+" set v = 'new t1' where id = 1")
				expectString(t, "A after B's UPDATE", a, "execute p", "new t1")
			})
		})
	})
}

// TestCacheRepeatableReadKeepsItsSnapshot: a REPEATABLE READ transaction
// that began before another client's committed UPDATE keeps seeing the old
// value while the cache holds the new one, and its own reads of the old
// snapshot never fill the cache for others.
func TestCacheRepeatableReadKeepsItsSnapshot(t *testing.T) {
	t.Parallel()
	pg := env.Postgres(t)
	forEachCacheTier(t, pg, func(t *testing.T, sc *cacheSidecar) {
		forEachCacheProtocol(t, func(t *testing.T, p cacheProtocol) {
			table := kvTable(t, pg, "cache_rr", "old")
			a := p.connect(t, sc.SuperURL(pg))
			b := p.connect(t, sc.SuperURL(pg))
			c := p.connect(t, sc.SuperURL(pg))
			read := "select v from " + table + " where id = $1"
			// A second text for the same answer, read first inside A's
			// transaction.
			read2 := "select v || '' from " + table + " where id = $1"

			sc.readUntilHit(t, "C warms with the old value", func() { expectRows(t, "C", c, []string{"old"}, read, 1) })
			a.Exec(t, "begin isolation level repeatable read")
			expectRows(t, "A takes its snapshot", a, []string{"old"}, read, 1)

			b.Exec(t, "update "+table+" set v = $1 where id = $2", "new", 1)
			sc.readUntilHit(t, "C warms with the new value", func() { expectRows(t, "C", c, []string{"new"}, read, 1) })

			expectRows(t, "A in its snapshot, cache holding the new value", a, []string{"old"}, read, 1)
			expectRows(t, "A in its snapshot, again", a, []string{"old"}, read, 1)
			expectRows(t, "A in its snapshot, a statement nobody read yet", a, []string{"old"}, read2, 1)
			expectRows(t, "C after A read the old snapshot", c, []string{"new"}, read2, 1)
			expectRows(t, "C again", c, []string{"new"}, read2, 1)
			a.Exec(t, "commit")
			expectRows(t, "A after COMMIT", a, []string{"new"}, read, 1)
			expectRows(t, "A after COMMIT", a, []string{"new"}, read2, 1)
		})
	})
}

// cacheWrite is one kind of write for TestCacheInvalidatedByWrites. The
// table is (id int primary key, v int) holding (1, 10) and (2, 20); read is
// the warmed query, normally "select count(*)::text, sum(v)::text from T".
type cacheWrite struct {
	name string
	// setup runs (as the superuser, directly) before the read is warmed;
	// %[1]s is the table, %[2]s a unique name for other objects.
	setup string
	// read overrides the warmed query; %[1]s is the table, %[2]s setup's name.
	read string
	// write makes the change through the sidecar, on c (protocol writes)
	// or on connections of its own (COPY).
	write func(t *testing.T, sc *cacheSidecar, pg *testenv.Postgres, c cacheClient, table, name string)
	want  []string
	// once: the write does not depend on the protocol; run it with one.
	once bool
	// bypassed: the read is one the cache must not answer at all (its
	// dependencies are not all visible), so no hit is expected.
	bypassed bool
}

func sqlWrite(query string, args ...any) func(*testing.T, *cacheSidecar, *testenv.Postgres, cacheClient, string, string) {
	return func(t *testing.T, _ *cacheSidecar, _ *testenv.Postgres, c cacheClient, table, name string) {
		c.Exec(t, fmt.Sprintf(query, table, name), args...)
	}
}

var cacheWrites = []cacheWrite{
	{
		name:  "MERGE",
		write: sqlWrite("merge into %[1]s t using (values (2, 200), (3, 30)) s(id, v) on t.id = s.id when matched then update set v = s.v when not matched then insert values (s.id, s.v)"),
		want:  []string{"3|240"},
	},
	{
		name: "CTE UPDATE RETURNING read as a SELECT",
		write: func(t *testing.T, _ *cacheSidecar, _ *testenv.Postgres, c cacheClient, table, _ string) {
			// Twice: the statement is a SELECT, and its own answer must
			// not be served from the cache either.
			q := "with x as (update " + table + " set v = v + $1 returning v) select count(*)::text, sum(v)::text from x"
			expectRows(t, "first CTE", c, []string{"2|32"}, q, 1)
			expectRows(t, "second CTE", c, []string{"2|34"}, q, 1)
		},
		want: []string{"2|34"},
	},
	{
		name:  "CTE INSERT",
		write: sqlWrite("with x as (insert into %[1]s values ($1, $2) returning id) select id from x", 3, 30),
		want:  []string{"3|60"},
	},
	{
		name:  "CTE DELETE",
		write: sqlWrite("with x as (delete from %[1]s where id = $1 returning id) select id from x", 1),
		want:  []string{"1|20"},
	},
	{
		name:  "TRUNCATE",
		write: sqlWrite("truncate %[1]s"),
		want:  []string{"0|<null>"},
	},
	{
		name: "pgx CopyFrom",
		write: func(t *testing.T, sc *cacheSidecar, pg *testenv.Postgres, _ cacheClient, table, _ string) {
			conn := pgxConnect(t, sc.SuperURL(pg), pgx.QueryExecModeCacheStatement)
			n, err := conn.CopyFrom(ctxT(t), pgx.Identifier{table}, []string{"id", "v"}, pgx.CopyFromRows([][]any{{int32(3), int32(30)}, {int32(4), int32(40)}}))
			if err != nil || n != 2 {
				t.Fatalf("CopyFrom: %d rows, %v", n, err)
			}
		},
		want: []string{"4|100"},
		once: true,
	},
	{
		name: "COPY FROM STDIN text",
		write: func(t *testing.T, sc *cacheSidecar, pg *testenv.Postgres, _ cacheClient, table, _ string) {
			conn := pgxConnect(t, sc.SuperURL(pg), pgx.QueryExecModeSimpleProtocol)
			tag, err := conn.PgConn().CopyFrom(ctxT(t), strings.NewReader("3\t30\n"), "COPY "+table+" FROM STDIN")
			if err != nil || tag.RowsAffected() != 1 {
				t.Fatalf("COPY FROM STDIN: %v, %v", tag, err)
			}
		},
		want: []string{"3|60"},
		once: true,
	},
	// Writes the statement's text does not show.
	{
		name:  "write inside a VOLATILE function called by SELECT",
		setup: "create function %[2]s() returns int volatile language plpgsql as $$ begin update %[1]s set v = v * 10; return 1; end $$",
		write: func(t *testing.T, _ *cacheSidecar, _ *testenv.Postgres, c cacheClient, table, name string) {
			expectRows(t, "the function", c, []string{"1"}, "select "+name+"()::text")
		},
		want: []string{"2|300"},
	},
	{
		name: "write by a trigger on another table",
		setup: "create table %[2]s (id int); " +
			"create function %[2]s_f() returns trigger language plpgsql as $$ begin update %[1]s set v = v + new.id; return new; end $$; " +
			"create trigger %[2]s_t after insert on %[2]s for each row execute function %[2]s_f()",
		write: sqlWrite("insert into %[2]s values ($1)", 5),
		want:  []string{"2|40"},
	},
	{
		name:  "write in a DO block",
		write: sqlWrite("do $$ begin update %[1]s set v = 0 where id = 1; end $$"),
		want:  []string{"2|20"},
	},
	{
		// A view's answer depends on tables its text does not name: the
		// cache does not answer reads of views.
		name:     "read through a view",
		setup:    "create view %[2]s as select * from %[1]s",
		read:     "select count(*)::text, sum(v)::text from %[2]s",
		write:    sqlWrite("update %[1]s set v = $1 where id = $2", 0, 1),
		want:     []string{"2|20"},
		bypassed: true,
	},
}

// TestCacheInvalidatedByWrites: for each kind of write through the sidecar,
// a read warmed (and hit) before the write answers with the new data after
// it.
func TestCacheInvalidatedByWrites(t *testing.T) {
	t.Parallel()
	pg := env.Postgres(t)
	forEachCacheTier(t, pg, func(t *testing.T, sc *cacheSidecar) {
		for _, w := range cacheWrites {
			t.Run(w.name, func(t *testing.T) {
				protocols := cacheProtocols
				if w.once {
					protocols = protocols[1:2]
				}
				for _, p := range protocols {
					t.Run(p.name, func(t *testing.T) {
						testCacheWrite(t, sc, pg, p, w)
					})
				}
			})
		}
	})
}

func testCacheWrite(t *testing.T, sc *cacheSidecar, pg *testenv.Postgres, p cacheProtocol, w cacheWrite) {
	ctx := ctxT(t)
	table := createTable(t, pg, "cache_w", "id int primary key, v int")
	name := uniq("cache_wx")
	if err := pg.Exec(ctx, "insert into "+table+" values (1, 10), (2, 20)"); err != nil {
		t.Fatal(err)
	}
	if w.setup != "" {
		if err := pg.Exec(ctx, fmt.Sprintf(w.setup, table, name)); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			pg.Exec(ctx, fmt.Sprintf("drop view if exists %[1]s; drop table if exists %[1]s cascade; drop function if exists %[1]s() cascade; drop function if exists %[1]s_f() cascade", name))
		})
	}
	read := "select count(*)::text, sum(v)::text from %[1]s"
	if w.read != "" {
		read = w.read
	}
	read = fmt.Sprintf(read, table, name)
	reader := p.connect(t, sc.SuperURL(pg))
	writer := p.connect(t, sc.SuperURL(pg))
	if w.bypassed {
		sc.expectNoHits(t, "a read the cache must not answer", func() {
			for range 3 {
				expectRows(t, "reader before the write", reader, []string{"2|30"}, read)
			}
		})
	} else {
		sc.readUntilHit(t, "warm", func() { expectRows(t, "reader before the write", reader, []string{"2|30"}, read) })
	}
	invalidations := sc.Metrics(t)[metricInvalidations]
	w.write(t, sc, pg, writer, table, name)
	expectRows(t, "reader after the write", reader, w.want, read)
	expectRows(t, "reader after the write, again", reader, w.want, read)
	expectRows(t, "writer after its write", writer, w.want, read)
	if after := sc.Metrics(t)[metricInvalidations]; after <= invalidations {
		t.Errorf("after the write (%s) to a table whose read was cached, %s stayed at %v", w.name, metricInvalidations, after)
	}
}
