package main

import (
	"bufio"
	"cmp"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// runResult is one pgbench run through one target, or why there is none.
type runResult struct {
	Target      string  `json:"target,omitempty"` // e.g. "pgbouncer (session mode, pool 256)"
	TPS         float64 `json:"tps"`
	P50Ms       float64 `json:"p50_ms"`
	P99Ms       float64 `json:"p99_ms"`
	Txns        int64   `json:"transactions"`
	CPUUsPerTxn float64 `json:"proxy_cpu_us_per_txn,omitempty"` // proxy user+system CPU; 0 for PostgreSQL
	// RoundTPS is every round's TPS, in round order, when the result is
	// the median of several rounds.
	RoundTPS []float64 `json:"round_tps,omitempty"`
	NA       string    `json:"na,omitempty"` // why there are no figures
	// Result cache lookups in the measured run, for a target with a cache
	// whose counters can be read: hits / (hits + misses), hits by tier, and
	// misses. HitRatio is nil when unknown.
	HitRatio   *float64         `json:"hit_ratio,omitempty"`
	HitsByTier map[string]int64 `json:"cache_hits,omitempty"`
	Misses     int64            `json:"cache_misses,omitempty"`
}

const (
	// warmup is the unmeasured pgbench run before each measured one.
	warmup = time.Second
	// pgbenchGrace is how long a pgbench run may overrun its -T (connection
	// phase, clients finishing) before it is killed and reported n/a.
	pgbenchGrace = time.Minute
)

var (
	tpsRE   = regexp.MustCompile(`tps = ([0-9.]+) \((?:without initial|including reconnection)`)
	txnsRE  = regexp.MustCompile(`number of transactions actually processed: (\d+)`)
	errorRE = regexp.MustCompile(`(?i)error|fatal|abort|failed|could not|timed out`)
)

// script is what pgbench runs: its script arguments, the built-in -S or
// custom files (-f file@weight).
type script struct {
	name string   // for messages and log names, e.g. "-S"
	args []string // e.g. {"-S"}, or {"-f", "read.sql@9", "-f", "write.sql@1"}
}

// selectOnly is pgbench's built-in select-only script.
var selectOnly = script{name: "-S", args: []string{"-S"}}

// pgbench runs s through ep. A failed run is a result with NA set, so one
// target's failure does not end the bench.
func pgbench(ctx context.Context, env []string, o options, dir string, ep endpoint, s script, mode string, clients int) runResult {
	res := runResult{Target: ep.label()}
	prefix := filepath.Join(dir, fmt.Sprintf("log-%s-%s-%s-%s-%d", ep.name, ep.poolMode, strings.Trim(s.name, "-"), mode, clients))
	defer removeLogs(prefix)
	ctx, cancel := context.WithTimeout(ctx, warmup+o.duration+2*pgbenchGrace)
	defer cancel()
	// Unmeasured first: pools open their backends lazily, and the logins
	// would otherwise eat into the measured window.
	if ep.poolMode == sessionMode {
		if err := fillPool(ctx, ep.port, clients); err != nil {
			res.NA = "filling the pool: " + err.Error()
			return res
		}
	}
	cmd := exec.CommandContext(ctx, "pgbench", pgbenchArgs(o, ep, s, mode, clients, warmup, "")...)
	cmd.Env = env
	if out, err := cmd.CombinedOutput(); err != nil {
		res.NA = "warm-up failed: " + errorLine(out)
		if ctx.Err() != nil {
			res.NA = "warm-up: pgbench killed, run too long"
		}
		return res
	}

	cmd = exec.CommandContext(ctx, "pgbench", pgbenchArgs(o, ep, s, mode, clients, o.duration, prefix)...)
	cmd.Env = env
	hits0, hitsErr := readHits(ctx, ep)
	cpu0 := cpuTime(ep.pid)
	out, err := cmd.CombinedOutput()
	cpu1 := cpuTime(ep.pid)
	if hitsErr == nil {
		if hits1, err := readHits(ctx, ep); err == nil {
			res.setHits(hits0, hits1)
		}
	}
	switch {
	case ctx.Err() != nil:
		res.NA = "pgbench killed, run too long"
		return res
	case err != nil:
		// Exit status 2 also means some clients aborted: the figures
		// printed would be of a partial run.
		res.NA = "pgbench failed: " + errorLine(out)
		return res
	}
	if m := txnsRE.FindSubmatch(out); m != nil {
		res.Txns, _ = strconv.ParseInt(string(m[1]), 10, 64)
		if res.Txns == 0 {
			// pgbench's -T clock includes its connection phase.
			res.NA = fmt.Sprintf("no transaction within -T %s: logging %d clients in took the run (raise -duration)", o.duration, clients)
			return res
		}
	}
	m := tpsRE.FindSubmatch(out)
	if m == nil {
		res.NA = "no tps in pgbench output: " + errorLine(out)
		return res
	}
	res.TPS, _ = strconv.ParseFloat(string(m[1]), 64)
	lat, err := readLatencies(prefix)
	if err != nil {
		res.NA = err.Error()
		return res
	}
	res.P50Ms = float64(percentile(lat, 0.50).Microseconds()) / 1e3
	res.P99Ms = float64(percentile(lat, 0.99).Microseconds()) / 1e3
	if ep.pid != 0 && res.Txns > 0 {
		res.CPUUsPerTxn = float64((cpu1 - cpu0).Nanoseconds()) / 1e3 / float64(res.Txns)
	}
	return res
}

// median is the run of rs with the median TPS (the lower middle one of an
// even count), with every run's TPS in RoundTPS. rs must not be empty.
func median(rs []runResult) *runResult {
	sorted := slices.Clone(rs)
	slices.SortFunc(sorted, func(a, b runResult) int { return cmp.Compare(a.TPS, b.TPS) })
	m := sorted[(len(sorted)-1)/2]
	m.RoundTPS = nil
	if len(rs) > 1 {
		for _, r := range rs {
			m.RoundTPS = append(m.RoundTPS, r.TPS)
		}
	}
	return &m
}

// fillPool makes a session-mode proxy open n backends: n clients at once,
// each holding the backend its query got until all are closed. (PgBouncer
// opens one server at a time, about 13 ms each with SCRAM on the 2-core
// machine, so a short pgbench warm-up leaves most of a 256-backend pool for
// the measured run to open.)
func fillPool(ctx context.Context, port, n int) error {
	conns, err := openIdle(ctx, port, n)
	defer closeAll(conns)
	if err != nil {
		return err
	}
	for _, c := range conns {
		if _, err := c.Exec(ctx, "SELECT 1").ReadAll(); err != nil {
			return err
		}
	}
	return nil
}

// pgbenchArgs are the arguments of a run of s through ep for d; with a
// logPrefix, per-transaction latencies are logged there.
func pgbenchArgs(o options, ep endpoint, s script, mode string, clients int, d time.Duration, logPrefix string) []string {
	proto := []string{"-M", mode}
	if mode == "connect" {
		proto = []string{"-M", "simple", "-C"}
	}
	args := append(append([]string{"-n"}, s.args...), proto...)
	args = append(args, "-c", strconv.Itoa(clients), "-j", strconv.Itoa(min(o.threads, clients)),
		"-T", strconv.Itoa(int(d.Seconds())))
	if logPrefix != "" {
		args = append(args, "-l", "--log-prefix", logPrefix)
	}
	return append(args, "-h", "127.0.0.1", "-p", strconv.Itoa(ep.port), "-U", benchUser, benchDB)
}

// errorLine is the line of pgbench's output that says what went wrong, else
// its last line, at most 200 bytes.
func errorLine(out []byte) string {
	var last string
	for l := range strings.SplitSeq(string(out), "\n") {
		l = strings.TrimSpace(l)
		if l == "" {
			continue
		}
		if errorRE.MatchString(l) {
			last = l
			break
		}
		last = l
	}
	if len(last) > 200 {
		last = last[:200] + "..."
	}
	return last
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
	}
	return lat, nil
}

func removeLogs(prefix string) {
	files, _ := filepath.Glob(prefix + ".*")
	for _, f := range files {
		os.Remove(f)
	}
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

// readHits reads ep's cache counters; errNoCounters when it has none.
func readHits(ctx context.Context, ep endpoint) (cacheCounts, error) {
	if ep.hits == nil {
		return cacheCounts{}, errNoCounters
	}
	return ep.hits.read(ctx)
}
