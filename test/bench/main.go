// Command bench measures pgsidecar against PostgreSQL directly, against
// PgBouncer and against pgpool-II, in one run, on one throwaway PostgreSQL
// server. The pool workload (-workload pool) is:
//
//   - pgbench select-only (-S) workloads with -M simple, extended and
//     prepared at each -clients count, and with -C (a new connection per
//     transaction) at each -connect-clients count, through each target side
//     by side, reported as TPS, p99 latency, proxy CPU time per transaction
//     and ratios;
//   - a memory probe: -mem-clients idle client connections held open on each
//     proxy, reported as resident memory per idle client.
//
// The result-cache workload (-workload cache, see cache.go) runs a read that
// costs PostgreSQL a few milliseconds, alone and 9:1 with an UPDATE that
// invalidates, through PostgreSQL, pgsidecar with its cache off, with its
// memory tier and with Redis only, and pgpool-II with its query cache,
// reported as TPS, p50 and p99 latency, hit ratio and ratios; then the
// latency of a memory-tier hit against a SELECT 1 through pgsidecar. Both
// workloads run by default, pool first.
//
// Both proxies run in -pool-mode (transaction by default) with the same pool
// size. A pgsidecar that refuses the pool mode is reported as n/a and the
// run goes on; so is any single pgbench run that fails. PgBouncer before
// 1.21 cannot run -M prepared in transaction mode, so its prepared rows run
// against a second PgBouncer in session mode, labelled as such.
//
// The command starts every server it talks to on 127.0.0.1 and stops them
// when done; each pgbench run is bounded by -duration (plus a kill timeout),
// and the planned total is printed before the first run.
//
//	go run ./test/bench -sidecar bin/pgsidecar
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/pgsidecar/pgsidecar/internal/testenv"
)

// Pool modes, as both proxies spell them.
const (
	sessionMode     = "session"
	transactionMode = "transaction"
)

// The bench's database, owned by its role.
const benchUser, benchPassword, benchDB = "bench", "bench-password", "bench"

// The workloads, as -workload spells them.
const (
	workloadPool  = "pool"
	workloadCache = "cache"
)

type options struct {
	workloads      []string
	sidecar        string
	pgbouncer      string
	pgpool         string
	duration       time.Duration
	rounds         int
	clients        []int
	connectClients []int
	modes          []string
	poolMode       string
	poolSize       int
	scale          int
	threads        int
	memClients     int
	jsonPath       string
	cacheModes     []string
	cacheClients   int
	cacheKeys      int
	cacheTTL       time.Duration
}

func (o *options) has(workload string) bool { return slices.Contains(o.workloads, workload) }

func main() {
	var o options
	var clients, connectClients, modes, workloads, cacheModes string
	flag.StringVar(&workloads, "workload", "pool,cache", "comma-separated workloads: pool (pgbench -S and the memory probe, vs PgBouncer), cache (the result cache, vs pgpool-II)")
	flag.StringVar(&o.sidecar, "sidecar", "bin/pgsidecar", "pgsidecar binary")
	flag.StringVar(&o.pgbouncer, "pgbouncer", "", "pgbouncer binary (default: from PATH or /usr/sbin; skipped when absent)")
	flag.StringVar(&o.pgpool, "pgpool", "", "pgpool binary, for the cache workload (default: from PATH or /usr/sbin; skipped when absent)")
	flag.DurationVar(&o.duration, "duration", 10*time.Second, "length of each pgbench run (whole seconds)")
	flag.IntVar(&o.rounds, "rounds", 3, "pool workload: runs per target and row, interleaved in rotating order; the median is reported")
	flag.StringVar(&clients, "clients", "32,256", "comma-separated pgbench client counts for the simple, extended and prepared modes")
	flag.StringVar(&connectClients, "connect-clients", "32", "comma-separated pgbench client counts for the connect mode")
	flag.StringVar(&modes, "modes", "simple,extended,prepared,connect", "comma-separated pgbench -M modes; connect is -M simple -C (a new connection per transaction)")
	flag.StringVar(&o.poolMode, "pool-mode", transactionMode, "pool mode of both proxies: transaction or session")
	flag.IntVar(&o.poolSize, "pool-size", 20, "backend pool size for pgsidecar and PgBouncer (in session mode, raised to the client count)")
	flag.IntVar(&o.scale, "scale", 10, "pgbench -i scale")
	flag.IntVar(&o.threads, "threads", 2, "pgbench -j")
	flag.IntVar(&o.memClients, "mem-clients", 5000, "idle clients held open on each proxy by the memory probe (0 skips the probe)")
	flag.StringVar(&o.jsonPath, "json", "", "also write the results as JSON to this file")
	flag.StringVar(&cacheModes, "cache-modes", "simple,prepared", "comma-separated pgbench -M modes of the cache workload")
	flag.IntVar(&o.cacheClients, "cache-clients", 32, "pgbench clients of the cache workload")
	flag.IntVar(&o.cacheKeys, "cache-keys", 300, "distinct keys of the cache workload's read query")
	flag.DurationVar(&o.cacheTTL, "cache-ttl", 5*time.Minute, "pgsidecar --cache-default-ttl in the cache workload (long enough to outlive the read rows)")
	flag.Parse()

	var errs []error
	var err error
	if o.clients, err = parseCounts(clients); err != nil {
		errs = append(errs, fmt.Errorf("-clients: %w", err))
	}
	if o.connectClients, err = parseCounts(connectClients); err != nil {
		errs = append(errs, fmt.Errorf("-connect-clients: %w", err))
	}
	o.modes = strings.Split(modes, ",")
	o.workloads = strings.Split(workloads, ",")
	o.cacheModes = strings.Split(cacheModes, ",")
	if err := o.validate(); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(2)
	}
	if err := run(context.Background(), o); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func parseCounts(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n <= 0 {
			return nil, fmt.Errorf("bad client count %q", f)
		}
		out = append(out, n)
	}
	return out, nil
}

// validate reports every problem at once.
func (o *options) validate() error {
	var errs []error
	for _, m := range o.modes {
		if !slices.Contains([]string{"simple", "extended", "prepared", "connect"}, m) {
			errs = append(errs, fmt.Errorf("-modes: unknown mode %q (simple, extended, prepared or connect)", m))
		}
	}
	for _, w := range o.workloads {
		if w != workloadPool && w != workloadCache {
			errs = append(errs, fmt.Errorf("-workload: unknown workload %q (pool or cache)", w))
		}
	}
	if err := validateCacheModes(o.cacheModes); err != nil {
		errs = append(errs, err)
	}
	if o.cacheClients <= 0 || o.cacheKeys <= 0 {
		errs = append(errs, errors.New("-cache-clients and -cache-keys must be positive"))
	}
	if o.cacheTTL <= 0 {
		errs = append(errs, fmt.Errorf("-cache-ttl must be positive, got %s", o.cacheTTL))
	}
	if o.poolMode != sessionMode && o.poolMode != transactionMode {
		errs = append(errs, fmt.Errorf("-pool-mode must be session or transaction, got %q", o.poolMode))
	}
	if o.duration < time.Second {
		errs = append(errs, fmt.Errorf("-duration must be at least 1s, got %s", o.duration))
	}
	if o.rounds < 1 {
		errs = append(errs, fmt.Errorf("-rounds must be at least 1, got %d", o.rounds))
	}
	if o.poolSize <= 0 || o.scale <= 0 || o.threads <= 0 || o.memClients < 0 {
		errs = append(errs, errors.New("-pool-size, -scale and -threads must be positive, -mem-clients not negative"))
	}
	return errors.Join(errs...)
}

// rowSpec is one line of the results table: a pgbench mode at a client
// count, run against every target.
type rowSpec struct {
	mode    string
	clients int
}

func (o *options) rows() []rowSpec {
	var rows []rowSpec
	if !o.has(workloadPool) {
		return nil
	}
	for _, m := range o.modes {
		counts := o.clients
		if m == "connect" {
			counts = o.connectClients
		}
		for _, c := range counts {
			rows = append(rows, rowSpec{mode: m, clients: c})
		}
	}
	return rows
}

// maxClients is the largest pgbench client count of the run.
func (o *options) maxClients() int {
	n := 0
	if o.has(workloadPool) {
		n = max(slices.Max(o.clients), slices.Max(o.connectClients))
	}
	if o.has(workloadCache) {
		n = max(n, o.cacheClients)
	}
	return n
}

// proxyPoolSize is the pool size of a proxy in mode for the pgbench runs. In
// session mode every client holds its backend for its whole session, so a
// pool smaller than the client count starves the extra clients for the
// whole run (and pgsidecar, which binds at login, stalls pgbench's
// connection phase): session-mode pools are raised to the largest client
// count.
func (o *options) proxyPoolSize(mode string) int {
	if mode == sessionMode {
		return max(o.poolSize, o.maxClients())
	}
	return o.poolSize
}

func run(ctx context.Context, o options) error {
	began := time.Now()
	if _, err := exec.LookPath("pgbench"); err != nil {
		return fmt.Errorf("pgbench not found (make deps): %w", err)
	}
	if _, err := exec.LookPath(o.sidecar); err != nil {
		return fmt.Errorf("pgsidecar binary %s not found (make build): %w", o.sidecar, err)
	}
	if o.pgbouncer == "" {
		o.pgbouncer = findPgBouncer()
	}
	var pbVersion, ppVersion version
	if o.pgbouncer != "" && o.has(workloadPool) {
		var err error
		if pbVersion, err = pgbouncerVersion(o.pgbouncer); err != nil {
			return err
		}
	}
	if o.pgpool == "" {
		o.pgpool = findPgpool()
	}
	if o.pgpool != "" && o.has(workloadCache) {
		var err error
		if ppVersion, err = pgpoolVersion(o.pgpool); err != nil {
			return err
		}
	}
	// Every client and backend socket of the memory probe is a descriptor
	// here (client ends, and the fake upstream's ends) and in the proxy; the
	// children inherit the limit set here.
	nofile, err := raiseNoFile(uint64(2*o.memClients + 8*o.maxClients() + 1024))
	if err != nil {
		return err
	}

	plan := newPlan(o, pbVersion, ppVersion)
	plan.print(nofile)

	tmp, err := os.MkdirTemp("", "pgsidecar-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	os.Chmod(tmp, 0o777) // PgBouncer runs as postgres and writes its log here

	fmt.Printf("starting PostgreSQL (max_connections %d) ...\n", plan.maxConnections)
	pg, err := testenv.StartPostgres(ctx, testenv.PostgresOptions{MaxConnections: plan.maxConnections})
	if err != nil {
		return err
	}
	defer pg.Stop()
	if err := pg.CreateRole(ctx, benchUser, benchPassword); err != nil {
		return err
	}
	if err := pg.Exec(ctx, "CREATE DATABASE "+benchDB+" OWNER "+benchUser); err != nil {
		return err
	}
	env := append(os.Environ(), "PGPASSWORD="+benchPassword)
	fmt.Printf("pgbench -i -s %d ...\n", o.scale)
	if out, err := command(env, "pgbench", "-i", "-q", "-s", strconv.Itoa(o.scale), "-h", pg.Host, "-p", strconv.Itoa(pg.Port), "-U", benchUser, benchDB).CombinedOutput(); err != nil {
		return fmt.Errorf("pgbench -i: %v\n%s", err, out)
	}
	up := upstream{host: pg.Host, port: pg.Port}

	var rep report
	rep.setup(o, plan)
	if o.has(workloadPool) {
		if err := runPool(ctx, o, plan, env, tmp, up, &rep); err != nil {
			return err
		}
	}
	if o.has(workloadCache) {
		fmt.Println()
		if rep.Cache, err = runCache(ctx, o, plan, env, tmp, pg, up); err != nil {
			return err
		}
		fmt.Println()
		if err := rep.printCache(os.Stdout); err != nil {
			return err
		}
	}

	if o.jsonPath != "" {
		if err := rep.writeJSON(o.jsonPath); err != nil {
			return err
		}
		fmt.Printf("\nresults written to %s\n", o.jsonPath)
	}
	fmt.Printf("\ntotal time %s (planned about %s)\n", time.Since(began).Round(time.Second), plan.total.Round(time.Second))
	return nil
}

// runPool runs the pool workload: the pgbench -S rows, then the memory
// probe.
func runPool(ctx context.Context, o options, plan runPlan, env []string, tmp string, up upstream, rep *report) error {
	targets, err := startTargets(ctx, o, plan, tmp, up)
	defer targets.stop()
	if err != nil {
		return err
	}
	for _, r := range o.rows() {
		res := rowResult{Mode: r.mode, Clients: r.clients, Targets: map[string]*runResult{}}
		runs := map[string][]runResult{}
		for _, lane := range lanes {
			ep := targets.endpoint(lane, r.mode)
			if ep.note != "" {
				res.Notes = append(res.Notes, ep.note)
			}
			if ep.na != "" {
				res.Targets[lane] = &runResult{Target: ep.label(), NA: ep.na}
				if lane == lanePgSidecar {
					res.Notes = append(res.Notes, "pgsidecar n/a ("+ep.na+")")
				}
			}
		}
		// Rounds, each running every target once, starting with a
		// different one each time: the machine's drift and any effect of
		// running first or after a given target fall on all alike.
		for round := range o.rounds {
			for k := range lanes {
				lane := lanes[(k+round)%len(lanes)]
				if res.Targets[lane] != nil {
					continue // n/a, or failed in an earlier round
				}
				ep := targets.endpoint(lane, r.mode)
				fmt.Printf("pgbench -S -M %s -c %d -T %s via %s (round %d/%d) ...\n", r.mode, r.clients, o.duration, ep.label(), round+1, o.rounds)
				rr := pgbench(ctx, env, o, tmp, ep, selectOnly, r.mode, r.clients)
				if rr.NA != "" {
					fmt.Printf("  n/a: %s\n", rr.NA)
					res.Notes = append(res.Notes, lane+" n/a ("+rr.NA+")")
					res.Targets[lane] = &rr
					continue
				}
				runs[lane] = append(runs[lane], rr)
			}
		}
		for lane, rs := range runs {
			if res.Targets[lane] == nil {
				res.Targets[lane] = median(rs)
			}
		}
		if ok(res.Targets[lanePgSidecar]) != nil && ok(res.Targets[lanePgBouncer]) != nil {
			res.setRoundRatios(runs[lanePgSidecar], runs[lanePgBouncer])
		}
		rep.Runs = append(rep.Runs, res)
	}
	targets.stop()

	fmt.Println()
	if err := rep.printRuns(os.Stdout); err != nil {
		return err
	}

	if o.memClients > 0 {
		fmt.Println()
		rep.Memory = memoryProbe(ctx, o, plan, tmp)
		fmt.Println()
		if err := rep.printMemory(os.Stdout, o); err != nil {
			return err
		}
	}
	return nil
}

// runPlan is what the run will do, worked out before anything starts.
type runPlan struct {
	o              options
	pgbouncer      version // zero: no PgBouncer
	pgpool         version // zero: no pgpool-II
	runs           int     // pgbench runs of the pool workload
	cacheRuns      int     // pgbench runs of the cache workload
	total          time.Duration
	maxConnections int // PostgreSQL max_connections
}

// Rough costs on the 2-core development machine, for the printed estimate.
const (
	setupCost      = 20 * time.Second // initdb, pgbench -i at scale 10, proxies
	cacheSetupCost = 10 * time.Second // the index, Redis, three pgsidecars, pgpool-II
	perRunOverhead = 3 * time.Second  // warm-up, connection phase, log parsing
	perProbeCost   = 15 * time.Second // 5,000 logins, two settle waits, closing
)

func newPlan(o options, pb, pp version) runPlan {
	p := runPlan{o: o, pgbouncer: pb, pgpool: pp}
	targets := 2
	if !pb.isZero() {
		targets = 3
	}
	p.runs = len(o.rows()) * targets * o.rounds
	p.total = setupCost + time.Duration(p.runs)*(o.duration+perRunOverhead)
	if o.has(workloadPool) && o.memClients > 0 {
		p.total += time.Duration(targets-1) * perProbeCost * time.Duration(max(1, o.memClients/5000))
	}
	// PostgreSQL directly takes the largest client count; each proxy keeps
	// up to its pool of backends open (idle ones too) for the whole run;
	// plus superuser_reserved_connections and slack.
	conns := 0
	if o.has(workloadPool) {
		conns = o.maxClients() + o.proxyPoolSize(o.poolMode)
		if !pb.isZero() {
			conns += o.proxyPoolSize(o.poolMode)
			if p.pgbouncerPreparedInSession() {
				conns += o.proxyPoolSize(sessionMode)
			}
		}
	}
	if o.has(workloadCache) {
		// PostgreSQL directly, three pgsidecars, and pgpool-II: a backend per
		// child.
		cacheTargets := 4
		cacheConns := o.cacheClients + 3*o.proxyPoolSize(o.poolMode)
		if !pp.isZero() {
			cacheTargets++
			cacheConns += o.cacheClients + pgpoolChildMargin
		}
		p.cacheRuns = len(cacheWorkloads)*len(o.cacheModes)*cacheTargets + 2 // + the latency probe
		p.total += cacheSetupCost + time.Duration(p.cacheRuns)*(o.duration+perRunOverhead)
		conns = max(conns, cacheConns)
	}
	p.maxConnections = max(400, conns+20)
	return p
}

// pgbouncerPreparedInSession reports whether PgBouncer's -M prepared rows
// run on a session-mode instance: in transaction mode, prepared statements
// need max_prepared_statements, which PgBouncer has from 1.21.
func (p runPlan) pgbouncerPreparedInSession() bool {
	return !p.pgbouncer.isZero() && p.o.poolMode == transactionMode &&
		slices.Contains(p.o.modes, "prepared") && p.pgbouncer.less(version{1, 21})
}

func (p runPlan) print(nofile uint64) {
	o := p.o
	if o.has(workloadPool) {
		pb := "PgBouncer not installed: PostgreSQL and pgsidecar only"
		if !p.pgbouncer.isZero() {
			pb = "PgBouncer " + p.pgbouncer.String()
		}
		fmt.Printf("plan: pgbench -S, modes %s, clients %s (connect: %s), pool mode %s, pool size %d, %s, %d cores, open files limit %d\n",
			strings.Join(o.modes, ","), joinInts(o.clients), joinInts(o.connectClients), o.poolMode, o.proxyPoolSize(o.poolMode), pb, numCPU(), nofile)
		if p.pgbouncerPreparedInSession() {
			fmt.Printf("plan: PgBouncer %s lacks max_prepared_statements (1.21+): its -M prepared rows run on a second PgBouncer in session mode, pool size %d\n",
				p.pgbouncer, o.proxyPoolSize(sessionMode))
		}
		probe := "no memory probe"
		if o.memClients > 0 {
			probe = fmt.Sprintf("memory probe with %d idle clients per proxy", o.memClients)
		}
		fmt.Printf("plan: %d pgbench runs (%d rounds) x %s = %s, plus setup and %s\n",
			p.runs, o.rounds, o.duration, time.Duration(p.runs)*o.duration, probe)
	}
	if o.has(workloadCache) {
		pp := "pgpool-II " + p.pgpool.String()
		if p.pgpool.isZero() {
			pp = pgpoolMissing + " (its column will be n/a)"
		}
		fmt.Printf("plan: result cache: read and 90/10 read/write scripts, modes %s, %d clients, %d keys; PostgreSQL, pgsidecar (cache off, memory tier, Redis only), %s\n",
			strings.Join(o.cacheModes, ","), o.cacheClients, o.cacheKeys, pp)
		fmt.Printf("plan: result cache: %d pgbench runs x %s = %s (with the 1-client latency probe)\n",
			p.cacheRuns, o.duration, time.Duration(p.cacheRuns)*o.duration)
	}
	fmt.Printf("plan: about %s in all\n\n", p.total.Round(time.Second))
}

func joinInts(ns []int) string {
	s := make([]string, len(ns))
	for i, n := range ns {
		s[i] = strconv.Itoa(n)
	}
	return strings.Join(s, ",")
}

func command(env []string, name string, args ...string) *exec.Cmd {
	cmd := exec.Command(name, args...)
	cmd.Env = env
	return cmd
}

func numCPU() int {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return 0
	}
	return strings.Count(string(b), "processor\t:")
}
