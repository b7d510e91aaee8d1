package integration

// External clients through the sidecar: psql and pgbench, which speak
// through libpq and exercise COPY, multi-command sessions and all three of
// pgbench's query modes.

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/pgsidecar/pgsidecar/internal/testenv"
	"github.com/pgsidecar/pgsidecar/pool"
)

// clientBinary finds an external client. Without it the test is skipped,
// except under CI=true, where a missing client is a broken CI image.
func clientBinary(t testing.TB, name string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") != "true" {
			t.Skipf("%s not installed: %v", name, err)
		}
		t.Fatalf("%s not installed (CI=true, so this fails): %v", name, err)
	}
	return path
}

// libpqEnv is the environment for a libpq client connecting to the
// sidecar as pg's superuser, with no PG* variable of ours leaking in.
func libpqEnv(sc *sidecar, pg *testenv.Postgres, database string, extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PG") {
			env = append(env, kv)
		}
	}
	env = append(env,
		"PGHOST="+sc.Host, "PGPORT="+strconv.Itoa(sc.Port), "PGUSER="+pg.SuperUser,
		"PGPASSWORD="+pg.SuperPassword, "PGDATABASE="+database, "PGSSLMODE=disable",
		"PGCONNECT_TIMEOUT=10", "LC_ALL=C",
	)
	return append(env, extra...)
}

// runClient runs a client and returns its stdout and stderr and any error
// (an *exec.ExitError for a non-zero exit).
func runClient(ctx context.Context, env []string, bin string, args ...string) (stdout, stderr string, err error) {
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = env
	var out, errOut strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err = cmd.Run()
	return out.String(), errOut.String(), err
}

func TestPsqlCommandsAndCopyThroughSidecar(t *testing.T) {
	t.Parallel()
	psql := clientBinary(t, "psql")
	pg := env.Postgres(t)
	sc := startSidecar(t, pg, sidecarOptions{Pool: pool.Config{PoolSize: 2}})
	ctx := ctxT(t)
	table := uniq("psql")
	t.Cleanup(func() { pg.Exec(context.Background(), "drop table if exists "+table) })

	const rowsN = 1000
	csvPath := filepath.Join(t.TempDir(), "rows.csv")
	var csv strings.Builder
	wantSum := 0
	for i := 1; i <= rowsN; i++ {
		fmt.Fprintf(&csv, "%d,\"name, %d ü\"\n", i, i)
		wantSum += i
	}
	if err := os.WriteFile(csvPath, []byte(csv.String()), 0o644); err != nil {
		t.Fatal(err)
	}

	env := libpqEnv(sc, pg, "postgres", "PGAPPNAME=psql_through_sidecar", "PGCLIENTENCODING=UTF8")
	out, errOut, err := runClient(ctx, env, psql, "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
		"-c", "create table "+table+" (a int primary key, b text)",
		"-c", `\copy `+table+` from '`+csvPath+`' with (format csv)`,
		"-c", "select count(*), sum(a) from "+table,
		"-c", "select b from "+table+" where a = 7",
		"-c", `\copy (select a from `+table+` where a <= 3 order by a) to stdout`,
		"-c", "begin; insert into "+table+" values (0, 'rolled back'); rollback",
		"-c", "select count(*) from "+table+" where a = 0",
		"-c", "select current_setting('application_name')",
		"-c", "set TimeZone = 'Asia/Tokyo'",
		"-c", "show TimeZone",
	)
	if err != nil {
		t.Fatalf("psql: %v\nstdout:\n%s\nstderr:\n%s", err, out, errOut)
	}
	want := []string{
		fmt.Sprintf("%d|%d", rowsN, wantSum),
		"name, 7 ü",
		"1", "2", "3",
		"0",
		"psql_through_sidecar",
		"Asia/Tokyo",
	}
	if got := strings.Split(strings.TrimSuffix(out, "\n"), "\n"); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("psql output:\n%s\nwant:\n%s\nstderr:\n%s", out, strings.Join(want, "\n"), errOut)
	}

	// A server error reaches psql as PostgreSQL wrote it, and fails the run.
	out, errOut, err = runClient(ctx, env, psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-c", "select * from "+table+"_missing")
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 {
		t.Fatalf("psql with a failing query: %v, want exit status 1\nstdout:\n%s\nstderr:\n%s", err, out, errOut)
	}
	if !strings.Contains(errOut, `ERROR:  relation "`+table+`_missing" does not exist`) {
		t.Fatalf("psql stderr:\n%s", errOut)
	}
}

var processedRe = regexp.MustCompile(`(?m)^number of transactions actually processed: (\d+)/(\d+)$`)

func TestPgbenchThroughSidecar(t *testing.T) {
	t.Parallel()
	pgbench := clientBinary(t, "pgbench")
	pg := env.Postgres(t)
	ctx := ctxT(t)
	db := scratchDatabase(t, ctx, pg, "pgbench")
	// An upstream URL without a database: backends open the client's.
	sc := startSidecar(t, pg, sidecarOptions{
		Upstream: pg.URL(pg.SuperUser, pg.SuperPassword, ""),
		Pool:     pool.Config{PoolSize: 5},
	})
	env := libpqEnv(sc, pg, db)

	out, errOut, err := runClient(ctx, env, pgbench, "-i", "-s", "1")
	if err != nil {
		t.Fatalf("pgbench -i: %v\nstdout:\n%s\nstderr:\n%s", err, out, errOut)
	}
	direct, err := pgx.Connect(ctx, pg.URL(pg.SuperUser, pg.SuperPassword, db))
	if err != nil {
		t.Fatal(err)
	}
	defer direct.Close(ctx)
	var accounts, branches int
	if err := direct.QueryRow(ctx, "select (select count(*) from pgbench_accounts), (select count(*) from pgbench_branches)").Scan(&accounts, &branches); err != nil {
		t.Fatal(err)
	}
	if accounts != 100000 || branches != 1 {
		t.Fatalf("after pgbench -i -s 1 through the sidecar: %d accounts, %d branches", accounts, branches)
	}

	for _, mode := range []string{"simple", "extended", "prepared"} {
		out, errOut, err := runClient(ctx, env, pgbench, "-n", "-S", "-t", "200", "-c", "4", "-M", mode)
		if err != nil {
			t.Fatalf("pgbench -M %s: %v\nstdout:\n%s\nstderr:\n%s", mode, err, out, errOut)
		}
		m := processedRe.FindStringSubmatch(out)
		if m == nil || m[1] != "800" || m[2] != "800" {
			t.Fatalf("pgbench -M %s did not process 800/800 transactions:\n%s\nstderr:\n%s", mode, out, errOut)
		}
		if strings.Contains(out, "number of failed transactions:") && !strings.Contains(out, "number of failed transactions: 0 ") {
			t.Fatalf("pgbench -M %s reported failures:\n%s", mode, out)
		}
		if !strings.Contains(out, "query mode: "+mode) {
			t.Fatalf("pgbench did not run in %s mode:\n%s", mode, out)
		}
	}
}

// scratchDatabase creates a database for one test, dropped at its end.
func scratchDatabase(t testing.TB, ctx context.Context, pg *testenv.Postgres, prefix string) string {
	t.Helper()
	db := uniq(prefix)
	if err := pg.Exec(ctx, "create database "+db); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := pg.Exec(context.Background(), "drop database if exists "+db+" with (force)"); err != nil {
			t.Errorf("drop %s: %v", db, err)
		}
	})
	return db
}
