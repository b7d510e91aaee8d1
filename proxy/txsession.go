package proxy

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/pgsidecar/pgsidecar/internal/sockio"
	"github.com/pgsidecar/pgsidecar/internal/wire"
	"github.com/pgsidecar/pgsidecar/pool"
	"github.com/pgsidecar/pgsidecar/resultcache"
	"github.com/pgsidecar/pgsidecar/sqlinfo"
)

// Transaction mode: a client holds a backend only while it has a
// transaction (or a statement outside one) in progress.
//
// One goroutine serves the whole session: it reads a batch from the client,
// attaches a backend if none is attached, forwards the batch, reads the
// answers and writes them to the client, and hands the backend back to the
// pool at the ReadyForQuery that leaves the session idle with nothing owed.
// While a client is idle it holds no backend, no buffer, and no goroutine
// but this one, parked in a read.
//
// A client that sets something a backend cannot share (LISTEN, a session
// advisory lock, a temporary table, a WITH HOLD cursor, SQL PREPARE) is
// pinned: at the end of that transaction the session keeps its backend and
// continues as a session-mode relay (pin_on_session_state), or the statement
// is refused with 0A000.

// txRelay is the state of one transaction-mode session; only serve's
// goroutine touches it.
type txRelay struct {
	c   *clientConn
	srv *Server
	be  *pool.Conn // attached backend, or nil

	in         []byte // client bytes; in[start:end] are not processed yet
	start, end int
	inp        *[]byte // in's pool entry; nil when in grew past it
	bbuf       []byte  // backend read buffer, while attached
	bbufp      *[]byte
	takeInFn   func() []byte
	giveInFn   func()
	toBE       []byte // the batch being built for the backend
	toCl       []byte // bytes for the client not yet written

	q        respQueue
	awaiting int  // Sync, Query and FunctionCall entries in q
	flushed  bool // the client sent Flush while answers were owed
	// unflushed: extended-protocol messages were queued after the last
	// Flush or Sync sent to the backend.
	unflushed bool
	unsynced  bool // extended-protocol messages forwarded since the last Sync
	// errSkip: the backend reported an error in an extended batch and is
	// ignoring everything until the client's next Sync.
	errSkip bool
	// clientSkip: pgsidecar answered an error itself and drops the client's
	// messages until its next Sync, as the server would.
	clientSkip bool
	copyIn     bool // the backend is in COPY FROM STDIN
	// copyEnds counts CopyDone and CopyFail messages forwarded before the
	// server said it was ready for data: pgx sends its whole COPY without
	// waiting. The next CopyInResponse then finds the copy already over.
	copyEnds    int
	txStatus    byte
	terminating bool

	// The backend stream: message framing, and what the current message
	// does to the queue.
	fs         frameState
	heldHeader bool // a header straddled reads; it is in fs.hdr
	curType    byte
	drop       bool // the current message is swallowed
	completing bool // the current message ends the head entry's answer
	wantZ      bool
	zStatus    byte
	// The bodies of a few messages are collected: ParameterStatus, errors
	// (held back when pgsidecar may retry the statement), and statement
	// descriptions that record or check a statement's result shape.
	body    []byte
	collect bool
	holdErr bool
	seg     int  // start of this chunk's bytes not yet copied or dropped
	dirty   bool // this chunk's output is being rebuilt in toCl

	// pending: in holds client messages to process before reading more
	// (a batch paused for a shape check, or one being retried).
	pending bool
	// Retry of a batch whose statement's cached plan the server refused
	// after a schema change: replay holds the client's messages from that
	// Bind through its Sync, execSinceSync says whether the batch had
	// already run something before the Bind (then it cannot be retried).
	capturing     bool
	replay        []byte
	execSinceSync bool
	retried       bool

	waiter *pool.Waiter // for backends, made at the first wait

	// runRaw's state: the client socket, whether it may hold bytes not
	// read yet, and what ended the loop.
	ctx            context.Context
	fd             uintptr
	mayHaveData    bool
	wroteSinceRead bool
	stepErr        error
	stepFn         func(uintptr) bool

	// custom lists the customized settings the client ever set: the
	// settings snapshot must ask for them by name.
	custom []string
	// The client's unnamed statement outlives a Sync on PostgreSQL, but a
	// backend changes hands: its Parse is kept and sent again before a
	// Bind or Describe that finds the session on another attach.
	unnamed    []byte
	unnamedEff sqlinfo.Effects
	unnamedGen uint64 // attachGen when unnamed was last parsed on the backend
	attachGen  uint64
	// deadlineSet: the client socket has a read deadline armed by an
	// idle timeout.
	deadlineSet bool
	privateSeq  uint64
	lastQ       []byte // the last short simple query, and its effects
	lastEff     sqlinfo.Effects

	stmts map[string]*stmtDef // the client's named statements
	set   settings

	// The result cache (cache.go): a miss being captured, the key
	// builder, the writes of the segment being sent and of the
	// transaction so far, and whether the transaction block began in a
	// segment that also wrote.
	fill        cacheFill
	keyb        resultcache.KeyBuilder
	segWrites   *writeSet
	txWrites    writeSet
	blockDirty  bool
	unnamedInfo *sqlinfo.Info
	// hold: session mode with the cache on; the session keeps its backend
	// from login to the end, as the session relay would, but its batches
	// go through this relay so the cache sees them.
	hold bool
	// beBroken: a query of pgsidecar's own on the attached backend failed
	// where the relay could not end the session (inside an answer): the
	// backend is closed at the next chance.
	beBroken error
	snapshot bool     // the transaction may have changed the session's settings
	pin      string   // why the session must keep its backend, once idle
	used     []string // server statements the batch in flight relies on
}

var (
	errNotIdle     = errors.New("backend not idle after a pgsidecar statement")
	errTerminated  = errors.New("client terminated")
	errClientGone  = errors.New("client left while its backend was busy")
	errRetryRead   = errors.New("retry the read")
	errQueryTimout = fatal(CodeQueryCanceled, "canceling statement due to query_timeout; closing the connection", nil)
)

// livenessInterval is how often the watchdog looks at sessions waiting
// for their backend: whether the client is still there, and query_timeout.
const livenessInterval = time.Second

// clientBuffers and backendBuffers are taken while a session is busy and
// given back when it goes idle.
var (
	clientBuffers  = sync.Pool{New: func() any { b := make([]byte, forwardBufferSize); return &b }}
	backendBuffers = sync.Pool{New: func() any { b := make([]byte, forwardBufferSize); return &b }}
)

// serveTransactions runs a logged-in session in transaction mode.
func (c *clientConn) serveTransactions(ctx context.Context) {
	r := &txRelay{c: c, srv: c.srv, txStatus: 'I', set: c.initialSettings()}
	r.takeInFn, r.giveInFn = r.takeIn, r.giveIn
	r.stepFn = r.step
	// login left the client's backend attached, already holding the
	// client's settings; in transaction mode it goes back now.
	be := c.backend.Load()
	be.Settings = r.set.key
	if c.mode == PoolModeSession {
		r.hold = true
		r.be = be
		r.attachGen++
		r.bbufp = backendBuffers.Get().(*[]byte)
		r.bbuf = *r.bbufp
	} else {
		c.cancelMu.Lock()
		c.backend.Store(nil)
		c.cancelMu.Unlock()
		r.srv.backends.Recycle(be)
	}

	err := r.run(ctx)
	if errors.Is(err, errPinned) {
		r.handover(ctx)
		return
	}
	r.finish(ctx, err)
}

func (c *clientConn) initialSettings() settings { return newSettings(c.st.params) }

var (
	errPinned = errors.New("session pinned to its backend")
	// errPause stops processing client messages until the backend has
	// answered what was sent so far (a shape check).
	errPause = errors.New("pause for the backend")
)

// run relays until the client leaves, a fault ends the session, or the
// session is pinned (errPinned, with the backend attached and idle).
func (r *txRelay) run(ctx context.Context) error {
	if r.c.cio.Raw() {
		return r.runRaw(ctx)
	}
	for {
		if err := r.iterate(ctx); err != nil {
			return err
		}
	}
}

// runRaw runs the relay inside one raw read operation on the client
// socket, which saves a system call per transaction: Go's poller forgets
// whether a socket became readable each time a read operation starts, so
// every start must try a read (which fails with EAGAIN when the client has
// sent nothing yet). Inside one operation the poller keeps that state, so
// after a read that emptied the socket the relay can wait for the client's
// next batch without trying first.
func (r *txRelay) runRaw(ctx context.Context) error {
	r.ctx = ctx
	for {
		r.mayHaveData = true
		err := r.c.cio.RawLoop(r.stepFn)
		if e := r.stepErr; e != nil {
			r.stepErr = nil
			return e
		}
		if err == nil {
			return nil
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			if r.c.clientGone.Load() {
				return io.EOF
			}
			if err := r.idleTimedOut(); !errors.Is(err, errRetryRead) {
				return err
			}
			continue
		}
		return err
	}
}

// step is runRaw's callback: it relays until it must wait for the client
// (false) or the session ends (true, with stepErr).
func (r *txRelay) step(fd uintptr) bool {
	r.fd = fd
	for {
		err := r.iterate(r.ctx)
		if err == nil {
			continue
		}
		if err == errWait {
			return false
		}
		r.stepErr = err
		return true
	}
}

// errWait: the client has sent nothing more; wait for it.
var errWait = errors.New("wait for the client")

func (r *txRelay) iterate(ctx context.Context) error {
	{
		if r.be != nil && r.expecting() {
			if err := r.readBackend(); err != nil {
				return err
			}
			if err := r.maybeDetach(ctx); err != nil {
				return err
			}
			return nil
		}
		if err := r.flushClient(); err != nil {
			return err
		}
		if r.terminating {
			return errTerminated
		}
		if !r.pending {
			if (r.be == nil || r.holdIdle()) && r.start == r.end && r.srv.draining.Load() {
				return errDrain
			}
			if r.hold {
				r.c.holdIdle.Store(r.holdIdle() && r.start == r.end)
			}
			r.releaseIdle()
			if err := r.readClient(); err != nil {
				if errors.Is(err, errRetryRead) {
					return nil
				}
				return err
			}
		}
		if !r.pending && r.q.len() == 0 && r.cacheOn() && len(r.toBE) == 0 && !r.clientSkip && r.start < r.end {
			hit, err := r.cacheLookup(ctx)
			if err != nil {
				return err
			}
			if hit {
				if err := r.flushClient(); err != nil {
					return err
				}
				// A catalog lookup may have attached a backend.
				return r.maybeDetach(ctx)
			}
		}
		r.pending = false
		quiet := r.be == nil || r.q.len() == 0
		if err := r.processClient(ctx); err != nil {
			if !errors.Is(err, errPause) {
				return err
			}
			r.pending = true
			r.toBE = append(r.toBE, 'H', 0, 0, 0, 4)
			r.flushed = true
			r.unflushed = false
		}
		r.emitSynth()
		if err := r.flushClient(); err != nil {
			return err
		}
		if len(r.toBE) == 0 {
			// Answered locally; a backend attached for a lookup goes back.
			return r.maybeDetach(ctx)
		}
		if r.unsynced && r.unflushed && r.q.len() > 0 {
			// The batch so far has no Sync. The server keeps its answers
			// until a Sync or Flush, or sends them when it must (a COPY
			// FROM STDIN starting, a full buffer), and the client may be
			// waiting for them: with a Flush of pgsidecar's own (it has no
			// answer) the server sends every answer it owes now, so the
			// relay knows what to wait for.
			r.toBE = append(r.toBE, 'H', 0, 0, 0, 4)
			r.flushed = true
			r.unflushed = false
		}
		if quiet && r.expecting() {
			// The backend owes nothing and has sent nothing: write the
			// batch and wait for the first answer in one step.
			r.c.waitingSince.Store(r.srv.epoch.Load())
			n, err := r.be.WriteRead(r.toBE, r.bbuf)
			r.c.waitingSince.Store(0)
			r.toBE = r.toBE[:0]
			if n > 0 {
				if err := r.processBackend(r.bbuf[:n]); err != nil {
					return err
				}
			}
			if err != nil {
				if errors.Is(err, os.ErrDeadlineExceeded) {
					if err := r.checkWaiting(); err != nil {
						return err
					}
					// Not the watchdog: whether the batch went out is
					// unknown, so the backend cannot be trusted.
				}
				return r.backendFailed(err)
			}
			if err := r.maybeDetach(ctx); err != nil {
				return err
			}
			return nil
		}
		_, err := r.be.Writer().Write(r.toBE)
		r.toBE = r.toBE[:0]
		if err != nil {
			return r.backendFailed(err)
		}
	}
	return nil
}

// expecting reports whether the backend owes answers it will send without
// further input from the client.
func (r *txRelay) expecting() bool {
	if r.copyIn {
		return false
	}
	return r.awaiting > 0 || (r.flushed && r.q.len() > 0)
}

// readClient reads at least one more byte from the client into in. With
// nothing pending it takes a buffer only once there is something to read.
func (r *txRelay) readClient() error {
	c := r.c
	r.armIdleTimeout()
	if r.ctx != nil {
		return r.readClientRaw()
	}
	var n int
	var err error
	switch {
	case r.in == nil && c.br != nil && c.br.Buffered() > 0:
		// Bytes the client sent right behind its startup.
		r.takeIn()
		n, err = c.br.Read(r.in)
	case r.in == nil:
		c.releaseStartupReader()
		n, err = c.cio.ReadLazy(r.takeInFn, r.giveInFn)
	default:
		if r.end == len(r.in) {
			r.compact(len(r.in) + 1)
		}
		n, err = c.cio.Read(r.in[r.end:])
	}
	r.end += n
	if err != nil {
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return r.idleTimedOut()
		}
		return err
	}
	return nil
}

// armIdleTimeout sets the client's read deadline for the wait ahead.
func (r *txRelay) armIdleTimeout() {
	if tmo := r.idleTimeout(); tmo > 0 {
		r.c.raw.SetReadDeadline(time.Now().Add(tmo))
		r.deadlineSet = true
	} else if r.deadlineSet {
		// The other timeout's deadline must not fire in this state.
		r.c.raw.SetReadDeadline(time.Time{})
		r.deadlineSet = false
	}
}

// readClientRaw is readClient inside runRaw's read operation: it returns
// errWait when the relay must wait for the client, without trying a read
// when the last one emptied the socket.
func (r *txRelay) readClientRaw() error {
	c := r.c
	if r.in == nil && c.br != nil && c.br.Buffered() > 0 {
		// Bytes the client sent right behind its startup.
		r.takeIn()
		n, err := c.br.Read(r.in)
		r.end = n
		return err
	}
	if r.in == nil {
		c.releaseStartupReader()
	}
	if !r.mayHaveData && r.wroteSinceRead && r.start == r.end {
		// The last read emptied the socket, except perhaps for the end
		// of the stream: a read returns data and an end of file that
		// arrived with it only on the next call, and no new readiness
		// event announces it. The relay has written to the client since,
		// and a client that closed its socket answers a write with a
		// reset, which is such an event; the watchdog peeks once at a
		// client still waiting after a second, for one that only shut
		// down its sending side.
		r.mayHaveData = true
		c.skippedAt.Store(r.srv.epoch.Load())
		return errWait
	}
	if r.in == nil {
		r.takeIn()
	} else if r.end == len(r.in) {
		r.compact(len(r.in) + 1)
	}
	space := len(r.in) - r.end
	n, errno := sockio.ReadFD(r.fd, r.in[r.end:])
	switch {
	case errno == syscall.EAGAIN:
		if r.start == r.end {
			r.giveIn() // wait holding no buffer
		}
		return errWait
	case errno != 0:
		return &net.OpError{Op: "read", Net: "tcp", Source: c.raw.LocalAddr(), Addr: c.raw.RemoteAddr(), Err: os.NewSyscallError("read", errno)}
	case n == 0:
		return io.EOF
	}
	r.end += n
	c.skippedAt.Store(0)
	// A read that filled the buffer may have left bytes behind that no
	// new readiness event will announce.
	r.mayHaveData = n == space
	r.wroteSinceRead = false
	return nil
}

func (r *txRelay) takeIn() []byte {
	r.inp = clientBuffers.Get().(*[]byte)
	r.in = *r.inp
	r.start, r.end = 0, 0
	return r.in
}

func (r *txRelay) giveIn() {
	if r.inp != nil {
		clientBuffers.Put(r.inp)
	}
	r.inp, r.in = nil, nil
	r.start, r.end = 0, 0
}

// releaseIdle gives back the client buffer when it holds nothing.
func (r *txRelay) releaseIdle() {
	if r.in != nil && r.start == r.end {
		r.giveIn()
	}
	if r.be == nil && cap(r.toCl) > 0 && len(r.toCl) == 0 {
		r.toCl = nil
	}
	if cap(r.toBE) > 64<<10 {
		r.toBE = nil
	}
}

// idleTimeout is the read deadline for the client right now: the idle
// transaction timeout while it holds a backend, the client idle timeout
// otherwise.
func (r *txRelay) idleTimeout() time.Duration {
	if r.hold {
		// Session mode has neither timeout.
		return 0
	}
	if r.be != nil {
		return r.srv.cfg.IdleTransactionTimeout
	}
	return r.srv.cfg.ClientIdleTimeout
}

// holdIdle reports whether a session-mode session (hold) is between
// transactions with nothing owed, so a drain may end it.
func (r *txRelay) holdIdle() bool {
	return r.hold && r.txStatus == 'I' && r.q.len() == 0 && !r.unsynced && !r.copyIn && !r.pending
}

func (r *txRelay) idleTimedOut() error {
	if r.srv.draining.Load() {
		if r.be == nil || r.holdIdle() {
			return errDrain
		}
		// Woken for the drain inside a transaction: it may finish.
		r.c.raw.SetReadDeadline(time.Time{})
		return errRetryRead
	}
	if r.be != nil {
		return fatal(CodeIdleInTransactionTimeout, "terminating connection due to idle-in-transaction timeout (idle_transaction_timeout)", nil)
	}
	return fatal(CodeIdleSessionTimeout, "terminating connection due to idle-session timeout (client_idle_timeout)", nil)
}

// attach gives the session a backend holding the client's settings.
func (r *txRelay) attach(ctx context.Context) error {
	if r.be != nil {
		return nil
	}
	s := r.srv
	if r.waiter == nil {
		r.waiter = pool.NewWaiter()
	}
	be, err := s.backends.AcquireWait(ctx, r.waiter, r.c.key, s.cfg.QueryWaitTimeout)
	if err != nil {
		return fatalFrom(err)
	}
	if sql := r.set.syncSQL(be.Settings); sql != "" {
		s.stats.settingsSyncs.Add(1)
		actx, cancel := context.WithTimeout(ctx, s.cfg.QueryWaitTimeout)
		res, err := be.Exec(actx, sql)
		cancel()
		if err != nil {
			if res.TxStatus == 'I' && isServerError(err) {
				be.Settings = "\x00unknown"
				s.backends.Recycle(be)
			} else {
				s.destroyBackend(be)
			}
			return fatalFrom(err)
		}
		be.Settings = r.set.key
	}
	r.be = be
	r.attachGen++
	r.bbufp = backendBuffers.Get().(*[]byte)
	r.bbuf = *r.bbufp
	r.c.cancelMu.Lock()
	r.c.backend.Store(be)
	r.c.cancelMu.Unlock()
	s.stats.attaches[r.c.id%counterStripes].n.Add(1)
	return nil
}

// maybeDetach gives the backend back when the session is idle and the
// backend owes nothing, after recording any settings the transaction left.
func (r *txRelay) maybeDetach(ctx context.Context) error {
	if r.beBroken != nil && r.be != nil && r.q.len() == 0 {
		return r.backendFailed(r.beBroken)
	}
	if r.be == nil || r.pending || r.q.len() > 0 || r.unsynced || r.copyIn || r.txStatus != 'I' || r.errSkip || !r.fs.atBoundary() {
		return nil
	}
	be := r.be
	if r.snapshot {
		r.snapshot = false
		sctx, cancel := context.WithTimeout(ctx, drainTimeout)
		set, temp, err := snapshotSettings(sctx, be, r.custom)
		cancel()
		// The snapshot query destroyed the backend's unnamed statement.
		r.unnamedGen = 0
		if err != nil {
			return r.backendFailed(err)
		}
		r.set = set
		be.Settings = set.key
		if temp && r.pin == "" {
			r.pin = sqlinfo.PinTempTable
		}
	}
	if r.pin != "" {
		return errPinned
	}
	if r.hold {
		return nil
	}
	r.detach()
	r.srv.backends.Recycle(be)
	return nil
}

// detach forgets the attached backend; the caller returns or closes it.
func (r *txRelay) detach() {
	r.c.cancelMu.Lock()
	r.c.backend.Store(nil)
	r.c.cancelMu.Unlock()
	if r.c.verdict.Swap(0) != 0 {
		// The watchdog interrupted a wait that ended on its own just
		// then: the backend must not carry its deadline to the next client.
		r.be.NetConn().SetReadDeadline(time.Time{})
	}
	r.be = nil
	backendBuffers.Put(r.bbufp)
	r.bbufp, r.bbuf = nil, nil
	r.used = r.used[:0]
}

// finish ends the session: it tells the client why when that helps, and
// gives back or closes a backend still attached.
func (r *txRelay) finish(ctx context.Context, cause error) {
	c := r.c
	var frameErr *wire.FrameError
	var pe *Error
	var bf errBackendFailed
	switch {
	case errors.Is(cause, errTerminated):
		c.log.Debug("client terminated")
	case errors.As(cause, &frameErr):
		c.log.Info("closing client after a malformed message", "err", cause)
		c.sendError(cause)
	case errors.Is(cause, errDrain):
		c.sendError(fatal(CodeAdminShutdown, "terminating connection: the sidecar is shutting down", nil))
	case errors.As(cause, &bf):
		if errors.As(bf.error, &pe) {
			c.sendError(pe)
		} else if r.curType != 'E' {
			c.log.Info("backend connection lost", "err", bf.error)
			c.sendError(fatal(CodeConnectionFailure, "server closed the connection unexpectedly", bf.error))
		}
	case errors.As(cause, &pe):
		c.log.Info("closing client", "err", cause)
		c.sendError(pe)
	case errors.Is(cause, io.EOF):
		c.log.Debug("client connection closed")
	default:
		c.log.Debug("client connection closed", "err", cause)
	}
	if r.fill.active {
		r.abandonFill()
	}
	if r.cacheOn() {
		r.flushPending()
	}
	if r.be != nil {
		be := r.be
		clean := !errors.As(cause, &bf) && r.q.len() == 0 && !r.unsynced && !r.copyIn && !r.errSkip && r.fs.atBoundary()
		if clean && r.txStatus != 'I' {
			rctx, cancel := context.WithTimeout(ctx, drainTimeout)
			res, err := be.Exec(rctx, "ROLLBACK")
			cancel()
			clean = err == nil && res.TxStatus == 'I'
		}
		if clean && r.snapshot {
			// The client's settings changed and were not read back: reset
			// them on the next attach.
			be.Settings = "\x00unknown"
		}
		if !clean && r.q.len() > 0 && (!errors.As(cause, &bf) || errors.Is(cause, errQueryTimout)) {
			// The client is gone with a query running: stop it, since
			// closing the connection alone does not (pg_sleep runs on).
			cctx, cancel := context.WithTimeout(ctx, time.Second)
			be.Cancel(cctx)
			cancel()
		}
		r.detach()
		switch {
		case !clean:
			r.srv.destroyBackend(be)
		case r.hold:
			// Session mode: the backend holds whatever the session left
			// on it, seen or not; the reset query clears it.
			r.srv.releaseBackend(ctx, be)
		default:
			r.srv.backends.Recycle(be)
		}
	}
	r.giveIn()
	r.toCl, r.toBE = nil, nil
}

// handover turns a pinned session into a session-mode relay on its
// backend: the client's statements are prepared there under the client's
// own names, then the bytes already read are passed on.
func (r *txRelay) handover(ctx context.Context) {
	c, be := r.c, r.be
	if r.fill.active {
		r.abandonFill()
	}
	r.srv.countPin(r.pin)
	c.log.Debug("session pinned to its backend", "reason", r.pin, "backend_pid", be.PID())
	if len(r.stmts) > 0 {
		var out []byte
		for name, def := range r.stmts {
			rest := def.parse[5+len(def.server)+1:]
			out = appendRenamed(out, 'P', nil, name, rest)
		}
		out = append(out, 'S', 0, 0, 0, 4)
		hctx, cancel := context.WithTimeout(ctx, drainTimeout)
		err := be.Exchange(hctx, out)
		cancel()
		if err != nil {
			r.finish(ctx, errBackendFailed{err})
			return
		}
	}
	pending := append([]byte(nil), r.in[r.start:r.end]...)
	r.giveIn()
	backendBuffers.Put(r.bbufp)
	r.bbufp, r.bbuf = nil, nil
	r.toCl, r.toBE = nil, nil

	c.bs = backendScan{txStatus: 'I', be: be}
	c.cs = clientScan{}
	c.txStatus.Store('I')
	c.rfqs.Store(0)
	c.syncs.Store(0)
	c.clientClean.Store(true)
	c.pumpDone = make(chan pumpResult, 1)
	go c.pumpBackend(be)
	err := c.forwardClient(ctx, be, pending)
	c.finish(ctx, be, err)
}
