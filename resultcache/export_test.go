package resultcache

import "time"

// NewManual is New with a test clock and no sync loop: the test calls
// SyncNow.
func NewManual(cfg Config, remote Remote, clk interface{ Now() time.Time }) (*Cache, error) {
	return newCache(cfg, remote, clk, true)
}

// NewWithClock is New with a test clock.
func NewWithClock(cfg Config, remote Remote, clk interface{ Now() time.Time }) (*Cache, error) {
	return newCache(cfg, remote, clk, false)
}

// SyncNow runs one sync (and retry round) now.
func (c *Cache) SyncNow() { c.syncOnce() }

// CleanUp runs the memory tier's pending maintenance (evictions).
func (c *Cache) CleanUp() { c.mem.CleanUp() }

// LocalVersion is the local version of (db, table), 0 if unknown.
func (c *Cache) LocalVersion(db, table string) uint64 {
	d := c.vers.lookup(db)
	if d == nil {
		return 0
	}
	d.mu.RLock()
	cl := d.cells[table]
	d.mu.RUnlock()
	if cl == nil {
		return 0
	}
	return cl.v.Load()
}
