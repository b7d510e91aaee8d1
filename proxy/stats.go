package proxy

import "sync/atomic"

type counters struct {
	accepted       atomic.Int64
	refusedFull    atomic.Int64
	cancels        atomic.Int64
	cancelsUnknown atomic.Int64
}

// Stats is a point-in-time snapshot of a Server. Counters only grow.
type Stats struct {
	ClientsActive  int64 // client connections open now
	Accepted       int64 // client connections accepted
	RefusedFull    int64 // clients refused by max_client_conn
	Cancels        int64 // cancel requests forwarded to a backend
	CancelsUnknown int64 // cancel requests with a key this proxy did not issue
}

// Stats returns a snapshot of s.
func (s *Server) Stats() Stats {
	return Stats{
		ClientsActive:  s.clients.Load(),
		Accepted:       s.stats.accepted.Load(),
		RefusedFull:    s.stats.refusedFull.Load(),
		Cancels:        s.stats.cancels.Load(),
		CancelsUnknown: s.stats.cancelsUnknown.Load(),
	}
}
