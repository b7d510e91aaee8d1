package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgsidecar/pgsidecar/internal/testenv"
)

// The result-cache workload (-workload cache) runs custom pgbench scripts
// whose read costs PostgreSQL a few milliseconds, an aggregate over
// pgbench_accounts keyed by one of -cache-keys values, through PostgreSQL
// directly, through pgsidecar with its cache off, with its memory tier, and
// with Redis only, and through pgpool-II with its shared-memory query cache:
//
//   - read: the aggregate alone;
//   - mix: 9 aggregates to 1 UPDATE of a random account, which invalidates;
//
// each with every -cache-modes protocol at -cache-clients clients. Between
// the read and mix rows, a latency probe runs SELECT 1 and then the read at
// one client through the memory-tier pgsidecar, whose cache the read rows
// have just filled, and compares their median latencies.

// The lanes of the result-cache table, in row order.
const (
	laneSidecarOff    = "pgsidecar-nocache"
	laneSidecarMemory = "pgsidecar-memory"
	laneSidecarRedis  = "pgsidecar-redis"
	lanePgpool        = "pgpool"
)

var cacheLanes = []string{lanePostgres, laneSidecarOff, laneSidecarMemory, laneSidecarRedis, lanePgpool}

// cacheLaneTitle is how the table names a lane.
var cacheLaneTitle = map[string]string{
	lanePostgres:      "postgres",
	laneSidecarOff:    "pgsidecar, cache off",
	laneSidecarMemory: "pgsidecar, memory tier",
	laneSidecarRedis:  "pgsidecar, Redis only",
	lanePgpool:        "pgpool-II, query cache",
}

// The workloads of the result-cache rows.
const (
	workloadRead = "read"
	workloadMix  = "mix"
)

var cacheWorkloads = []string{workloadRead, workloadMix}

// pgpoolChildMargin is how many pgpool-II children there are beyond the
// client count: for the bench's own logins (SHOW pool_cache) and for
// pgbench's clients still closing when the next run logs in.
const pgpoolChildMargin = 8

// cacheReport is what the result-cache workload measured.
type cacheReport struct {
	Clients   int    `json:"clients"`
	Keys      int    `json:"keys"`
	ReadQuery string `json:"read_query"`
	// DirectQueryMs is the median time of one read query run directly,
	// alone, over a few keys: what a cache hit saves PostgreSQL.
	DirectQueryMs float64       `json:"direct_query_ms"`
	TTL           string        `json:"sidecar_cache_ttl"`
	Pgpool        string        `json:"pgpool_version,omitempty"`
	PgpoolNote    string        `json:"pgpool_settings,omitempty"`
	Rows          []cacheRow    `json:"rows"`
	Latency       *latencyProbe `json:"latency_probe,omitempty"`
}

// cacheRow is one (workload, mode) row: a run per lane.
type cacheRow struct {
	Workload string                `json:"workload"`
	Mode     string                `json:"mode"`
	Clients  int                   `json:"clients"`
	Targets  map[string]*runResult `json:"targets"`
	Notes    []string              `json:"notes,omitempty"`
}

// latencyProbe compares a memory-tier hit with a SELECT 1 round trip,
// both through the memory-tier pgsidecar at one client.
type latencyProbe struct {
	Mode    string     `json:"mode"`
	Select1 *runResult `json:"select1"`
	Hit     *runResult `json:"cached_read"`
	// Ratio is Hit's p50 over Select1's: the done-criterion is at most 2.
	Ratio float64 `json:"p50_ratio,omitempty"`
	NA    string  `json:"na,omitempty"`
}

// cacheScripts are the pgbench scripts of the workload, written to files.
type cacheScripts struct {
	read, mix, select1 script
	query              string // the read query, with :k
}

// writeCacheScripts writes the read, write and SELECT 1 scripts to dir.
func writeCacheScripts(dir string, keys, scale int) (cacheScripts, error) {
	query := fmt.Sprintf("SELECT count(*), sum(abalance), avg(abalance) FROM pgbench_accounts WHERE aid %% %d = :k", keys)
	files := map[string]string{
		"read.sql":    fmt.Sprintf("\\set k random(0, %d)\n%s;\n", keys-1, query),
		"write.sql":   fmt.Sprintf("\\set aid random(1, %d)\nUPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = :aid;\n", 100000*scale),
		"select1.sql": "SELECT 1;\n",
	}
	for name, text := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
			return cacheScripts{}, err
		}
	}
	read, write := filepath.Join(dir, "read.sql"), filepath.Join(dir, "write.sql")
	return cacheScripts{
		read:    script{name: workloadRead, args: []string{"-f", read}},
		mix:     script{name: workloadMix, args: []string{"-f", read + "@9", "-f", write + "@1"}},
		select1: script{name: "select1", args: []string{"-f", filepath.Join(dir, "select1.sql")}},
		query:   query,
	}, nil
}

func (s cacheScripts) of(workload string) script {
	if workload == workloadMix {
		return s.mix
	}
	return s.read
}

// prepareCacheTables indexes pgbench_accounts on the read's key, so that
// one read is a bitmap scan of about a 1/keys of the table (a few
// milliseconds at scale 10) rather than a sequential scan of all of it.
func prepareCacheTables(ctx context.Context, pg *testenv.Postgres, keys int) error {
	if err := pg.ExecIn(ctx, benchDB, fmt.Sprintf("CREATE INDEX IF NOT EXISTS pgbench_accounts_aid_mod_%d ON pgbench_accounts ((aid %% %d))", keys, keys)); err != nil {
		return err
	}
	return pg.ExecIn(ctx, benchDB, "ANALYZE pgbench_accounts")
}

// directQueryCost is the median time of the read query run directly for a
// few keys, after one unmeasured run.
func directQueryCost(ctx context.Context, up upstream, keys int) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	c, err := pgconn.Connect(ctx, up.url())
	if err != nil {
		return 0, err
	}
	defer c.Close(context.Background())
	const samples = 15
	var d []time.Duration
	for k := range samples + 1 {
		sql := fmt.Sprintf("SELECT count(*), sum(abalance), avg(abalance) FROM pgbench_accounts WHERE aid %% %d = %d", keys, k*keys/samples%keys)
		began := time.Now()
		if _, err := c.Exec(ctx, sql).ReadAll(); err != nil {
			return 0, err
		}
		if k > 0 {
			d = append(d, time.Since(began))
		}
	}
	return percentile(d, 0.5), nil
}

// cacheTargets are the endpoints of the result-cache rows, by lane, and the
// servers behind them, which it owns until stop.
type cacheTargets struct {
	eps   map[string]*endpoint
	redis *testenv.Redis
	procSet
}

func (t *cacheTargets) stop() {
	t.procSet.stop()
	if t.redis != nil {
		t.redis.Stop()
	}
}

// sidecarCacheFlags are the pgsidecar flags of a cache with both tiers on
// (the memory tier at its default budget); Redis-only adds --redis and
// turns the memory tier off.
func sidecarCacheFlags(o options) []string {
	return []string{"--cache", "--cache-default-ttl", o.cacheTTL.String()}
}

// startCacheTargets starts the three pgsidecars, Redis and pgpool-II in
// front of up. Like startTargets, a target that cannot start is n/a; only
// failures of the bench itself are errors, and the returned targets can
// always be stopped.
func startCacheTargets(ctx context.Context, o options, p runPlan, dir string, up upstream) (*cacheTargets, error) {
	t := &cacheTargets{eps: map[string]*endpoint{lanePostgres: {name: lanePostgres, port: up.port}}}
	cfg := proxyConfig{poolMode: o.poolMode, poolSize: o.proxyPoolSize(o.poolMode), maxClientConn: 10000, up: up}

	sidecar := func(lane string, args []string) error {
		ep := &endpoint{name: lane, poolMode: cfg.poolMode, poolSize: cfg.poolSize}
		t.eps[lane] = ep
		c := cfg
		c.sidecarArgs = args
		fmt.Printf("starting %s (%s) ...\n", cacheLaneTitle[lane], ep.label())
		sc, err := startSidecar(ctx, o.sidecar, c)
		if err := t.adopt(ep, sc, err); err != nil {
			return err
		}
		if sc != nil && ep.na == "" {
			ep.hits = newMetricsCounter(sc.metricsURL)
		}
		return nil
	}
	if err := sidecar(laneSidecarOff, nil); err != nil {
		return t, err
	}
	if err := sidecar(laneSidecarMemory, sidecarCacheFlags(o)); err != nil {
		return t, err
	}

	fmt.Println("starting redis-server ...")
	r, err := testenv.StartRedis(ctx)
	switch {
	case errors.Is(err, testenv.ErrNotInstalled):
		t.eps[laneSidecarRedis] = &endpoint{name: laneSidecarRedis, na: "redis-server not installed (make deps)"}
		fmt.Println("  redis-server not installed: the Redis-only column is n/a")
	case err != nil:
		return t, err
	default:
		t.redis = r
		args := append(sidecarCacheFlags(o), "--redis", r.URL(), "--cache-memory-bytes", "0")
		if err := sidecar(laneSidecarRedis, args); err != nil {
			return t, err
		}
	}

	if p.pgpool.isZero() {
		t.eps[lanePgpool] = &endpoint{name: lanePgpool, na: pgpoolMissing}
		fmt.Println("  " + pgpoolMissing + " (the pgpool-II column is n/a)")
		return t, nil
	}
	ep := &endpoint{name: lanePgpool}
	t.eps[lanePgpool] = ep
	fmt.Printf("starting pgpool-II %s (%d children, query cache in shared memory) ...\n", p.pgpool, o.cacheClients+pgpoolChildMargin)
	pp, err := startPgpool(ctx, o.pgpool, p.pgpool, filepath.Join(dir, "pgpool"),
		pgpoolConfig{children: o.cacheClients + pgpoolChildMargin, up: up})
	if err := t.adopt(ep, pp, err); err != nil {
		return t, err
	}
	// Its pid is the main process, which forks one child per client: that
	// child's CPU time is not the main process's, so no CPU/txn for it.
	ep.pid = 0
	if ep.na == "" {
		ep.hits = pgpoolCounter{port: ep.port}
	}
	return t, nil
}

// runCache runs the result-cache workload: setup, the read rows, the
// latency probe, the mix rows.
func runCache(ctx context.Context, o options, p runPlan, env []string, dir string, pg *testenv.Postgres, up upstream) (*cacheReport, error) {
	scripts, err := writeCacheScripts(dir, o.cacheKeys, o.scale)
	if err != nil {
		return nil, err
	}
	fmt.Printf("result cache: indexing pgbench_accounts on aid %% %d ...\n", o.cacheKeys)
	if err := prepareCacheTables(ctx, pg, o.cacheKeys); err != nil {
		return nil, err
	}
	cost, err := directQueryCost(ctx, up, o.cacheKeys)
	if err != nil {
		return nil, fmt.Errorf("timing the read query: %w", err)
	}
	fmt.Printf("result cache: the read query takes %.2f ms directly (median, alone)\n", ms(cost))
	rep := &cacheReport{
		Clients: o.cacheClients, Keys: o.cacheKeys, ReadQuery: scripts.query,
		DirectQueryMs: ms(cost), TTL: o.cacheTTL.String(),
	}
	if !p.pgpool.isZero() {
		rep.Pgpool = p.pgpool.String()
		rep.PgpoolNote = fmt.Sprintf("raw mode, memqcache shmem 64MB, auto invalidation, %d children, connection_cache on", o.cacheClients+pgpoolChildMargin)
	}

	targets, err := startCacheTargets(ctx, o, p, dir, up)
	defer targets.stop()
	if err != nil {
		return nil, err
	}
	for _, w := range cacheWorkloads {
		for _, mode := range o.cacheModes {
			rep.Rows = append(rep.Rows, cacheRowRun(ctx, env, o, dir, targets, scripts.of(w), w, mode))
		}
		if w == workloadRead {
			rep.Latency = probeLatency(ctx, env, o, dir, targets, scripts)
		}
	}
	return rep, nil
}

func cacheRowRun(ctx context.Context, env []string, o options, dir string, t *cacheTargets, s script, workload, mode string) cacheRow {
	row := cacheRow{Workload: workload, Mode: mode, Clients: o.cacheClients, Targets: map[string]*runResult{}}
	for _, lane := range cacheLanes {
		ep := t.eps[lane]
		if ep.na != "" {
			row.Targets[lane] = &runResult{Target: cacheLaneTitle[lane], NA: ep.na}
			continue
		}
		fmt.Printf("pgbench %s -M %s -c %d -T %s via %s ...\n", workload, mode, o.cacheClients, o.duration, cacheLaneTitle[lane])
		rr := pgbench(ctx, env, o, dir, *ep, s, mode, o.cacheClients)
		rr.Target = cacheLaneTitle[lane]
		if rr.NA != "" {
			fmt.Printf("  n/a: %s\n", rr.NA)
			row.Notes = append(row.Notes, lane+" n/a ("+rr.NA+")")
		}
		row.Targets[lane] = &rr
	}
	return row
}

// latencyProbeMode is the protocol of the latency probe: the one whose
// read row ran last, so the cache is warmest for it.
func (o *options) latencyProbeMode() string { return o.cacheModes[len(o.cacheModes)-1] }

// probeLatency runs SELECT 1 through pgsidecar with the cache off (a round
// trip to PostgreSQL), then the read through the memory-tier pgsidecar (a
// hit), at one client.
func probeLatency(ctx context.Context, env []string, o options, dir string, t *cacheTargets, s cacheScripts) *latencyProbe {
	mode := o.latencyProbeMode()
	lp := &latencyProbe{Mode: mode}
	ep := t.eps[laneSidecarMemory]
	if ep.na != "" {
		lp.NA = "memory-tier pgsidecar n/a: " + ep.na
		return lp
	}
	// SELECT 1 is itself cacheable: its round trip through pgsidecar to
	// PostgreSQL is measured on the same binary with the cache off.
	plain := t.eps[laneSidecarOff]
	if plain.na != "" {
		lp.NA = "pgsidecar with the cache off n/a: " + plain.na
		return lp
	}
	for _, r := range []struct {
		s    script
		lane string
		out  **runResult
	}{{s.select1, laneSidecarOff, &lp.Select1}, {s.read, laneSidecarMemory, &lp.Hit}} {
		fmt.Printf("latency probe: pgbench %s -M %s -c 1 -T %s via %s ...\n", r.s.name, mode, o.duration, cacheLaneTitle[r.lane])
		rr := pgbench(ctx, env, o, dir, *t.eps[r.lane], r.s, mode, 1)
		if rr.NA != "" {
			fmt.Printf("  n/a: %s\n", rr.NA)
		}
		*r.out = &rr
	}
	if ok(lp.Select1) != nil && ok(lp.Hit) != nil && lp.Select1.P50Ms > 0 {
		lp.Ratio = lp.Hit.P50Ms / lp.Select1.P50Ms
	}
	return lp
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1e3 }

// validCacheModes are the pgbench -M modes of the result-cache rows.
var validCacheModes = []string{"simple", "extended", "prepared"}

func validateCacheModes(modes []string) error {
	var errs []error
	for _, m := range modes {
		if !slices.Contains(validCacheModes, m) {
			errs = append(errs, fmt.Errorf("-cache-modes: unknown mode %q (simple, extended or prepared)", m))
		}
	}
	return errors.Join(errs...)
}
