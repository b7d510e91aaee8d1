package integration

// Non-Go drivers through the sidecar run as scripts (node-postgres in
// testdata/node, psycopg2 in testdata/psycopg2), in every pool mode. A
// script writes one JSON object per line to stdout, each naming what it
// reports in its "check" field, and exits non-zero on an error it did not
// expect; the Go test asserts the values.

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgsidecar/pgsidecar/internal/testenv"
	"github.com/pgsidecar/pgsidecar/pool"
	"github.com/pgsidecar/pgsidecar/proxy"
)

// driverScriptTimeout bounds one script run, startup included. A script
// takes well under a second; the bound is for a proxy that hangs.
const driverScriptTimeout = 60 * time.Second

// driverPoolSize is the pool the scripts run through: fewer backends than
// the clients some scripts open at once.
const driverPoolSize = 2

// driverPoolModes are the pool modes each driver test runs in, as subtests
// named after the mode.
var driverPoolModes = []proxy.PoolMode{proxy.PoolModeSession, proxy.PoolModeTransaction}

// forEachPoolMode runs f as one subtest per pool mode.
func forEachPoolMode(t *testing.T, f func(t *testing.T, mode proxy.PoolMode)) {
	for _, mode := range driverPoolModes {
		t.Run(string(mode), func(t *testing.T) {
			t.Parallel()
			f(t, mode)
		})
	}
}

// startDriverSidecar is the sidecar the driver scripts connect to.
func startDriverSidecar(t testing.TB, pg *testenv.Postgres, mode proxy.PoolMode) *sidecar {
	t.Helper()
	return startSidecar(t, pg, sidecarOptions{
		Proxy: proxy.Config{PoolMode: mode},
		Pool:  pool.Config{PoolSize: driverPoolSize},
	})
}

// scriptOutput is what a script wrote to stdout, one JSON object a line.
type scriptOutput struct {
	stdout string
	lines  []scriptLine
}

type scriptLine struct {
	check string
	raw   json.RawMessage
}

// runDriverScript runs bin with args in dir, with PGSIDECAR_TEST_URL=url
// and env added to an environment stripped of PG* variables (which libpq
// and node-postgres would otherwise read), and fails t unless it exits 0
// with JSON lines on stdout.
func runDriverScript(t testing.TB, dir, url string, env []string, bin string, args ...string) scriptOutput {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), driverScriptTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Dir = dir
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PG") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, "PGSIDECAR_TEST_URL="+url, "LC_ALL=C")
	cmd.Env = append(cmd.Env, env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	// A child the script left behind holding the pipes must not hang Wait.
	cmd.WaitDelay = 5 * time.Second
	start := time.Now()
	err := cmd.Run()
	t.Logf("%s %s: %v in %s; stdout:\n%s", bin, strings.Join(args, " "), err, time.Since(start).Round(time.Millisecond), stdout.String())
	if err != nil {
		t.Fatalf("%s %s: %v (context: %v)\nstdout:\n%s\nstderr:\n%s", bin, strings.Join(args, " "), err, ctx.Err(), stdout.String(), stderr.String())
	}
	out := scriptOutput{stdout: stdout.String()}
	for _, line := range strings.Split(strings.TrimSpace(out.stdout), "\n") {
		var head struct {
			Check string `json:"check"`
		}
		if err := json.Unmarshal([]byte(line), &head); err != nil || head.Check == "" {
			t.Fatalf("%s %s: stdout line %q is not a JSON object with a check (%v)\nstderr:\n%s", bin, strings.Join(args, " "), line, err, stderr.String())
		}
		out.lines = append(out.lines, scriptLine{check: head.Check, raw: json.RawMessage(line)})
	}
	return out
}

// scriptChecks decodes every line of out whose check is name, in order.
func scriptChecks[T any](t testing.TB, out scriptOutput, name string) []T {
	t.Helper()
	var got []T
	for _, l := range out.lines {
		if l.check != name {
			continue
		}
		var v T
		dec := json.NewDecoder(bytes.NewReader(l.raw))
		if err := dec.Decode(&v); err != nil {
			t.Fatalf("check %s: %v in %s", name, err, l.raw)
		}
		got = append(got, v)
	}
	if len(got) == 0 {
		t.Fatalf("no %q line in the script's output:\n%s", name, out.stdout)
	}
	return got
}

// scriptCheck decodes the one line of out whose check is name.
func scriptCheck[T any](t testing.TB, out scriptOutput, name string) T {
	t.Helper()
	got := scriptChecks[T](t, out, name)
	if len(got) != 1 {
		t.Fatalf("%d %q lines in the script's output, want 1:\n%s", len(got), name, out.stdout)
	}
	return got[0]
}

// scriptError is a server error as a script reports it.
type scriptError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// sessionSettings are a client's TimeZone and search_path, as SHOW gives them.
type sessionSettings struct {
	TimeZone   string `json:"timezone"`
	SearchPath string `json:"search_path"`
}

// serverDefaults are the TimeZone and search_path that a client which asks
// for neither at startup gets from pg, and values to SET that differ from them.
func serverDefaults(t testing.TB, pg *testenv.Postgres) (defaults, other sessionSettings) {
	t.Helper()
	ctx := ctxT(t)
	cfg, err := pgx.ParseConfig(directURL(pg))
	if err != nil {
		t.Fatal(err)
	}
	// Not even what PGTZ or PGOPTIONS in this process's environment ask for.
	cfg.RuntimeParams = map[string]string{}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if err := conn.QueryRow(ctx, "show TimeZone").Scan(&defaults.TimeZone); err != nil {
		t.Fatal(err)
	}
	if err := conn.QueryRow(ctx, "show search_path").Scan(&defaults.SearchPath); err != nil {
		t.Fatal(err)
	}
	other.TimeZone = "Asia/Tokyo"
	if defaults.TimeZone == other.TimeZone {
		other.TimeZone = "America/Sao_Paulo"
	}
	other.SearchPath = uniq("driver_schema") + ", public"
	return defaults, other
}
