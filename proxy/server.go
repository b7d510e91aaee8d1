// Package proxy is the client side of pgsidecar: it listens, negotiates TLS,
// reads startup packets, authenticates clients, hands each client a backend
// from the pool and relays the protocol between them, answers cancel
// requests, and drains on shutdown. Every failure a client sees goes through
// errorResponse, which gives it a SQLSTATE.
//
// A Server is safe for concurrent use. Each client is served by one
// goroutine, plus one that relays its backend's answers; both end when the
// client or the server does.
//
// The proxy must not know how backends are dialled, authenticated or reset:
// that is the pool's. It decides only whether a backend it gives back is in a
// known-clean state.
package proxy

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pgsidecar/pgsidecar/internal/clientauth"
	"github.com/pgsidecar/pgsidecar/internal/sockio"
	"github.com/pgsidecar/pgsidecar/pool"
	"github.com/pgsidecar/pgsidecar/sqlinfo"
)

// Backends is what the proxy needs from the pool. *pool.Manager implements
// it.
type Backends interface {
	// Acquire returns a backend for key, waiting until ctx is done.
	Acquire(ctx context.Context, key pool.Key) (*pool.Conn, error)
	// Release returns an idle, clean backend to its pool.
	Release(ctx context.Context, c *pool.Conn)
	// AcquireWait is Acquire for a client that acquires once per
	// transaction: it waits at most timeout with w, which the client
	// reuses.
	AcquireWait(ctx context.Context, w *pool.Waiter, key pool.Key, timeout time.Duration) (*pool.Conn, error)
	// Recycle returns an idle backend between transactions, keeping its
	// prepared statements and settings (transaction mode).
	Recycle(c *pool.Conn)
	// Destroy closes a backend whose state is unknown.
	Destroy(c *pool.Conn)
}

// Server accepts PostgreSQL clients and proxies them to backends.
type Server struct {
	cfg      Config
	backends Backends
	auth     *clientauth.Authenticator
	log      *slog.Logger
	// classifier tells what a client's SQL does to its session
	// (transaction mode).
	classifier *sqlinfo.Classifier
	// catalog remembers what the result cache learnt from PostgreSQL's
	// catalog.
	catalog *catalog

	rootCtx    context.Context
	rootCancel context.CancelFunc

	mu       sync.Mutex
	lns      []net.Listener           // guarded by mu
	sessions map[*clientConn]struct{} // guarded by mu
	cancels  map[uint64]*clientConn   // guarded by mu
	nextID   uint64                   // guarded by mu
	shutdown bool                     // guarded by mu

	draining atomic.Bool
	serving  atomic.Bool
	// epoch counts watchdog ticks, from 1.
	epoch     atomic.Int64
	watchOnce sync.Once
	clients   atomic.Int64
	wg        sync.WaitGroup

	// Session goroutines kept for the next client (see start).
	idleWorkers chan *clientConn
	nIdle       atomic.Int32

	stats counters
}

// ErrServerClosed is returned by Serve after Shutdown.
var ErrServerClosed = errors.New("proxy: server closed")

// New validates cfg and returns a Server that is not yet listening.
func New(cfg Config, backends Backends) (*Server, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if backends == nil {
		return nil, errors.New("proxy: backends is required")
	}
	users := cfg.Users
	if users == nil {
		users = clientauth.MapStore{}
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Server{
		cfg:        cfg,
		backends:   backends,
		auth:       clientauth.NewAuthenticator(users),
		log:        cfg.Logger,
		classifier: sqlinfo.NewClassifier(0),
		catalog:    newCatalog(cfg.CacheRules.AllowFunctions),
		rootCtx:    ctx,
		rootCancel: cancel,
		sessions:   make(map[*clientConn]struct{}),
		cancels:    make(map[uint64]*clientConn),

		idleWorkers: make(chan *clientConn),
	}, nil
}

// Listen opens the configured TCP listener. Call Serve next.
func (s *Server) Listen() (net.Listener, error) {
	return net.Listen("tcp", s.cfg.ListenAddr)
}

// Serve accepts clients on ln until Shutdown is called or ctx is done (which
// cuts every session at once). It returns ErrServerClosed after Shutdown.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	s.mu.Lock()
	if s.shutdown {
		s.mu.Unlock()
		ln.Close()
		return ErrServerClosed
	}
	s.lns = append(s.lns, ln)
	s.mu.Unlock()
	s.serving.Store(true)
	// The watchdog ends with the root context, which Shutdown cancels
	// once the sessions are done.
	s.watchOnce.Do(func() {
		s.epoch.Store(1)
		go s.watch()
	})

	stop := context.AfterFunc(ctx, func() { s.closeAll() })
	defer stop()
	var backoff time.Duration
	for {
		nc, err := ln.Accept()
		if err != nil {
			s.mu.Lock()
			closed := s.shutdown
			s.mu.Unlock()
			if closed || errors.Is(err, net.ErrClosed) {
				return ErrServerClosed
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || isTemporaryAccept(err) {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				s.log.Warn("accept failed; retrying", "err", err, "backoff", backoff)
				time.Sleep(backoff)
				continue
			}
			return err
		}
		backoff = 0
		s.start(nc)
	}
}

func isTemporaryAccept(err error) bool {
	// EMFILE and friends: the process is out of descriptors for a moment.
	var se interface{ Temporary() bool }
	return errors.As(err, &se) && se.Temporary()
}

// start serves nc in a session goroutine. (Go's listener has already
// turned on TCP_NODELAY and keepalive.)
func (s *Server) start(nc net.Conn) {
	s.mu.Lock()
	if s.shutdown {
		s.mu.Unlock()
		nc.Close()
		return
	}
	s.nextID++
	c := &clientConn{
		srv:     s,
		id:      s.nextID,
		scratch: make([]byte, 0, 512),
	}
	c.setConn(nc)
	s.sessions[c] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	s.clients.Add(1)
	s.stats.accepted.Add(1)
	c.log = s.log.With("conn", c.id, "client", nc.RemoteAddr().String())
	select {
	case s.idleWorkers <- c:
	default:
		go s.work(c)
	}
}

// Session goroutines outlive their session, up to maxIdleWorkers of them
// for workerIdle each, and serve the next client accepted. A new goroutine
// starts with a small stack and grows it (a copy each time) on the way to
// a session's deepest calls, and with a new connection per transaction
// (pgbench -C) that was about 5% of the proxy's CPU: a reused goroutine
// has grown its stack already.
const (
	maxIdleWorkers = 64
	workerIdle     = 10 * time.Second
)

// work serves c, then the clients start hands it, until it has waited
// workerIdle for one, the server stops, or enough others wait.
func (s *Server) work(c *clientConn) {
	var t *time.Timer
	for {
		s.session(c)
		if s.nIdle.Add(1) > maxIdleWorkers {
			s.nIdle.Add(-1)
			return
		}
		if t == nil {
			t = time.NewTimer(workerIdle)
		} else {
			t.Reset(workerIdle)
		}
		select {
		case c = <-s.idleWorkers:
			s.nIdle.Add(-1)
			t.Stop()
		case <-t.C:
			s.nIdle.Add(-1)
			return
		case <-s.rootCtx.Done():
			s.nIdle.Add(-1)
			t.Stop()
			return
		}
	}
}

// session serves c and forgets it.
func (s *Server) session(c *clientConn) {
	defer s.wg.Done()
	defer func() {
		s.clients.Add(-1)
		s.mu.Lock()
		delete(s.sessions, c)
		s.mu.Unlock()
	}()
	c.serve(s.rootCtx)
}

// admit reports whether the client may stay under max_client_conn.
func (s *Server) admit() bool {
	if s.clients.Load() > int64(s.cfg.MaxClientConn) {
		s.stats.refusedFull.Add(1)
		return false
	}
	return true
}

func (s *Server) registerCancel(key uint64, c *clientConn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, taken := s.cancels[key]; taken {
		return false
	}
	s.cancels[key] = c
	return true
}

func (s *Server) unregisterCancel(key uint64) {
	s.mu.Lock()
	delete(s.cancels, key)
	s.mu.Unlock()
}

// handleCancel forwards a CancelRequest for a key this proxy issued to the
// backend serving that client. Unknown keys are ignored, as PostgreSQL does.
func (s *Server) handleCancel(body []byte) {
	if len(body) < 8 {
		return
	}
	key := beKey(uint32(body[0])<<24|uint32(body[1])<<16|uint32(body[2])<<8|uint32(body[3]), body[4:])
	s.mu.Lock()
	c := s.cancels[key]
	s.mu.Unlock()
	if c == nil {
		s.stats.cancelsUnknown.Add(1)
		return
	}
	c.cancelMu.Lock()
	defer c.cancelMu.Unlock()
	be := c.backend.Load()
	if be == nil {
		return
	}
	s.stats.cancels.Add(1)
	ctx, cancel := context.WithTimeout(s.rootCtx, 5*time.Second)
	defer cancel()
	if err := be.Cancel(ctx); err != nil {
		c.log.Warn("could not forward a cancel request", "backend_pid", be.PID(), "err", err)
	}
}

func (s *Server) releaseBackend(ctx context.Context, be *pool.Conn) {
	s.backends.Release(context.WithoutCancel(ctx), be)
}

func (s *Server) destroyBackend(be *pool.Conn) {
	s.backends.Destroy(be)
}

// Ready reports whether the server is listening and not draining.
func (s *Server) Ready() bool { return s.serving.Load() && !s.draining.Load() }

// Shutdown drains the server: readiness goes false at once; new clients are
// refused with 57P01 for ShutdownGrace, then the listeners close; sessions
// end as soon as they are between transactions; whatever is left when ctx is
// done (or after ShutdownTimeout, when ctx has no deadline) is cut. It
// returns how many client connections were cut. It is safe to call more
// than once.
func (s *Server) Shutdown(ctx context.Context) (cut int, err error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, s.cfg.ShutdownTimeout)
		defer cancel()
	}
	s.draining.Store(true)
	if s.cfg.ShutdownGrace > 0 {
		t := time.NewTimer(s.cfg.ShutdownGrace)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
		}
	}
	s.mu.Lock()
	s.shutdown = true
	for _, ln := range s.lns {
		ln.Close()
	}
	s.lns = nil
	for c := range s.sessions {
		// Wake idle sessions blocked reading their client so they end now;
		// busy ones are woken by their pump when their transaction ends,
		// and ones still logging in are refused. (Only idle sessions are
		// interrupted: a read deadline that fires on a TLS connection
		// breaks it for good.)
		// In transaction mode a session holding no backend is idle.
		if c.backend.Load() == nil || (!c.txMode.Load() && c.idle()) || c.holdIdle.Load() {
			c.raw.SetReadDeadline(time.Now())
		}
	}
	s.mu.Unlock()

	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
		s.rootCancel()
		return 0, nil
	case <-ctx.Done():
	}
	cut = s.closeAll()
	<-done
	return cut, ctx.Err()
}

// closeAll cuts every session and returns how many there were.
func (s *Server) closeAll() int {
	s.mu.Lock()
	s.shutdown = true
	s.draining.Store(true)
	for _, ln := range s.lns {
		ln.Close()
	}
	s.lns = nil
	n := len(s.sessions)
	for c := range s.sessions {
		c.raw.Close()
		// Under cancelMu, so the deadline cannot land on a backend the
		// session has just handed back to another.
		c.cancelMu.Lock()
		if be := c.backend.Load(); be != nil {
			be.NetConn().SetDeadline(time.Now())
		}
		c.cancelMu.Unlock()
	}
	s.mu.Unlock()
	s.rootCancel()
	return n
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

type waitVerdict int32

const (
	verdictNone waitVerdict = iota
	verdictClientGone
	verdictQueryTimeout
)

// watch is the transaction-mode watchdog. A session waiting for its
// backend's answer is parked in a read of the backend and cannot see its
// client leave, nor time passing; once per livenessInterval the watchdog
// looks at the sessions that have been waiting at least that long, and
// interrupts the wait (with a read deadline in the past) of one whose
// client closed its connection or whose wait passed query_timeout. Sessions
// pay two atomic stores per wait for this, instead of timer operations.
func (s *Server) watch() {
	t := time.NewTicker(livenessInterval)
	defer t.Stop()
	var waiting, skipped []*clientConn
	for {
		select {
		case <-s.rootCtx.Done():
			return
		case <-t.C:
		}
		now := s.epoch.Add(1)
		waiting = waiting[:0]
		s.mu.Lock()
		for c := range s.sessions {
			if w := c.waitingSince.Load(); w != 0 && w < now-1 {
				waiting = append(waiting, c)
			}
			if k := c.skippedAt.Load(); k != 0 && k < now-1 && c.skippedAt.CompareAndSwap(k, 0) {
				skipped = append(skipped, c)
			}
		}
		s.mu.Unlock()
		for _, c := range skipped {
			// Once per such wait: an end of file that arrived before it
			// would announce itself no more.
			if sockio.PeerClosed(c.raw) {
				c.clientGone.Store(true)
				c.raw.SetReadDeadline(time.Unix(1, 0))
			}
		}
		skipped = skipped[:0]
		for _, c := range waiting {
			w := c.waitingSince.Load()
			if w == 0 {
				continue
			}
			v := verdictNone
			if qt := s.cfg.QueryTimeout; qt > 0 && time.Duration(now-w-1)*livenessInterval >= qt {
				v = verdictQueryTimeout
			} else if sockio.PeerClosed(c.raw) {
				v = verdictClientGone
			}
			if v == verdictNone {
				continue
			}
			c.verdict.Store(int32(v))
			c.cancelMu.Lock()
			if be := c.backend.Load(); be != nil {
				be.NetConn().SetReadDeadline(time.Unix(1, 0))
			}
			c.cancelMu.Unlock()
		}
	}
}
