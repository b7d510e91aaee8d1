package pool

import (
	"sort"
	"sync/atomic"
	"time"
)

// counters are the Manager's monotonic event counts.
type counters struct {
	connects        atomic.Int64
	connectErrors   atomic.Int64
	acquireTimeouts atomic.Int64
	checkFailures   atomic.Int64
	resetFailures   atomic.Int64
	destroyed       atomic.Int64
	reaped          atomic.Int64
	reserveUsed     atomic.Int64
}

// Stats is a point-in-time snapshot of a Manager, for metrics and the admin
// console. Counters only grow.
type Stats struct {
	Connects        int64 // backend connections opened
	ConnectErrors   int64 // failed attempts to open one
	AcquireTimeouts int64 // clients that waited past query_wait_timeout
	CheckFailures   int64 // idle backends that failed their liveness check
	ResetFailures   int64 // backends closed because the reset query failed
	Destroyed       int64 // backends closed because their state was unknown
	Reaped          int64 // backends closed for idleness or age
	ReserveUsed     int64 // loans from the reserve pool
	Pools           []PoolStats
}

// PoolStats describes one (database, user) pool.
type PoolStats struct {
	Key
	Total        int32 // open connections, including ones being opened
	Idle         int32
	InUse        int32
	Constructing int32
	Max          int32
	Acquires     int64
	// Waits counts acquires that found no idle connection; WaitTime is the
	// total time they took.
	Waits    int64
	WaitTime time.Duration
	Canceled int64 // acquires abandoned by their caller
}

// Stats returns a snapshot of m.
func (m *Manager) Stats() Stats {
	s := Stats{
		Connects:        m.stats.connects.Load(),
		ConnectErrors:   m.stats.connectErrors.Load(),
		AcquireTimeouts: m.stats.acquireTimeouts.Load(),
		CheckFailures:   m.stats.checkFailures.Load(),
		ResetFailures:   m.stats.resetFailures.Load(),
		Destroyed:       m.stats.destroyed.Load(),
		Reaped:          m.stats.reaped.Load(),
		ReserveUsed:     m.stats.reserveUsed.Load(),
	}
	m.mu.Lock()
	for _, kp := range m.pools {
		st := kp.p.Stat()
		s.Pools = append(s.Pools, PoolStats{
			Key:          kp.key,
			Total:        st.TotalResources(),
			Idle:         st.IdleResources(),
			InUse:        st.AcquiredResources(),
			Constructing: st.ConstructingResources(),
			Max:          st.MaxResources(),
			Acquires:     st.AcquireCount(),
			Waits:        st.EmptyAcquireCount(),
			WaitTime:     st.EmptyAcquireWaitTime(),
			Canceled:     st.CanceledAcquireCount(),
		})
	}
	m.mu.Unlock()
	sort.Slice(s.Pools, func(i, j int) bool {
		if s.Pools[i].Database != s.Pools[j].Database {
			return s.Pools[i].Database < s.Pools[j].Database
		}
		return s.Pools[i].User < s.Pools[j].User
	})
	return s
}
