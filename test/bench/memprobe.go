package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// The memory probe holds -mem-clients idle clients open on a fresh instance
// of each proxy, each one logged in and left alone after ReadyForQuery, and
// compares the proxy's resident memory before and after. The proxies sit in
// front of a fakeUpstream, so that session mode (where pgsidecar gives each
// client a backend at login) can hold thousands of clients too, and so that
// no server shares the measurement.
const (
	settleSamples  = 5 // memory samples after a change; the minimum is kept
	settleInterval = 400 * time.Millisecond
)

// memSample is a process's memory in KiB; -1 where unreadable.
type memSample struct {
	RSS     int64 `json:"rss_kib"`     // VmRSS, /proc/PID/status
	Pss     int64 `json:"pss_kib"`     // Pss, /proc/PID/smaps_rollup
	Private int64 `json:"private_kib"` // Private_Clean + Private_Dirty, smaps_rollup
}

// memResult is the probe of one proxy.
type memResult struct {
	Target   string    `json:"target"`
	PoolMode string    `json:"pool_mode"`
	PoolSize int       `json:"pool_size"`
	Wanted   int       `json:"clients_wanted"`
	Opened   int       `json:"clients_opened"` // idle clients at ReadyForQuery when After was taken
	Before   memSample `json:"before"`
	After    memSample `json:"after"`
	// Per idle client, KiB: (After - Before) / Opened.
	PerClientRSS     float64 `json:"per_client_rss_kib"`
	PerClientPss     float64 `json:"per_client_pss_kib"`
	PerClientPrivate float64 `json:"per_client_private_kib"`
	Note             string  `json:"note,omitempty"`
	NA               string  `json:"na,omitempty"`
}

// memoryProbe probes pgsidecar and, when installed, PgBouncer. Failures are
// reported in the results, not returned.
func memoryProbe(ctx context.Context, o options, p runPlan, dir string) []memResult {
	fake, err := startFakeUpstream()
	if err != nil {
		return []memResult{{Target: lanePgSidecar, NA: "fake upstream: " + err.Error()}}
	}
	defer fake.Close()

	// In session mode pgsidecar binds a backend at login, so its pool must
	// cover every client (plus the warm-up one); PgBouncer, which links a
	// server only at a client's first query, gets the same setting.
	poolSize := o.poolSize
	if o.poolMode == sessionMode {
		poolSize = o.memClients + 1
	}
	cfg := proxyConfig{poolMode: o.poolMode, poolSize: poolSize, maxClientConn: o.memClients + 100, up: fake.upstream()}
	var out []memResult

	r := memResult{Target: lanePgSidecar, PoolMode: cfg.poolMode, PoolSize: cfg.poolSize, Wanted: o.memClients}
	if cfg.poolMode == sessionMode {
		r.Note = "session mode: each idle client holds a backend connection from login, counted here"
	}
	fmt.Printf("memory probe: starting pgsidecar (%s mode, pool %d) in front of a fake upstream ...\n", cfg.poolMode, cfg.poolSize)
	sc, err := startSidecar(ctx, o.sidecar, cfg)
	out = append(out, probeProxy(ctx, r, sc, err))

	r = memResult{Target: lanePgBouncer, PoolMode: cfg.poolMode, PoolSize: cfg.poolSize, Wanted: o.memClients}
	if p.pgbouncer.isZero() {
		r.NA = "PgBouncer not installed"
		return append(out, r)
	}
	if cfg.poolMode == sessionMode {
		r.Note = "session mode: links a server only at a client's first query, so idle clients hold none"
	}
	fmt.Printf("memory probe: starting PgBouncer (%s mode) in front of a fake upstream ...\n", cfg.poolMode)
	pb, err := startPgBouncer(ctx, o.pgbouncer, p.pgbouncer, filepath.Join(dir, "pgbouncer-probe"), cfg)
	return append(out, probeProxy(ctx, r, pb, err))
}

// probeProxy measures one started proxy (or reports why it did not start)
// and stops it.
func probeProxy(ctx context.Context, r memResult, p *proc, startErr error) memResult {
	var exited *exitedError
	switch {
	case errors.As(startErr, &exited):
		r.NA = "refused: " + exited.msg
		fmt.Printf("  %s: n/a (%s)\n", r.Target, r.NA)
		return r
	case startErr != nil:
		r.NA = startErr.Error()
		return r
	}
	defer p.stop()
	pid := p.pid()

	// One client first, so one-off costs (PgBouncer's first server login,
	// pgsidecar's pool for the database) are in the baseline.
	warm, err := connectIdle(ctx, p.port)
	if err != nil {
		r.NA = "first login: " + err.Error()
		return r
	}
	defer warm.Close(context.Background())
	r.Before = settledSample(pid)

	began := time.Now()
	conns, err := openIdle(ctx, p.port, r.Wanted)
	r.Opened = len(conns)
	fmt.Printf("  %s: %d idle clients open in %s\n", r.Target, r.Opened, time.Since(began).Round(time.Millisecond))
	if err != nil {
		msg := fmt.Sprintf("only %d of %d clients reached ReadyForQuery: %v", r.Opened, r.Wanted, err)
		fmt.Printf("  %s: %s\n", r.Target, msg)
		if r.Opened == 0 {
			r.NA = msg
		} else {
			r.Note = strings.TrimPrefix(r.Note+"; "+msg, "; ")
		}
	}
	if r.Opened > 0 {
		r.After = settledSample(pid)
		perClient := func(before, after int64) float64 {
			if before < 0 || after < 0 {
				return -1
			}
			return float64(after-before) / float64(r.Opened)
		}
		r.PerClientRSS = perClient(r.Before.RSS, r.After.RSS)
		r.PerClientPss = perClient(r.Before.Pss, r.After.Pss)
		r.PerClientPrivate = perClient(r.Before.Private, r.After.Private)
	}
	closeAll(conns)
	return r
}

// settledSample samples pid's memory settleSamples times, settleInterval
// apart, and keeps the minimum of each figure: long enough for Go's garbage
// collector and scavenger to give back what a burst of logins left behind.
func settledSample(pid int) memSample {
	best := memSample{RSS: -1, Pss: -1, Private: -1}
	low := func(cur, v int64) int64 {
		if v >= 0 && (cur < 0 || v < cur) {
			return v
		}
		return cur
	}
	for range settleSamples {
		time.Sleep(settleInterval)
		s := sampleMemory(pid)
		best = memSample{RSS: low(best.RSS, s.RSS), Pss: low(best.Pss, s.Pss), Private: low(best.Private, s.Private)}
	}
	return best
}

// sampleMemory reads VmRSS from /proc/PID/status and Pss and Private_* from
// /proc/PID/smaps_rollup.
func sampleMemory(pid int) memSample {
	s := memSample{RSS: -1, Pss: -1, Private: -1}
	status := procKiB(fmt.Sprintf("/proc/%d/status", pid))
	if v, ok := status["VmRSS"]; ok {
		s.RSS = v
	}
	rollup := procKiB(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if v, ok := rollup["Pss"]; ok {
		s.Pss = v
	}
	pc, ok1 := rollup["Private_Clean"]
	pd, ok2 := rollup["Private_Dirty"]
	if ok1 && ok2 {
		s.Private = pc + pd
	}
	return s
}

// procKiB reads the "Name:   123 kB" lines of a /proc file.
func procKiB(path string) map[string]int64 {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	out := map[string]int64{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		name, rest, ok := strings.Cut(sc.Text(), ":")
		fields := strings.Fields(rest)
		if !ok || len(fields) != 2 || fields[1] != "kB" {
			continue
		}
		if v, err := strconv.ParseInt(fields[0], 10, 64); err == nil {
			out[name] = v
		}
	}
	return out
}
