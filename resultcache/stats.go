package resultcache

import (
	"sync/atomic"
	"time"
)

// counters are the Cache's running totals.
type counters struct {
	memHits, redisHits, misses               atomic.Uint64
	stores, storeSkips, invalidations        atomic.Uint64
	redisErrors, redisTimeouts, redisDropped atomic.Uint64
	redisResets, flightWaits                 atomic.Uint64
}

// Stats is a snapshot of a Cache's counters (totals since New) and state.
type Stats struct {
	MemoryHits uint64 // Gets answered by the memory tier
	RedisHits  uint64 // Gets answered by the Redis tier
	Misses     uint64 // Gets answered by neither
	Stores     uint64 // Puts stored in the memory tier
	StoreSkips uint64 // Puts skipped: answer above MaxEntryBytes, or snapshot already stale
	// Invalidations counts (database, table) pairs bumped.
	Invalidations uint64
	Entries       int    // memory-tier entries (otter's estimate)
	Bytes         uint64 // memory-tier weight: answers plus overhead estimates
	RedisErrors   uint64 // failed Redis calls, and Redis entries that did not decode
	RedisTimeouts uint64 // Redis calls that ran out of time
	RedisDropped  uint64 // entries not written to Redis because the queue was full
	RedisResets   uint64 // times Redis was found to have lost its data
	// Untrusted is the number of (database, table) pairs whose local
	// version is not known to be in Redis now: the Redis tier is skipped
	// for them.
	Untrusted   int
	LastSync    time.Time // start of the last successful sync; zero: none
	SyncOK      bool      // the last sync succeeded
	FlightWaits uint64    // Flight.Wait calls
}

// Stats returns a snapshot of the counters and state.
func (c *Cache) Stats() Stats {
	s := Stats{
		MemoryHits:    c.st.memHits.Load(),
		RedisHits:     c.st.redisHits.Load(),
		Misses:        c.st.misses.Load(),
		Stores:        c.st.stores.Load(),
		StoreSkips:    c.st.storeSkips.Load(),
		Invalidations: c.st.invalidations.Load(),
		Entries:       c.mem.EstimatedSize(),
		Bytes:         c.mem.WeightedSize(),
		RedisErrors:   c.st.redisErrors.Load(),
		RedisTimeouts: c.st.redisTimeouts.Load(),
		RedisDropped:  c.st.redisDropped.Load(),
		RedisResets:   c.st.redisResets.Load(),
		SyncOK:        c.syncOK.Load(),
		FlightWaits:   c.st.flightWaits.Load(),
	}
	if ns := c.lastSync.Load(); ns != 0 {
		s.LastSync = time.Unix(0, ns)
	}
	if c.remote != nil {
		for _, d := range c.vers.all() {
			for _, cl := range d.snapshotCells() {
				if cl.untrusted() {
					s.Untrusted++
				}
			}
		}
	}
	return s
}
