package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
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
}

// rowResult is one (mode, clients) row: a run per target (by lane name).
type rowResult struct {
	Mode    string                `json:"mode"`
	Clients int                   `json:"clients"`
	Targets map[string]*runResult `json:"targets"`
	Notes   []string              `json:"notes,omitempty"`
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
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "\t\tpostgres\t\tpgsidecar\t\t\tpgbouncer\t\t\tpgsidecar vs\t\t")
	fmt.Fprintln(tw, "mode\tclients\tTPS\tp99\tTPS\tp99\tCPU/txn\tTPS\tp99\tCPU/txn\tpgbouncer\tpostgres\t  notes")
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
		fmt.Fprintf(tw, "%s\t%s\t  %s\n", ratio(sc, r.Targets[lanePgBouncer]), ratio(sc, r.Targets[lanePostgres]), strings.Join(r.Notes, "; "))
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
