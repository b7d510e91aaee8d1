package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// A result cache's hit ratio over a measured run is the change in its
// cumulative counters, read just before and just after the run.

// hitCounter reads a cache's cumulative counters.
type hitCounter interface {
	read(ctx context.Context) (cacheCounts, error)
}

// cacheCounts are cumulative cache lookups: hits by tier, and misses.
type cacheCounts struct {
	hits   map[string]int64
	misses int64
}

// errNoCounters means the target exposes no cache counters (a pgsidecar
// without /metrics, or with the cache off): its hit ratio is n/a.
var errNoCounters = errors.New("no cache counters")

// setHits records on r the lookups between before and after. With no
// lookups at all the ratio stays unknown (nil).
func (r *runResult) setHits(before, after cacheCounts) {
	var hits int64
	byTier := map[string]int64{}
	for tier, n := range after.hits {
		if d := n - before.hits[tier]; d != 0 {
			byTier[tier] = d
			hits += d
		}
	}
	misses := after.misses - before.misses
	if hits+misses <= 0 {
		return
	}
	ratio := float64(hits) / float64(hits+misses)
	r.HitRatio, r.HitsByTier, r.Misses = &ratio, byTier, misses
}

// Counters pgsidecar exports on /metrics (Prometheus text format).
const (
	metricCacheHits   = "pgsidecar_cache_hits_total"   // label tier: memory or redis
	metricCacheMisses = "pgsidecar_cache_misses_total" // no tier: a miss is a miss of every tier
)

// metricsCounter reads pgsidecar's cache counters from its /metrics.
type metricsCounter struct {
	url    string
	client *http.Client
}

func newMetricsCounter(url string) metricsCounter {
	return metricsCounter{url: url, client: &http.Client{Timeout: 5 * time.Second}}
}

func (m metricsCounter) read(ctx context.Context) (cacheCounts, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, m.url, nil)
	if err != nil {
		return cacheCounts{}, err
	}
	resp, err := m.client.Do(req)
	if err != nil {
		return cacheCounts{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return cacheCounts{}, fmt.Errorf("GET %s: %s: %w", m.url, resp.Status, errNoCounters)
	}
	return parseCacheMetrics(resp.Body)
}

// parseCacheMetrics sums the cache counters of a Prometheus text exposition,
// hits by their tier label. It returns errNoCounters when neither counter is
// there.
func parseCacheMetrics(r io.Reader) (cacheCounts, error) {
	c := cacheCounts{hits: map[string]int64{}}
	found := false
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		name, labels, value, ok := splitSample(line)
		if !ok || (name != metricCacheHits && name != metricCacheMisses) {
			continue
		}
		v, err := strconv.ParseFloat(value, 64)
		if err != nil {
			continue
		}
		found = true
		if name == metricCacheMisses {
			c.misses += int64(v)
			continue
		}
		tier := labelValue(labels, "tier")
		if tier == "" {
			tier = "all"
		}
		c.hits[tier] += int64(v)
	}
	if err := sc.Err(); err != nil {
		return cacheCounts{}, err
	}
	if !found {
		return cacheCounts{}, errNoCounters
	}
	return c, nil
}

// splitSample splits `name{labels} value [timestamp]`.
func splitSample(line string) (name, labels, value string, ok bool) {
	rest := line
	if i := strings.IndexByte(line, '{'); i >= 0 {
		j := strings.LastIndexByte(line, '}')
		if j < i {
			return "", "", "", false
		}
		name, labels, rest = line[:i], line[i+1:j], line[j+1:]
	} else {
		var found bool
		name, rest, found = strings.Cut(line, " ")
		if !found {
			return "", "", "", false
		}
	}
	fields := strings.Fields(rest)
	if len(fields) == 0 {
		return "", "", "", false
	}
	return strings.TrimSpace(name), labels, fields[0], true
}

// labelValue is the value of label key in `a="x",b="y"` (no escapes in the
// values it is used on), or "".
func labelValue(labels, key string) string {
	for kv := range strings.SplitSeq(labels, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(kv), "=")
		if ok && k == key {
			return strings.Trim(v, `"`)
		}
	}
	return ""
}

// pgpoolCounter reads pgpool-II's query cache counters with SHOW pool_cache
// through its own port: num_cache_hits, and num_selects, the SELECTs it sent
// to PostgreSQL (its cache_hit_ratio is hits / (hits + selects)).
type pgpoolCounter struct{ port int }

func (p pgpoolCounter) read(ctx context.Context) (cacheCounts, error) {
	conn, err := connectIdle(ctx, p.port)
	if err != nil {
		return cacheCounts{}, err
	}
	defer conn.Close(context.Background())
	results, err := conn.Exec(ctx, "SHOW pool_cache").ReadAll() // simple protocol: pgpool's own commands
	if err != nil {
		return cacheCounts{}, fmt.Errorf("SHOW pool_cache: %w", err)
	}
	if len(results) != 1 || len(results[0].Rows) != 1 {
		return cacheCounts{}, errors.New("SHOW pool_cache: not one row")
	}
	res := results[0]
	col := func(name string) (int64, error) {
		for i, f := range res.FieldDescriptions {
			if f.Name == name {
				return strconv.ParseInt(strings.TrimSpace(string(res.Rows[0][i])), 10, 64)
			}
		}
		return 0, fmt.Errorf("SHOW pool_cache: no column %s", name)
	}
	hits, err1 := col("num_cache_hits")
	selects, err2 := col("num_selects")
	if err := errors.Join(err1, err2); err != nil {
		return cacheCounts{}, err
	}
	return cacheCounts{hits: map[string]int64{"shmem": hits}, misses: selects}, nil
}
