package integration

// node-postgres (npm "pg", pinned in testdata/node/package.json) through the
// sidecar. node-postgres parses a named statement once per connection and
// from then on sends only Bind/Describe/Execute/Sync for it: a proxy that
// moves a client between backends, or lets a statement outlive its client,
// breaks it. The scripts are in testdata/node; `make deps` installs their
// packages with npm ci.

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/pgsidecar/pgsidecar/internal/testenv"
	"github.com/pgsidecar/pgsidecar/proxy"
)

const nodeDir = "testdata/node"

// nodeBinary returns the path of node, once the pg package pinned in
// testdata/node/package.json is installed in its node_modules. Without
// either the test skips, or fails under CI=true.
func nodeBinary(t testing.TB) string {
	t.Helper()
	node, err := exec.LookPath("node")
	if err != nil {
		testenv.SkipOrFail(t, fmt.Errorf("node: %w (%v)", testenv.ErrNotInstalled, err))
	}
	var pinned, installed struct {
		Version      string
		Dependencies map[string]string
	}
	readJSON := func(path string, v any) error {
		b, err := os.ReadFile(filepath.Join(nodeDir, path))
		if err != nil {
			return err
		}
		return json.Unmarshal(b, v)
	}
	if err := readJSON("package.json", &pinned); err != nil {
		t.Fatal(err)
	}
	if err := readJSON("node_modules/pg/package.json", &installed); err != nil {
		testenv.SkipOrFail(t, fmt.Errorf("node-postgres in %s: %w (%v)", nodeDir, testenv.ErrNotInstalled, err))
	}
	if want := pinned.Dependencies["pg"]; installed.Version != want {
		testenv.SkipOrFail(t, fmt.Errorf("node-postgres %s in %s/node_modules, package.json pins %s: %w",
			installed.Version, nodeDir, want, testenv.ErrNotInstalled))
	}
	return node
}

// runNodeScript runs testdata/node/script against sc as pg's superuser.
func runNodeScript(t testing.TB, node string, sc *sidecar, pg *testenv.Postgres, script string, env ...string) scriptOutput {
	t.Helper()
	return runDriverScript(t, nodeDir, sc.SuperURL(pg), env, node, script)
}

func TestNodePostgresNamedStatements(t *testing.T) {
	t.Parallel()
	pg := env.Postgres(t)
	node := nodeBinary(t)
	forEachPoolMode(t, func(t *testing.T, mode proxy.PoolMode) {
		sc := startDriverSidecar(t, pg, mode)
		const clients, queries = 8, 50
		out := runNodeScript(t, node, sc, pg, "named_statements.js",
			fmt.Sprint("NODEPG_CLIENTS=", clients), fmt.Sprint("NODEPG_QUERIES=", queries))

		// Every client got its own answers, from at most driverPoolSize
		// backends between them.
		type concurrent struct {
			Client, Queries, Sum, Wrong int
			Pids                        []int
		}
		got := scriptChecks[concurrent](t, out, "concurrent")
		if len(got) != clients {
			t.Fatalf("%d concurrent results, want %d:\n%s", len(got), clients, out.stdout)
		}
		backends := map[int]bool{}
		for c, r := range got {
			// Client c sent c*1000+j for j < queries and got each plus one.
			wantSum := queries*(c*1000+1) + queries*(queries-1)/2
			if r.Client != c || r.Queries != queries || r.Wrong != 0 || r.Sum != wantSum {
				t.Errorf("client %d: %+v, want %d queries, 0 wrong, sum %d", c, r, queries, wantSum)
			}
			if mode == proxy.PoolModeSession && len(r.Pids) != 1 {
				t.Errorf("client %d ran on backends %v in session mode, want one", c, r.Pids)
			}
			for _, pid := range r.Pids {
				backends[pid] = true
			}
		}
		if len(backends) == 0 || len(backends) > driverPoolSize {
			t.Errorf("%d clients ran on %d backends, want 1 to %d (the pool size)", clients, len(backends), driverPoolSize)
		}

		// One name, two texts with different result types, on two clients.
		type sameName struct {
			Client string
			Values json.RawMessage
		}
		wantSame := []sameName{
			{"x", json.RawMessage(`[100,101,102,103,104]`)},
			{"y", json.RawMessage(`["0-y","1-y","2-y","3-y","4-y"]`)},
		}
		if same := scriptChecks[sameName](t, out, "same_name"); !reflect.DeepEqual(same, wantSame) {
			t.Errorf("same name, different texts: %s, want %s", jsonString(same), jsonString(wantSame))
		}

		// node-postgres does not notice DEALLOCATE or DISCARD ALL sent as
		// SQL: it keeps binding the name it parsed, and the server, which
		// forgot it, says so on every use. The connection stays usable, and
		// a new connection parses the name afresh.
		type forgotten struct {
			Before        int
			ForgetTag     string `json:"forget_tag"`
			First, Again  scriptError
			OtherName     int `json:"other_name"`
			Plain         int
			NewConnection int `json:"new_connection"`
		}
		gone := scriptError{Code: "26000", Message: `prepared statement "dbl" does not exist`}
		for check, tag := range map[string]string{"deallocate": "DEALLOCATE", "discard_all": "DISCARD"} {
			want := forgotten{Before: 42, ForgetTag: tag, First: gone, Again: gone, OtherName: 14, Plain: 1, NewConnection: 18}
			if f := scriptCheck[forgotten](t, out, check); f != want {
				t.Errorf("%s: %+v\nwant %+v", check, f, want)
			}
		}
	})
}

func TestNodePostgresTransactions(t *testing.T) {
	t.Parallel()
	pg := env.Postgres(t)
	node := nodeBinary(t)
	forEachPoolMode(t, func(t *testing.T, mode proxy.PoolMode) {
		sc := startDriverSidecar(t, pg, mode)
		table := createTable(t, pg, "nodepg_tx", "id int primary key, v text")
		out := runNodeScript(t, node, sc, pg, "transactions.js", "NODEPG_TABLE="+table)

		type commit struct {
			Tags  []string
			IDs   []int
			Pids  []int
			Count int
		}
		c := scriptCheck[commit](t, out, "commit")
		if !slices.Equal(c.Tags, []string{"BEGIN", "COMMIT"}) || !slices.Equal(c.IDs, []int{1, 2}) || c.Count != 2 {
			t.Errorf("commit: %+v, want tags BEGIN, COMMIT, ids 1, 2, count 2", c)
		}
		if len(c.Pids) != 2 || c.Pids[0] != c.Pids[1] {
			t.Errorf("one transaction ran on backends %v, want one", c.Pids)
		}

		type rollback struct {
			Tags        []string
			Inserted    int
			CountInside int `json:"count_inside"`
			CountAfter  int `json:"count_after"`
		}
		r := scriptCheck[rollback](t, out, "rollback")
		if !slices.Equal(r.Tags, []string{"BEGIN", "ROLLBACK"}) || r.Inserted != 3 || r.CountInside != 1 || r.CountAfter != 0 {
			t.Errorf("rollback: %+v, want tags BEGIN, ROLLBACK, id 3 seen inside and gone after", r)
		}

		type errorInTx struct {
			Division      scriptError
			Aborted       scriptError
			RollbackTag   string `json:"rollback_tag"`
			CountAborted  int    `json:"count_aborted"`
			InsertedAfter int    `json:"inserted_after"`
			DivAfter      int    `json:"div_after"`
		}
		wantErr := errorInTx{
			Division:      scriptError{Code: "22012", Message: "division by zero"},
			Aborted:       scriptError{Code: "25P02", Message: "current transaction is aborted, commands ignored until end of transaction block"},
			RollbackTag:   "ROLLBACK",
			InsertedAfter: 6,
			DivAfter:      25,
		}
		if e := scriptCheck[errorInTx](t, out, "error_in_transaction"); e != wantErr {
			t.Errorf("error in a transaction: %+v\nwant %+v", e, wantErr)
		}

		// What committed, read straight from PostgreSQL.
		conn := pgxConnect(t, directURL(pg), pgx.QueryExecModeCacheStatement)
		rows, err := conn.Query(ctxT(t), "select id, v from "+table+" order by id")
		if err != nil {
			t.Fatal(err)
		}
		var gotRows []string
		for rows.Next() {
			var id int
			var v string
			if err := rows.Scan(&id, &v); err != nil {
				t.Fatal(err)
			}
			gotRows = append(gotRows, fmt.Sprintf("%d %s", id, v))
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
		if want := []string{"1 committed", "2 committed", "6 after the error"}; !slices.Equal(gotRows, want) {
			t.Errorf("table after the script: %q, want %q", gotRows, want)
		}
	})
}

func TestNodePostgresSessionSettings(t *testing.T) {
	t.Parallel()
	pg := env.Postgres(t)
	node := nodeBinary(t)
	defaults, set := serverDefaults(t, pg)
	forEachPoolMode(t, func(t *testing.T, mode proxy.PoolMode) {
		sc := startDriverSidecar(t, pg, mode)
		out := runNodeScript(t, node, sc, pg, "session_settings.js",
			"NODEPG_TIMEZONE="+set.TimeZone, "NODEPG_SEARCH_PATH="+set.SearchPath)

		type step struct {
			Client, Step string
			sessionSettings
		}
		want := []step{
			{"a", "before_set", defaults},
			{"a", "after_set", set},
			{"b", "while_a_set", defaults},
			{"a", "after_b", set},
			{"a", "set_local", sessionSettings{TimeZone: "UTC", SearchPath: set.SearchPath}},
			{"a", "after_commit", set},
		}
		if got := scriptChecks[step](t, out, "settings"); !reflect.DeepEqual(got, want) {
			t.Errorf("settings seen by clients a and b:\n%s\nwant:\n%s", jsonString(got), jsonString(want))
		}
	})
}

func jsonString(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprintf("%+v", v)
	}
	return string(b)
}
