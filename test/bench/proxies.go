package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"syscall"
	"time"

	"github.com/pgsidecar/pgsidecar/internal/testenv"
)

// The lanes of the results table, in column order: read-only.
const (
	lanePostgres  = "postgres"
	lanePgSidecar = "pgsidecar"
	lanePgBouncer = "pgbouncer"
)

var lanes = []string{lanePostgres, lanePgSidecar, lanePgBouncer}

// endpoint is one way to reach the database in one row of the table.
type endpoint struct {
	name     string // its lane
	port     int
	pid      int    // the proxy process, for CPU accounting; 0 for PostgreSQL
	poolMode string // "" for PostgreSQL
	poolSize int
	note     string     // for the row's notes, e.g. why PgBouncer runs in session mode
	na       string     // why there are no figures (refused to start, not installed); "" when usable
	hits     hitCounter // the target's result cache counters; nil: none
}

func (e endpoint) label() string {
	if e.poolMode == "" {
		return e.name
	}
	return fmt.Sprintf("%s (%s mode, pool %d)", e.name, e.poolMode, e.poolSize)
}

// targetSet holds the endpoints of the pgbench runs and the proxy processes
// behind them, which it owns until stop.
type targetSet struct {
	postgres   endpoint
	sidecar    endpoint
	pgbouncer  endpoint
	pbPrepared *endpoint // PgBouncer for -M prepared rows, when not pgbouncer
	procSet
}

// procSet owns the proxy processes of a phase of the bench until stop.
type procSet struct {
	procs []*proc
}

// endpoint is the endpoint of lane for pgbench mode.
func (t *targetSet) endpoint(lane, mode string) endpoint {
	switch lane {
	case lanePgSidecar:
		return t.sidecar
	case lanePgBouncer:
		if mode == "prepared" && t.pbPrepared != nil {
			return *t.pbPrepared
		}
		return t.pgbouncer
	}
	return t.postgres
}

// stop stops every proxy; it is idempotent.
func (t *procSet) stop() {
	for _, p := range t.procs {
		p.stop()
	}
}

// startTargets starts pgsidecar and PgBouncer in front of up. A proxy that
// exits before it is ready (pgsidecar refusing the pool mode, say) becomes
// an n/a endpoint; only failures of the bench itself are errors. The
// returned targets are never nil, so the caller can always stop them.
func startTargets(ctx context.Context, o options, p runPlan, dir string, up upstream) (*targetSet, error) {
	t := &targetSet{postgres: endpoint{name: lanePostgres, port: up.port}}
	cfg := proxyConfig{poolMode: o.poolMode, poolSize: o.proxyPoolSize(o.poolMode), maxClientConn: 10000, up: up}

	t.sidecar = endpoint{name: lanePgSidecar, poolMode: cfg.poolMode, poolSize: cfg.poolSize}
	fmt.Printf("starting %s ...\n", t.sidecar.label())
	sc, err := startSidecar(ctx, o.sidecar, cfg)
	if err := t.adopt(&t.sidecar, sc, err); err != nil {
		return t, err
	}

	t.pgbouncer = endpoint{name: lanePgBouncer, poolMode: cfg.poolMode, poolSize: cfg.poolSize}
	if p.pgbouncer.isZero() {
		t.pgbouncer.na = "PgBouncer not installed"
		return t, nil
	}
	fmt.Printf("starting %s ...\n", t.pgbouncer.label())
	pb, err := startPgBouncer(ctx, o.pgbouncer, p.pgbouncer, filepath.Join(dir, "pgbouncer"), cfg)
	if err := t.adopt(&t.pgbouncer, pb, err); err != nil {
		return t, err
	}
	if p.pgbouncerPreparedInSession() {
		scfg := cfg
		scfg.poolMode, scfg.poolSize = sessionMode, o.proxyPoolSize(sessionMode)
		ep := endpoint{name: lanePgBouncer, poolMode: scfg.poolMode, poolSize: scfg.poolSize,
			note: fmt.Sprintf("PgBouncer session mode (pool %d): %s lacks max_prepared_statements", scfg.poolSize, p.pgbouncer)}
		fmt.Printf("starting %s for -M prepared ...\n", ep.label())
		pb, err := startPgBouncer(ctx, o.pgbouncer, p.pgbouncer, filepath.Join(dir, "pgbouncer-session"), scfg)
		if err := t.adopt(&ep, pb, err); err != nil {
			return t, err
		}
		t.pbPrepared = &ep
	}
	return t, nil
}

// adopt records a proxy start: the process on success, n/a when it exited
// before it was ready, and any other error for the caller.
func (t *procSet) adopt(ep *endpoint, p *proc, err error) error {
	var exited *exitedError
	switch {
	case errors.As(err, &exited):
		ep.na = "refused: " + exited.msg
		fmt.Printf("  %s: n/a (%s)\n", ep.name, ep.na)
		return nil
	case err != nil:
		return err
	}
	t.procs = append(t.procs, p)
	ep.port, ep.pid = p.port, p.pid()
	return nil
}

// upstream is the PostgreSQL server (or fake) behind the proxies, logged in
// to as the bench user.
type upstream struct {
	host string
	port int
}

func (u upstream) url() string {
	return fmt.Sprintf("postgres://%s:%s@%s/%s?sslmode=disable",
		benchUser, url.QueryEscape(benchPassword), net.JoinHostPort(u.host, strconv.Itoa(u.port)), benchDB)
}

// proxyConfig is what the bench sets on either proxy.
type proxyConfig struct {
	poolMode      string
	poolSize      int
	maxClientConn int
	up            upstream
	sidecarArgs   []string // more pgsidecar flags, e.g. the result cache's; PgBouncer has none
}

func startSidecar(ctx context.Context, bin string, cfg proxyConfig) (*proc, error) {
	port, err := testenv.FreePort()
	if err != nil {
		return nil, err
	}
	httpPort, err := testenv.FreePort()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin,
		"--listen", fmt.Sprintf("127.0.0.1:%d", port),
		"--http-listen", fmt.Sprintf("127.0.0.1:%d", httpPort),
		"--upstream", cfg.up.url(),
		"--pool-mode", cfg.poolMode,
		"--pool-size", strconv.Itoa(cfg.poolSize),
		"--max-client-conn", strconv.Itoa(cfg.maxClientConn),
		"--log-level", "warn")
	cmd.Args = append(cmd.Args, cfg.sidecarArgs...)
	p, err := startProc(lanePgSidecar, cmd, port, nil)
	if err != nil {
		return nil, err
	}
	p.metricsURL = fmt.Sprintf("http://127.0.0.1:%d/metrics", httpPort)
	ready := fmt.Sprintf("http://127.0.0.1:%d/readyz", httpPort)
	client := &http.Client{Timeout: time.Second}
	if err := p.waitReady(ctx, func() bool {
		resp, err := client.Get(ready)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}); err != nil {
		p.stop()
		return nil, err
	}
	return p, nil
}

// startPgBouncer starts PgBouncer with its files in dir (created), as the
// postgres OS user when we are root: PgBouncer refuses to run as root.
func startPgBouncer(ctx context.Context, bin string, v version, dir string, cfg proxyConfig) (*proc, error) {
	if err := os.Mkdir(dir, 0o777); err != nil {
		return nil, err
	}
	os.Chmod(dir, 0o777) // past the umask: PgBouncer writes its log here
	port, err := testenv.FreePort()
	if err != nil {
		return nil, err
	}
	users := filepath.Join(dir, "userlist.txt")
	ini := filepath.Join(dir, "pgbouncer.ini")
	logfile := filepath.Join(dir, "pgbouncer.log")
	if err := os.WriteFile(users, fmt.Appendf(nil, "%q %q\n", benchUser, benchPassword), 0o644); err != nil {
		return nil, err
	}
	extra := ""
	if cfg.poolMode == transactionMode && !v.less(version{1, 21}) {
		extra = "max_prepared_statements = 200\n"
	}
	conf := fmt.Sprintf(`[databases]
%s = host=%s port=%d dbname=%s user=%s password=%s
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = %d
unix_socket_dir =
auth_type = trust
auth_file = %s
pool_mode = %s
default_pool_size = %d
max_client_conn = %d
server_reset_query = DISCARD ALL
logfile = %s
%s`, benchDB, cfg.up.host, cfg.up.port, benchDB, benchUser, benchPassword, port, users,
		cfg.poolMode, cfg.poolSize, cfg.maxClientConn, logfile, extra)
	if err := os.WriteFile(ini, []byte(conf), 0o644); err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, "-q", ini) // -q: it logs to logfile only
	cmd.SysProcAttr = &syscall.SysProcAttr{}
	if err := asPostgresWhenRoot(cmd, "pgbouncer"); err != nil {
		return nil, err
	}
	return startListening(ctx, lanePgBouncer, cmd, port, func() string { return logfileError(logfile) })
}

// logfileErrorRE matches the severity of a PgBouncer ("... 1234 FATAL ...")
// or pgpool-II ("...: main pid 1234: FATAL:  ...") error line.
var logfileErrorRE = regexp.MustCompile(`\s(FATAL|ERROR)[:\s]`)

// logfileError is the first FATAL or ERROR line of a PgBouncer or pgpool-II
// log.
func logfileError(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if l := sc.Text(); logfileErrorRE.MatchString(l) {
			return l
		}
	}
	return ""
}

// version is a PgBouncer version, major, minor, patch; zero: none.
type version [3]int

func (v version) isZero() bool   { return v == version{} }
func (v version) String() string { return fmt.Sprintf("%d.%d.%d", v[0], v[1], v[2]) }
func (v version) less(w version) bool {
	return v[0] < w[0] || v[0] == w[0] && (v[1] < w[1] || v[1] == w[1] && v[2] < w[2])
}

// pgbouncerVersion runs pgbouncer --version ("PgBouncer 1.18.0" first).
func pgbouncerVersion(bin string) (version, error) {
	out, err := exec.Command(bin, "--version").CombinedOutput()
	if err != nil {
		return version{}, fmt.Errorf("%s --version: %v\n%s", bin, err, out)
	}
	m := regexp.MustCompile(`PgBouncer (\d+)\.(\d+)(?:\.(\d+))?`).FindSubmatch(out)
	if m == nil {
		return version{}, fmt.Errorf("%s --version: no version in %q", bin, out)
	}
	var v version
	for i := range v {
		v[i], _ = strconv.Atoi(string(m[i+1]))
	}
	return v, nil
}

func findPgBouncer() string {
	if p, err := exec.LookPath("pgbouncer"); err == nil {
		return p
	}
	if _, err := os.Stat("/usr/sbin/pgbouncer"); err == nil {
		return "/usr/sbin/pgbouncer"
	}
	return ""
}
