package integration

import (
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// explainCache runs EXPLAIN (PGSIDECAR) query and returns its rows as
// item -> values.
func explainCache(t *testing.T, conn *pgx.Conn, query string) map[string][]string {
	t.Helper()
	rows, err := conn.Query(ctxT(t), "EXPLAIN (PGSIDECAR) "+query)
	if err != nil {
		t.Fatalf("EXPLAIN (PGSIDECAR) %s: %v", query, err)
	}
	out := map[string][]string{}
	for rows.Next() {
		var item, value string
		if err := rows.Scan(&item, &value); err != nil {
			t.Fatal(err)
		}
		out[item] = append(out[item], value)
	}
	if err := rows.Err(); err != nil {
		t.Fatalf("EXPLAIN (PGSIDECAR) %s: %v", query, err)
	}
	return out
}

// TestCacheExplain: the admin statement says whether a query is cacheable
// in this session and why not, and what its key is made of; the key moves
// with the session's settings, as the cache's own does.
func TestCacheExplain(t *testing.T) {
	t.Parallel()
	pg := env.Postgres(t)
	sc := startCacheSidecar(t, pg, cacheOpts{})
	table := kvTable(t, pg, "cache_explain", "x")
	conn := pgxConnect(t, sc.SuperURL(pg), pgx.QueryExecModeSimpleProtocol)

	q := "select v from " + table + " where id = 1"
	ex := explainCache(t, conn, q)
	if got := ex["cacheable"]; len(got) != 1 || got[0] != "yes" {
		t.Fatalf("%s: cacheable = %q, want yes (%v)", q, got, ex)
	}
	if got := ex["reads"]; len(got) != 1 || got[0] != table {
		t.Errorf("reads = %q, want %s", got, table)
	}
	if len(ex["key"]) != 1 || len(ex["key"][0]) != 64 || len(ex["fingerprint"]) != 1 {
		t.Errorf("key and fingerprint: %v", ex)
	}
	key := ex["key"][0]

	for query, reason := range map[string]string{
		"select now()":                           "function_not_immutable",
		"select current_user":                    "value_function",
		"select * from " + table + " for update": "locking_clause",
		"update " + table + " set v = 'y'":       "not_select",
		"select * from pg_class":                 "system_table",
		"/* pgsidecar:nocache */ " + q:           "nocache_hint",
	} {
		ex := explainCache(t, conn, query)
		if got := ex["cacheable"]; len(got) != 1 || got[0] != "no" {
			t.Errorf("%s: cacheable = %q, want no", query, got)
		}
		if got := ex["reason"]; len(got) != 1 || got[0] != reason {
			t.Errorf("%s: reason = %q, want %s", query, got, reason)
		}
	}

	mustExec(t, conn, "set search_path to pg_catalog, public")
	ex = explainCache(t, conn, q)
	if ex["key"][0] == key {
		t.Errorf("the key did not change with search_path: %v", ex)
	}
	if !strings.Contains(strings.Join(ex["key.setting"], ";"), "search_path=pg_catalog, public") {
		t.Errorf("key settings = %q, want search_path among them", ex["key.setting"])
	}
	// The statement never reached PostgreSQL: the table is unchanged.
	expectString(t, "the table", conn, q, "x")
}

// TestCacheSessionsDrainOnSIGTERM: with the cache on, session mode runs
// on the transaction relay holding its backend; on SIGTERM a session idle
// in its read is woken and ended (57P01) without sending anything, and a
// session inside a transaction may finish it first, as without the cache.
func TestCacheSessionsDrainOnSIGTERM(t *testing.T) {
	t.Parallel()
	pg := env.Postgres(t)
	sc := startCacheSidecar(t, pg, cacheOpts{PoolMode: "session", Args: []string{"--shutdown-timeout", "20s"}})
	idle := pgxConnect(t, sc.SuperURL(pg), pgx.QueryExecModeSimpleProtocol)
	busy := pgxConnect(t, sc.SuperURL(pg), pgx.QueryExecModeSimpleProtocol)
	expectString(t, "idle client", idle, "select 'a'", "a")
	mustExec(t, busy, "begin")
	expectString(t, "client in a transaction", busy, "select 'b'", "b")

	start := time.Now()
	stopped := make(chan struct{})
	go func() { sc.Stop(); close(stopped) }()
	// The transaction in progress may still finish.
	time.Sleep(300 * time.Millisecond)
	expectString(t, "inside the transaction after SIGTERM", busy, "select 'c'", "c")
	mustExec(t, busy, "commit")
	// The idle session sends nothing: the drain must end it by itself, not
	// wait for the shutdown timeout (20s).
	select {
	case <-stopped:
	case <-time.After(8 * time.Second):
		t.Fatalf("the sidecar still runs %s after SIGTERM, with an idle session and no transaction left", time.Since(start).Round(time.Millisecond))
	}
	_, err := idle.Exec(ctxT(t), "select 1")
	if err == nil {
		t.Fatal("the idle session still answers after the sidecar stopped")
	}
	if code := pgCode(err); code != "57P01" && code != "" {
		t.Errorf("idle session after SIGTERM: %v (SQLSTATE %q), want 57P01 or a closed connection", err, code)
	}
}
