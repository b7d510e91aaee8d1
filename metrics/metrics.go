// Package metrics turns the Stats() snapshots of pgsidecar's components
// into Prometheus metrics. Collectors read the snapshots at scrape time, so
// the components keep no Prometheus state of their own and the hot paths
// pay nothing for metrics they already count.
//
// Only this package and cmd import Prometheus. A later issue adds the full
// metric set (pool, proxy, latency histograms); the cache's counters come
// first.
package metrics

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgsidecar/pgsidecar/resultcache"
)

// CacheSource is the result cache: *resultcache.Cache.
type CacheSource interface{ Stats() resultcache.Stats }

// cacheCollector exports a result cache's Stats and the proxy's bypass
// counts.
type cacheCollector struct {
	cache  CacheSource
	bypass func() map[string]int64

	hits, misses, bypassed, invalidations, stores, storeSkips *prometheus.Desc
	entries, bytes, redisErrors, untrusted, syncOK            *prometheus.Desc
}

// NewCacheCollector returns a collector of cache's counters; bypass, when
// not nil, returns the proxy's bypass counts by reason.
func NewCacheCollector(cache CacheSource, bypass func() map[string]int64) prometheus.Collector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc("pgsidecar_cache_"+name, help, labels, nil)
	}
	return &cacheCollector{
		cache:         cache,
		bypass:        bypass,
		hits:          d("hits_total", "Queries answered from the result cache, by tier.", "tier"),
		misses:        d("misses_total", "Cacheable queries found in no tier."),
		bypassed:      d("bypass_total", "Queries not looked up in the cache, by reason.", "reason"),
		invalidations: d("invalidations_total", "Table versions bumped by writes (one per database and table; '*' for a whole database)."),
		stores:        d("stores_total", "Answers stored in the memory tier."),
		storeSkips:    d("store_skips_total", "Answers not stored: too large, or stale before they arrived."),
		entries:       d("entries", "Entries in the cache, by tier (the memory tier only: Redis is shared).", "tier"),
		bytes:         d("bytes", "Bytes the cache holds, by tier (answers plus overhead; the memory tier only).", "tier"),
		redisErrors:   d("redis_errors_total", "Redis calls that failed, by kind (error, timeout, dropped write, data loss).", "kind"),
		untrusted:     d("redis_untrusted_tables", "Tables whose latest version has not reached Redis yet; the Redis tier is skipped for them."),
		syncOK:        d("redis_sync_ok", "1 when the last version sync with Redis succeeded."),
	}
}

func (c *cacheCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.hits, c.misses, c.bypassed, c.invalidations, c.stores, c.storeSkips,
		c.entries, c.bytes, c.redisErrors, c.untrusted, c.syncOK} {
		ch <- d
	}
}

func (c *cacheCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.cache.Stats()
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter(c.hits, s.MemoryHits, "memory")
	counter(c.hits, s.RedisHits, "redis")
	counter(c.misses, s.Misses)
	counter(c.invalidations, s.Invalidations)
	counter(c.stores, s.Stores)
	counter(c.storeSkips, s.StoreSkips)
	gauge(c.entries, float64(s.Entries), "memory")
	gauge(c.bytes, float64(s.Bytes), "memory")
	counter(c.redisErrors, s.RedisErrors, "error")
	counter(c.redisErrors, s.RedisTimeouts, "timeout")
	counter(c.redisErrors, s.RedisDropped, "dropped")
	counter(c.redisErrors, s.RedisResets, "data_loss")
	gauge(c.untrusted, float64(s.Untrusted))
	ok := 0.0
	if s.SyncOK {
		ok = 1
	}
	gauge(c.syncOK, ok)
	if c.bypass != nil {
		for reason, n := range c.bypass() {
			counter(c.bypassed, uint64(n), reason)
		}
	}
}
