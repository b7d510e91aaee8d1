package integration

// Harness for the result cache's correctness tests: the real pgsidecar
// binary with --cache, run as a process on loopback ports, its /metrics
// scraped to tell cache hits from misses, and client wrappers so one test
// body runs over several protocols (pgx simple, pgx prepared, pgx unnamed,
// lib/pq).
//
// The tests are written against the cache's specification, not its code:
// the flags and metric names below are that specification's.

import (
	"bufio"
	"context"
	"database/sql"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgsidecar/pgsidecar/internal/testenv"
)

// The documented cache settings the tests run with.
const (
	cacheDefaultTTL = 60 * time.Second
	// cacheMaxStaleness is --cache-max-staleness: how long another sidecar
	// sharing the Redis tier may serve an answer older than a write made
	// through one sidecar.
	cacheMaxStaleness = 250 * time.Millisecond
	// cacheStalenessMargin is what the tests allow on top of the bound for
	// scheduling on a loaded 2-core machine.
	cacheStalenessMargin = 150 * time.Millisecond
)

// Metric series the cache exports (keys of cacheSidecar.Metrics).
const (
	metricHitsMemory    = `pgsidecar_cache_hits_total{tier="memory"}`
	metricHitsRedis     = `pgsidecar_cache_hits_total{tier="redis"}`
	metricMisses        = `pgsidecar_cache_misses_total`
	metricBypassPrefix  = `pgsidecar_cache_bypass_total{`
	metricInvalidations = `pgsidecar_cache_invalidations_total`
)

// cacheBuildRace is set by cache_race_test.go when this test binary is
// built with -race, so the sidecar binary is built with it too and a data
// race in the cache fails the test that provoked it.
var cacheBuildRace bool

// cacheBinary is the pgsidecar binary for the cache tests, built once per
// test binary into a directory removed by TestMain (removeCacheBinary).
var cacheBinary struct {
	once sync.Once
	dir  string
	path string
	err  error
}

func buildCacheBinary(t testing.TB) string {
	t.Helper()
	cacheBinary.once.Do(func() {
		dir, err := os.MkdirTemp("", "pgsidecar-cachetest-")
		if err != nil {
			cacheBinary.err = err
			return
		}
		cacheBinary.dir = dir
		cacheBinary.path = filepath.Join(dir, "pgsidecar")
		args := []string{"build", "-o", cacheBinary.path}
		if cacheBuildRace {
			args = append(args, "-race")
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		out, err := exec.CommandContext(ctx, "go", append(args, "../../cmd/pgsidecar")...).CombinedOutput()
		if err != nil {
			cacheBinary.err = fmt.Errorf("go build: %w\n%s", err, out)
		}
	})
	if cacheBinary.err != nil {
		t.Fatal(cacheBinary.err)
	}
	return cacheBinary.path
}

// removeCacheBinary removes the binary built by buildCacheBinary, if any.
func removeCacheBinary() {
	if cacheBinary.dir != "" {
		os.RemoveAll(cacheBinary.dir)
	}
}

// cacheOpts configure startCacheSidecar. Zero values give the documented
// test settings: memory tier only, default TTL 60s, staleness bound 250ms,
// the suite's pool mode, the superuser upstream and trust auth.
type cacheOpts struct {
	// Redis is the Redis tier's URL (--redis). Zero: no Redis tier.
	Redis string
	// MemoryBytes is --cache-memory-bytes; 0 turns the memory tier off.
	// Nil: the binary's default (memory tier on).
	MemoryBytes *int64
	// DefaultTTL is --cache-default-ttl. Zero: cacheDefaultTTL.
	DefaultTTL time.Duration
	// MaxStaleness is --cache-max-staleness. Zero: cacheMaxStaleness.
	MaxStaleness time.Duration
	// Upstream is --upstream. Zero: the superuser on pg.
	Upstream string
	// PoolMode is --pool-mode. Zero: suitePoolMode().
	PoolMode string
	// Args are extra flags, for example an auth method and file.
	Args []string
}

// redisOnly is opts for the Redis tier alone (memory tier off).
func redisOnly(redisURL string) cacheOpts {
	zero := int64(0)
	return cacheOpts{Redis: redisURL, MemoryBytes: &zero}
}

// cacheSidecar is a pgsidecar process with the cache on.
type cacheSidecar struct {
	Addr     string // PostgreSQL listener, host:port
	HTTPAddr string // /metrics, /readyz

	t      testing.TB
	cmd    *exec.Cmd
	logs   *syncBuffer
	exited chan struct{} // closed when the process has exited; waitErr is then set
	// waitErr is the process's exit status, set before exited is closed.
	waitErr error
}

// startCacheSidecar builds the binary (once), starts it with the cache on
// in front of pg and waits for /readyz. A binary that rejects the cache
// flags fails the test here, with its output. The process is killed in
// t.Cleanup if still running; its log is printed when the test failed.
func startCacheSidecar(t testing.TB, pg *testenv.Postgres, opts cacheOpts) *cacheSidecar {
	t.Helper()
	bin := buildCacheBinary(t)
	var s *cacheSidecar
	for attempt := 1; ; attempt++ {
		var err error
		s, err = launchCacheSidecar(t, bin, pg, opts)
		if err == nil {
			return s
		}
		// Another process may have taken a port between freePort and
		// the bind: try new ports, twice.
		if attempt < 3 && strings.Contains(s.logs.String(), "address already in use") {
			continue
		}
		// Its output follows, from the cleanup launchCacheSidecar registered.
		t.Fatalf("pgsidecar with the cache did not start: %v\nargs: %q", err, s.cmd.Args[1:])
	}
}

func launchCacheSidecar(t testing.TB, bin string, pg *testenv.Postgres, opts cacheOpts) (*cacheSidecar, error) {
	upstream := opts.Upstream
	if upstream == "" {
		upstream = pg.URL(pg.SuperUser, pg.SuperPassword, "postgres")
	}
	mode := opts.PoolMode
	if mode == "" {
		mode = string(suitePoolMode())
	}
	ttl, staleness := opts.DefaultTTL, opts.MaxStaleness
	if ttl == 0 {
		ttl = cacheDefaultTTL
	}
	if staleness == 0 {
		staleness = cacheMaxStaleness
	}
	pgPort, err := testenv.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	httpPort, err := testenv.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	s := &cacheSidecar{
		Addr:     fmt.Sprintf("127.0.0.1:%d", pgPort),
		HTTPAddr: fmt.Sprintf("127.0.0.1:%d", httpPort),
		t:        t,
		logs:     &syncBuffer{},
		exited:   make(chan struct{}),
	}
	args := []string{
		"--upstream", upstream,
		"--listen", s.Addr,
		"--http-listen", s.HTTPAddr,
		"--pool-mode", mode,
		"--shutdown-grace", "0s",
		"--shutdown-timeout", "5s",
		"--log-level", "debug",
		"--cache",
		"--cache-default-ttl", ttl.String(),
		"--cache-max-staleness", staleness.String(),
	}
	if opts.Redis != "" {
		args = append(args, "--redis", opts.Redis)
	}
	if opts.MemoryBytes != nil {
		args = append(args, "--cache-memory-bytes", strconv.FormatInt(*opts.MemoryBytes, 10))
	}
	args = append(args, opts.Args...)
	s.cmd = exec.Command(bin, args...)
	s.cmd.Env = binaryEnv()
	s.cmd.Stdout, s.cmd.Stderr = s.logs, s.logs
	if err := s.cmd.Start(); err != nil {
		return s, err
	}
	go func() { s.waitErr = s.cmd.Wait(); close(s.exited) }()
	t.Cleanup(func() {
		s.Stop()
		out := s.logs.String()
		if strings.Contains(out, "WARNING: DATA RACE") {
			t.Errorf("data race in pgsidecar (%s):\n%s", s.Addr, out)
		} else if t.Failed() {
			t.Logf("pgsidecar %s output:\n%s", s.Addr, out)
		}
	})

	client := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(15 * time.Second)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-s.exited:
			return s, fmt.Errorf("exited before it was ready: %v", s.waitErr)
		case <-tick.C:
		}
		if resp, err := client.Get("http://" + s.HTTPAddr + "/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return s, nil
			}
		}
		if time.Now().After(deadline) {
			return s, fmt.Errorf("/readyz not 200 within 15s")
		}
	}
}

// URL is a postgres:// URL for user on the sidecar; params are extra query
// parameters (name=value).
func (s *cacheSidecar) URL(user, password, database string, params ...string) string {
	cred := user
	if password != "" {
		cred += ":" + password
	}
	q := append([]string{"sslmode=disable"}, params...)
	return fmt.Sprintf("postgres://%s@%s/%s?%s", cred, s.Addr, database, strings.Join(q, "&"))
}

// SuperURL is pg's superuser in database postgres through the sidecar
// (trust auth: the backend logs in with the upstream's credentials).
func (s *cacheSidecar) SuperURL(pg *testenv.Postgres, params ...string) string {
	return s.URL(pg.SuperUser, "", "postgres", params...)
}

// Stop sends SIGTERM and waits up to 10s for the process to exit, which it
// must do with status 0 (a -race build exits 66 after a data race). It does
// nothing when the process has exited already. Cleanup calls it.
func (s *cacheSidecar) Stop() {
	select {
	case <-s.exited:
		return
	default:
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.exited:
		if s.waitErr != nil {
			s.t.Errorf("pgsidecar %s exit after SIGTERM: %v, want status 0", s.Addr, s.waitErr)
		}
	case <-time.After(10 * time.Second):
		s.t.Errorf("pgsidecar %s still running 10s after SIGTERM; killing it", s.Addr)
		s.Kill()
	}
}

// Kill sends SIGKILL and waits for the process to exit. It is idempotent.
func (s *cacheSidecar) Kill() {
	select {
	case <-s.exited:
		return
	default:
	}
	_ = s.cmd.Process.Kill()
	<-s.exited
}

// Metrics scrapes /metrics (Prometheus text format) into a map from series
// (`name` or `name{k="v",...}` with labels sorted by name) to value. A
// counter that has not been touched may be absent: read it as 0.
func (s *cacheSidecar) Metrics(t testing.TB) map[string]float64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+s.HTTPAddr+"/metrics", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("scrape %s/metrics: %v", s.HTTPAddr, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("scrape %s/metrics: %s", s.HTTPAddr, resp.Status)
	}
	m := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		series, value, err := parseMetricLine(line)
		if err != nil {
			t.Fatalf("/metrics: %v in line %q", err, line)
		}
		m[series] = value
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("read /metrics: %v", err)
	}
	return m
}

// parseMetricLine parses `name{k="v",...} value [timestamp]` into the
// series with its labels sorted, and the value.
func parseMetricLine(line string) (series string, value float64, err error) {
	name, rest := line, ""
	var labels []string
	if i := strings.IndexAny(line, "{ \t"); i >= 0 {
		name, rest = line[:i], line[i:]
	}
	if strings.HasPrefix(rest, "{") {
		rest = rest[1:]
		for {
			rest = strings.TrimLeft(rest, " ,")
			if strings.HasPrefix(rest, "}") {
				rest = rest[1:]
				break
			}
			eq := strings.Index(rest, `="`)
			if eq < 0 {
				return "", 0, fmt.Errorf("bad label set")
			}
			key := strings.TrimSpace(rest[:eq])
			rest = rest[eq+2:]
			var val strings.Builder
			closed := false
			for i := 0; i < len(rest); i++ {
				c := rest[i]
				if c == '\\' && i+1 < len(rest) {
					i++
					switch rest[i] {
					case 'n':
						val.WriteByte('\n')
					default:
						val.WriteByte(rest[i])
					}
					continue
				}
				if c == '"' {
					rest, closed = rest[i+1:], true
					break
				}
				val.WriteByte(c)
			}
			if !closed {
				return "", 0, fmt.Errorf("unterminated label value")
			}
			labels = append(labels, key+"="+strconv.Quote(val.String()))
		}
	}
	fields := strings.Fields(rest)
	if len(fields) < 1 {
		return "", 0, fmt.Errorf("no value")
	}
	value, err = strconv.ParseFloat(fields[0], 64)
	if err != nil {
		return "", 0, err
	}
	if len(labels) == 0 {
		return name, value, nil
	}
	slices.Sort(labels)
	return name + "{" + strings.Join(labels, ",") + "}", value, nil
}

// cacheHits is the number of hits in both tiers.
func cacheHits(m map[string]float64) float64 { return m[metricHitsMemory] + m[metricHitsRedis] }

// cacheBypasses is the number of bypasses, whatever the reason.
func cacheBypasses(m map[string]float64) float64 {
	var n float64
	for k, v := range m {
		if strings.HasPrefix(k, metricBypassPrefix) {
			n += v
		}
	}
	return n
}

// Hits is the number of cache hits (both tiers) so far.
func (s *cacheSidecar) Hits(t testing.TB) float64 { return cacheHits(s.Metrics(t)) }

// readUntilHit runs read (which checks its own answer) until the sidecar
// counts a cache hit during one run of it: the first run fills the cache,
// and a fill may land asynchronously. It fails t if no run within 3s (and at
// least 3 runs) was a hit, which means the cache does not cache this read
// and the test around it would prove nothing.
func (s *cacheSidecar) readUntilHit(t testing.TB, what string, read func()) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for runs := 1; ; runs++ {
		before := s.Hits(t)
		read()
		if s.Hits(t) > before {
			return
		}
		if runs >= 3 && time.Now().After(deadline) {
			t.Fatalf("%s: no cache hit in %d runs over 3s; metrics: %v", what, runs, cacheMetricsOnly(s.Metrics(t)))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// expectNoHits runs f and fails t if the sidecar counted any cache hit
// during it: f's statements must reach PostgreSQL.
func (s *cacheSidecar) expectNoHits(t testing.TB, what string, f func()) {
	t.Helper()
	before := s.Metrics(t)
	f()
	after := s.Metrics(t)
	if d := cacheHits(after) - cacheHits(before); d != 0 {
		t.Errorf("%s: %v cache hit(s), want none: these must run on PostgreSQL (misses %v, bypasses %v meanwhile)",
			what, d, after[metricMisses]-before[metricMisses], cacheBypasses(after)-cacheBypasses(before))
	}
}

// cacheMetricsOnly keeps the pgsidecar_cache_* series, for messages.
func cacheMetricsOnly(m map[string]float64) map[string]float64 {
	out := map[string]float64{}
	for k, v := range m {
		if strings.HasPrefix(k, "pgsidecar_cache_") {
			out[k] = v
		}
	}
	return out
}

// --- clients: one test body over several protocols ---

// cacheClient is one client connection, speaking one protocol. Query
// renders each row as its columns joined by "|", NULL as "<null>"; the
// tests select text (cast with ::text) so every driver renders alike.
type cacheClient interface {
	Query(t testing.TB, sql string, args ...any) []string
	Exec(t testing.TB, sql string, args ...any)
}

// cacheProtocol opens a cacheClient on url.
type cacheProtocol struct {
	name    string
	connect func(t testing.TB, url string) cacheClient
}

// cacheProtocols are the protocols every cache correctness test runs over:
//   - simple: pgx's simple protocol (Query messages, arguments inlined);
//   - prepared: pgx's default, named statements parsed once and re-bound;
//   - unnamed: pgx's QueryExecModeExec, Parse/Bind/Execute of the unnamed
//     statement each time;
//   - pq: lib/pq, simple protocol without arguments and unnamed extended
//     protocol with them.
var cacheProtocols = []cacheProtocol{
	{"simple", pgxCacheProtocol(pgx.QueryExecModeSimpleProtocol)},
	{"prepared", pgxCacheProtocol(pgx.QueryExecModeCacheStatement)},
	{"unnamed", pgxCacheProtocol(pgx.QueryExecModeExec)},
	{"pq", connectPqCacheClient},
}

func pgxCacheProtocol(mode pgx.QueryExecMode) func(t testing.TB, url string) cacheClient {
	return func(t testing.TB, url string) cacheClient {
		return pgxCacheClient{pgxConnect(t, url, mode), mode}
	}
}

type pgxCacheClient struct {
	conn *pgx.Conn
	mode pgx.QueryExecMode
}

func (c pgxCacheClient) Query(t testing.TB, sql string, args ...any) []string {
	t.Helper()
	rows, err := c.conn.Query(ctxT(t), sql, args...)
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	out, err := renderRows(rows.Next, rows.Err, rows.Close, func(dest ...any) error { return rows.Scan(dest...) }, len(rows.FieldDescriptions()))
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return out
}

// Exec runs sql in the client's mode: pgx itself would send a statement
// without arguments as a simple query, so Exec goes through Query.
func (c pgxCacheClient) Exec(t testing.TB, sql string, args ...any) {
	t.Helper()
	rows, err := c.conn.Query(ctxT(t), sql, args...)
	if err == nil {
		rows.Close()
		err = rows.Err()
	}
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

type pqCacheClient struct{ conn *sql.Conn }

func connectPqCacheClient(t testing.TB, url string) cacheClient {
	t.Helper()
	db := pqOpen(t, url)
	conn, err := db.Conn(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return pqCacheClient{conn}
}

func (c pqCacheClient) Query(t testing.TB, query string, args ...any) []string {
	t.Helper()
	rows, err := c.conn.QueryContext(ctxT(t), query, args...)
	if err != nil {
		t.Fatalf("%s: %v", query, err)
	}
	cols, err := rows.Columns()
	if err != nil {
		t.Fatal(err)
	}
	out, err := renderRows(rows.Next, rows.Err, func() { rows.Close() }, rows.Scan, len(cols))
	if err != nil {
		t.Fatalf("%s: %v", query, err)
	}
	return out
}

func (c pqCacheClient) Exec(t testing.TB, query string, args ...any) {
	t.Helper()
	if _, err := c.conn.ExecContext(ctxT(t), query, args...); err != nil {
		t.Fatalf("%s: %v", query, err)
	}
}

func renderRows(next func() bool, errf func() error, closef func(), scan func(...any) error, ncols int) ([]string, error) {
	defer closef()
	out := []string{}
	for next() {
		vals := make([]sql.NullString, ncols)
		dest := make([]any, ncols)
		for i := range vals {
			dest[i] = &vals[i]
		}
		if err := scan(dest...); err != nil {
			return nil, err
		}
		cols := make([]string, ncols)
		for i, v := range vals {
			cols[i] = "<null>"
			if v.Valid {
				cols[i] = v.String
			}
		}
		out = append(out, strings.Join(cols, "|"))
	}
	return out, errf()
}

// expectRows fails t unless c answers sql with exactly want.
func expectRows(t testing.TB, who string, c cacheClient, want []string, sql string, args ...any) {
	t.Helper()
	if got := c.Query(t, sql, args...); !slices.Equal(got, want) {
		t.Fatalf("%s: %s %v = %q, want %q", who, sql, args, got, want)
	}
}

// --- test layout ---

// cacheTier is one cache configuration the correctness tests run under.
type cacheTier struct {
	name string
	opts func(t testing.TB) cacheOpts
}

// cacheTiers: the memory tier alone, and the Redis tier alone (shared
// Redis, memory tier off), so answers are checked after a round trip
// through each tier's encoding.
var cacheTiers = []cacheTier{
	{"memory", func(testing.TB) cacheOpts { return cacheOpts{} }},
	{"redis", func(t testing.TB) cacheOpts { return redisOnly(env.Redis(t).URL()) }},
}

// forEachCacheTier runs f in a parallel subtest per tier, each with its
// own sidecar; f runs its protocols one after another on that sidecar, so
// the sidecar's hit counter moves only for what f is doing.
func forEachCacheTier(t *testing.T, pg *testenv.Postgres, f func(t *testing.T, sc *cacheSidecar)) {
	t.Helper()
	forEachCacheTierOpts(t, pg, nil, f)
}

// forEachCacheTierOpts is forEachCacheTier with adjust applied to each
// tier's options (nil: none).
func forEachCacheTierOpts(t *testing.T, pg *testenv.Postgres, adjust func(*cacheOpts), f func(t *testing.T, sc *cacheSidecar)) {
	t.Helper()
	for _, tier := range cacheTiers {
		t.Run(tier.name, func(t *testing.T) {
			t.Parallel()
			opts := tier.opts(t)
			if adjust != nil {
				adjust(&opts)
			}
			f(t, startCacheSidecar(t, pg, opts))
		})
	}
}

// forEachCacheProtocol runs f in a subtest per protocol, one after another.
func forEachCacheProtocol(t *testing.T, f func(t *testing.T, p cacheProtocol)) {
	t.Helper()
	for _, p := range cacheProtocols {
		t.Run(p.name, func(t *testing.T) { f(t, p) })
	}
}
