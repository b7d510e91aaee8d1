package integration

// psycopg2 through the sidecar: libpq's simple query protocol with
// client-side parameters, and psycopg2's implicit transactions (the first
// statement after connect, commit or rollback opens one). The script is
// testdata/psycopg2/session.py, run by Debian's python3 (`make deps`
// installs python3-psycopg2).

import (
	"fmt"
	"os/exec"
	"reflect"
	"slices"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/pgsidecar/pgsidecar/internal/testenv"
	"github.com/pgsidecar/pgsidecar/proxy"
)

// debianPython is called by path: a python3 earlier on PATH (pyenv, a
// virtualenv) does not see Debian's python3-* packages.
const debianPython = "/usr/bin/python3"

// psycopg2Python returns a python3 that imports psycopg2. Without one the
// test skips, or fails under CI=true.
func psycopg2Python(t testing.TB) string {
	t.Helper()
	if out, err := exec.Command(debianPython, "-c", "import psycopg2").CombinedOutput(); err != nil {
		testenv.SkipOrFail(t, fmt.Errorf("%s with psycopg2: %w (%v: %s)", debianPython, testenv.ErrNotInstalled, err, out))
	}
	return debianPython
}

// libpq's PQtransactionStatus values.
const (
	pqTransIdle    = 0
	pqTransInTrans = 2
	pqTransInError = 3
)

func TestPsycopg2SettingsAndTransactions(t *testing.T) {
	t.Parallel()
	pg := env.Postgres(t)
	python := psycopg2Python(t)
	defaults, set := serverDefaults(t, pg)
	forEachPoolMode(t, func(t *testing.T, mode proxy.PoolMode) {
		sc := startDriverSidecar(t, pg, mode)
		table := createTable(t, pg, "psycopg2_tx", "id int primary key, v text")
		out := runDriverScript(t, "testdata/psycopg2", sc.SuperURL(pg), []string{
			"PSYCOPG2_TIMEZONE=" + set.TimeZone,
			"PSYCOPG2_SEARCH_PATH=" + set.SearchPath,
			"PSYCOPG2_TABLE=" + table,
			"PYTHONDONTWRITEBYTECODE=1",
		}, python, "session.py")

		type step struct {
			Client, Step string
			sessionSettings
		}
		wantSteps := []step{
			{"a", "after_set", set},
			{"b", "while_a_set", defaults},
			{"a", "after_b", set},
		}
		if got := scriptChecks[step](t, out, "settings"); !reflect.DeepEqual(got, wantSteps) {
			t.Errorf("settings seen by clients a and b:\n%s\nwant:\n%s", jsonString(got), jsonString(wantSteps))
		}

		type transactions struct {
			Statuses map[string]int
			Division scriptError
			N        int
			Text     string
			Array    []int
		}
		tx := scriptCheck[transactions](t, out, "transactions")
		wantStatuses := map[string]int{
			"new":            pqTransIdle,
			"after_insert":   pqTransInTrans,
			"after_commit":   pqTransIdle,
			"after_error":    pqTransInError,
			"after_rollback": pqTransIdle,
		}
		if !reflect.DeepEqual(tx.Statuses, wantStatuses) {
			t.Errorf("transaction statuses: %v, want %v", tx.Statuses, wantStatuses)
		}
		if want := (scriptError{Code: "22012", Message: "division by zero"}); tx.Division != want {
			t.Errorf("division by zero: %+v, want %+v", tx.Division, want)
		}
		if tx.N != 42 || tx.Text != `ü ' "` || !slices.Equal(tx.Array, []int{1, 2, 3}) {
			t.Errorf("query with parameters: %d, %q, %v; want 42, %q, [1 2 3]", tx.N, tx.Text, tx.Array, `ü ' "`)
		}

		conn := pgxConnect(t, directURL(pg), pgx.QueryExecModeCacheStatement)
		var ids []int32
		if err := conn.QueryRow(ctxT(t), "select coalesce(array_agg(id order by id), '{}') from "+table).Scan(&ids); err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(ids, []int32{1}) {
			t.Errorf("ids in the table after the script: %v, want [1] (2 rolled back, 3 aborted)", ids)
		}
	})
}
