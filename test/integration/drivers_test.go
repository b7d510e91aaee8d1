package integration

// Real drivers through the sidecar in session mode: pgx (every query exec
// mode, batches, savepoints, COPY) and lib/pq (database/sql, prepared
// statements, COPY, errors, LISTEN/NOTIFY), checked against the same work
// done directly on PostgreSQL where the answer must be byte-identical. The
// last part checks that nothing a session sets leaks to the next client
// of the same backend.

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/lib/pq"

	"github.com/pgsidecar/pgsidecar/internal/testenv"
	"github.com/pgsidecar/pgsidecar/pool"
	"github.com/pgsidecar/pgsidecar/proxy"
)

// directURL is pg's superuser straight to PostgreSQL.
func directURL(pg *testenv.Postgres) string {
	return pg.URL(pg.SuperUser, pg.SuperPassword, "postgres")
}

func pgxConnect(t testing.TB, url string, mode pgx.QueryExecMode) *pgx.Conn {
	t.Helper()
	ctx := ctxT(t)
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	cfg.DefaultQueryExecMode = mode
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// createTable makes a table with a unique name in the postgres database,
// dropped when the test ends.
func createTable(t testing.TB, pg *testenv.Postgres, prefix, columns string) string {
	t.Helper()
	name := uniq(prefix)
	if err := pg.Exec(ctxT(t), "create table "+name+" ("+columns+")"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := pg.Exec(ctx, "drop table if exists "+name); err != nil {
			t.Errorf("drop %s: %v", name, err)
		}
	})
	return name
}

// rawResult is a query's answer as bytes on the wire.
type rawResult struct {
	Fields []string // name, type OID and format of each column
	Rows   [][][]byte
	Tag    string
}

func queryRaw(t testing.TB, conn *pgx.Conn, sql string, args ...any) rawResult {
	t.Helper()
	rows, err := conn.Query(ctxT(t), sql, args...)
	if err != nil {
		t.Fatalf("%.60s: %v", sql, err)
	}
	defer rows.Close()
	var res rawResult
	for _, f := range rows.FieldDescriptions() {
		res.Fields = append(res.Fields, fmt.Sprintf("%s:%d:%d", f.Name, f.DataTypeOID, f.Format))
	}
	for rows.Next() {
		var row [][]byte
		for _, v := range rows.RawValues() {
			row = append(row, bytes.Clone(v)) // keeps NULL (nil) apart from ''
		}
		res.Rows = append(res.Rows, row)
	}
	if err := rows.Err(); err != nil {
		t.Fatalf("%.60s: %v", sql, err)
	}
	res.Tag = rows.CommandTag().String()
	return res
}

var execModes = []struct {
	name string
	mode pgx.QueryExecMode
}{
	{"CacheStatement", pgx.QueryExecModeCacheStatement},
	{"CacheDescribe", pgx.QueryExecModeCacheDescribe},
	{"DescribeExec", pgx.QueryExecModeDescribeExec},
	{"Exec", pgx.QueryExecModeExec},
	{"SimpleProtocol", pgx.QueryExecModeSimpleProtocol},
}

const typedSQL = `select $1::int4 as i4, $2::int8 as i8, $3::text as t, $4::numeric as n,
	$5::timestamptz as ts, $6::bytea as b, $7::int4[] as ia, $8::text[] as ta, $9::jsonb as jb,
	$10::json as j, $11::text as nul, $12::text as uni, $13::bool as bo, $14::float8 as f8,
	$15::interval as iv, $16::date as d, $17::int4 as nul_i4`

func TestPgxResultsMatchDirectInEveryExecMode(t *testing.T) {
	t.Parallel()
	pg := env.Postgres(t)
	sc := startSidecar(t, pg, sidecarOptions{Pool: pool.Config{PoolSize: 2}})

	unicode := "héllo wörld — 日本語 🎉 ∑ \t tab"
	blob := []byte{0, 1, 2, 0xfe, 0xff, '\\', '\'', '"'}
	args := []any{
		int32(-42), int64(1) << 40, "plain 'quoted' text", "12345678901234567890.123456789",
		time.Date(2024, 2, 29, 13, 14, 15, 123456000, time.FixedZone("", 5*3600+1800)),
		blob, []int32{1, -2, 3}, []string{"a", "b,c", `"q"`, "", "日本", "NULL"},
		`{"k": [1, "two", null], "u": "ü"}`, `{"a": 1,   "b": [true, null]}`,
		nil, unicode, true, math.Pi, "1 day 02:03:04.5",
		time.Date(1999, 12, 31, 0, 0, 0, 0, time.UTC), (*int32)(nil),
	}
	big := strings.Repeat("ß€𝄞x", 1<<18) // 2.5 MiB: many relay reads
	queries := []struct {
		sql  string
		args []any
	}{
		{typedSQL, args},
		{`select g, g::numeric / 7 as q, repeat(chr(945 + g % 20), g % 50) as s,
			'2000-01-01 00:00+00'::timestamptz + g * interval '1 hour' as ts, g % 3 = 0 as b,
			case when g % 5 = 0 then null else g end as n
			from generate_series(1, 2000) g`, nil},
		{`select $1::text as big, length($1::text) as len, decode(repeat('ab', 300000), 'hex') as blob`, []any{big}},
		{`select 1 where false`, nil},
	}

	for _, m := range execModes {
		t.Run(m.name, func(t *testing.T) {
			proxied := pgxConnect(t, sc.SuperURL(pg), m.mode)
			direct := pgxConnect(t, directURL(pg), m.mode)
			for _, q := range queries {
				got := queryRaw(t, proxied, q.sql, q.args...)
				want := queryRaw(t, direct, q.sql, q.args...)
				if !reflect.DeepEqual(got, want) {
					t.Fatalf("%.60s: answer through the sidecar differs from PostgreSQL's\nsidecar: %.600v\ndirect:  %.600v", q.sql, got, want)
				}
				if len(got.Rows) == 0 && !strings.Contains(q.sql, "where false") {
					t.Fatalf("%.60s: no rows", q.sql)
				}
			}

			// The values also decode to what was sent.
			var gotUni string
			var gotBlob []byte
			var gotNull *string
			var gotI8 int64
			if err := proxied.QueryRow(ctxT(t), typedSQL, args...).Scan(
				nil, &gotI8, nil, nil, nil, &gotBlob, nil, nil, nil, nil, &gotNull, &gotUni, nil, nil, nil, nil, nil); err != nil {
				t.Fatal(err)
			}
			if gotUni != unicode || !bytes.Equal(gotBlob, blob) || gotNull != nil || gotI8 != 1<<40 {
				t.Fatalf("round trip: %q %x %v %d", gotUni, gotBlob, gotNull, gotI8)
			}
			var n int
			if err := proxied.QueryRow(ctxT(t), "select length($1::text)", big).Scan(&n); err != nil || n != 4<<18 {
				t.Fatalf("length of a 2.5 MiB parameter: %d, %v", n, err)
			}

			// The mode really took its protocol path on the backend: only
			// the statement cache leaves named prepared statements behind.
			// (In transaction mode statements live on under pgsidecar's
			// names on shared backends, so this says nothing there.)
			if suitePoolMode() == proxy.PoolModeTransaction {
				return
			}
			var prepared int
			if err := proxied.QueryRow(ctxT(t), "select count(*) from pg_prepared_statements where statement = $1",
				pgx.QueryExecModeSimpleProtocol, typedSQL).Scan(&prepared); err != nil {
				t.Fatal(err)
			}
			if want := map[bool]int{true: 1, false: 0}[m.mode == pgx.QueryExecModeCacheStatement]; prepared != want {
				t.Fatalf("%d prepared statements for the typed query, want %d", prepared, want)
			}
		})
	}
}

// batchOutcome runs a batch with a failing query in the middle and
// describes what each query returned.
func batchOutcome(t testing.TB, conn *pgx.Conn, table string) []string {
	t.Helper()
	ctx := ctxT(t)
	outcome := func(what string, err error) string {
		var pgErr *pgconn.PgError
		switch {
		case errors.As(err, &pgErr):
			return "ERROR " + pgErr.Code
		case err != nil:
			return "error: " + err.Error()
		}
		return what
	}
	b := &pgx.Batch{}
	b.Queue("insert into "+table+" values ($1)", 1)
	b.Queue("select count(*) from " + table)
	b.Queue("select 10 / $1::int", 0)
	b.Queue("select 'after'::text")
	br := conn.SendBatch(ctx, b)
	var out []string
	ct, err := br.Exec()
	out = append(out, outcome(ct.String(), err))
	var n int
	err = br.QueryRow().Scan(&n)
	out = append(out, outcome(fmt.Sprintf("count=%d", n), err))
	var q int
	err = br.QueryRow().Scan(&q)
	out = append(out, outcome(fmt.Sprintf("quotient=%d", q), err))
	var s string
	err = br.QueryRow().Scan(&s)
	out = append(out, outcome("text="+s, err))
	out = append(out, outcome("closed", br.Close()))

	// The connection is usable and idle after the failed batch.
	var one int
	if err := conn.QueryRow(ctx, "select 1").Scan(&one); err != nil || one != 1 {
		t.Fatalf("query after the failed batch: %d, %v", one, err)
	}
	if st := conn.PgConn().TxStatus(); st != 'I' {
		t.Fatalf("transaction status %q after the batch", st)
	}
	err = conn.QueryRow(ctx, "select count(*) from "+table).Scan(&n)
	out = append(out, outcome(fmt.Sprintf("rows kept=%d", n), err))
	return out
}

func TestPgxBatchWithFailingQuery(t *testing.T) {
	t.Parallel()
	pg := env.Postgres(t)
	sc := startSidecar(t, pg, sidecarOptions{Pool: pool.Config{PoolSize: 2}})
	for _, m := range execModes {
		if m.mode != pgx.QueryExecModeCacheStatement && m.mode != pgx.QueryExecModeCacheDescribe && m.mode != pgx.QueryExecModeSimpleProtocol {
			continue
		}
		t.Run(m.name, func(t *testing.T) {
			got := batchOutcome(t, pgxConnect(t, sc.SuperURL(pg), m.mode), createTable(t, pg, "batch", "id int"))
			want := batchOutcome(t, pgxConnect(t, directURL(pg), m.mode), createTable(t, pg, "batch", "id int"))
			if !slices.Equal(got, want) {
				t.Fatalf("batch through the sidecar: %q\ndirectly:                %q", got, want)
			}
			if got[0] != "INSERT 0 1" || got[1] != "count=1" || got[2] != "ERROR 22012" || got[len(got)-1] != "rows kept=0" {
				t.Fatalf("batch outcome %q: want the insert and count to succeed, the division to fail with 22012, and the batch's implicit transaction rolled back", got)
			}
		})
	}
}

func TestPgxTransactionsWithSavepoints(t *testing.T) {
	t.Parallel()
	pg := env.Postgres(t)
	sc := startSidecar(t, pg, sidecarOptions{Pool: pool.Config{PoolSize: 2}})
	ctx := ctxT(t)
	table := createTable(t, pg, "savepoints", "id int primary key")
	conn := pgxConnect(t, sc.SuperURL(pg), pgx.QueryExecModeCacheStatement)

	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	mustExec := func(q interface {
		Exec(context.Context, string, ...any) (pgconn.CommandTag, error)
	}, sql string, args ...any) {
		t.Helper()
		if _, err := q.Exec(ctx, sql, args...); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	mustExec(tx, "insert into "+table+" values ($1)", 1)
	sp, err := tx.Begin(ctx) // SAVEPOINT
	if err != nil {
		t.Fatal(err)
	}
	mustExec(sp, "insert into "+table+" values ($1)", 2)
	_, err = sp.Exec(ctx, "insert into "+table+" values ($1)", 1)
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "23505" {
		t.Fatalf("duplicate insert in savepoint: %v, want 23505", err)
	}
	if st := conn.PgConn().TxStatus(); st != 'E' {
		t.Fatalf("transaction status %q after an error, want E", st)
	}
	if err := sp.Rollback(ctx); err != nil { // ROLLBACK TO SAVEPOINT
		t.Fatal(err)
	}
	if st := conn.PgConn().TxStatus(); st != 'T' {
		t.Fatalf("transaction status %q after rollback to savepoint, want T", st)
	}
	mustExec(tx, "insert into "+table+" values ($1)", 3)
	sp2, err := tx.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	mustExec(sp2, "insert into "+table+" values ($1)", 4)
	if err := sp2.Commit(ctx); err != nil { // RELEASE SAVEPOINT
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}

	// A transaction rolled back leaves nothing.
	tx, err = conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	mustExec(tx, "insert into "+table+" values ($1)", 5)
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}

	rows, err := conn.Query(ctx, "select id from "+table+" order by id")
	if err != nil {
		t.Fatal(err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[int32])
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(ids, []int32{1, 3, 4}) {
		t.Fatalf("committed ids %v, want [1 3 4]", ids)
	}
	if st := conn.PgConn().TxStatus(); st != 'I' {
		t.Fatalf("transaction status %q at the end", st)
	}
}

func TestPgxCopyFromAndCopyTo(t *testing.T) {
	t.Parallel()
	pg := env.Postgres(t)
	sc := startSidecar(t, pg, sidecarOptions{Pool: pool.Config{PoolSize: 2}})
	ctx := ctxT(t)
	table := createTable(t, pg, "copy", "id int4, name text, payload bytea, amount numeric")
	conn := pgxConnect(t, sc.SuperURL(pg), pgx.QueryExecModeCacheStatement)

	const rowsN = 10000
	var wantSum, wantLen int64
	n, err := conn.CopyFrom(ctx, pgx.Identifier{table}, []string{"id", "name", "payload", "amount"},
		pgx.CopyFromSlice(rowsN, func(i int) ([]any, error) {
			name := fmt.Sprintf("row %d ünïcode\ttab\nnewline", i)
			wantSum += int64(i + 1)
			wantLen += int64(len([]rune(name)))
			return []any{int32(i + 1), name, bytes.Repeat([]byte{byte(i)}, i%64), fmt.Sprintf("%d.%02d", i, i%100)}, nil
		}))
	if err != nil {
		t.Fatal(err)
	}
	if n != rowsN {
		t.Fatalf("CopyFrom reported %d rows, want %d", n, rowsN)
	}
	var count, sum, length int64
	var amount string
	if err := conn.QueryRow(ctx, "select count(*), sum(id), sum(length(name)), sum(amount)::text from "+table).Scan(&count, &sum, &length, &amount); err != nil {
		t.Fatal(err)
	}
	if count != rowsN || sum != wantSum || length != wantLen {
		t.Fatalf("count %d sum %d length %d, want %d %d %d", count, sum, length, rowsN, wantSum, wantLen)
	}

	direct := pgxConnect(t, directURL(pg), pgx.QueryExecModeCacheStatement)
	for _, copySQL := range []string{
		"copy (select * from " + table + " order by id) to stdout",
		"copy (select * from " + table + " order by id) to stdout (format binary)",
		"copy (select * from " + table + " order by id) to stdout (format csv, header)",
	} {
		var got, want bytes.Buffer
		tag, err := conn.PgConn().CopyTo(ctx, &got, copySQL)
		if err != nil {
			t.Fatal(err)
		}
		if tag.RowsAffected() != rowsN {
			t.Fatalf("%s: tag %s", copySQL, tag)
		}
		if _, err := direct.PgConn().CopyTo(ctx, &want, copySQL); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got.Bytes(), want.Bytes()) {
			t.Fatalf("%s: %d bytes through the sidecar differ from %d bytes directly", copySQL, got.Len(), want.Len())
		}
	}

	// The text COPY out, parsed: every id once.
	var out bytes.Buffer
	if _, err := conn.PgConn().CopyTo(ctx, &out, "copy (select id from "+table+") to stdout"); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	var gotSum int64
	for _, l := range lines {
		v, err := strconv.ParseInt(l, 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		gotSum += v
	}
	if len(lines) != rowsN || gotSum != wantSum {
		t.Fatalf("COPY TO gave %d lines summing to %d, want %d and %d", len(lines), gotSum, rowsN, wantSum)
	}

	// A COPY FROM that fails on the server leaves the connection usable.
	_, err = conn.CopyFrom(ctx, pgx.Identifier{table}, []string{"id"}, pgx.CopyFromRows([][]any{{int32(1)}, {"not an int"}}))
	if err == nil {
		t.Fatal("CopyFrom of a bad row succeeded")
	}
	if err := conn.QueryRow(ctx, "select count(*) from "+table).Scan(&count); err != nil || count != rowsN {
		t.Fatalf("after a failed COPY: count %d, %v", count, err)
	}
}

// --- lib/pq through database/sql ---

func pqOpen(t testing.TB, url string) *sql.DB {
	t.Helper()
	db, err := sql.Open("postgres", url)
	if err != nil {
		t.Fatal(err)
	}
	db.SetMaxOpenConns(3)
	t.Cleanup(func() { db.Close() })
	return db
}

func TestPqQueries(t *testing.T) {
	t.Parallel()
	pg := env.Postgres(t)
	sc := startSidecar(t, pg, sidecarOptions{Pool: pool.Config{PoolSize: 3}})
	ctx := ctxT(t)
	db := pqOpen(t, sc.SuperURL(pg))

	unicode := "grüße, 世界 🌍"
	var i int64
	var s string
	var null sql.NullString
	var b []byte
	var f float64
	var ts time.Time
	want := time.Date(2023, 7, 1, 12, 30, 0, 0, time.UTC)
	if err := db.QueryRowContext(ctx, "select $1::int8 * 2, $2::text, $3::text, $4::bytea, $5::float8, $6::timestamptz",
		int64(1)<<40, unicode, nil, []byte{0, 0xff, 'x'}, 2.5, want).Scan(&i, &s, &null, &b, &f, &ts); err != nil {
		t.Fatal(err)
	}
	if i != 1<<41 || s != unicode || null.Valid || !bytes.Equal(b, []byte{0, 0xff, 'x'}) || f != 2.5 || !ts.Equal(want) {
		t.Fatalf("got %d %q %v %x %v %v", i, s, null, b, f, ts)
	}

	rows, err := db.QueryContext(ctx, "select g, repeat('x', g) from generate_series(1, 500) g")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	n := 0
	for rows.Next() {
		var g int
		var x string
		if err := rows.Scan(&g, &x); err != nil {
			t.Fatal(err)
		}
		n++
		if g != n || len(x) != g {
			t.Fatalf("row %d: %d, %d bytes", n, g, len(x))
		}
	}
	if err := rows.Err(); err != nil || n != 500 {
		t.Fatalf("%d rows, %v", n, err)
	}

	// Protocol 3.2 asked for: the sidecar negotiates 3.0 and lib/pq goes on.
	db32 := pqOpen(t, sc.SuperURL(pg, "max_protocol_version=3.2"))
	if err := db32.QueryRowContext(ctx, "select $1::text", "after negotiation").Scan(&s); err != nil || s != "after negotiation" {
		t.Fatalf("lib/pq asking for protocol 3.2: %q, %v", s, err)
	}
}

func TestPqPreparedStatementReused(t *testing.T) {
	t.Parallel()
	pg := env.Postgres(t)
	sc := startSidecar(t, pg, sidecarOptions{Pool: pool.Config{PoolSize: 3}})
	ctx := ctxT(t)
	db := pqOpen(t, sc.SuperURL(pg))

	stmt, err := db.PrepareContext(ctx, "select $1::int * 2, $2::text || '!'")
	if err != nil {
		t.Fatal(err)
	}
	defer stmt.Close()
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 100 {
				var n int
				var s string
				arg := fmt.Sprintf("w%d-%d", w, i)
				if err := stmt.QueryRowContext(ctx, i, arg).Scan(&n, &s); err != nil {
					errs <- err
					return
				}
				if n != 2*i || s != arg+"!" {
					errs <- fmt.Errorf("got %d %q for %d %q", n, s, i, arg)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	// The statement is prepared on the backend, not re-parsed each time.
	conn, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var prepared int
	if err := conn.QueryRowContext(ctx, "select count(*) from pg_prepared_statements where statement = $1",
		"select $1::int * 2, $2::text || '!'").Scan(&prepared); err != nil {
		t.Fatal(err)
	}
	if prepared != 1 {
		t.Fatalf("%d prepared statements on the backend, want 1", prepared)
	}
}

func TestPqTransactions(t *testing.T) {
	t.Parallel()
	pg := env.Postgres(t)
	sc := startSidecar(t, pg, sidecarOptions{Pool: pool.Config{PoolSize: 3}})
	ctx := ctxT(t)
	table := createTable(t, pg, "pqtx", "id int primary key, v text")
	db := pqOpen(t, sc.SuperURL(pg))

	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.ExecContext(ctx, "insert into "+table+" values ($1, $2)", 1, "kept"); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	tx, err = db.BeginTx(ctx, &sql.TxOptions{Isolation: sql.LevelSerializable})
	if err != nil {
		t.Fatal(err)
	}
	var iso string
	if err := tx.QueryRowContext(ctx, "show transaction_isolation").Scan(&iso); err != nil || iso != "serializable" {
		t.Fatalf("isolation %q, %v", iso, err)
	}
	if _, err := tx.ExecContext(ctx, "insert into "+table+" values ($1, $2)", 2, "rolled back"); err != nil {
		t.Fatal(err)
	}
	if err := tx.Rollback(); err != nil {
		t.Fatal(err)
	}
	var got []string
	rows, err := db.QueryContext(ctx, "select v from "+table+" order by id")
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var v string
		rows.Scan(&v)
		got = append(got, v)
	}
	rows.Close()
	if !slices.Equal(got, []string{"kept"}) {
		t.Fatalf("rows %q, want only the committed one", got)
	}
}

func TestPqCopyIn(t *testing.T) {
	t.Parallel()
	pg := env.Postgres(t)
	sc := startSidecar(t, pg, sidecarOptions{Pool: pool.Config{PoolSize: 3}})
	ctx := ctxT(t)
	table := createTable(t, pg, "pqcopy", "id int, name text")
	db := pqOpen(t, sc.SuperURL(pg))

	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	// lib/pq recognises COPY FROM STDIN in a prepared statement.
	stmt, err := tx.PrepareContext(ctx, "COPY "+table+" (id, name) FROM STDIN")
	if err != nil {
		t.Fatal(err)
	}
	const rowsN = 10000
	var wantSum int64
	for i := 1; i <= rowsN; i++ {
		wantSum += int64(i)
		if _, err := stmt.ExecContext(ctx, i, fmt.Sprintf("name\t%d\\ü", i)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := stmt.ExecContext(ctx); err != nil {
		t.Fatal(err)
	}
	if err := stmt.Close(); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	var count, sum int64
	var sample string
	if err := db.QueryRowContext(ctx, "select count(*), sum(id), (select name from "+table+" where id = 42) from "+table).Scan(&count, &sum, &sample); err != nil {
		t.Fatal(err)
	}
	if count != rowsN || sum != wantSum || sample != "name\t42\\ü" {
		t.Fatalf("count %d sum %d sample %q, want %d %d", count, sum, sample, rowsN, wantSum)
	}
}

func TestPqServerErrorsPassThroughUnchanged(t *testing.T) {
	t.Parallel()
	pg := env.Postgres(t)
	sc := startSidecar(t, pg, sidecarOptions{Pool: pool.Config{PoolSize: 3}})
	ctx := ctxT(t)
	table := createTable(t, pg, "pqerr", "id int constraint pqerr_pk primary key, n int check (n > 0)")
	proxied := pqOpen(t, sc.SuperURL(pg))
	direct := pqOpen(t, directURL(pg)+"&application_name=")
	if _, err := proxied.ExecContext(ctx, "insert into "+table+" values (1, 1)"); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		sql  string
		code string
	}{
		{"insert into " + table + " values (1, 1)", "23505"},
		{"insert into " + table + " values (2, -1)", "23514"},
		{"select * from " + table + "_missing", "42P01"},
		{"select 1/0", "22012"},
		{"selec 1", "42601"},
		{"select missing_column from " + table, "42703"},
	} {
		_, err := proxied.ExecContext(ctx, tc.sql)
		got := pq.As(err)
		if got == nil {
			t.Fatalf("%s: %v, want a *pq.Error", tc.sql, err)
		}
		if string(got.Code) != tc.code {
			t.Fatalf("%s: code %s (%s), want %s", tc.sql, got.Code, got.Message, tc.code)
		}
		_, err = direct.ExecContext(ctx, tc.sql)
		want := pq.As(err)
		if want == nil || !reflect.DeepEqual(*got, *want) {
			t.Fatalf("%s: error through the sidecar differs from PostgreSQL's:\nsidecar %#v\ndirect  %#v", tc.sql, got, want)
		}
	}
	var one int
	if err := proxied.QueryRowContext(ctx, "select 1").Scan(&one); err != nil || one != 1 {
		t.Fatalf("after the errors: %d, %v", one, err)
	}
}

func TestPqListenNotify(t *testing.T) {
	t.Parallel()
	pg := env.Postgres(t)
	sc := startSidecar(t, pg, sidecarOptions{Pool: pool.Config{PoolSize: 3}})
	ctx := ctxT(t)
	channel := uniq("pqchan")

	events := make(chan pq.ListenerEventType, 16)
	l := pq.NewListener(sc.SuperURL(pg), 10*time.Millisecond, time.Second, func(ev pq.ListenerEventType, err error) {
		select {
		case events <- ev:
		default:
		}
	})
	defer l.Close()
	select {
	case ev := <-events:
		if ev != pq.ListenerEventConnected {
			t.Fatalf("first listener event %v, want connected", ev)
		}
	case <-ctx.Done():
		t.Fatal("listener never connected")
	}
	if err := l.Listen(channel); err != nil {
		t.Fatal(err)
	}

	db := pqOpen(t, sc.SuperURL(pg))
	if _, err := db.ExecContext(ctx, "select pg_notify($1, $2)", channel, "payload ü"); err != nil {
		t.Fatal(err)
	}
	select {
	case n := <-l.Notify:
		if n == nil || n.Channel != channel || n.Extra != "payload ü" {
			t.Fatalf("notification %+v", n)
		}
	case <-ctx.Done():
		t.Fatal("no notification arrived")
	}
	if err := l.Ping(); err != nil {
		t.Fatalf("listener connection after the notification: %v", err)
	}
}

// --- Session isolation: one backend, clients one after another ---

// backendPID is the real PostgreSQL pid behind conn.
func backendPID(t testing.TB, conn *pgx.Conn) int32 {
	t.Helper()
	var pid int32
	if err := conn.QueryRow(ctxT(t), "select pg_backend_pid()").Scan(&pid); err != nil {
		t.Fatal(err)
	}
	return pid
}

func queryString(t testing.TB, conn *pgx.Conn, sql string) string {
	t.Helper()
	var s string
	if err := conn.QueryRow(ctxT(t), sql).Scan(&s); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return s
}

func TestSessionStateDoesNotLeakToNextClient(t *testing.T) {
	t.Parallel()
	pg := env.Postgres(t)
	sc := startSidecar(t, pg, sidecarOptions{Pool: pool.Config{PoolSize: 1}})
	ctx := ctxT(t)
	role := uniq("leak_role")
	if err := pg.CreateRole(ctx, role, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pg.Exec(context.Background(), "drop role if exists "+role) })
	table := createTable(t, pg, "leak", "id int")
	if err := pg.Exec(ctx, "grant all on "+table+" to "+role); err != nil {
		t.Fatal(err)
	}

	// The defaults, as a fresh direct session sees them.
	direct := pgxConnect(t, directURL(pg), pgx.QueryExecModeCacheStatement)
	defaultPath := queryString(t, direct, "show search_path")
	defaultTZ := queryString(t, direct, "show TimeZone")

	a := pgxConnect(t, sc.SuperURL(pg), pgx.QueryExecModeCacheStatement)
	pidA := backendPID(t, a)
	for _, sql := range []string{
		"SET search_path TO foo",
		"SET TimeZone = 'Asia/Tokyo'",
		"PREPARE leaked_stmt AS select 1",
		"create temp table leaked_temp (x int)",
		"LISTEN leaked_channel",
		"select pg_advisory_lock(424242)",
		"SET ROLE " + role,
		"BEGIN",
		"insert into public." + table + " values (1)",
	} {
		if _, err := a.Exec(ctx, sql); err != nil {
			t.Fatalf("client A: %s: %v", sql, err)
		}
	}
	if got := queryString(t, a, "show search_path"); got != "foo" {
		t.Fatalf("client A search_path %q", got)
	}
	if got := queryString(t, a, "select current_user::text"); got != role {
		t.Fatalf("client A current_user %q", got)
	}
	// A leaves in the middle of its transaction.
	if err := a.Close(ctx); err != nil {
		t.Fatal(err)
	}

	b := pgxConnect(t, sc.SuperURL(pg), pgx.QueryExecModeCacheStatement)
	if pidB := backendPID(t, b); pidB != pidA {
		t.Fatalf("client B got backend %d, A had %d: the single backend was not reused", pidB, pidA)
	}
	for sql, want := range map[string]string{
		"show search_path":          defaultPath,
		"show TimeZone":             defaultTZ,
		"select current_user::text": pg.SuperUser,
		"select count(*)::text from pg_prepared_statements where name = 'leaked_stmt'":                   "0",
		"select count(*)::text from pg_class where relname = 'leaked_temp'":                              "0",
		"select count(*)::text from pg_listening_channels()":                                             "0",
		"select count(*)::text from pg_locks where locktype = 'advisory' and pid = pg_backend_pid()":     "0",
		"select count(*)::text from public." + table:                                                     "0",
		"select current_setting('transaction_isolation') || ' ' || (txid_current_if_assigned() is null)": "read committed true",
	} {
		if got := queryString(t, b, sql); got != want {
			t.Errorf("client B: %s = %q, want %q", sql, got, want)
		}
	}
	if got := b.PgConn().ParameterStatus("TimeZone"); got != defaultTZ {
		t.Errorf("client B was told TimeZone %q at startup, want %q", got, defaultTZ)
	}
}

func TestApplicationNameOfEachClientOnOneBackend(t *testing.T) {
	t.Parallel()
	pg := env.Postgres(t)
	sc := startSidecar(t, pg, sidecarOptions{Pool: pool.Config{PoolSize: 1}})
	var firstPID int32
	for _, app := range []string{"a", "b", ""} {
		var params []string
		if app != "" {
			params = append(params, "application_name="+app)
		}
		conn := pgxConnect(t, sc.SuperURL(pg, params...), pgx.QueryExecModeCacheStatement)
		pid := backendPID(t, conn)
		if firstPID == 0 {
			firstPID = pid
		} else if pid != firstPID {
			t.Fatalf("client %q got backend %d, not the single backend %d", app, pid, firstPID)
		}
		if got := queryString(t, conn, "select current_setting('application_name')"); got != app {
			t.Errorf("client %q: current_setting('application_name') = %q", app, got)
		}
		if got := conn.PgConn().ParameterStatus("application_name"); got != app {
			t.Errorf("client %q: ParameterStatus application_name = %q", app, got)
		}
		conn.Close(ctxT(t))
	}
}

// TestStartupParamHonouredAfterPreviousClientResetItInSession: the proxy
// skips a startup setting whose value it believes the backend already has.
// A client that asked for a setting at startup and put it back to the
// default with SET must not leave the next client believing — or the
// backend not getting — that setting.
func TestStartupParamHonouredAfterPreviousClientResetItInSession(t *testing.T) {
	t.Parallel()
	pg := env.Postgres(t)
	sc := startSidecar(t, pg, sidecarOptions{Pool: pool.Config{PoolSize: 1}})
	ctx := ctxT(t)
	direct := pgxConnect(t, directURL(pg), pgx.QueryExecModeCacheStatement)
	defaultTZ := queryString(t, direct, "show TimeZone")
	tz := "Asia/Tokyo"
	if defaultTZ == tz {
		tz = "Europe/Paris"
	}

	a := pgxConnect(t, sc.SuperURL(pg, "application_name=first", "TimeZone="+tz), pgx.QueryExecModeCacheStatement)
	pid := backendPID(t, a)
	if got := queryString(t, a, "show TimeZone"); got != tz {
		t.Fatalf("client A TimeZone %q, want %q", got, tz)
	}
	for _, sql := range []string{"SET application_name = ''", "SET TimeZone = '" + defaultTZ + "'"} {
		if _, err := a.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
	}
	a.Close(ctx)

	// Same startup settings as A's.
	b := pgxConnect(t, sc.SuperURL(pg, "application_name=first", "TimeZone="+tz), pgx.QueryExecModeCacheStatement)
	if backendPID(t, b) != pid {
		t.Fatal("client B did not get the single backend")
	}
	if got := queryString(t, b, "select current_setting('application_name')"); got != "first" {
		t.Errorf("client B asked for application_name=first at startup; the session has %q", got)
	}
	if got := queryString(t, b, "show TimeZone"); got != tz {
		t.Errorf("client B asked for TimeZone=%s at startup; the session has %q", tz, got)
	}
	b.Close(ctx)

	// No startup settings: what the client is told must be what it has.
	c := pgxConnect(t, sc.SuperURL(pg), pgx.QueryExecModeCacheStatement)
	for _, name := range []string{"application_name", "TimeZone"} {
		told := c.PgConn().ParameterStatus(name)
		has := queryString(t, c, "select current_setting('"+name+"')")
		if told != has {
			t.Errorf("client C was told %s=%q at startup; the session has %q", name, told, has)
		}
	}
}
