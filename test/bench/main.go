// Command bench measures pgsidecar against PostgreSQL directly and against
// PgBouncer, in one run, on one throwaway PostgreSQL server: pgbench
// select-only workloads through each target, side by side, reported as
// TPS, p99 latency, proxy CPU time per transaction and ratios.
//
// It starts every server it talks to on 127.0.0.1 and stops them when done;
// each pgbench run is bounded by -duration.
//
//	go run ./test/bench -sidecar bin/pgsidecar
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/pgsidecar/pgsidecar/internal/testenv"
)

type options struct {
	sidecar   string
	pgbouncer string
	duration  time.Duration
	clients   string
	modes     string
	poolSize  int
	scale     int
	threads   int
}

func main() {
	var o options
	flag.StringVar(&o.sidecar, "sidecar", "bin/pgsidecar", "pgsidecar binary")
	flag.StringVar(&o.pgbouncer, "pgbouncer", "", "pgbouncer binary (default: from PATH or /usr/sbin; skipped when absent)")
	flag.DurationVar(&o.duration, "duration", 15*time.Second, "length of each pgbench run")
	flag.StringVar(&o.clients, "clients", "16", "comma-separated pgbench client counts")
	flag.StringVar(&o.modes, "modes", "simple,extended,prepared,connect", "comma-separated pgbench -M modes; connect is -M simple -C (a new connection per transaction)")
	flag.IntVar(&o.poolSize, "pool-size", 20, "backend pool size for pgsidecar and PgBouncer")
	flag.IntVar(&o.scale, "scale", 10, "pgbench -i scale")
	flag.IntVar(&o.threads, "threads", 2, "pgbench -j")
	flag.Parse()
	if err := run(context.Background(), o); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// target is one way to reach the database.
type target struct {
	name string
	port int
	pid  int // proxy process, for CPU accounting; 0 for PostgreSQL itself
}

type result struct {
	tps       float64
	p99       time.Duration
	txns      int64
	cpuPerTxn time.Duration // proxy user+system CPU per transaction
}

func run(ctx context.Context, o options) error {
	for _, tool := range []string{"pgbench", o.sidecar} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s not found: %w", tool, err)
		}
	}
	if o.pgbouncer == "" {
		o.pgbouncer = findPgBouncer()
	}
	tmp, err := os.MkdirTemp("", "pgsidecar-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	os.Chmod(tmp, 0o777)

	fmt.Println("starting PostgreSQL ...")
	pg, err := testenv.StartPostgres(ctx, testenv.PostgresOptions{MaxConnections: 300})
	if err != nil {
		return err
	}
	defer pg.Stop()
	const user, password, db = "bench", "bench-password", "bench"
	if err := pg.CreateRole(ctx, user, password); err != nil {
		return err
	}
	if err := pg.Exec(ctx, "CREATE DATABASE bench OWNER bench"); err != nil {
		return err
	}
	env := append(os.Environ(), "PGPASSWORD="+password)
	fmt.Printf("pgbench -i -s %d ...\n", o.scale)
	if out, err := command(env, "pgbench", "-i", "-q", "-s", strconv.Itoa(o.scale), "-h", pg.Host, "-p", strconv.Itoa(pg.Port), "-U", user, db).CombinedOutput(); err != nil {
		return fmt.Errorf("pgbench -i: %v\n%s", err, out)
	}

	targets := []target{{name: "postgres", port: pg.Port}}
	upstream := pg.URL(user, password, db)

	sc, err := startSidecar(ctx, o, upstream)
	if err != nil {
		return err
	}
	defer stop(sc.cmd)
	targets = append(targets, target{name: "pgsidecar", port: sc.port, pid: sc.pid})

	if o.pgbouncer != "" {
		pb, err := startPgBouncer(ctx, o, tmp, pg, user, password, db)
		if err != nil {
			return err
		}
		defer stop(pb.cmd)
		targets = append(targets, target{name: "pgbouncer", port: pb.port, pid: pb.pid})
	} else {
		fmt.Println("pgbouncer not installed: comparing with PostgreSQL only")
	}

	type row struct {
		mode    string
		clients int
		res     map[string]result
	}
	var rows []row
	for _, mode := range strings.Split(o.modes, ",") {
		for _, cs := range strings.Split(o.clients, ",") {
			clients, err := strconv.Atoi(cs)
			if err != nil {
				return fmt.Errorf("bad -clients %q", cs)
			}
			r := row{mode: mode, clients: clients, res: map[string]result{}}
			for _, t := range targets {
				fmt.Printf("pgbench -S -M %s -c %d -T %s via %s ...\n", mode, clients, o.duration, t.name)
				res, err := pgbench(env, o, tmp, t, user, db, mode, clients)
				if err != nil {
					return fmt.Errorf("%s via %s: %w", mode, t.name, err)
				}
				r.res[t.name] = res
			}
			rows = append(rows, r)
		}
	}

	fmt.Printf("\npgbench -S (select-only), %s per run, pool size %d, pgsidecar and PgBouncer in session mode, %d cores\n\n", o.duration, o.poolSize, numCPU())
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "mode\tclients\ttarget\tTPS\tp99 ms\tproxy CPU µs/txn\tvs postgres\tvs pgbouncer\t")
	for _, r := range rows {
		for _, t := range targets {
			res := r.res[t.name]
			cpu := "-"
			if t.pid != 0 {
				cpu = fmt.Sprintf("%.1f", float64(res.cpuPerTxn.Nanoseconds())/1e3)
			}
			vsPG := fmt.Sprintf("%.2fx", res.tps/r.res["postgres"].tps)
			vsPB := "-"
			if pb, ok := r.res["pgbouncer"]; ok && t.name != "pgbouncer" && t.name != "postgres" {
				vsPB = fmt.Sprintf("%.2fx", res.tps/pb.tps)
			}
			fmt.Fprintf(w, "%s\t%d\t%s\t%.0f\t%.2f\t%s\t%s\t%s\t\n", r.mode, r.clients, t.name, res.tps,
				float64(res.p99.Microseconds())/1e3, cpu, vsPG, vsPB)
		}
	}
	return w.Flush()
}

type proc struct {
	cmd  *exec.Cmd
	port int
	pid  int // the proxy process itself, for CPU accounting
}

func startSidecar(ctx context.Context, o options, upstream string) (*proc, error) {
	port, err := testenv.FreePort()
	if err != nil {
		return nil, err
	}
	httpPort, err := testenv.FreePort()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(o.sidecar,
		"--listen", fmt.Sprintf("127.0.0.1:%d", port),
		"--http-listen", fmt.Sprintf("127.0.0.1:%d", httpPort),
		"--upstream", upstream,
		"--pool-mode", "session",
		"--pool-size", strconv.Itoa(o.poolSize),
		"--log-level", "warn")
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	ready := fmt.Sprintf("http://127.0.0.1:%d/readyz", httpPort)
	if err := waitFor(ctx, func() bool {
		resp, err := http.Get(ready)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}); err != nil {
		stop(cmd)
		return nil, fmt.Errorf("pgsidecar did not become ready: %w", err)
	}
	return &proc{cmd: cmd, port: port, pid: cmd.Process.Pid}, nil
}

func startPgBouncer(ctx context.Context, o options, dir string, pg *testenv.Postgres, dbUser, password, db string) (*proc, error) {
	port, err := testenv.FreePort()
	if err != nil {
		return nil, err
	}
	users := filepath.Join(dir, "userlist.txt")
	ini := filepath.Join(dir, "pgbouncer.ini")
	if err := os.WriteFile(users, []byte(fmt.Sprintf("%q %q\n", dbUser, password)), 0o644); err != nil {
		return nil, err
	}
	conf := fmt.Sprintf(`[databases]
%s = host=%s port=%d dbname=%s user=%s password=%s
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = %d
unix_socket_dir =
auth_type = trust
auth_file = %s
pool_mode = session
default_pool_size = %d
max_client_conn = 10000
server_reset_query = DISCARD ALL
logfile = %s
`, db, pg.Host, pg.Port, db, dbUser, password, port, users, o.poolSize, filepath.Join(dir, "pgbouncer.log"))
	if err := os.WriteFile(ini, []byte(conf), 0o644); err != nil {
		return nil, err
	}
	cmd := exec.Command(o.pgbouncer, "-q", ini) // it logs to logfile
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if os.Geteuid() == 0 {
		// PgBouncer refuses to run as root: run it as the postgres user,
		// which also owns the temporary directory's files it reads.
		u, err := user.Lookup("postgres")
		if err != nil {
			return nil, fmt.Errorf("pgbouncer cannot run as root and there is no postgres user: %w", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	if err := waitFor(ctx, func() bool {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
		}
		return err == nil
	}); err != nil {
		stop(cmd)
		return nil, fmt.Errorf("pgbouncer did not start: %w", err)
	}
	return &proc{cmd: cmd, port: port, pid: cmd.Process.Pid}, nil
}

func pgbench(env []string, o options, dir string, t target, user, db, mode string, clients int) (result, error) {
	prefix := filepath.Join(dir, fmt.Sprintf("log-%s-%s-%d", t.name, mode, clients))
	proto := []string{"-M", mode}
	if mode == "connect" {
		proto = []string{"-M", "simple", "-C"}
	}
	args := append([]string{"-n", "-S"}, proto...)
	args = append(args, "-c", strconv.Itoa(clients), "-j", strconv.Itoa(min(o.threads, clients)),
		"-T", strconv.Itoa(int(o.duration.Seconds())), "-l", "--log-prefix", prefix,
		"-h", "127.0.0.1", "-p", strconv.Itoa(t.port), "-U", user, db)
	cpu0 := cpuTime(t.pid)
	out, err := command(env, "pgbench", args...).CombinedOutput()
	cpu1 := cpuTime(t.pid)
	if err != nil {
		return result{}, fmt.Errorf("pgbench: %v\n%s", err, out)
	}
	var res result
	if m := regexp.MustCompile(`tps = ([0-9.]+) \((?:without initial|including reconnection)`).FindSubmatch(out); m != nil {
		res.tps, _ = strconv.ParseFloat(string(m[1]), 64)
	} else {
		return res, fmt.Errorf("no tps in pgbench output:\n%s", out)
	}
	if m := regexp.MustCompile(`number of transactions actually processed: (\d+)`).FindSubmatch(out); m != nil {
		res.txns, _ = strconv.ParseInt(string(m[1]), 10, 64)
	}
	lat, err := readLatencies(prefix)
	if err != nil {
		return res, err
	}
	res.p99 = percentile(lat, 0.99)
	if t.pid != 0 && res.txns > 0 {
		res.cpuPerTxn = (cpu1 - cpu0) / time.Duration(res.txns)
	}
	return res, nil
}

// readLatencies reads pgbench's per-transaction logs (prefix.PID[.N]):
// "client_id transaction_no time_us script_no time_epoch time_us".
func readLatencies(prefix string) ([]time.Duration, error) {
	files, err := filepath.Glob(prefix + ".*")
	if err != nil || len(files) == 0 {
		return nil, fmt.Errorf("no pgbench logs at %s.*", prefix)
	}
	var lat []time.Duration
	for _, f := range files {
		fh, err := os.Open(f)
		if err != nil {
			return nil, err
		}
		sc := bufio.NewScanner(fh)
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			if len(fields) < 3 {
				continue
			}
			us, err := strconv.ParseInt(fields[2], 10, 64)
			if err == nil {
				lat = append(lat, time.Duration(us)*time.Microsecond)
			}
		}
		fh.Close()
		os.Remove(f)
	}
	return lat, nil
}

func percentile(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	slices.Sort(d)
	return d[min(len(d)-1, int(float64(len(d))*p))]
}

// cpuTime is a process's user+system CPU time from /proc (0 for pid 0).
func cpuTime(pid int) time.Duration {
	if pid == 0 {
		return 0
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the parenthesised command name; utime and stime are the
	// 14th and 15th fields of the whole line.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	const clkTck = 100 // sysconf(_SC_CLK_TCK) on Linux
	return time.Duration(ut+st) * time.Second / clkTck
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

func command(env []string, name string, args ...string) *exec.Cmd {
	cmd := exec.Command(name, args...)
	cmd.Env = env
	return cmd
}

func waitFor(ctx context.Context, ok func() bool) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for !ok() {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
	return nil
}

func stop(cmd *exec.Cmd) {
	if cmd == nil || cmd.Process == nil {
		return
	}
	cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		cmd.Process.Kill()
	}
}

func numCPU() int {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return 0
	}
	return strings.Count(string(b), "processor\t:")
}
