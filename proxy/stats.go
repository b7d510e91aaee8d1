package proxy

import (
	"maps"
	"sync"
	"sync/atomic"
)

type counters struct {
	accepted       atomic.Int64
	refusedFull    atomic.Int64
	cancels        atomic.Int64
	cancelsUnknown atomic.Int64

	// Transaction mode. attaches is striped by session: every transaction
	// counts one, from every core.
	attaches      [counterStripes]stripe
	settingsSyncs atomic.Int64
	parses        atomic.Int64
	parsesShared  atomic.Int64
	lazyParses    atomic.Int64
	evictions     atomic.Int64
	replans       atomic.Int64

	bypass bypassCounters // result cache bypasses by reason

	reasonsMu sync.Mutex
	pins      map[string]int64 // guarded by reasonsMu
	refusals  map[string]int64 // guarded by reasonsMu
}

// Stats is a point-in-time snapshot of a Server. Counters only grow.
type Stats struct {
	ClientsActive  int64 // client connections open now
	Accepted       int64 // client connections accepted
	RefusedFull    int64 // clients refused by max_client_conn
	Cancels        int64 // cancel requests forwarded to a backend
	CancelsUnknown int64 // cancel requests with a key this proxy did not issue

	// Transaction mode.
	Attaches      int64            // backends attached to a client for a transaction
	SettingsSyncs int64            // attaches that first made the backend's settings the client's
	Parses        int64            // client Parse messages sent to a backend
	ParsesShared  int64            // client Parse messages answered because the backend had the statement
	LazyParses    int64            // statements prepared on a backend before a Bind or Describe needed them
	Evictions     int64            // statements closed on a backend to respect max_prepared_statements
	Replans       int64            // batches run again after the server refused a statement's cached plan
	Pins          map[string]int64 // sessions pinned to their backend, by feature
	Refusals      map[string]int64 // statements refused because pinning is off, by feature

	// CacheBypass counts batches the result cache did not look up, by
	// reason (sqlinfo's reasons and the relay's).
	CacheBypass map[string]int64
}

// Stats returns a snapshot of s.
func (s *Server) Stats() Stats {
	st := Stats{
		ClientsActive:  s.clients.Load(),
		Accepted:       s.stats.accepted.Load(),
		RefusedFull:    s.stats.refusedFull.Load(),
		Cancels:        s.stats.cancels.Load(),
		CancelsUnknown: s.stats.cancelsUnknown.Load(),
		Attaches:       s.stats.sumAttaches(),
		SettingsSyncs:  s.stats.settingsSyncs.Load(),
		Parses:         s.stats.parses.Load(),
		ParsesShared:   s.stats.parsesShared.Load(),
		LazyParses:     s.stats.lazyParses.Load(),
		Evictions:      s.stats.evictions.Load(),
		Replans:        s.stats.replans.Load(),
	}
	st.CacheBypass = s.stats.bypass.snapshot()
	s.stats.reasonsMu.Lock()
	st.Pins = maps.Clone(s.stats.pins)
	st.Refusals = maps.Clone(s.stats.refusals)
	s.stats.reasonsMu.Unlock()
	return st
}

func (s *Server) countPin(reason string) {
	s.stats.reasonsMu.Lock()
	if s.stats.pins == nil {
		s.stats.pins = make(map[string]int64)
	}
	s.stats.pins[reason]++
	s.stats.reasonsMu.Unlock()
}

func (s *Server) countRefusal(reason string) {
	s.stats.reasonsMu.Lock()
	if s.stats.refusals == nil {
		s.stats.refusals = make(map[string]int64)
	}
	s.stats.refusals[reason]++
	s.stats.reasonsMu.Unlock()
}

const counterStripes = 16

// stripe is a counter on its own cache line.
type stripe struct {
	n atomic.Int64
	_ [56]byte
}

func (c *counters) sumAttaches() int64 {
	var n int64
	for i := range c.attaches {
		n += c.attaches[i].n.Load()
	}
	return n
}
