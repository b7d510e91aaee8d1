package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"syscall"
	"time"

	"github.com/pgsidecar/pgsidecar/internal/testenv"
)

// pgpool-II is the result cache's baseline: its in-memory query cache
// (memqcache) in shared memory, in front of the same PostgreSQL, in raw mode
// (one backend, no replication, no load balancing). It is optional: the bench
// says how to install it and reports its column as n/a when it is missing.

// pgpoolMissing is the n/a note, and the hint, when pgpool-II is missing.
const pgpoolMissing = "pgpool-II not installed: run apt-get install pgpool2"

// findPgpool is the pgpool binary on PATH or in /usr/sbin, or "".
func findPgpool() string {
	if p, err := exec.LookPath("pgpool"); err == nil {
		return p
	}
	if _, err := os.Stat("/usr/sbin/pgpool"); err == nil {
		return "/usr/sbin/pgpool"
	}
	return ""
}

// pgpoolVersion runs pgpool --version ("pgpool-II version 4.3.5 (...)").
func pgpoolVersion(bin string) (version, error) {
	out, err := exec.Command(bin, "--version").CombinedOutput()
	if err != nil {
		return version{}, fmt.Errorf("%s --version: %v\n%s", bin, err, out)
	}
	m := regexp.MustCompile(`pgpool-II version (\d+)\.(\d+)(?:\.(\d+))?`).FindSubmatch(out)
	if m == nil {
		return version{}, fmt.Errorf("%s --version: no version in %q", bin, out)
	}
	var v version
	for i := range v {
		v[i], _ = strconv.Atoi(string(m[i+1]))
	}
	return v, nil
}

// pgpoolConfig is what the bench sets on pgpool-II.
type pgpoolConfig struct {
	children int // num_init_children: one client per child, so at least the client count
	up       upstream
}

// startPgpool starts pgpool-II in the foreground with its files (config,
// pid file, sockets, status and log) in dir (created), as the postgres OS
// user when we are root, like PostgreSQL and PgBouncer. Its clients log in
// with trust; it logs in to PostgreSQL (SCRAM) as the client's user with the
// password in its pool_passwd. It is ready once a client can log in through
// it and run a query; one that cannot is an *exitedError, so the bench
// reports it as n/a.
func startPgpool(ctx context.Context, bin string, v version, dir string, cfg pgpoolConfig) (*proc, error) {
	if err := os.Mkdir(dir, 0o777); err != nil {
		return nil, err
	}
	os.Chmod(dir, 0o777) // past the umask: pgpool writes its pid, status, sockets and log here
	port, err := testenv.FreePort()
	if err != nil {
		return nil, err
	}
	pcpPort, err := testenv.FreePort()
	if err != nil {
		return nil, err
	}
	conf := filepath.Join(dir, "pgpool.conf")
	hba := filepath.Join(dir, "pool_hba.conf")
	pcp := filepath.Join(dir, "pcp.conf")
	passwd := filepath.Join(dir, "pool_passwd")
	logfile := filepath.Join(dir, "pgpool.log")

	// pgpool-II 4.2 replaced master_slave_mode and replication_mode with
	// backend_clustering_mode; raw is neither.
	mode := "backend_clustering_mode = 'raw'\n"
	if v.less(version{4, 2}) {
		mode = "master_slave_mode = off\nreplication_mode = off\n"
	}
	text := fmt.Sprintf(`%slisten_addresses = '127.0.0.1'
port = %d
socket_dir = '%s'
pcp_listen_addresses = ''
pcp_port = %d
pcp_socket_dir = '%s'
wd_ipc_socket_dir = '%s'
pid_file_name = '%s'
logdir = '%s'
backend_hostname0 = '%s'
backend_port0 = %d
backend_weight0 = 1
backend_flag0 = 'DISALLOW_TO_FAILOVER'
enable_pool_hba = on
pool_passwd = '%s'
num_init_children = %d
max_pool = 1
connection_cache = on
load_balance_mode = off
use_watchdog = off
health_check_period = 0
failover_on_backend_error = off
log_destination = 'stderr'
log_min_messages = warning
memory_cache_enabled = on
memqcache_method = 'shmem'
memqcache_total_size = 64MB
memqcache_max_num_cache = 100000
memqcache_expire = 0
memqcache_auto_cache_invalidation = on
memqcache_maxcache = 400kB
memqcache_cache_block_size = 1MB
memqcache_oiddir = '%s'
`, mode, port, dir, pcpPort, dir, dir, filepath.Join(dir, "pgpool.pid"), dir,
		cfg.up.host, cfg.up.port, passwd, cfg.children, filepath.Join(dir, "oiddir"))
	files := []struct{ path, text string }{
		{conf, text},
		{hba, "host all all 127.0.0.1/32 trust\nlocal all all trust\n"},
		{pcp, ""},
		// TEXT: the plain password, which SCRAM to the backend needs.
		{passwd, fmt.Sprintf("%s:TEXT%s\n", benchUser, benchPassword)},
	}
	for _, f := range files {
		if err := os.WriteFile(f.path, []byte(f.text), 0o644); err != nil {
			return nil, err
		}
	}
	log, err := os.OpenFile(logfile, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, err
	}
	defer log.Close() // the child has its own descriptor

	// -n: foreground; -D: no backend status from an earlier run.
	cmd := exec.Command(bin, "-n", "-D", "-f", conf, "-F", pcp, "-a", hba)
	cmd.Stderr = log
	// pgpool-II forks a child per client: its own process group, so that a
	// kill reaches them all; SIGINT (fast shutdown, which also frees its
	// shared memory) should the bench die.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGINT}
	if err := asPostgresWhenRoot(cmd, "pgpool-II"); err != nil {
		return nil, err
	}
	p, err := startListening(ctx, lanePgpool, cmd, port, func() string { return logfileError(logfile) })
	if err != nil {
		return nil, err
	}
	if err := pgpoolQuery(ctx, port); err != nil {
		p.stop()
		msg := err.Error()
		if l := logfileError(logfile); l != "" {
			msg += " (log: " + l + ")"
		}
		return nil, &exitedError{name: lanePgpool, err: err, msg: msg}
	}
	return p, nil
}

// pgpoolQuery logs in through pgpool-II and runs a query, which proves its
// login to PostgreSQL works.
func pgpoolQuery(ctx context.Context, port int) error {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	c, err := connectIdle(ctx, port)
	if err != nil {
		return fmt.Errorf("login through pgpool-II: %w", err)
	}
	defer c.Close(context.Background())
	if _, err := c.Exec(ctx, "SELECT 1").ReadAll(); err != nil {
		return fmt.Errorf("query through pgpool-II: %w", err)
	}
	return nil
}
