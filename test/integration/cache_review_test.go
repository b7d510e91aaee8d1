package integration

// Reviewer's reproductions of result cache correctness bugs. Each test
// states what PostgreSQL answers; a failure is pgsidecar answering
// something else. All run in session pool mode (the cache on the
// transaction relay with hold) and the memory tier unless said otherwise.

import (
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgsidecar/pgsidecar/internal/testenv"
)

// rvTarget is where a review test runs: through a cache sidecar, or, with
// REVIEW_DIRECT=1 (the control run), on PostgreSQL itself, to show that
// each expectation is PostgreSQL's answer.
type rvTarget struct {
	sc       *cacheSidecar // nil: direct
	pg       *testenv.Postgres
	role, pw string
}

var reviewDirect = os.Getenv("REVIEW_DIRECT") == "1"

// reviewMode is the pool mode: the suite's, or REVIEW_MODE.
func reviewMode() string {
	if m := os.Getenv("REVIEW_MODE"); m != "" {
		return m
	}
	return string(suitePoolMode())
}

func reviewSidecar(t *testing.T, pg *testenv.Postgres) rvTarget {
	if reviewDirect {
		return rvTarget{pg: pg}
	}
	return rvTarget{sc: startCacheSidecar(t, pg, cacheOpts{PoolMode: reviewMode()}), pg: pg}
}

func (x rvTarget) super() string {
	if x.sc == nil {
		return x.pg.URL(x.pg.SuperUser, x.pg.SuperPassword, "postgres")
	}
	return x.sc.SuperURL(x.pg)
}

func (x rvTarget) user() string {
	if x.sc == nil {
		return x.pg.URL(x.role, x.pw, "postgres")
	}
	return x.sc.URL(x.role, x.pw, "postgres")
}

func (x rvTarget) warm(t testing.TB, what string, f func()) {
	t.Helper()
	if x.sc == nil {
		f()
		f()
		return
	}
	x.sc.readUntilHit(t, what, f)
}

// noHits runs f, which must get no answer from the cache.
func (x rvTarget) noHits(t testing.TB, what string, f func()) {
	t.Helper()
	if x.sc == nil {
		f()
		return
	}
	x.sc.expectNoHits(t, what, f)
}

func (x rvTarget) hits(t testing.TB) float64 {
	if x.sc == nil {
		return 0
	}
	return x.sc.Hits(t)
}

func pgExecAll(t testing.TB, pg *testenv.Postgres, sqls ...string) {
	t.Helper()
	for _, s := range sqls {
		if err := pg.Exec(ctxT(t), s); err != nil {
			t.Fatalf("%s: %v", s, err)
		}
	}
}

// rawExec runs a (multi-statement) simple query on c's connection.
func rawExec(t testing.TB, c pgxCacheClient, sql string) {
	t.Helper()
	if _, err := c.conn.PgConn().Exec(ctxT(t), sql).ReadAll(); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// 1. A transaction whose writes were committed by COMMIT AND CHAIN (or by
// COMMIT; BEGIN inside one Query) and that then ends with a lone ROLLBACK
// bumps nothing: the committed write is never invalidated.
func TestCacheReviewCommitAndChainThenRollback(t *testing.T) {
	t.Parallel()
	pg := env.Postgres(t)
	sc := reviewSidecar(t, pg)
	for _, variant := range []struct{ name, commit string }{
		{"commit and chain", "commit and chain"},
		{"commit; begin in one query", "commit; begin"},
	} {
		t.Run(variant.name, func(t *testing.T) {
			table := kvTable(t, pg, "rv_chain", "old")
			c := pgxClient(t, sc.super(), pgx.QueryExecModeSimpleProtocol)
			other := pgxClient(t, sc.super(), pgx.QueryExecModeSimpleProtocol)
			read := "select v from " + table + " where id = 1"
			sc.warm(t, "warm", func() { expectRows(t, "c", c, []string{"old"}, read) })
			rawExec(t, c, "begin")
			rawExec(t, c, "update "+table+" set v = 'committed' where id = 1")
			rawExec(t, c, variant.commit) // the UPDATE is committed here
			rawExec(t, c, "rollback")     // ends the new, empty transaction
			expectRows(t, "other connection after the committed UPDATE", other, []string{"committed"}, read)
			expectRows(t, "writer after its committed UPDATE", c, []string{"committed"}, read)
		})
	}
}

// 2. A temporary table created where the classifier cannot see it (DO, a
// function) neither pins the session nor makes pgsidecar forget its
// catalog verdict on the name: the session's reads of its temporary table
// are cached under a key every session with the same user and settings
// shares.
func TestCacheReviewTempTableFromDOLeaksToOtherSessions(t *testing.T) {
	t.Parallel()
	pg := env.Postgres(t)
	sc := reviewSidecar(t, pg)
	table := kvTable(t, pg, "rv_tmp", "permanent")
	a := pgxClient(t, sc.super(), pgx.QueryExecModeSimpleProtocol)
	b := pgxClient(t, sc.super(), pgx.QueryExecModeSimpleProtocol)
	q := "select v from " + table
	sc.warm(t, "b warms", func() { expectRows(t, "b", b, []string{"permanent"}, q) })
	rawExec(t, a, "do $$begin create temp table "+table+" (id int, v text); insert into "+table+" values (1, 'a''s temp row'); end$$")
	expectRows(t, "a reads its own temporary table", a, []string{"a's temp row"}, q)
	for i := 0; i < 3; i++ {
		expectRows(t, "b, which has no temporary table", b, []string{"permanent"}, q)
	}
}

// 3. search_path changed by code the classifier cannot see (DO, a function
// calling set_config): the key keeps the old settings, so the session's
// answers are stored under another session's key.
func TestCacheReviewSearchPathChangedInDOLeaks(t *testing.T) {
	t.Parallel()
	pg := env.Postgres(t)
	sc := reviewSidecar(t, pg)
	sa, table := uniq("rv_sa"), uniq("rv_sp")
	pgExecAll(t, pg,
		"create schema "+sa,
		"create table "+sa+"."+table+" (v text); insert into "+sa+"."+table+" values ('in a')",
		"create table public."+table+" (v text); insert into public."+table+" values ('in public')")
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		pg.Exec(ctx, "drop schema "+sa+" cascade; drop table public."+table)
	})
	a := pgxClient(t, sc.super(), pgx.QueryExecModeSimpleProtocol)
	b := pgxClient(t, sc.super(), pgx.QueryExecModeSimpleProtocol)
	q := "select v from " + table
	sc.warm(t, "b warms", func() { expectRows(t, "b", b, []string{"in public"}, q) })
	rawExec(t, a, "do $$begin perform set_config('search_path', '"+sa+"', false); end$$")
	expectRows(t, "a after its search_path moved to "+sa, a, []string{"in a"}, q)
	for i := 0; i < 3; i++ {
		expectRows(t, "b, default search_path", b, []string{"in public"}, q)
	}
}

// roleSidecar starts a session-mode sidecar whose backends log in as each
// client's user (scram auth file), and returns it with a login role.
func roleSidecar(t *testing.T, pg *testenv.Postgres, prefix string) rvTarget {
	ctx := ctxT(t)
	role, pw := uniq(prefix), "pw_"+prefix
	if err := pg.CreateRole(ctx, role, pw); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		pg.Exec(ctx, "drop owned by "+role+"; drop role if exists "+role)
	})
	authFile := filepath.Join(t.TempDir(), "userlist.txt")
	userlist := fmt.Sprintf("%q %q\n%q %q\n", role, pw, pg.SuperUser, pg.SuperPassword)
	if err := os.WriteFile(authFile, []byte(userlist), 0o600); err != nil {
		t.Fatal(err)
	}
	if reviewDirect {
		return rvTarget{pg: pg, role: role, pw: pw}
	}
	sc := startCacheSidecar(t, pg, cacheOpts{
		PoolMode: reviewMode(),
		Upstream: pg.URL("", "", "postgres"),
		Args:     []string{"--auth-method", "scram-sha-256", "--auth-file", authFile},
	})
	return rvTarget{sc: sc, pg: pg, role: role, pw: pw}
}

// 4. Multi-tenant row-level security keyed on a custom setting that a
// function sets (the usual set_tenant() pattern): the key keeps the old
// tenant, and one tenant's rows are served to another.
func TestCacheReviewTenantSetInFunctionLeaksRows(t *testing.T) {
	t.Parallel()
	pg := env.Postgres(t)
	sc := roleSidecar(t, pg, "rv_tenant")
	table := createTable(t, pg, "rv_tenant", "tenant int, v text")
	fn := uniq("rv_set_tenant")
	pgExecAll(t, pg,
		"alter table "+table+" enable row level security",
		"create policy p on "+table+" using (tenant = current_setting('app.tenant')::int)",
		"grant select on "+table+" to "+sc.role,
		"insert into "+table+" values (1, 'tenant 1 row'), (2, 'tenant 2 secret')",
		"create function "+fn+"(t int) returns void language plpgsql as $$begin perform set_config('app.tenant', t::text, false); end$$",
	)
	t.Cleanup(func() { pg.Exec(context.Background(), "drop function if exists "+fn+"(int)") })
	a := pgxClient(t, sc.user(), pgx.QueryExecModeSimpleProtocol)
	b := pgxClient(t, sc.user(), pgx.QueryExecModeSimpleProtocol)
	a.Exec(t, "set app.tenant = '1'")
	b.Exec(t, "set app.tenant = '1'")
	q := "select v from " + table + " order by v"
	// The policy reads a setting the key may not hold (set_config inside a
	// function): such a table is not cached at all.
	sc.noHits(t, "a table whose policy calls current_setting", func() {
		expectRows(t, "a", a, []string{"tenant 1 row"}, q)
		expectRows(t, "a", a, []string{"tenant 1 row"}, q)
	})
	rawExec(t, a, "select "+fn+"(2)")
	expectRows(t, "a as tenant 2 (PostgreSQL: current_setting('app.tenant') = 2)", a, []string{"tenant 2 secret"}, q)
	for i := 0; i < 3; i++ {
		expectRows(t, "b, still tenant 1", b, []string{"tenant 1 row"}, q)
	}
}

// 5. DDL run by a pinned session (session relay) bumps the database but
// does not make pgsidecar forget its catalog verdicts: a trigger created
// there is unknown to the write tracking of every other session until the
// verdict expires (a minute).
func TestCacheReviewPinnedSessionDDLKeepsCatalogVerdict(t *testing.T) {
	t.Parallel()
	pg := env.Postgres(t)
	sc := reviewSidecar(t, pg)
	src := kvTable(t, pg, "rv_pin_src", "x")
	audit := createTable(t, pg, "rv_pin_audit", "n int")
	fn := uniq("rv_pin_fn")
	t.Cleanup(func() { pg.Exec(context.Background(), "drop function if exists "+fn+"() cascade") })
	w := pgxClient(t, sc.super(), pgx.QueryExecModeSimpleProtocol)
	r := pgxClient(t, sc.super(), pgx.QueryExecModeSimpleProtocol)
	p := pgxClient(t, sc.super(), pgx.QueryExecModeSimpleProtocol)
	// The write verdict on src (no triggers) is learnt and remembered.
	w.Exec(t, "insert into "+src+" values (10, 'learn')")
	qa := "select count(*)::text from " + audit
	sc.warm(t, "r warms", func() { expectRows(t, "r", r, []string{"0"}, qa) })

	p.Exec(t, "listen rv_review") // pinned: moves to the session relay
	rawExec(t, p, "create function "+fn+"() returns trigger language plpgsql as $$begin insert into "+audit+" values (1); return new; end$$")
	rawExec(t, p, "create trigger rv_trg after insert on "+src+" for each row execute function "+fn+"()")

	sc.warm(t, "r warms again", func() { expectRows(t, "r", r, []string{"0"}, qa) })
	w.Exec(t, "insert into "+src+" values (11, 'fires the trigger')")
	expectRows(t, "r after an insert whose trigger wrote the audit table", r, []string{"1"}, qa)
}

// 6. A text value 'now' sent as a binary-format parameter of type text
// (or built at run time) is still the current time once cast; the cache
// only looks for time words in text-format parameters and literals.
func TestCacheReviewNowNotInTextFormatParam(t *testing.T) {
	t.Parallel()
	pg := env.Postgres(t)
	sc := reviewSidecar(t, pg)
	c := pgxClient(t, sc.super(), pgx.QueryExecModeSimpleProtocol)
	pc := c.conn.PgConn()
	for _, tc := range []struct {
		name string
		run  func() string
	}{
		{"binary text parameter", func() string {
			res := pc.ExecParams(ctxT(t), "select $1::timestamptz::text", [][]byte{[]byte("now")}, []uint32{25}, []int16{1}, nil).Read()
			if res.Err != nil {
				t.Fatal(res.Err)
			}
			return string(res.Rows[0][0])
		}},
		{"concatenated literal", func() string {
			res, err := pc.Exec(ctxT(t), "select ('n' || 'ow')::timestamptz::text").ReadAll()
			if err != nil {
				t.Fatal(err)
			}
			return string(res[0].Rows[0][0])
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			seen := map[string]bool{}
			before := sc.hits(t)
			for i := 0; i < 4; i++ {
				seen[tc.run()] = true
				time.Sleep(20 * time.Millisecond)
			}
			hits := sc.hits(t) - before
			if len(seen) != 4 {
				t.Errorf("4 calls 20ms apart gave %d distinct times (%v), %v cache hits; PostgreSQL gives 4", len(seen), seen, hits)
			}
		})
	}
}

// 7. The key of a Bind of a named statement does not hold the result shape
// the client knows: after a schema change, a client whose statement
// PostgreSQL would refuse ("cached plan must not change result type") is
// served another client's answer of the new shape.
func TestCacheReviewStaleStatementShapeServed(t *testing.T) {
	t.Parallel()
	pg := env.Postgres(t)
	sc := reviewSidecar(t, pg)
	table := kvTable(t, pg, "rv_shape", "x")
	c1 := pgxClient(t, sc.super(), pgx.QueryExecModeSimpleProtocol).conn.PgConn()
	c2 := pgxClient(t, sc.super(), pgx.QueryExecModeSimpleProtocol).conn.PgConn()
	admin := pgxClient(t, sc.super(), pgx.QueryExecModeSimpleProtocol)
	q := "select * from " + table
	if _, err := c1.Prepare(ctxT(t), "s", q, nil); err != nil {
		t.Fatal(err)
	}
	run := func(c *pgconn.PgConn) *pgconn.Result {
		return c.ExecPrepared(ctxT(t), "s", nil, nil, nil).Read()
	}
	sc.warm(t, "c1 warms", func() {
		if r := run(c1); r.Err != nil || len(r.FieldDescriptions) != 2 {
			t.Fatalf("c1: %v, %d columns", r.Err, len(r.FieldDescriptions))
		}
	})
	rawExec(t, admin, "alter table "+table+" add column z int default 7")
	if _, err := c2.Prepare(ctxT(t), "s", q, nil); err != nil {
		t.Fatal(err)
	}
	sc.warm(t, "c2 warms", func() {
		if r := run(c2); r.Err != nil || len(r.FieldDescriptions) != 3 {
			t.Fatalf("c2: %v, %d columns", r.Err, len(r.FieldDescriptions))
		}
	})
	r := run(c1)
	if r.Err == nil {
		t.Fatalf("c1's statement prepared before ALTER TABLE: %d columns, rows %q; PostgreSQL answers 0A000 cached plan must not change result type",
			len(r.FieldDescriptions), r.Rows)
	}
	t.Logf("c1: %v", r.Err)
}

// 8. A write committed by a statement whose ReadyForQuery never reaches
// pgsidecar (the client left: a procedure that commits and runs on) is
// never bumped.
func TestCacheReviewClientGoneAfterCommitInProcedure(t *testing.T) {
	t.Parallel()
	pg := env.Postgres(t)
	sc := reviewSidecar(t, pg)
	table := kvTable(t, pg, "rv_gone", "old")
	proc := uniq("rv_gone_proc")
	pgExecAll(t, pg, "create procedure "+proc+"() language plpgsql as $$begin update "+table+
		" set v = 'new' where id = 1; commit; perform pg_sleep(20); end$$")
	t.Cleanup(func() { pg.Exec(context.Background(), "drop procedure if exists "+proc+"()") })
	r := pgxClient(t, sc.super(), pgx.QueryExecModeSimpleProtocol)
	read := "select v from " + table + " where id = 1"
	sc.warm(t, "warm", func() { expectRows(t, "r", r, []string{"old"}, read) })

	w, err := pgconn.Connect(ctxT(t), sc.super())
	if err != nil {
		t.Fatal(err)
	}
	nc := w.Conn()
	q := "call " + proc + "()"
	msg := []byte{'Q', 0, 0, 0, 0}
	binary.BigEndian.PutUint32(msg[1:], uint32(4+len(q)+1))
	msg = append(append(msg, q...), 0)
	if _, err := nc.Write(msg); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	nc.Close() // the client gives up
	if sc.sc == nil {
		time.Sleep(time.Second)
		t.Logf("PostgreSQL itself: %q", directValue(t, pg, read))
		return
	}
	// Wait until the procedure is no longer running (pgsidecar cancels it).
	direct, err := pgconn.Connect(ctxT(t), pg.URL(pg.SuperUser, pg.SuperPassword, "postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer direct.Close(context.Background())
	deadline := time.Now().Add(15 * time.Second)
	for {
		res, err := direct.Exec(ctxT(t), "select count(*) from pg_stat_activity where query like 'call "+proc+"%' and state = 'active'").ReadAll()
		if err != nil {
			t.Fatal(err)
		}
		if string(res[0].Rows[0][0]) == "0" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the procedure is still running")
		}
		time.Sleep(100 * time.Millisecond)
	}
	res, err := direct.Exec(ctxT(t), read).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("PostgreSQL itself: %q", res[0].Rows[0][0])
	expectRows(t, "reader after the procedure committed", r, []string{string(res[0].Rows[0][0])}, read)
}

// 9. Writes the text does not show and the catalog check does not look
// for: a column default calling a writing function (no trigger on the
// table), a user-defined operator whose function writes.
func TestCacheReviewHiddenWritersNotBumped(t *testing.T) {
	t.Parallel()
	pg := env.Postgres(t)
	sc := reviewSidecar(t, pg)
	audit := createTable(t, pg, "rv_hid_audit", "n int")
	logfn, opfn, op := uniq("rv_hid_log"), uniq("rv_hid_op"), "#@#"
	pgExecAll(t, pg,
		"create function "+logfn+"() returns int language sql volatile as $$insert into "+audit+" values (1) returning 1$$",
		"create function "+opfn+"(int, int) returns int language sql volatile as $$insert into "+audit+" values (2) returning $1 + $2$$",
	)
	src := createTable(t, pg, "rv_hid_src", "id int default "+logfn+"(), v text")
	t.Cleanup(func() {
		pg.Exec(context.Background(), "drop operator if exists "+op+"(int, int); drop function if exists "+opfn+"(int, int)")
	})
	t.Cleanup(func() { pg.Exec(context.Background(), "drop function if exists "+logfn+"()") })
	pgExecAll(t, pg, "create operator "+op+" (leftarg = int, rightarg = int, function = "+opfn+")")
	w := pgxClient(t, sc.super(), pgx.QueryExecModeSimpleProtocol)
	r := pgxClient(t, sc.super(), pgx.QueryExecModeSimpleProtocol)
	qa := "select count(*)::text from " + audit
	w.Exec(t, "insert into "+src+" (v) values ('learn the verdict')")
	sc.warm(t, "r warms", func() { expectRows(t, "r", r, []string{"1"}, qa) })
	t.Run("column default", func(t *testing.T) {
		w.Exec(t, "insert into "+src+" (v) values ('x')")
		expectRows(t, "r after an INSERT whose default wrote the audit table", r, []string{"2"}, qa)
	})
	t.Run("operator", func(t *testing.T) {
		sc.warm(t, "r warms", func() {
			if got := r.Query(t, qa); len(got) != 1 {
				t.Fatal(got)
			}
		})
		w.Exec(t, "select 1 "+op+" 2")
		expectRows(t, "r after a SELECT whose operator wrote the audit table", r, []string{directValue(t, pg, qa)}, qa)
	})
}

// directValue runs a one-value query on PostgreSQL itself.
func directValue(t testing.TB, pg *testenv.Postgres, q string) string {
	t.Helper()
	c, err := pgconn.Connect(ctxT(t), pg.URL(pg.SuperUser, pg.SuperPassword, "postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(context.Background())
	res, err := c.Exec(ctxT(t), q).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	return string(res[0].Rows[0][0])
}

// 10. A row-level security policy that reads the clock (a built-in, so no
// pg_depend row) is judged cacheable: rows that become visible with time
// stay hidden for the TTL.
func TestCacheReviewPolicyOnClockCached(t *testing.T) {
	t.Parallel()
	pg := env.Postgres(t)
	sc := roleSidecar(t, pg, "rv_clock")
	table := createTable(t, pg, "rv_clock", "visible_at timestamptz, v text")
	pgExecAll(t, pg,
		"alter table "+table+" enable row level security",
		"create policy p on "+table+" using (visible_at <= now())",
		"grant select on "+table+" to "+sc.role,
		"insert into "+table+" values (now() - interval '1 hour', 'old news'), (now() + interval '2 seconds', 'embargoed')",
	)
	c := pgxClient(t, sc.user(), pgx.QueryExecModeSimpleProtocol)
	q := "select v from " + table + " order by v"
	sc.noHits(t, "a table whose policy calls now()", func() {
		expectRows(t, "c", c, []string{"old news"}, q)
		expectRows(t, "c", c, []string{"old news"}, q)
	})
	time.Sleep(2500 * time.Millisecond)
	expectRows(t, "after the embargo", c, []string{"embargoed", "old news"}, q)
}

// rvWire sends raw frontend messages on c and returns the types of the
// backend messages up to and including the first of stop (or a
// ReadyForQuery), with the DataRows' first values.
func rvWire(t testing.TB, c *pgconn.PgConn, msgs ...pgproto3.FrontendMessage) {
	t.Helper()
	fe := c.Frontend()
	for _, m := range msgs {
		fe.Send(m)
	}
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
}

func rvReceive(t testing.TB, c *pgconn.PgConn, stop byte) (types string, rows []string) {
	t.Helper()
	fe := c.Frontend()
	c.Conn().SetReadDeadline(time.Now().Add(10 * time.Second))
	defer c.Conn().SetReadDeadline(time.Time{})
	for {
		m, err := fe.Receive()
		if err != nil {
			t.Fatalf("receive after %q: %v", types, err)
		}
		var ty byte
		switch m := m.(type) {
		case *pgproto3.ParseComplete:
			ty = '1'
		case *pgproto3.BindComplete:
			ty = '2'
		case *pgproto3.RowDescription:
			ty = 'T'
		case *pgproto3.DataRow:
			ty = 'D'
			rows = append(rows, string(m.Values[0]))
		case *pgproto3.CommandComplete:
			ty = 'C'
		case *pgproto3.ErrorResponse:
			ty = 'E'
		case *pgproto3.ReadyForQuery:
			ty = 'Z'
		case *pgproto3.NoData:
			ty = 'n'
		default:
			ty = '?'
		}
		types += string(ty)
		if ty == stop || ty == 'Z' {
			return types, rows
		}
	}
}

func rvExtended(q string, args ...string) []pgproto3.FrontendMessage {
	var params [][]byte
	for _, a := range args {
		params = append(params, []byte(a))
	}
	return []pgproto3.FrontendMessage{
		&pgproto3.Parse{Query: q},
		&pgproto3.Bind{Parameters: params},
		&pgproto3.Execute{},
	}
}

// 11. A batch is answered from the cache while the client still has
// extended-protocol messages that no Sync has ended (the lookup checks
// the queue, not unsynced/errSkip): after an error PostgreSQL skips the
// batch and answers only ReadyForQuery; after an unsynced write the
// SELECT runs in the same implicit transaction and sees it, and its Sync
// commits it.
func TestCacheReviewHitWhileUnsynced(t *testing.T) {
	t.Parallel()
	pg := env.Postgres(t)
	sc := reviewSidecar(t, pg)
	table := kvTable(t, pg, "rv_unsync", "old")
	read := "select v from " + table + " where id = $1"
	warm := func(c *pgconn.PgConn) func() {
		return func() {
			rvWire(t, c, append(rvExtended(read, "1"), &pgproto3.Sync{})...)
			if ty, rows := rvReceive(t, c, 'Z'); ty != "12DCZ" || rows[0] != "old" {
				t.Fatalf("warm: %q %q", ty, rows)
			}
		}
	}
	t.Run("after an error", func(t *testing.T) {
		c := pgxClient(t, sc.super(), pgx.QueryExecModeSimpleProtocol).conn.PgConn()
		sc.warm(t, "warm", warm(c))
		rvWire(t, c, append(rvExtended("select 1/(id-1) from "+table+" where id = 1"), &pgproto3.Flush{})...)
		if ty, _ := rvReceive(t, c, 'E'); ty != "12E" {
			t.Fatalf("failing statement: %q", ty)
		}
		rvWire(t, c, append(rvExtended(read, "1"), &pgproto3.Sync{})...)
		ty, rows := rvReceive(t, c, 'Z')
		if ty != "Z" {
			t.Errorf("batch after an error, before any Sync: %q %q; PostgreSQL skips it and answers only ReadyForQuery", ty, rows)
		}
		// PostgreSQL's skip ended at that Sync: the next statement runs.
		rvWire(t, c, append(rvExtended("select 42"), &pgproto3.Flush{})...)
		if ty, rows := rvReceive(t, c, 'C'); ty != "12DC" {
			t.Errorf("next statement, flushed: %q %q; PostgreSQL: 12DC [42]", ty, rows)
		}
	})
	t.Run("after an unsynced write", func(t *testing.T) {
		c := pgxClient(t, sc.super(), pgx.QueryExecModeSimpleProtocol).conn.PgConn()
		sc.warm(t, "warm", warm(c))
		rvWire(t, c, append(rvExtended("update "+table+" set v = 'mine' where id = 1"), &pgproto3.Flush{})...)
		if ty, _ := rvReceive(t, c, 'C'); ty != "12C" {
			t.Fatalf("update: %q", ty)
		}
		rvWire(t, c, append(rvExtended(read, "1"), &pgproto3.Sync{})...)
		ty, rows := rvReceive(t, c, 'Z')
		if len(rows) != 1 || rows[0] != "mine" {
			t.Errorf("read in the implicit transaction of its own update: %q %q; PostgreSQL: 12DCZ [mine]", ty, rows)
		}
		if got := directValue(t, pg, "select v from "+table+" where id = 1"); got != "mine" {
			t.Errorf("after the client's Sync the update is not committed: PostgreSQL holds %q", got)
		}
		// The client, told its batch is over, leaves.
		c.Close(ctxT(t))
		time.Sleep(500 * time.Millisecond)
		if got := directValue(t, pg, "select v from "+table+" where id = 1"); got != "mine" {
			t.Errorf("after the client left, its synced update is lost: PostgreSQL holds %q", got)
		}
	})
}

// 12. With the cache on, session mode runs on the transaction relay with
// hold, and its finish recycles the backend (no reset query) where the
// session relay released it with DISCARD ALL: session state pgsidecar
// does not track (a search_path or a temporary table set up inside DO or
// a function) passes to the next client of the backend, and that
// client's answers are cached for everyone.
func TestCacheReviewSessionModeStateLeaksToNextClient(t *testing.T) {
	t.Parallel()
	pg := env.Postgres(t)
	var sc rvTarget
	if reviewDirect {
		sc = rvTarget{pg: pg}
	} else {
		sc = rvTarget{sc: startCacheSidecar(t, pg, cacheOpts{PoolMode: "session", Args: []string{"--pool-size", "1"}}), pg: pg}
	}
	sa, table := uniq("rv_next_sa"), uniq("rv_next")
	pgExecAll(t, pg,
		"create schema "+sa,
		"create table "+sa+"."+table+" (v text); insert into "+sa+"."+table+" values ('in a')",
		"create table public."+table+" (v text); insert into public."+table+" values ('in public')")
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		pg.Exec(ctx, "drop schema "+sa+" cascade; drop table public."+table)
	})
	q := "select v from " + table
	a := pgxClient(t, sc.super(), pgx.QueryExecModeSimpleProtocol)
	rawExec(t, a, "do $$begin perform set_config('search_path', '"+sa+"', false); end$$")
	expectRows(t, "a", a, []string{"in a"}, q)
	a.conn.Close(ctxT(t))
	time.Sleep(200 * time.Millisecond)

	b := pgxClient(t, sc.super(), pgx.QueryExecModeSimpleProtocol)
	expectRows(t, "b, a new session with the default search_path", b, []string{"in public"}, q)
	expectRows(t, "b, again", b, []string{"in public"}, q)
}

// 13. DDL through sidecar A makes A forget its catalog verdicts, not B:
// B keeps "no trigger" for a table that now has one (up to a minute), and
// its writes to that table do not bump what the trigger writes, on B and
// in the shared Redis tier.
func TestCacheReviewDDLOnOtherSidecarKeepsCatalogVerdict(t *testing.T) {
	t.Parallel()
	if reviewDirect {
		t.Skip("two sidecars")
	}
	pg := env.Postgres(t)
	rd := testenv.NewRedis(t)
	a := startCacheSidecar(t, pg, cacheOpts{Redis: rd.URL(), PoolMode: reviewMode()})
	b := startCacheSidecar(t, pg, cacheOpts{Redis: rd.URL(), PoolMode: reviewMode()})
	src := kvTable(t, pg, "rv_two_src", "x")
	audit := createTable(t, pg, "rv_two_audit", "n int")
	fn := uniq("rv_two_fn")
	t.Cleanup(func() { pg.Exec(context.Background(), "drop function if exists "+fn+"() cascade") })
	bw := pgxClient(t, b.SuperURL(pg), pgx.QueryExecModeSimpleProtocol)
	br := pgxClient(t, b.SuperURL(pg), pgx.QueryExecModeSimpleProtocol)
	aw := pgxClient(t, a.SuperURL(pg), pgx.QueryExecModeSimpleProtocol)
	bw.Exec(t, "insert into "+src+" values (10, 'learn')") // B learns: src has no trigger

	rawExec(t, aw, "create function "+fn+"() returns trigger language plpgsql as $$begin insert into "+audit+" values (1); return new; end$$")
	rawExec(t, aw, "create trigger rv_trg after insert on "+src+" for each row execute function "+fn+"()")
	time.Sleep(cacheMaxStaleness + cacheStalenessMargin)

	qa := "select count(*)::text from " + audit
	b.readUntilHit(t, "B warms", func() { expectRows(t, "B", br, []string{"0"}, qa) })
	bw.Exec(t, "insert into "+src+" values (11, 'fires the trigger')")
	expectRows(t, "B after its insert fired the trigger", br, []string{"1"}, qa)
}

// 15. The catalog lookup runs on the client's own backend, with the
// client's search_path, and calls bool_and/bool_or unqualified: a role
// that can create an aggregate in its own schema and puts that schema
// before pg_catalog poisons the verdicts every session of the database
// shares (for a minute, renewable): here nextval() becomes "immutable"
// and another session's SELECT nextval() is answered from the cache.
func TestCacheReviewCatalogVerdictPoisonedBySearchPath(t *testing.T) {
	t.Parallel()
	pg := env.Postgres(t)
	sc := roleSidecar(t, pg, "rv_mallory")
	schema, seq := uniq("rv_mallory_s"), uniq("rv_victim_seq")
	pgExecAll(t, pg,
		"create schema "+schema+" authorization "+sc.role,
		"create sequence "+seq,
	)
	t.Cleanup(func() {
		pg.Exec(context.Background(), "drop schema if exists "+schema+" cascade; drop sequence if exists "+seq)
	})
	m := pgxClient(t, sc.user(), pgx.QueryExecModeSimpleProtocol)
	rawExec(t, m, "create function "+schema+".t(boolean, boolean) returns boolean language sql immutable as 'select true'")
	rawExec(t, m, "create function "+schema+".f(boolean, boolean) returns boolean language sql immutable as 'select false'")
	rawExec(t, m, "create aggregate "+schema+".bool_and(boolean) (sfunc = "+schema+".t, stype = boolean)")
	rawExec(t, m, "create aggregate "+schema+".bool_or(boolean) (sfunc = "+schema+".f, stype = boolean)")
	rawExec(t, m, "set search_path = "+schema+", pg_catalog, public")
	// The lookup happens before the statement runs: it may even fail.
	m.conn.PgConn().Exec(ctxT(t), "select nextval('no_such_sequence')").ReadAll()

	victimURL := pg.URL(pg.SuperUser, pg.SuperPassword, "postgres")
	if sc.sc != nil {
		victimURL = sc.sc.URL(pg.SuperUser, pg.SuperPassword, "postgres")
	}
	v := pgxClient(t, victimURL, pgx.QueryExecModeSimpleProtocol)
	seen := map[string]bool{}
	for i := 0; i < 3; i++ {
		got := v.Query(t, "select nextval('"+seq+"')::text")
		if seen[got[0]] {
			t.Fatalf("another session's SELECT nextval('%s') returned %s twice (cache hits %v); PostgreSQL never does", seq, got[0], sc.hits(t))
		}
		seen[got[0]] = true
	}
}

// 17. (Hit rate) Operators are judged by bare name across every schema:
// one extension operator named = (PostGIS, citext, hstore, ltree... all
// add some) makes every query with an = bypass the cache.
func TestCacheReviewExtensionEqualsOperatorDisablesCache(t *testing.T) {
	t.Parallel()
	if reviewDirect {
		t.Skip("cache metrics")
	}
	pg := env.Postgres(t)
	db := uniq("rv_ops_db")
	pgExecAll(t, pg, "create database "+db)
	t.Cleanup(func() { pg.Exec(context.Background(), "drop database if exists "+db+" with (force)") })
	if err := pg.ExecIn(ctxT(t), db, "create schema ext; "+
		"create function ext.peq(point, point) returns boolean immutable language sql as 'select $1 ~= $2'; "+
		"create operator ext.= (leftarg = point, rightarg = point, function = ext.peq); "+
		"create table kv (id int primary key, v text); insert into kv values (1, 'one')"); err != nil {
		t.Fatal(err)
	}
	sc := rvTarget{sc: startCacheSidecar(t, pg, cacheOpts{PoolMode: reviewMode(), Upstream: pg.URL(pg.SuperUser, pg.SuperPassword, db)}), pg: pg}
	c := pgxClient(t, sc.sc.URL(pg.SuperUser, "", db), pgx.QueryExecModeSimpleProtocol)
	before := sc.sc.Metrics(t)
	for i := 0; i < 3; i++ {
		expectRows(t, "c", c, []string{"one"}, "select v from kv where id = 1")
	}
	after := sc.sc.Metrics(t)
	if cacheHits(after) == cacheHits(before) {
		t.Errorf("select v from kv where id = 1: no hit in 3 runs; bypasses %v", cacheBypasses(after)-cacheBypasses(before))
		for k, v := range after {
			if strings.HasPrefix(k, metricBypassPrefix) && v != before[k] {
				t.Logf("%s +%v", k, v-before[k])
			}
		}
	}
}
