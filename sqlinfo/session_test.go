package sqlinfo

import (
	"slices"
	"strings"
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the run if a test leaves a goroutine behind: a Classifier
// must own none.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

var (
	none    = Effects{}
	session = Effects{SetsSession: true}
	discard = Effects{DiscardAll: true, DeallocateAll: true}
	dealloc = Effects{DeallocateAll: true}
	bad     = Effects{Unparsed: true}
)

func pinned(feature string) Effects { return Effects{Pin: feature} }

type effectsCase struct {
	name string
	sql  string
	want Effects
}

// effectsCases is shared by the table test, the prefilter tests, the
// classifier tests and the fuzz seed corpus.
var effectsCases = []effectsCase{
	// SET and RESET at session level.
	{"set to", "SET search_path TO app, public", session},
	{"set equals lower case", "set search_path = x", session},
	{"set session", "SET SESSION statement_timeout = 5000", session},
	{"set quoted name", `SET "search_path" TO x`, session},
	{"set default", "SET work_mem TO DEFAULT", session},
	{"set from current", "SET x.y FROM CURRENT", session},
	{"set custom", "SET myapp.tenant_id = '42'", session},
	{"session characteristics", "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE", session},
	{"set role", "SET ROLE app_user", session},
	{"reset role", "RESET ROLE", session},
	{"session authorization", "SET SESSION AUTHORIZATION bob", session},
	{"reset session authorization", "RESET SESSION AUTHORIZATION", session},
	{"time zone", "SET TIME ZONE 'UTC'", session},
	{"names", "SET NAMES 'UTF8'", session},
	{"schema", "SET SCHEMA 'app'", session},
	{"xml option", "SET XML OPTION DOCUMENT", session},
	{"reset all", "RESET ALL", session},
	{"reset one", "RESET search_path", session},
	{"set inside transaction", "BEGIN; SET search_path TO x; COMMIT", session},
	{"set after select", "SELECT 1; SET statement_timeout = 0", session},
	{"comments around set", "/* SELECT 1 */ SET statement_timeout = 0 -- trailing", session},
	{"nested comment before set", "/* a /* b */ c */ SET x.y = 1", session},
	{"leading semicolons", ";; SET x.y = 1;", session},

	// set_config, anywhere in a statement.
	{"set_config false", "SELECT set_config('a.b','1',false)", session},
	{"set_config qualified upper case", "select PG_CATALOG.SET_CONFIG('a.b', '1', FALSE)", session},
	{"set_config quoted name", `SELECT "set_config"('a.b','1',false)`, session},
	{"set_config unicode escaped name", `SELECT U&"\0073et_config"('a.b','1',false)`, session},
	{"set_config parameters", "SELECT set_config('x', $1, $2)", session},
	{"set_config expression", "SELECT set_config('x', '1', NOT false)", session},
	{"set_config string true", "SELECT set_config('x', '1', 'true')", session},
	{"set_config null", "SELECT set_config('x', '1', NULL)", session},
	{"set_config two args", "SELECT set_config('x', '1')", session},
	{"set_config named false", "SELECT set_config(setting_name => 'a.b', new_value => '1', is_local => false)", session},
	{"set_config in cte", "WITH s AS (SELECT set_config('a.b','1',false)) SELECT * FROM s", session},
	{"set_config in subquery", "SELECT * FROM t WHERE x IN (SELECT set_config('a.b','1',false))", session},
	{"set_config in from", "SELECT * FROM set_config('a.b','1',false)", session},
	{"set_config in case", "SELECT CASE WHEN x THEN set_config('a.b','1',false) END FROM t", session},
	{"set_config in update", "UPDATE t SET x = set_config('a.b','1',false)", session},
	{"set_config in insert", "INSERT INTO t VALUES (set_config('a.b','1',false))", session},
	{"set_config in returning", "DELETE FROM t RETURNING set_config('a.b', t.x, false)", session},
	{"set_config as argument", "SELECT length(lower(set_config('a.b','1',false)))", session},
	{"set_config explain analyze", "EXPLAIN ANALYZE SELECT set_config('a.b','1',false)", session},
	{"set_config in second statement", "SELECT set_config('a.b','1',true); SELECT set_config('a.b','1',false)", session},

	// Transaction-scoped or not a setting at all.
	{"set local", "SET LOCAL search_path TO x", none},
	{"set local in transaction", "BEGIN; SET LOCAL statement_timeout = 0; COMMIT", none},
	{"set transaction", "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", none},
	{"set session transaction", "SET SESSION TRANSACTION READ ONLY", none},
	{"set transaction snapshot", "SET TRANSACTION SNAPSHOT '00000003-0000001B-1'", none},
	{"set constraints", "SET CONSTRAINTS ALL DEFERRED", none},
	{"set_config true", "SELECT set_config('a.b','1',true)", none},
	{"set_config qualified true", "SELECT pg_catalog.set_config('a.b','1',TRUE)", none},
	{"set_config named true", "SELECT set_config(is_local => true, new_value => '1', setting_name => 'a.b')", none},
	{"set_config mixed notation true", "SELECT set_config('a.b', '1', is_local => true)", none},
	{"update set", "UPDATE t SET x = 1", none},
	{"pgbench update", "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2", none},
	{"insert on conflict set", "INSERT INTO t (a) VALUES (1) ON CONFLICT (a) DO UPDATE SET a = excluded.a", none},
	{"alter role set", "ALTER ROLE bob SET search_path = x", none},
	{"alter database set", "ALTER DATABASE d SET work_mem = '1MB'", none},
	{"alter system set", "ALTER SYSTEM SET work_mem = '1MB'", none},
	{"alter table set", "ALTER TABLE t SET (fillfactor = 70)", none},
	{"function with set clause", "CREATE FUNCTION f() RETURNS text LANGUAGE sql SET search_path = x RETURN set_config('a.b','1',false)", none},
	{"view stores its query", "CREATE VIEW v AS SELECT pg_advisory_lock(1), set_config('a.b','1',false)", none},
	{"rule stores its action", "CREATE RULE r AS ON INSERT TO t DO ALSO SELECT set_config('a.b','1',false)", none},
	{"set in string", "SELECT 'SET search_path = x; LISTEN a'", none},
	{"set in line comment", "SELECT 1 -- SET search_path = x", none},
	{"set in block comment", "SELECT 1 /* RESET ALL; DISCARD ALL */", none},
	{"set in dollar quote", "SELECT $$SET search_path = x$$", none},
	{"quoted identifiers", `SELECT "set", "temp", "hold" FROM "listen"."prepare"`, none},
	{"words inside identifiers", "SELECT offset_x, threshold FROM settings WHERE uploaded_into IS NULL", none},
	{"set_config lookalike", "SELECT set_configuration('a', 'b', false)", none},

	// DISCARD and DEALLOCATE.
	{"discard all", "DISCARD ALL", discard},
	{"discard all lower case", "discard all;", discard},
	{"discard plans", "DISCARD PLANS", none},
	{"discard sequences", "DISCARD SEQUENCES", none},
	{"discard temp", "DISCARD TEMP", none},
	{"discard temporary", "DISCARD TEMPORARY", none},
	{"deallocate all", "DEALLOCATE ALL", dealloc},
	{"deallocate prepare all", "deallocate prepare all", dealloc},
	{"deallocate one", "DEALLOCATE stmt1", none},
	{"deallocate quoted all", `DEALLOCATE "all"`, none},

	// Pins.
	{"listen", "LISTEN jobs", pinned(PinListen)},
	{"listen quoted", `listen "Jobs"`, pinned(PinListen)},
	{"unlisten", "UNLISTEN *", none},
	{"notify", "NOTIFY jobs, 'x'", none},
	{"advisory lock", "SELECT pg_advisory_lock(42)", pinned(PinAdvisoryLock)},
	{"advisory lock shared upper case", "SELECT PG_ADVISORY_LOCK_SHARED(1)", pinned(PinAdvisoryLock)},
	{"try advisory lock", "SELECT pg_try_advisory_lock(1, 2)", pinned(PinAdvisoryLock)},
	{"try advisory lock shared qualified", "SELECT pg_catalog.pg_try_advisory_lock_shared(1)", pinned(PinAdvisoryLock)},
	{"advisory lock quoted", `SELECT "pg_advisory_lock"(1)`, pinned(PinAdvisoryLock)},
	{"advisory lock in where", "SELECT id FROM jobs WHERE pg_try_advisory_lock(id) LIMIT 1", pinned(PinAdvisoryLock)},
	{"advisory lock in cte", "WITH l AS (SELECT pg_advisory_lock(7)) SELECT 1 FROM l", pinned(PinAdvisoryLock)},
	{"advisory xact lock", "select pg_advisory_xact_lock(1)", none},
	{"try advisory xact lock", "SELECT pg_try_advisory_xact_lock(1)", none},
	{"advisory xact lock shared", "SELECT pg_advisory_xact_lock_shared(1)", none},
	{"advisory unlock", "SELECT pg_advisory_unlock(1)", none},
	{"advisory unlock all", "SELECT pg_advisory_unlock_all()", none},
	{"temp table", "CREATE TEMP TABLE t (a int)", pinned(PinTempTable)},
	{"temporary table preserve rows", "CREATE TEMPORARY TABLE t (a int) ON COMMIT PRESERVE ROWS", pinned(PinTempTable)},
	{"temp table delete rows", "CREATE TEMP TABLE t (a int) ON COMMIT DELETE ROWS", pinned(PinTempTable)},
	{"local temp table", "CREATE LOCAL TEMP TABLE t (a int)", pinned(PinTempTable)},
	{"temp table if not exists", "CREATE TEMP TABLE IF NOT EXISTS t (LIKE u)", pinned(PinTempTable)},
	{"temp table on commit drop", "CREATE TEMP TABLE t (a int) ON COMMIT DROP", none},
	{"pg_temp table", "CREATE TABLE pg_temp.t (a int)", pinned(PinTempTable)},
	{"pg_temp table on commit drop", "CREATE TABLE pg_temp.t (a int) ON COMMIT DROP", none},
	{"temp table as", "CREATE TEMP TABLE t AS SELECT 1 AS a", pinned(PinTempTable)},
	{"temp table as on commit drop", "CREATE TEMP TABLE t ON COMMIT DROP AS SELECT 1 AS a", none},
	{"select into temp", "SELECT 1 AS a INTO TEMP t", pinned(PinTempTable)},
	{"select into temporary table", "SELECT * INTO TEMPORARY TABLE t FROM u", pinned(PinTempTable)},
	{"select into pg_temp", "SELECT * INTO pg_temp.t FROM u", pinned(PinTempTable)},
	{"temp sequence", "CREATE TEMP SEQUENCE s", pinned(PinTempTable)},
	{"temp view", "CREATE TEMP VIEW v AS SELECT 1", pinned(PinTempTable)},
	{"plain table", "CREATE TABLE t (a int)", none},
	{"unlogged table", "CREATE UNLOGGED TABLE t (a int)", none},
	{"select into plain table", "SELECT * INTO t2 FROM t", none},
	{"insert into pg_temp", "INSERT INTO pg_temp.t VALUES (1)", none},
	{"drop temp table", "DROP TABLE IF EXISTS temp_t", none},
	{"with hold cursor", "DECLARE c CURSOR WITH HOLD FOR SELECT 1", pinned(PinHoldCursor)},
	{"binary scroll hold cursor", "DECLARE c BINARY SCROLL CURSOR WITH HOLD FOR SELECT * FROM t", pinned(PinHoldCursor)},
	{"without hold cursor", "DECLARE c CURSOR WITHOUT HOLD FOR SELECT 1", none},
	{"plain cursor", "BEGIN; DECLARE c SCROLL CURSOR FOR SELECT 1; FETCH 1 FROM c; COMMIT", none},
	{"prepare", "PREPARE p (int) AS SELECT $1", pinned(PinPrepare)},
	{"prepare lower case", "prepare q as select 1", pinned(PinPrepare)},
	{"execute", "EXECUTE p(1)", none},
	{"do block", "DO $$ BEGIN PERFORM set_config('search_path', 'a', false); END $$", Effects{SetsSession: true}},
	{"do in lower case", "do 'begin null; end'", Effects{SetsSession: true}},
	{"call", "CALL refresh_all()", Effects{SetsSession: true}},
	{"calling is not call", "select calls from t", none},
	{"load", "LOAD 'auto_explain'", pinned(PinLoad)},

	// Which pin comes first, and combinations.
	{"listen before lock", "LISTEN a; SELECT pg_advisory_lock(1)", pinned(PinListen)},
	{"lock before listen", "SELECT pg_advisory_lock(1); LISTEN a", pinned(PinAdvisoryLock)},
	{"cursor before its query", "DECLARE c CURSOR WITH HOLD FOR SELECT pg_advisory_lock(1)", pinned(PinHoldCursor)},
	{"prepare before its query", "PREPARE p AS SELECT pg_advisory_lock(1)", pinned(PinPrepare)},
	{"prepared set_config", "PREPARE p AS SELECT set_config('a.b', $1, false)", Effects{SetsSession: true, Pin: PinPrepare}},
	{"temp table as with set_config", "CREATE TEMP TABLE t AS SELECT set_config('a.b','1',false)", Effects{SetsSession: true, Pin: PinTempTable}},
	{"everything", "SET search_path TO x; DISCARD ALL; LISTEN a; LOAD 'x'", Effects{SetsSession: true, DiscardAll: true, DeallocateAll: true, Pin: PinListen}},

	// Texts the parser rejects.
	{"garbage", "SELEC 1", bad},
	{"garbage candidate", "SET", bad},
	{"incomplete set", "SET search_path TO", bad},
	{"incomplete create temp", "CREATE TEMP TABLE (", bad},
	{"unterminated string", "SET a.b = 'x", bad},
	{"one good one bad", "SET a.b = 1; LISTEN", bad},
	{"set catalog", "SET CATALOG 'x'", bad},

	// Texts the prefilter rejects.
	{"empty", "", none},
	{"pgbench select", "SELECT abalance FROM pgbench_accounts WHERE aid = $1", none},
	{"begin", "BEGIN", none},
	{"commit", "COMMIT", none},
	{"select now", "SELECT now()", none},
	{"delete", "DELETE FROM t WHERE id = $1", none},
	{"join", "SELECT a.x, b.y FROM a JOIN b USING (id) ORDER BY 1 LIMIT 10", none},
	{"unicode identifier", `SELECT "größe" FROM "tabelle"`, none},
}

// withoutCustom drops Custom, which TestCustomSettings covers.
func withoutCustom(e Effects) Effects { e.Custom = nil; return e }

func TestSessionEffects(t *testing.T) {
	for _, tc := range effectsCases {
		t.Run(tc.name, func(t *testing.T) {
			if got := withoutCustom(SessionEffects(tc.sql)); !got.Equal(withoutCustom(tc.want)) {
				t.Errorf("SessionEffects(%q)\n got %+v\nwant %+v", tc.sql, got, tc.want)
			}
		})
	}
}

// withoutUnparsed is e with Unparsed cleared: the prefilter promises nothing
// about texts that the parser would reject.
func withoutUnparsed(e Effects) Effects {
	e.Unparsed = false
	return e
}

// TestPrefilterKeepsEveryPositive: a text with any effect must reach the
// parser.
func TestPrefilterKeepsEveryPositive(t *testing.T) {
	for _, tc := range effectsCases {
		if withoutUnparsed(tc.want).Equal(none) {
			continue
		}
		if !isCandidate(tc.sql) {
			t.Errorf("prefilter rejects %q (%s), which has effects %+v", tc.sql, tc.name, tc.want)
		}
	}
}

// TestPrefilterRejectsOnlyHarmless is the fuzz property over the table.
func TestPrefilterRejectsOnlyHarmless(t *testing.T) {
	rejected := 0
	for _, tc := range effectsCases {
		if isCandidate(tc.sql) {
			continue
		}
		rejected++
		if got := withoutUnparsed(SessionEffects(tc.sql)); !got.Equal(none) {
			t.Errorf("prefilter rejects %q, which has effects %+v", tc.sql, got)
		}
	}
	if rejected < 9 {
		t.Errorf("only %d table cases are rejected by the prefilter; the table lost its negatives", rejected)
	}
}

func TestPrefilter(t *testing.T) {
	cases := []struct {
		sql  string
		want bool
	}{
		{"", false},
		{"SELECT abalance FROM pgbench_accounts WHERE aid = $1", false},
		{"SELECT 1", false},
		{"se", false},
		{"SE T", false},
		{"s", false},
		{"u&", false},
		{`U& "x"`, false},
		{"SELECT * FROM t WHERE name = 'ſet'", false}, // U+017F folds to s only in Unicode, not in the lexer
		{"set", true},
		{"SET", true},
		{"sEt", true},
		{"reset", true},
		{"xSETx", true},
		{"DISCARD", true},
		{"Deallocate", true},
		{"LISTEN", true},
		{"TEMP", true},
		{"pg_advisory_lock", true},
		{"HOLD", true},
		{"PREPARE", true},
		{"LOAD", true},
		{"INTO", true},
		{`U&"x"`, true},
		{`u&"x"`, true},
		{"ends with se" + "t", true},
		{"ends with hol", false},
	}
	for _, tc := range cases {
		if got := isCandidate(tc.sql); got != tc.want {
			t.Errorf("isCandidate(%q) = %v, want %v", tc.sql, got, tc.want)
		}
	}
}

func TestPrefilterDoesNotAllocate(t *testing.T) {
	sql := strings.Repeat("SELECT abalance FROM pgbench_accounts WHERE aid = $1 ", 20)
	if allocs := testing.AllocsPerRun(100, func() { _ = isCandidate(sql) }); allocs != 0 {
		t.Errorf("isCandidate allocates %v times per call", allocs)
	}
}

func FuzzSessionEffects(f *testing.F) {
	for _, tc := range effectsCases {
		f.Add(tc.sql)
	}
	f.Add("SELECT 1; SELECT 2; SET a.b = 1; SELECT 3")
	f.Add(`SELECT U&"\0070g_advisory_lock"(1)`)
	f.Add(`CREATE TABLE U&"pg_\0074emp".t (a int)`)
	f.Add("SELECT 'a\\'; SET a.b = 1; --'")
	f.Add("SELECT 1\x00; SET a.b = 1")
	c := NewClassifier(64)
	f.Fuzz(func(t *testing.T, sql string) {
		e := SessionEffects(sql)
		if e.Unparsed && !e.Equal(bad) {
			t.Fatalf("SessionEffects(%q) = %+v: Unparsed with other fields set", sql, e)
		}
		if e.DiscardAll && !e.DeallocateAll {
			t.Fatalf("SessionEffects(%q) = %+v: DiscardAll without DeallocateAll", sql, e)
		}
		switch e.Pin {
		case "", PinListen, PinAdvisoryLock, PinTempTable, PinHoldCursor, PinPrepare, PinLoad, PinComputedSetting:
		default:
			t.Fatalf("SessionEffects(%q) = %+v: unknown Pin", sql, e)
		}
		got := c.SessionEffects(sql)
		if !isCandidate(sql) {
			// The property that matters: the prefilter hides no effect.
			if !withoutUnparsed(e).Equal(none) {
				t.Fatalf("prefilter rejects %q, which has effects %+v", sql, e)
			}
			if !got.Equal(none) {
				t.Fatalf("Classifier.SessionEffects(%q) = %+v for a rejected text", sql, got)
			}
			return
		}
		if !got.Equal(e) {
			t.Fatalf("Classifier.SessionEffects(%q) = %+v, SessionEffects = %+v", sql, got, e)
		}
	})
}

func BenchmarkSessionEffectsParse(b *testing.B) {
	const sql = "SET search_path TO app, public"
	b.ReportAllocs()
	for b.Loop() {
		if !SessionEffects(sql).Equal(session) {
			b.Fatal("wrong answer")
		}
	}
}

func TestCustomSettings(t *testing.T) {
	for sql, want := range map[string][]string{
		"SET app.tenant = '42'":                    {"app.tenant"},
		"SET SESSION App.Tenant TO 7; RESET my.x":  {"app.tenant", "my.x"},
		"SET LOCAL app.tenant = '1'":               nil,
		"SET search_path = x":                      nil,
		"SELECT set_config('app.user', $1, false)": {"app.user"},
		"SELECT set_config('app.user', $1, true)":  nil,
		"SELECT set_config(setting_name => 'a.b', new_value => '1', is_local => false)": {"a.b"},
		"RESET ALL": nil,
	} {
		if got := SessionEffects(sql).Custom; !slices.Equal(got, want) {
			t.Errorf("SessionEffects(%q).Custom = %q, want %q", sql, got, want)
		}
	}
	if got := SessionEffects("SELECT set_config($1, $2, false)").Pin; got != PinComputedSetting {
		t.Errorf("set_config with a parameter as name: Pin %q, want %q", got, PinComputedSetting)
	}
}
