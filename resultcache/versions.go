package resultcache

import (
	"slices"
	"sync"
	"sync/atomic"
)

// StarTable is the pseudo-table every entry depends on: bumping it
// invalidates every answer of its database.
const StarTable = "*"

// cell is the version of one (database, table) pair.
//
// v is the local version: entries are served only while v equals the
// version they were stored under. It only grows. Reads are lock-free; every
// write holds mu.
//
// The rest, under mu, relates v to Redis (see the package doc):
//
//   - conf is the highest value seen in Redis (current boot) for this pair.
//     conf <= v always.
//   - pending counts pushes of local bumps to Redis in flight.
//   - dirty means a local bump is not known to have reached Redis; the
//     background retry pushes v (with v as the floor) until one does.
//     dirtyAt is the highest v a failed push carried.
//
// The pair is trusted for the Redis tier only when no local bump is
// outstanding: pending == 0, !dirty and v == conf. A local-only value (v >
// conf) is never made equal to a value seen in Redis afterwards: observe
// moves v past it, because that Redis value may stand for a write this
// instance's entries have not seen.
type cell struct {
	table string
	v     atomic.Uint64

	mu      sync.Mutex
	conf    uint64
	pending int32
	dirty   bool
	dirtyAt uint64
	gen     uint64 // the boot generation conf belongs to
	nDirty  *atomic.Int64
}

// trustedLocked reports whether the Redis tier may be used for this pair.
func (c *cell) trustedLocked() bool {
	return c.pending == 0 && !c.dirty && c.v.Load() == c.conf
}

// read returns the local version and whether the pair is trusted.
func (c *cell) read() (v uint64, trusted bool) {
	c.mu.Lock()
	v, trusted = c.v.Load(), c.trustedLocked()
	c.mu.Unlock()
	return v, trusted
}

func (c *cell) setDirtyLocked(at uint64) {
	if !c.dirty {
		c.dirty = true
		c.nDirty.Add(1)
	}
	c.dirtyAt = max(c.dirtyAt, at)
}

func (c *cell) clearDirtyLocked() {
	if c.dirty {
		c.dirty = false
		c.dirtyAt = 0
		c.nDirty.Add(-1)
	}
}

// settleLocked keeps "a local-only value with nothing in flight" from being
// forgotten: it becomes dirty, so the retry pushes it.
func (c *cell) settleLocked() {
	if v := c.v.Load(); c.pending == 0 && v > c.conf {
		c.setDirtyLocked(v)
	}
}

// bump raises the local version by one and returns it. With push, the
// caller pushes the new value to Redis and must report with pushed or
// pushFailed.
func (c *cell) bump(push bool) uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	v := c.v.Add(1)
	if push {
		c.pending++
	}
	return v
}

// beginRetry starts a push of a dirty pair; it returns the floor to push
// and false when there is nothing to push.
func (c *cell) beginRetry() (floor uint64, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.dirty {
		return 0, false
	}
	c.pending++
	return c.v.Load(), true
}

// pushed records a successful push: Redis now holds r, which is above both
// its previous value and floor. gen is the boot generation when the push
// started; a push that crossed a change of boot counts as failed.
func (c *cell) pushed(gen, floor, r uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.pending--
	if gen != c.gen {
		c.setDirtyLocked(c.v.Load())
		return
	}
	c.conf = max(c.conf, r)
	switch v := c.v.Load(); {
	case v == floor: // no local bump since: Redis is past it
		c.v.Store(max(v, r))
	case v <= r: // later local bumps, their pushes still to come
		c.v.Store(r + 1)
	}
	if c.dirty && floor >= c.dirtyAt {
		c.clearDirtyLocked()
	}
	c.settleLocked()
}

// pushFailed records a push that did not (or may not have) reached Redis.
func (c *cell) pushFailed(floor uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.pending--
	c.setDirtyLocked(max(floor, c.v.Load()))
}

// observe merges r, a value of this pair read from Redis under boot
// generation gen. It reports whether the local version changed.
func (c *cell) observe(gen, r uint64) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if gen != c.gen || r <= c.conf {
		return false
	}
	old := c.conf
	c.conf = r
	v := c.v.Load()
	if c.pending == 0 && !c.dirty && v == old {
		c.v.Store(r)
		return true
	}
	// A local bump is outstanding: r may stand for another instance's write
	// that the entries stored under our local-only value did not see.
	c.v.Store(max(v, r) + 1)
	c.settleLocked()
	return true
}

// reset forgets everything known about Redis, after its data was lost: the
// new boot generation is gen. It bumps "*" (every memory entry dies) and
// marks every pair with a version dirty, so the retry pushes them all.
func (c *cell) reset(gen uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen = gen
	c.conf = 0
	if c.table == StarTable {
		c.v.Add(1)
	}
	if v := c.v.Load(); v > 0 {
		c.setDirtyLocked(v)
	}
}

// untrusted reports whether the pair has a local bump not known in Redis.
func (c *cell) untrusted() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return !c.trustedLocked()
}

// dbVersions holds the cells of one database. Cells are never removed: the
// set of tables is bounded by the schemas.
type dbVersions struct {
	name   string
	star   *cell
	synced atomic.Bool // its Redis hash was read since it was created or reset

	mu    sync.RWMutex
	cells map[string]*cell
}

// versions is every database's cells.
type versions struct {
	nDirty *atomic.Int64
	gen    func() uint64 // current boot generation, for new cells

	mu  sync.RWMutex
	dbs map[string]*dbVersions
}

func newVersions(nDirty *atomic.Int64, gen func() uint64) *versions {
	return &versions{nDirty: nDirty, gen: gen, dbs: make(map[string]*dbVersions)}
}

// lookup returns the database's versions, or nil.
func (vs *versions) lookup(name string) *dbVersions {
	vs.mu.RLock()
	d := vs.dbs[name]
	vs.mu.RUnlock()
	return d
}

// db returns the database's versions, creating them.
func (vs *versions) db(name string) *dbVersions {
	if d := vs.lookup(name); d != nil {
		return d
	}
	vs.mu.Lock()
	defer vs.mu.Unlock()
	if d := vs.dbs[name]; d != nil {
		return d
	}
	d := &dbVersions{name: name, cells: make(map[string]*cell)}
	d.star = vs.newCell(StarTable)
	d.cells[StarTable] = d.star
	vs.dbs[name] = d
	return d
}

func (vs *versions) newCell(table string) *cell {
	return &cell{table: table, nDirty: vs.nDirty, gen: vs.gen()}
}

// all returns every database, in no particular order.
func (vs *versions) all() []*dbVersions {
	vs.mu.RLock()
	defer vs.mu.RUnlock()
	out := make([]*dbVersions, 0, len(vs.dbs))
	for _, d := range vs.dbs {
		out = append(out, d)
	}
	return out
}

// cell returns the table's cell, creating it.
func (vs *versions) cell(d *dbVersions, table string) *cell {
	d.mu.RLock()
	c := d.cells[table]
	d.mu.RUnlock()
	if c != nil {
		return c
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if c = d.cells[table]; c == nil {
		c = vs.newCell(table)
		d.cells[table] = c
	}
	return c
}

// cellsOf returns the cells of the distinct tables plus "*", sorted by
// table name.
func (vs *versions) cellsOf(d *dbVersions, tables []string) []*cell {
	out := make([]*cell, 0, len(tables)+1)
	out = append(out, d.star)
	for _, t := range tables {
		if t == StarTable {
			continue
		}
		out = append(out, vs.cell(d, t))
	}
	slices.SortFunc(out, func(a, b *cell) int {
		switch {
		case a.table < b.table:
			return -1
		case a.table > b.table:
			return 1
		}
		return 0
	})
	return slices.CompactFunc(out, func(a, b *cell) bool { return a == b })
}

// snapshotCells returns a copy of the database's cells.
func (d *dbVersions) snapshotCells() []*cell {
	d.mu.RLock()
	defer d.mu.RUnlock()
	out := make([]*cell, 0, len(d.cells))
	for _, c := range d.cells {
		out = append(out, c)
	}
	return out
}
