package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

const exposition = `# HELP pgsidecar_cache_hits_total Result cache hits.
# TYPE pgsidecar_cache_hits_total counter
pgsidecar_cache_hits_total{tier="memory"} 900
pgsidecar_cache_hits_total{tier="redis"} 40
# HELP pgsidecar_cache_misses_total Result cache misses.
# TYPE pgsidecar_cache_misses_total counter
pgsidecar_cache_misses_total 60
pgsidecar_pool_clients{database="bench",user="bench"} 3
`

func TestParseCacheMetrics(t *testing.T) {
	c, err := parseCacheMetrics(strings.NewReader(exposition))
	if err != nil {
		t.Fatal(err)
	}
	if c.hits["memory"] != 900 || c.hits["redis"] != 40 || c.misses != 60 {
		t.Errorf("counts = %+v, want memory 900, redis 40, misses 60", c)
	}

	if _, err := parseCacheMetrics(strings.NewReader("go_goroutines 12\n")); !errors.Is(err, errNoCounters) {
		t.Errorf("no cache series: err = %v, want errNoCounters", err)
	}
}

func TestSetHits(t *testing.T) {
	before := cacheCounts{hits: map[string]int64{"memory": 100}, misses: 50}
	after := cacheCounts{hits: map[string]int64{"memory": 190, "redis": 0}, misses: 60}
	var r runResult
	r.setHits(before, after)
	if r.HitRatio == nil || *r.HitRatio != 0.9 {
		t.Fatalf("HitRatio = %v, want 0.9", r.HitRatio)
	}
	if len(r.HitsByTier) != 1 || r.HitsByTier["memory"] != 90 || r.Misses != 10 {
		t.Errorf("HitsByTier = %v, Misses = %d; want memory 90 only, 10", r.HitsByTier, r.Misses)
	}

	var idle runResult
	idle.setHits(after, after)
	if idle.HitRatio != nil {
		t.Errorf("no lookups: HitRatio = %v, want nil (unknown)", *idle.HitRatio)
	}
}

func TestMetricsCounter(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprint(w, exposition) })
	srv := httptest.NewServer(mux)
	defer srv.Close()

	c, err := newMetricsCounter(srv.URL + "/metrics").read(context.Background())
	if err != nil || c.misses != 60 {
		t.Errorf("read = %+v, %v; want misses 60", c, err)
	}
	// A pgsidecar without /metrics: n/a, not a failure of the bench.
	if _, err := newMetricsCounter(srv.URL + "/nothing").read(context.Background()); !errors.Is(err, errNoCounters) {
		t.Errorf("404: err = %v, want errNoCounters", err)
	}
}
