package integration

// Session settings in transaction mode: clients that take turns on a
// single backend each keep seeing their own SET, RESET and set_config
// results, while SET LOCAL ends with its transaction, as on PostgreSQL.

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgsidecar/pgsidecar/internal/testenv"
	"github.com/pgsidecar/pgsidecar/pool"
	"github.com/pgsidecar/pgsidecar/proxy"
	"github.com/pgsidecar/pgsidecar/sqlinfo"
)

// mustExec runs sql on conn and fails t on an error.
func mustExec(t testing.TB, conn *pgx.Conn, sql string) {
	t.Helper()
	if _, err := conn.Exec(ctxT(t), sql); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// expectString fails t unless the one-value query sql answers want on conn.
func expectString(t testing.TB, who string, conn *pgx.Conn, sql, want string, args ...any) {
	t.Helper()
	var got string
	if err := conn.QueryRow(ctxT(t), sql, args...).Scan(&got); err != nil {
		t.Fatalf("%s: %s: %v", who, sql, err)
	}
	if got != want {
		t.Fatalf("%s: %s = %q, want %q", who, sql, got, want)
	}
}

func TestTxSessionSettingsIsolated(t *testing.T) {
	t.Parallel()
	pg := env.Postgres(t)
	ctx := ctxT(t)

	// One unqualified table name, in a schema of its own and in public,
	// with different contents.
	schema, table := twoTables(t, ctx, pg, "txsp",
		"(v text); insert into %s values ('schema_a')",
		"(v text); insert into %s values ('public')")
	direct := pgxConnect(t, directURL(pg), pgx.QueryExecModeSimpleProtocol)
	defaultPath := queryString(t, direct, "show search_path")
	defaultTZ := queryString(t, direct, "show TimeZone")
	tsQuery := "select '2020-01-01 00:00:00+00'::timestamptz::text"
	defaultTS := queryString(t, direct, tsQuery)
	selectV := "select v from " + table

	// pair is two clients of a sidecar with one backend, so that each of
	// their transactions runs where the other's ran last.
	pair := func(t *testing.T) (sc *sidecar, a, b *pgx.Conn) {
		sc = txSidecar(t, pg, 1, proxy.Config{}, pool.Config{})
		a = pgxConnect(t, sc.SuperURL(pg), pgx.QueryExecModeCacheStatement)
		b = pgxConnect(t, sc.SuperURL(pg), pgx.QueryExecModeCacheStatement)
		if pa, pb := backendPID(t, a), backendPID(t, b); pa != pb {
			t.Fatalf("clients on backends %d and %d; the pool has one", pa, pb)
		}
		return sc, a, b
	}

	t.Run("search_path", func(t *testing.T) {
		t.Parallel()
		sc, a, b := pair(t)
		// A prepares the query with the default path first: on
		// PostgreSQL a statement is parsed again when search_path
		// changes, so it follows the SET.
		expectString(t, "A before SET", a, selectV, "public")
		mustExec(t, a, "SET search_path TO "+schema)
		before := sc.Server.Stats().SettingsSyncs
		const turns = 20
		for i := range turns {
			expectString(t, "A", a, selectV, "schema_a")
			expectString(t, "B", b, selectV, "public")
			expectString(t, "A", a, "select v || $1::text from "+table, fmt.Sprintf("schema_a%d", i), fmt.Sprint(i))
			expectString(t, "B", b, "select v || $1::text from "+table, fmt.Sprintf("public%d", i), fmt.Sprint(i))
		}
		expectString(t, "A", a, "show search_path", schema)
		expectString(t, "B", b, "show search_path", defaultPath)
		if syncs := sc.Server.Stats().SettingsSyncs - before; syncs < 2*turns {
			t.Errorf("clients with different settings took %d turns on one backend, but SettingsSyncs grew by %d", 4*turns, syncs)
		}

		// RESET returns to the default.
		mustExec(t, a, "RESET search_path")
		expectString(t, "B", b, selectV, "public")
		expectString(t, "A after RESET", a, selectV, "public")
		expectString(t, "A after RESET", a, "show search_path", defaultPath)

		// set_config(..., false) is a SET too.
		expectString(t, "A", a, "select set_config('search_path', $1, false)", schema, schema)
		expectString(t, "B", b, selectV, "public")
		expectString(t, "A after set_config", a, selectV, "schema_a")
		expectString(t, "B", b, "show search_path", defaultPath)
		expectString(t, "A after set_config", a, "show search_path", schema)
		mustExec(t, a, "RESET ALL")

		// SET LOCAL and set_config(..., true) end with the transaction.
		for _, set := range []string{
			"SET LOCAL search_path TO " + schema,
			fmt.Sprintf("select set_config('search_path', '%s', true)", schema),
		} {
			tx, err := a.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := tx.Exec(ctx, set); err != nil {
				t.Fatal(err)
			}
			var v string
			if err := tx.QueryRow(ctx, selectV).Scan(&v); err != nil || v != "schema_a" {
				t.Fatalf("A inside the transaction after %s: %q, %v", set, v, err)
			}
			if err := tx.Commit(ctx); err != nil {
				t.Fatal(err)
			}
			expectString(t, "A after "+set+" and COMMIT", a, selectV, "public")
			expectString(t, "A after "+set+" and COMMIT", a, "show search_path", defaultPath)
			expectString(t, "B", b, selectV, "public")
		}
	})

	t.Run("TimeZone", func(t *testing.T) {
		t.Parallel()
		_, a, b := pair(t)
		tz, tzTS := "Asia/Tokyo", "2020-01-01 09:00:00+09"
		if defaultTZ == tz {
			tz, tzTS = "America/New_York", "2019-12-31 19:00:00-05"
		}
		mustExec(t, a, "SET TimeZone = '"+tz+"'")
		for range 10 {
			expectString(t, "A", a, "show TimeZone", tz)
			expectString(t, "B", b, "show TimeZone", defaultTZ)
			expectString(t, "A", a, tsQuery, tzTS)
			expectString(t, "B", b, tsQuery, defaultTS)
			expectString(t, "A", a, "select $1::timestamptz::text", tzTS, "2020-01-01 00:00:00+00")
			expectString(t, "B", b, "select $1::timestamptz::text", defaultTS, "2020-01-01 00:00:00+00")
		}
		// What each driver was told is what its session has: the settings
		// pgsidecar applies when switching clients are not relayed.
		if got := a.PgConn().ParameterStatus("TimeZone"); got != tz {
			t.Errorf("A's ParameterStatus TimeZone = %q, want %q", got, tz)
		}
		if got := b.PgConn().ParameterStatus("TimeZone"); got != defaultTZ {
			t.Errorf("B's ParameterStatus TimeZone = %q, want %q", got, defaultTZ)
		}
	})

	t.Run("statement_timeout", func(t *testing.T) {
		t.Parallel()
		_, a, b := pair(t)
		mustExec(t, a, "SET statement_timeout = '100ms'")
		for range 2 {
			_, err := a.Exec(ctx, "select pg_sleep(0.4)")
			if code := pgCode(err); code != "57014" {
				t.Fatalf("A with statement_timeout 100ms, pg_sleep(0.4): %v; want SQLSTATE 57014", err)
			}
			if _, err := b.Exec(ctx, "select pg_sleep(0.2)"); err != nil {
				t.Fatalf("B without statement_timeout, pg_sleep(0.2): %v", err)
			}
			expectString(t, "A", a, "show statement_timeout", "100ms")
			expectString(t, "B", b, "show statement_timeout", "0")
		}
	})

	// Regression (fixed): a custom (placeholder)
	// setting such as app.tenant is not listed in pg_settings, so the
	// settings read back after SET never include it: the client's record
	// does not change, the next client on the backend gets no RESET ALL
	// and sees the value, and the client that set it loses it on any
	// other backend.
	t.Run("custom GUC", func(t *testing.T) {
		t.Parallel()
		_, a, b := pair(t)
		check := func(who string, conn *pgx.Conn, want string) {
			t.Helper()
			var got string
			if err := conn.QueryRow(ctx, "select coalesce(current_setting('app.tenant', true), '')").Scan(&got); err != nil {
				t.Fatalf("%s: %v", who, err)
			}
			if got != want {
				t.Errorf("%s: current_setting('app.tenant') = %q, want %q", who, got, want)
			}
		}
		mustExec(t, a, "set app.tenant = '42'")
		// On PostgreSQL B's session never defined app.tenant (NULL); a
		// backend where another client defined it knows the name with an
		// empty value after RESET ALL. Either way not 42.
		for i := range 3 {
			check(fmt.Sprintf("A, turn %d", i), a, "42")
			check(fmt.Sprintf("B, turn %d", i), b, "")
		}
		mustExec(t, b, "set app.tenant = '7'")
		check("A after B set 7", a, "42")
		check("B after B set 7", b, "7")

		// On a pool of two, A's setting must follow A to the other
		// backend.
		sc2 := txSidecar(t, pg, 2, proxy.Config{}, pool.Config{})
		c := pgxConnect(t, sc2.SuperURL(pg), pgx.QueryExecModeCacheStatement)
		pidX := txPID(t, c, func(tx pgx.Tx) {
			if _, err := tx.Exec(ctx, "set app.tenant = '42'"); err != nil {
				t.Fatal(err)
			}
		})
		release := holdBackend(t, sc2, pg, pidX, 2)
		check("client on the other backend", c, "42")
		release()
	})
}

// TestTxStatementPreparedAfterSetInSameTransaction: a client that changes
// search_path and prepares a statement in the same transaction, and
// another client preparing the same text with the default search_path,
// on the same backend, where the two paths name tables of different
// shapes. On PostgreSQL each gets its own table's rows.
//
// Regression (fixed): the server statement's name is
// derived from the settings the client had when the transaction began
// (they are read back only at its end), so A's statement is filed under
// the default settings, B's Parse is answered from it, and B's Describe
// fails with 0A000 "cached plan must not change result type".
func TestTxStatementPreparedAfterSetInSameTransaction(t *testing.T) {
	t.Parallel()
	pg := env.Postgres(t)
	ctx := ctxT(t)
	schema, table := twoTables(t, ctx, pg, "txshape",
		"(v int); insert into %s values (1)",
		"(v text, w text); insert into %s values ('public', 'x')")
	query := "select * from " + table + " where $1::int > 0"
	outcome := func(url string) []string {
		a := pgxConnect(t, url, pgx.QueryExecModeCacheStatement)
		b := pgxConnect(t, url, pgx.QueryExecModeCacheStatement)
		var out []string
		note := func(who string, err error, vals ...any) {
			if err != nil {
				out = append(out, who+": "+err.Error())
			} else {
				out = append(out, fmt.Sprintf("%s: %v", who, vals))
			}
		}
		tx, err := a.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec(ctx, "SET search_path TO "+schema); err != nil {
			t.Fatal(err)
		}
		var n int
		err = tx.QueryRow(ctx, query, 1).Scan(&n)
		note("A in its transaction", err, n)
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
		var v, w string
		err = b.QueryRow(ctx, query, 1).Scan(&v, &w)
		note("B", err, v, w)
		n = 0
		err = a.QueryRow(ctx, query, 1).Scan(&n)
		note("A after", err, n)
		return out
	}
	want := outcome(directURL(pg))
	got := outcome(txSidecar(t, pg, 1, proxy.Config{}, pool.Config{}).SuperURL(pg))
	if !slices.Equal(got, want) {
		t.Fatalf("through the sidecar: %q\ndirectly:            %q", got, want)
	}
}

// twoTables creates one table name twice, in a new schema and in public,
// each from a definition suffix ("(columns); insert into %s ...", where %s
// is the qualified name), dropped at the end of the test. It returns the
// schema and the unqualified table name.
func twoTables(t *testing.T, ctx context.Context, pg *testenv.Postgres, prefix, inSchema, inPublic string) (schema, table string) {
	t.Helper()
	schema, table = uniq("txsch"), uniq(prefix)
	for _, sql := range []string{
		"create schema " + schema,
		"create table " + schema + "." + table + " " + fmt.Sprintf(inSchema, schema+"."+table),
		"create table public." + table + " " + fmt.Sprintf(inPublic, "public."+table),
	} {
		if err := pg.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		pg.Exec(ctx, "drop schema "+schema+" cascade")
		pg.Exec(ctx, "drop table public."+table)
	})
	return schema, table
}

// TestTxRoleIsolated: SET ROLE and SET SESSION AUTHORIZATION stay with the
// client that ran them. RESET ALL leaves both alone (PostgreSQL marks them
// GUC_NO_RESET_ALL), so a backend that served such a client must have them
// reset by name before another client's transaction.
func TestTxRoleIsolated(t *testing.T) {
	t.Parallel()
	pg := env.Postgres(t)
	ctx := ctxT(t)
	role := uniq("txrole")
	if err := pg.Exec(ctx, "create role "+role); err != nil {
		t.Fatal(err)
	}
	sc := txSidecar(t, pg, 1, proxy.Config{}, pool.Config{})
	a := pgxConnect(t, sc.SuperURL(pg), pgx.QueryExecModeCacheStatement)
	b := pgxConnect(t, sc.SuperURL(pg), pgx.QueryExecModeCacheStatement)
	if pa, pb := backendPID(t, a), backendPID(t, b); pa != pb {
		t.Fatalf("clients on backends %d and %d; the pool has one", pa, pb)
	}
	for _, set := range []string{"set role " + role, "set session authorization " + role} {
		mustExec(t, a, set)
		for i := range 3 {
			expectString(t, fmt.Sprintf("A after %q, turn %d", set, i), a, "select current_user::text", role)
			expectString(t, fmt.Sprintf("B after A's %q, turn %d", set, i), b, "select current_user::text", pg.SuperUser)
			expectString(t, "B's session user", b, "select session_user::text", pg.SuperUser)
		}
		mustExec(t, a, "reset session authorization")
		mustExec(t, a, "reset role")
		expectString(t, "A after its resets", a, "select current_user::text", pg.SuperUser)
	}
}

// TestTxStateChangedInsideDO: a DO block (or a procedure) can change the
// session's settings, or create temporary tables, where the statement's text
// does not show it. The settings are read back after it, so they neither
// leak to the next client on the backend nor get lost for this one, and a
// temporary table made that way pins the client to its backend.
func TestTxStateChangedInsideDO(t *testing.T) {
	t.Parallel()
	pg := env.Postgres(t)
	ctx := ctxT(t)
	schema, table := twoTables(t, ctx, pg, "txdo",
		"(v text); insert into %s values ('schema_a')",
		"(v text); insert into %s values ('public')")
	sc := txSidecar(t, pg, 1, proxy.Config{}, pool.Config{})
	a := pgxConnect(t, sc.SuperURL(pg), pgx.QueryExecModeSimpleProtocol)
	b := pgxConnect(t, sc.SuperURL(pg), pgx.QueryExecModeSimpleProtocol)
	selectV := "select v from " + table

	mustExec(t, a, "do $$ begin perform set_config('search_path', '"+schema+"', false); end $$")
	for i := range 3 {
		expectString(t, fmt.Sprintf("A after its DO, turn %d", i), a, selectV, "schema_a")
		expectString(t, fmt.Sprintf("B after A's DO, turn %d", i), b, selectV, "public")
	}

	tmp := uniq("txdo_tmp")
	mustExec(t, a, "do $$ begin create temp table "+tmp+" (x int); insert into "+tmp+" values (7); end $$")
	expectString(t, "A reads its temporary table", a, "select x::text from "+tmp, "7")
	if got := sc.Server.Stats().Pins[sqlinfo.PinTempTable]; got != 1 {
		t.Errorf("pins for a temporary table made inside DO = %d, want 1", got)
	}
	expectString(t, "A reads its temporary table again", a, "select x::text from "+tmp, "7")
}
