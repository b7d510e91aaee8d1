package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// report is everything a run measured, printed as tables and optionally
// written as JSON (-json).
type report struct {
	Started   time.Time   `json:"started"`
	Duration  string      `json:"duration_per_run"`
	Scale     int         `json:"scale"`
	Threads   int         `json:"pgbench_threads"`
	Cores     int         `json:"cores"`
	PoolMode  string      `json:"pool_mode"`
	PoolSize  int         `json:"pool_size"`
	PgBouncer string      `json:"pgbouncer_version,omitempty"`
	Runs      []rowResult `json:"runs"`
	Memory    []memResult `json:"memory,omitempty"`
	// Cache is the result-cache workload (-workload cache).
	Cache *cacheReport `json:"cache,omitempty"`
}

// rowResult is one (mode, clients) row: a run per target (by lane name).
type rowResult struct {
	Mode    string                `json:"mode"`
	Clients int                   `json:"clients"`
	Targets map[string]*runResult `json:"targets"`
	Notes   []string              `json:"notes,omitempty"`
	// RoundRatios is pgsidecar's TPS over PgBouncer's in each round both
	// completed: their spread is the comparison's noise.
	RoundRatios []float64 `json:"round_ratios,omitempty"`
}

func (r *rowResult) setRoundRatios(sidecar, bouncer []runResult) {
	for i := range min(len(sidecar), len(bouncer)) {
		if bouncer[i].TPS > 0 {
			r.RoundRatios = append(r.RoundRatios, sidecar[i].TPS/bouncer[i].TPS)
		}
	}
}

// ratioRange is the lowest and highest of the per-round ratios, or "-".
func ratioRange(rs []float64) string {
	if len(rs) < 2 {
		return "-"
	}
	return fmt.Sprintf("%.2f-%.2fx", slices.Min(rs), slices.Max(rs))
}

func (rep *report) setup(o options, p runPlan) {
	rep.Started = time.Now().UTC()
	rep.Duration = o.duration.String()
	rep.Scale, rep.Threads, rep.Cores = o.scale, o.threads, numCPU()
	rep.PoolMode, rep.PoolSize = o.poolMode, o.proxyPoolSize(o.poolMode)
	if !p.pgbouncer.isZero() {
		rep.PgBouncer = p.pgbouncer.String()
	}
}

// ok is r when it has figures, else nil.
func ok(r *runResult) *runResult {
	if r == nil || r.NA != "" {
		return nil
	}
	return r
}

// ratio is a's TPS over b's, or "-" when either has no figures.
func ratio(a, b *runResult) string {
	if ok(a) == nil || ok(b) == nil || b.TPS == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2fx", a.TPS/b.TPS)
}

// printRuns writes the pgbench table: one row per (mode, clients), the
// three targets side by side, then the ratios and notes.
func (rep *report) printRuns(w io.Writer) error {
	pb := "PgBouncer not installed"
	if rep.PgBouncer != "" {
		pb = "PgBouncer " + rep.PgBouncer
	}
	fmt.Fprintf(w, "pgbench -S (select-only), %s per run, scale %d, -j %d; pgsidecar and PgBouncer in %s mode, pool size %d; %s; %d cores\n",
		rep.Duration, rep.Scale, rep.Threads, rep.PoolMode, rep.PoolSize, pb, rep.Cores)
	fmt.Fprintln(w, "TPS; p99 latency in ms; proxy CPU (user+system) in µs per transaction; connect = -M simple -C (a new connection per transaction)")
	if len(rep.Runs) > 0 && len(rep.Runs[0].RoundRatios) > 1 {
		fmt.Fprintln(w, "each figure is the median run of the rounds (targets interleaved, rotating order); per round = the range of pgsidecar/pgbouncer TPS ratios over the rounds")
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "\t\tpostgres\t\tpgsidecar\t\t\tpgbouncer\t\t\tpgsidecar vs\t\t\t")
	fmt.Fprintln(tw, "mode\tclients\tTPS\tp99\tTPS\tp99\tCPU/txn\tTPS\tp99\tCPU/txn\tpgbouncer\tper round\tpostgres\t  notes")
	for _, r := range rep.Runs {
		fmt.Fprintf(tw, "%s\t%d\t", r.Mode, r.Clients)
		for _, lane := range lanes {
			res := ok(r.Targets[lane])
			if res == nil {
				fmt.Fprint(tw, "n/a\t-\t")
			} else {
				fmt.Fprintf(tw, "%.0f\t%.2f\t", res.TPS, res.P99Ms)
			}
			if lane == lanePostgres {
				continue
			}
			if res == nil {
				fmt.Fprint(tw, "-\t")
			} else {
				fmt.Fprintf(tw, "%.1f\t", res.CPUUsPerTxn)
			}
		}
		sc := r.Targets[lanePgSidecar]
		fmt.Fprintf(tw, "%s\t%s\t%s\t  %s\n", ratio(sc, r.Targets[lanePgBouncer]), ratioRange(r.RoundRatios), ratio(sc, r.Targets[lanePostgres]), strings.Join(r.Notes, "; "))
	}
	return tw.Flush()
}

// printMemory writes the memory probe table.
func (rep *report) printMemory(w io.Writer, o options) error {
	fmt.Fprintf(w, "memory probe: %d idle clients per proxy (logged in, then idle after ReadyForQuery), each proxy a fresh process in %s mode in front of a fake upstream\n",
		o.memClients, o.poolMode)
	fmt.Fprintf(w, "KiB; per client = (after - before) / clients; each figure the minimum of %d samples over %s\n\n",
		settleSamples, settleSamples*settleInterval)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "\t\t\tRSS\t\tper client\t\t\t")
	fmt.Fprintln(tw, "target\tpool\tclients\tbefore\tafter\tRSS\tPss\tPrivate\t  notes")
	kib := func(v float64) string {
		if v < 0 {
			return "-"
		}
		return fmt.Sprintf("%.1f", v)
	}
	for _, m := range rep.Memory {
		if m.NA != "" {
			fmt.Fprintf(tw, "%s\t%s %d\t%d\tn/a\t-\t-\t-\t-\t  %s\n", m.Target, m.PoolMode, m.PoolSize, m.Wanted, strings.Join(nonEmpty(m.NA, m.Note), "; "))
			continue
		}
		fmt.Fprintf(tw, "%s\t%s %d\t%d\t%d\t%d\t%s\t%s\t%s\t  %s\n", m.Target, m.PoolMode, m.PoolSize, m.Opened,
			m.Before.RSS, m.After.RSS, kib(m.PerClientRSS), kib(m.PerClientPss), kib(m.PerClientPrivate), m.Note)
	}
	return tw.Flush()
}

// printCache writes the result-cache table, one line per (workload, mode,
// target), then the latency probe.
func (rep *report) printCache(w io.Writer) error {
	c := rep.Cache
	fmt.Fprintf(w, "result cache: %d clients, %s per run, scale %d, -j %d; pgsidecar in %s mode, pool size %d, cache TTL %s; %d cores\n",
		c.Clients, rep.Duration, rep.Scale, rep.Threads, rep.PoolMode, rep.PoolSize, c.TTL, rep.Cores)
	fmt.Fprintf(w, "read = %s; with k one of %d values (%.2f ms directly, alone); mix = 9 reads to 1 UPDATE of a random account's abalance\n",
		c.ReadQuery, c.Keys, c.DirectQueryMs)
	if c.Pgpool != "" {
		fmt.Fprintf(w, "pgpool-II %s: %s\n", c.Pgpool, c.PgpoolNote)
	} else {
		fmt.Fprintln(w, pgpoolMissing)
	}
	fmt.Fprintln(w, "TPS; p50 and p99 latency in ms (mix: reads and writes together); hit = cache hits / lookups in the measured run (n/a: no counters)")
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "workload\tmode\ttarget\tTPS\tp50\tp99\thit\tvs postgres\tvs pgpool-II\t  notes")
	for _, r := range c.Rows {
		for _, lane := range cacheLanes {
			res := r.Targets[lane]
			fmt.Fprintf(tw, "%s\t%s\t%s\t", r.Workload, r.Mode, cacheLaneTitle[lane])
			if ok(res) == nil {
				na := ""
				if res != nil {
					na = res.NA
				}
				fmt.Fprintf(tw, "n/a\t-\t-\t-\t-\t-\t  %s\n", na)
				continue
			}
			fmt.Fprintf(tw, "%.0f\t%.2f\t%.2f\t%s\t%s\t%s\t  \n", res.TPS, res.P50Ms, res.P99Ms, hitRatio(lane, res),
				ratio(res, r.Targets[lanePostgres]), ratio(res, r.Targets[lanePgpool]))
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	lp := c.Latency
	if lp == nil {
		return nil
	}
	fmt.Fprintln(w)
	if lp.NA != "" {
		_, err := fmt.Fprintf(w, "latency probe n/a: %s\n", lp.NA)
		return err
	}
	p50 := func(r *runResult) string {
		if ok(r) == nil {
			return "n/a (" + r.NA + ")"
		}
		return fmt.Sprintf("%.3f ms", r.P50Ms)
	}
	fmt.Fprintf(w, "latency at 1 client, -M %s: SELECT 1 through pgsidecar (cache off, to PostgreSQL) p50 %s; cached read through the memory tier p50 %s (hit %s)\n",
		lp.Mode, p50(lp.Select1), p50(lp.Hit), hitRatio(laneSidecarMemory, ok(lp.Hit)))
	if lp.Ratio > 0 {
		verdict := "met"
		if lp.Ratio > 2 {
			verdict = "NOT met"
		}
		fmt.Fprintf(w, "memory-tier hit p50 / SELECT 1 p50 = %.2fx (done-criterion: at most 2x: %s)\n", lp.Ratio, verdict)
	}
	return nil
}

// hitRatio is res's cache hit ratio as a percentage: "-" for PostgreSQL and
// for pgsidecar with its cache off, unless it counted lookups, and "n/a" for
// a target whose counters are unknown.
func hitRatio(lane string, res *runResult) string {
	switch {
	case lane == lanePostgres:
		return "-"
	case (res == nil || res.HitRatio == nil) && lane == laneSidecarOff:
		return "-"
	case res == nil || res.HitRatio == nil:
		return "n/a"
	}
	return fmt.Sprintf("%.1f%%", 100**res.HitRatio)
}

func nonEmpty(ss ...string) []string {
	var out []string
	for _, s := range ss {
		if s != "" {
			out = append(out, s)
		}
	}
	return out
}

func (rep *report) writeJSON(path string) error {
	b, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}
