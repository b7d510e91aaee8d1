package integration

// Result cache keys: everything that changes an answer is in the key (the
// role and its row-level security, search_path), and what must run every
// time (volatile built-ins and user functions) is never answered from the
// cache.

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

// TestCacheRowLevelSecurityPerRole: two login roles reading a table whose
// policy is owner = current_user each see only their own rows, every time,
// whichever read first; so do two superuser sessions after SET ROLE (in
// session pool mode; see the subtest), while
// a third superuser session (which bypasses row-level security) sees all.
func TestCacheRowLevelSecurityPerRole(t *testing.T) {
	t.Parallel()
	pg := env.Postgres(t)
	ctx := ctxT(t)
	ra, rb := uniq("cache_rls_a"), uniq("cache_rls_b")
	for _, r := range []string{ra, rb} {
		if err := pg.CreateRole(ctx, r, "pw_"+r); err != nil {
			t.Fatal(err)
		}
	}
	// Registered before the table's cleanup, so it runs after it.
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		pg.Exec(ctx, "drop role if exists "+ra+"; drop role if exists "+rb)
	})
	table := createTable(t, pg, "cache_rls", "owner name not null default current_user, v text")
	for _, sql := range []string{
		"alter table " + table + " enable row level security",
		"create policy own on " + table + " using (owner = current_user)",
		"grant select, insert on " + table + " to " + ra + ", " + rb,
		fmt.Sprintf("insert into %s values ('%s', 'a1'), ('%s', 'a2'), ('%s', 'b1')", table, ra, ra, rb),
	} {
		if err := pg.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
	}
	// Backends log in as each client's user, so current_user is the
	// client's role: an upstream without a user, and an auth file with the
	// plaintext passwords.
	authFile := filepath.Join(t.TempDir(), "userlist.txt")
	userlist := fmt.Sprintf("%q %q\n%q %q\n%q %q\n", ra, "pw_"+ra, rb, "pw_"+rb, pg.SuperUser, pg.SuperPassword)
	if err := os.WriteFile(authFile, []byte(userlist), 0o600); err != nil {
		t.Fatal(err)
	}
	perRole := func(o *cacheOpts) {
		o.Upstream = pg.URL("", "", "postgres")
		o.Args = append(o.Args, "--auth-method", "scram-sha-256", "--auth-file", authFile)
	}
	wantA := []string{ra + "|a1", ra + "|a2"}
	wantB := []string{rb + "|b1"}
	wantAll := []string{ra + "|a1", ra + "|a2", rb + "|b1"}
	all := "select owner::text, v from " + table + " order by v"
	count := "select count(*)::text from " + table + " where v like $1"

	forEachCacheTierOpts(t, pg, perRole, func(t *testing.T, sc *cacheSidecar) {
		forEachCacheProtocol(t, func(t *testing.T, p cacheProtocol) {
			t.Run("login roles", func(t *testing.T) {
				a := p.connect(t, sc.URL(ra, "pw_"+ra, "postgres"))
				b := p.connect(t, sc.URL(rb, "pw_"+rb, "postgres"))
				sc.readUntilHit(t, "A warms", func() { expectRows(t, "role A", a, wantA, all) })
				expectRows(t, "role B", b, wantB, all)
				expectRows(t, "role B, second read", b, wantB, all)
				expectRows(t, "role A again", a, wantA, all)

				// B first this time, with a parameter.
				sc.readUntilHit(t, "B warms", func() { expectRows(t, "role B", b, []string{"1"}, count, "%") })
				expectRows(t, "role A", a, []string{"2"}, count, "%")
				expectRows(t, "role A, second read", a, []string{"2"}, count, "%")
				expectRows(t, "role B again", b, []string{"1"}, count, "%")
			})
			t.Run("SET ROLE", func(t *testing.T) {
				superURL := sc.URL(pg.SuperUser, pg.SuperPassword, "postgres")
				a := p.connect(t, superURL)
				b := p.connect(t, superURL)
				su := p.connect(t, superURL)
				a.Exec(t, "set role "+ra)
				b.Exec(t, "set role "+rb)
				sc.readUntilHit(t, "superuser warms", func() { expectRows(t, "superuser", su, wantAll, all) })
				expectRows(t, "SET ROLE A", a, wantA, all)
				expectRows(t, "SET ROLE A, second read", a, wantA, all)
				expectRows(t, "SET ROLE B", b, wantB, all)
				expectRows(t, "SET ROLE B, second read", b, wantB, all)
				a.Exec(t, "reset role")
				expectRows(t, "A after RESET ROLE", a, wantAll, all)
				b.Exec(t, "set role "+ra)
				expectRows(t, "B after SET ROLE A", b, wantA, all)
			})
		})
	})
}

// TestCacheSearchPathNeverShared: one unqualified table name in schemas a
// and b and in public, with different rows; sessions with different
// search_paths (set by SET, by a startup parameter, by set_config, or
// left at the default) each see their own schema's rows, every time.
func TestCacheSearchPathNeverShared(t *testing.T) {
	t.Parallel()
	pg := env.Postgres(t)
	ctx := ctxT(t)
	sa, sb, table := uniq("cache_sa"), uniq("cache_sb"), uniq("cache_sp")
	for _, sql := range []string{
		"create schema " + sa,
		"create schema " + sb,
		"create table " + sa + "." + table + " (v text); insert into " + sa + "." + table + " values ('in a')",
		"create table " + sb + "." + table + " (v text); insert into " + sb + "." + table + " values ('in b')",
		"create table public." + table + " (v text); insert into public." + table + " values ('in public')",
	} {
		if err := pg.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		pg.Exec(ctx, "drop schema "+sa+" cascade; drop schema "+sb+" cascade; drop table public."+table)
	})
	q := "select v from " + table
	qp := "select v || $1 from " + table

	forEachCacheTier(t, pg, func(t *testing.T, sc *cacheSidecar) {
		forEachCacheProtocol(t, func(t *testing.T, p cacheProtocol) {
			a := p.connect(t, sc.SuperURL(pg))
			a.Exec(t, "set search_path to "+sa)
			b := p.connect(t, sc.SuperURL(pg, "search_path="+sb))
			c := p.connect(t, sc.SuperURL(pg))

			sc.readUntilHit(t, "A warms", func() { expectRows(t, "A (SET)", a, []string{"in a"}, q) })
			expectRows(t, "B (startup parameter)", b, []string{"in b"}, q)
			expectRows(t, "B, second read", b, []string{"in b"}, q)
			expectRows(t, "C (default path)", c, []string{"in public"}, q)
			expectRows(t, "C, second read", c, []string{"in public"}, q)
			expectRows(t, "A again", a, []string{"in a"}, q)

			sc.readUntilHit(t, "B warms a parameterised read", func() { expectRows(t, "B", b, []string{"in b!"}, qp, "!") })
			expectRows(t, "A, parameterised", a, []string{"in a!"}, qp, "!")
			expectRows(t, "A, parameterised, second read", a, []string{"in a!"}, qp, "!")

			// One session changing its path.
			a.Exec(t, "set search_path to "+sb)
			expectRows(t, "A after SET to b", a, []string{"in b"}, q)
			a.Exec(t, "reset search_path")
			expectRows(t, "A after RESET", a, []string{"in public"}, q)
			expectRows(t, "A's set_config", a, []string{sa}, "select set_config('search_path', $1, false)", sa)
			expectRows(t, "A after set_config to a", a, []string{"in a"}, q)
			expectRows(t, "A after set_config to a, second read", a, []string{"in a"}, q)
			expectRows(t, "C at the end", c, []string{"in public"}, q)
		})
	})
}

// TestCacheVolatileBuiltinsRunEveryTime: now(), current_timestamp,
// 'now'::timestamptz, clock_timestamp(), statement_timestamp(),
// timeofday(), random(), gen_random_uuid(), nextval() and txid_current()
// answer differently on each of three calls (a few ms apart), and none of
// these calls is a cache hit, while a plain read on the same connection is.
func TestCacheVolatileBuiltinsRunEveryTime(t *testing.T) {
	t.Parallel()
	pg := env.Postgres(t)
	seq := uniq("cache_seq")
	if err := pg.Exec(ctxT(t), "create sequence "+seq); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pg.Exec(context.Background(), "drop sequence if exists "+seq) })
	exprs := []string{
		"now()", "current_timestamp", "'now'::timestamptz", "clock_timestamp()",
		"statement_timestamp()", "timeofday()", "random()", "gen_random_uuid()",
		"nextval('" + seq + "')", "txid_current()",
	}

	forEachCacheTier(t, pg, func(t *testing.T, sc *cacheSidecar) {
		forEachCacheProtocol(t, func(t *testing.T, p cacheProtocol) {
			table := kvTable(t, pg, "cache_vol", "control")
			c := p.connect(t, sc.SuperURL(pg))
			direct := p.connect(t, directURL(pg))
			sc.readUntilHit(t, "the cache is on", func() {
				expectRows(t, "control", c, []string{"control"}, "select v from "+table)
			})
			for _, expr := range exprs {
				q := "select (" + expr + ")::text"
				// With a statement parsed once, PostgreSQL itself fixes
				// 'now'::timestamptz at parse time: hold the sidecar only
				// to what the server does with this protocol.
				if vals := threeCalls(t, direct, q); !allDistinct(vals) {
					t.Logf("%s: PostgreSQL itself answers %q with this protocol; not checked", q, vals)
					continue
				}
				sc.expectNoHits(t, q, func() {
					if vals := threeCalls(t, c, q); !allDistinct(vals) {
						t.Errorf("%s through the cache: %q, want three different values", q, vals)
					}
				})
			}
		})
	})
}

// threeCalls runs the one-value query q three times, 3ms apart.
func threeCalls(t testing.TB, c cacheClient, q string) []string {
	t.Helper()
	var vals []string
	for i := range 3 {
		if i > 0 {
			time.Sleep(3 * time.Millisecond) // timestamps have microseconds
		}
		rows := c.Query(t, q)
		if len(rows) != 1 {
			t.Fatalf("%s: %q, want one row", q, rows)
		}
		vals = append(vals, rows[0])
	}
	return vals
}

func allDistinct(vals []string) bool {
	s := slices.Clone(vals)
	slices.Sort(s)
	return len(slices.Compact(s)) == len(vals)
}

// TestCacheVolatileFunctionRunsEveryCall: a user-defined function that
// writes (declared VOLATILE) or bumps a sequence (volatile by default),
// called from a SELECT, runs on every call: its answers count up and the
// server's log table holds one row per call.
func TestCacheVolatileFunctionRunsEveryCall(t *testing.T) {
	t.Parallel()
	pg := env.Postgres(t)

	forEachCacheTier(t, pg, func(t *testing.T, sc *cacheSidecar) {
		forEachCacheProtocol(t, func(t *testing.T, p cacheProtocol) {
			ctx := ctxT(t)
			logTable := createTable(t, pg, "cache_flog", "id serial")
			control := kvTable(t, pg, "cache_fctl", "control")
			f, g, seq := uniq("cache_flog_f"), uniq("cache_fseq_g"), uniq("cache_fseq")
			for _, sql := range []string{
				"create sequence " + seq,
				"create function " + f + "() returns int volatile language plpgsql as $$ begin insert into " + logTable + " default values; return (select count(*) from " + logTable + "); end $$",
				"create function " + g + "() returns bigint language sql as $$ select nextval('" + seq + "') $$",
			} {
				if err := pg.Exec(ctx, sql); err != nil {
					t.Fatal(err)
				}
			}
			t.Cleanup(func() {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				pg.Exec(ctx, "drop function if exists "+f+"(); drop function if exists "+g+"(); drop sequence if exists "+seq)
			})

			c := p.connect(t, sc.SuperURL(pg))
			sc.readUntilHit(t, "the cache is on", func() {
				expectRows(t, "control", c, []string{"control"}, "select v from "+control)
			})
			sc.expectNoHits(t, "volatile function calls", func() {
				for i := 1; i <= 3; i++ {
					expectRows(t, "the logging function", c, []string{fmt.Sprint(i)}, "select "+f+"()::text")
				}
				for i := 1; i <= 3; i++ {
					expectRows(t, "the sequence function", c, []string{fmt.Sprint(i)}, "select "+g+"()::text")
				}
				for i := 4; i <= 5; i++ {
					expectRows(t, "the logging function in FROM", c, []string{fmt.Sprint(i)}, "select n::text from "+f+"() n")
				}
			})
			var n int
			if err := pgDirect(t, pg).QueryRow(ctx, "select count(*) from "+logTable).Scan(&n); err != nil {
				t.Fatal(err)
			}
			if n != 5 {
				t.Errorf("the logging function ran %d times on PostgreSQL, want 5", n)
			}
		})
	})
}
