package integration

import (
	"strings"
	"testing"

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
