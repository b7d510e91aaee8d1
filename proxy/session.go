package proxy

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgsidecar/pgsidecar/internal/clientauth"
	"github.com/pgsidecar/pgsidecar/internal/sockio"
	"github.com/pgsidecar/pgsidecar/internal/wire"
	"github.com/pgsidecar/pgsidecar/pool"
)

const (
	// clientBufferSize is the buffered reader used during startup.
	clientBufferSize = 8 << 10
	// forwardBufferSize is one read, forwarded as one write.
	forwardBufferSize = 32 << 10
	// drainTimeout bounds how long a backend whose client went away may
	// take to finish a cancelled query before it is closed instead.
	drainTimeout = 5 * time.Second
)

var forwardBuffers = sync.Pool{New: func() any { b := make([]byte, forwardBufferSize); return &b }}

// clientConn is one client session. Its goroutine (serve) reads the client
// and writes to the backend; pumpBackend, started per backend, reads the
// backend and writes to the client. Every write to the client after startup
// happens on the pump goroutine, or on serve after the pump has stopped.
type clientConn struct {
	srv     *Server
	id      uint64
	raw     net.Conn      // the accepted socket: deadlines and Close, from any goroutine
	nc      net.Conn      // raw, or the TLS connection over it; serve's only
	cio     *sockio.Conn  // reads and writes over nc
	br      *bufio.Reader // over cio
	tls     bool
	log     *slog.Logger
	scratch []byte

	st     *startup
	key    pool.Key
	mode   PoolMode
	txMode atomic.Bool // the session runs on the transaction relay, for Shutdown
	// holdIdle: a session-mode session on the transaction relay (the
	// cache is on) is waiting for its client between transactions.
	holdIdle atomic.Bool

	// waitingSince is the server's watchdog epoch when the session began
	// waiting for its backend in transaction mode, 0 when it is not
	// waiting; verdict is what the watchdog found when it interrupted the
	// wait.
	waitingSince atomic.Int64
	verdict      atomic.Int32
	// skippedAt is the watchdog epoch when the session began waiting for
	// its client without a read attempt (see readClientRaw), 0 otherwise;
	// clientGone is set by the watchdog when it found the client gone.
	skippedAt  atomic.Int64
	clientGone atomic.Bool
	cancelKey  uint64

	// backend is the backend serving the client, read by cancel requests
	// from other goroutines.
	backend atomic.Pointer[pool.Conn]

	cs clientScan
	// bs is owned by the pump while it runs; serve reads it after the pump
	// has stopped. rfqs and txStatus mirror it for other goroutines.
	bs       backendScan
	rfqs     atomic.Int64
	txStatus atomic.Uint32
	syncs    atomic.Int64
	// clientClean: the client's stream ends between messages with no
	// unsynced extended-protocol message.
	clientClean atomic.Bool

	// cancelMu is held by a cancel request from reading backend until the
	// request has reached the server, and by finish to clear backend.
	cancelMu sync.Mutex
	// copyIn is set by the pump when the server starts a COPY FROM STDIN;
	// serve clears it at the client's CopyDone or CopyFail.
	copyIn atomic.Bool

	// stopping asks the pump to return as soon as the backend is idle.
	stopping atomic.Bool
	pumpDone chan pumpResult
}

type pumpResult struct {
	err error
	// clean: the pump stopped between messages in both directions.
	clean bool
	// clientGone: a write to the client failed.
	clientGone bool
}

// serve runs the whole session. It never returns an error: every failure
// ends here, reported to the client when possible.
func (c *clientConn) serve(ctx context.Context) {
	defer c.raw.Close()
	defer c.releaseStartupReader()
	c.raw.SetDeadline(time.Now().Add(c.srv.cfg.ClientLoginTimeout))
	st, err := c.readStartup()
	if err != nil {
		c.startupFailed(err)
		return
	}
	c.st = st
	c.key = pool.Key{Database: st.database, User: st.user}
	c.mode = c.srv.cfg.PoolMode
	if m, ok := c.srv.cfg.DatabasePoolModes[st.database]; ok {
		c.mode = m
	}
	// Both transaction mode and session mode with the cache on run on the
	// transaction relay, whose idle state is not idle()'s.
	c.txMode.Store(c.mode == PoolModeTransaction || c.srv.cfg.Cache != nil)
	c.log = c.log.With("database", st.database, "user", st.user)
	if err := c.login(ctx); err != nil {
		c.startupFailed(err)
		return
	}
	defer c.srv.unregisterCancel(c.cancelKey)

	c.log.Debug("client ready", "backend_pid", c.backend.Load().PID())
	if c.mode == PoolModeTransaction || c.srv.cfg.Cache != nil {
		// With the cache on, session mode runs on the transaction relay
		// too, keeping its backend: the cache needs to see every batch.
		c.serveTransactions(ctx)
		return
	}
	be := c.backend.Load()
	c.pumpDone = make(chan pumpResult, 1)
	go c.pumpBackend(be)
	err = c.forwardClient(ctx, be, nil)
	c.finish(ctx, be, err)
}

func (c *clientConn) startupFailed(err error) {
	switch {
	case errors.Is(err, errCancelRequest):
		return
	case errors.As(err, new(tlsHandshakeError)):
		// Plaintext bytes in the middle of a handshake help nobody.
		c.log.Info("client TLS handshake failed", "err", err)
		return
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, net.ErrClosed):
		c.log.Debug("client left during startup", "err", err)
		return
	case errors.Is(err, os.ErrDeadlineExceeded) && c.srv.draining.Load():
		c.sendError(fatal(CodeAdminShutdown, "the sidecar is shutting down", nil))
		return
	case errors.Is(err, os.ErrDeadlineExceeded):
		c.log.Info("client did not finish startup within client_login_timeout")
		c.sendError(fatal(CodeProtocolViolation, "client did not finish startup within client_login_timeout", err))
		return
	}
	c.log.Info("client refused at startup", "err", err)
	c.sendError(err)
}

// sendError writes err as an ErrorResponse, best effort.
func (c *clientConn) sendError(err error) {
	buf, encErr := errorResponse(err).Encode(nil)
	if encErr != nil {
		return
	}
	c.raw.SetWriteDeadline(time.Now().Add(time.Second))
	c.cio.Write(buf)
}

// login authenticates the client, gets its backend ready and sends the
// startup answer.
func (c *clientConn) login(ctx context.Context) error {
	s := c.srv
	if !s.admit() {
		return fatal(CodeTooManyConnections, "sorry, too many clients already", nil)
	}
	if s.draining.Load() {
		return fatal(CodeAdminShutdown, "the sidecar is shutting down", nil)
	}
	var out []byte
	if npv := negotiateVersion(c.st); npv != nil {
		out, _ = npv.Encode(out)
		if _, err := c.cio.Write(out); err != nil {
			return err
		}
	}
	if _, err := s.auth.Authenticate(authConn{c}, s.cfg.AuthMethod, c.st.user); err != nil {
		return err
	}
	// Logged in: from here the wait is query_wait_timeout's.
	c.raw.SetDeadline(time.Time{})

	actx, cancel := context.WithTimeout(ctx, s.cfg.QueryWaitTimeout)
	be, err := s.backends.Acquire(actx, c.key)
	cancel()
	if err != nil {
		return fatalFrom(err)
	}
	sql := setConfigSQL(c.st.params, be.Params())
	if c.mode == PoolModeTransaction || s.cfg.Cache != nil {
		// The backend may hold another client's settings.
		sql = c.initialSettings().syncSQL(be.Settings)
	}
	if sql != "" {
		actx, cancel := context.WithTimeout(ctx, s.cfg.QueryWaitTimeout)
		res, err := be.Exec(actx, sql)
		cancel()
		if err != nil {
			if res.TxStatus == 'I' && isServerError(err) {
				s.releaseBackend(ctx, be)
			} else {
				s.destroyBackend(be)
			}
			return fatalFrom(err)
		}
	}
	c.backend.Store(be)

	var pid uint32
	var secret [4]byte
	for {
		rand.Read(secret[:])
		var p [4]byte
		rand.Read(p[:])
		pid = binary.BigEndian.Uint32(p[:]) & 0x7fffffff
		if c.cancelKey = beKey(pid, secret[:]); c.cancelKey != 0 && s.registerCancel(c.cancelKey, c) {
			break
		}
	}
	out = out[:0]
	out, _ = (&pgproto3.AuthenticationOk{}).Encode(out)
	for _, name := range sortedKeys(be.Params()) {
		out, _ = (&pgproto3.ParameterStatus{Name: name, Value: be.Params()[name]}).Encode(out)
	}
	out, _ = (&pgproto3.BackendKeyData{ProcessID: pid, SecretKey: secret[:]}).Encode(out)
	out, _ = (&pgproto3.ReadyForQuery{TxStatus: 'I'}).Encode(out)
	c.bs.txStatus = 'I'
	c.bs.be = be
	c.txStatus.Store('I')
	c.clientClean.Store(true)
	if _, err := c.cio.Write(out); err != nil {
		s.unregisterCancel(c.cancelKey)
		c.backend.Store(nil)
		s.releaseBackend(ctx, be)
		return err
	}
	return nil
}

// authConn adapts a client connection to clientauth.Conn.
type authConn struct{ c *clientConn }

func (a authConn) Send(msg pgproto3.BackendMessage) error {
	buf, err := msg.Encode(a.c.scratch[:0])
	if err != nil {
		return err
	}
	_, err = a.c.cio.Write(buf)
	return err
}

func (a authConn) Receive() (byte, []byte, error) {
	typ, body, err := wire.ReadMessage(a.c.br, a.c.scratch[:0], wire.MaxStartupPacket)
	if err == nil && cap(body) > cap(a.c.scratch) {
		a.c.scratch = body[:0]
	}
	return typ, body, err
}

var _ clientauth.Conn = authConn{}

// forwardClient copies the client's messages to the backend until the
// client terminates, fails, or the session is told to stop. Each read is
// forwarded as one write; only headers are inspected. pending holds bytes
// already read from the client, which go first.
func (c *clientConn) forwardClient(ctx context.Context, be *pool.Conn, pending []byte) error {
	bufp := forwardBuffers.Get().(*[]byte)
	defer forwardBuffers.Put(bufp)
	buf := *bufp
	c.cs.max = c.srv.cfg.MaxMessageBytes
	carry := 0
	w := be.Writer()
	var result error
	// handle forwards what one read added to the carried bytes.
	handle := func(n int, rerr error) bool {
		n += carry
		fwd, term, serr := c.cs.scan(buf[:n], c.copyIn.Load())
		if c.cs.copyEnded {
			c.cs.copyEnded = false
			c.copyIn.Store(false)
		}
		c.clientClean.Store(fwd == n && c.cs.atBoundary() && !c.cs.unsynced)
		if fwd > 0 {
			c.syncs.Store(c.cs.syncs)
			if _, err := w.Write(buf[:fwd]); err != nil {
				result = errBackendWrite{err}
				return true
			}
		}
		switch {
		case term:
			return true
		case serr != nil:
			result = serr
			return true
		}
		carry = copy(buf, buf[fwd:n])
		if rerr != nil {
			if c.srv.draining.Load() && errors.Is(rerr, os.ErrDeadlineExceeded) && !c.clientGone.Load() {
				if c.idle() {
					result = errDrain
					return true
				}
				c.raw.SetReadDeadline(time.Time{})
				return false
			}
			result = rerr
			return true
		}
		return false
	}
	// Bytes already read: the rest of a pinned session's last batch, and
	// what the client sent right behind its startup.
	for len(pending) > 0 {
		n := copy(buf[carry:], pending)
		pending = pending[n:]
		if handle(n, nil) {
			return result
		}
	}
	for c.br != nil && c.br.Buffered() > 0 {
		n, err := c.br.Read(buf[carry:])
		if handle(n, err) {
			return result
		}
	}
	c.releaseStartupReader()
	loop := chunkLoop{
		s:      c.cio,
		buf:    func() []byte { return buf[carry:] },
		handle: handle,
		beforeWait: func() bool {
			if c.srv.draining.Load() && carry == 0 && c.idle() {
				// Shutdown may have tried to wake us before we were reading.
				result = errDrain
				return true
			}
			return false
		},
		// A client that closes after a whole message is answered, and
		// answers the answer with a reset, which wakes the wait; the
		// watchdog peeks once at one that only shut its sending side. An
		// unfinished message is read on, to see its end.
		maySkip:   func() bool { return carry == 0 && c.cs.atBoundary() },
		skippedAt: &c.skippedAt,
		epoch:     &c.srv.epoch,
	}
	loop.run()
	return result
}

var errDrain = errors.New("session closed for shutdown")

type errBackendWrite struct{ error }

// idle reports whether the session is between transactions with nothing in
// flight, as far as the backend's answers show.
// It is safe to call from any goroutine.
func (c *clientConn) idle() bool {
	return c.clientClean.Load() && c.syncs.Load() == c.rfqs.Load() && byte(c.txStatus.Load()) == 'I'
}

// pumpBackend copies the backend's messages to the client until told to
// stop, tracking ReadyForQuery so the session knows when the backend is
// idle. After a failed client write it keeps reading (and discarding), so a
// cancelled query can still drain to ReadyForQuery.
func (c *clientConn) pumpBackend(be *pool.Conn) {
	bufp := forwardBuffers.Get().(*[]byte)
	defer forwardBuffers.Put(bufp)
	buf := *bufp
	var res pumpResult
	var copyStarts int64
	handle := func(n int, rerr error) bool {
		if n > 0 {
			if err := c.bs.scan(buf[:n]); err != nil {
				res.err = err
				if !c.stopping.Load() {
					c.log.Error("backend sent a malformed message; closing the session", "backend_pid", be.PID(), "err", err)
					c.raw.Close()
				}
				return true
			}
			if c.bs.copyStarts != copyStarts {
				copyStarts = c.bs.copyStarts
				c.copyIn.Store(true)
			}
			if c.srv.cfg.Cache != nil && c.bs.rfqs != c.rfqs.Load() {
				// A session pinned with the cache on: what it wrote is not
				// followed, so every transaction it ends invalidates its
				// database, before the client hears of the end.
				c.srv.bump(c.key.Database, &writeSet{all: true})
			}
			// Status first: idle() must never pair a new count with an
			// old status.
			c.txStatus.Store(uint32(c.bs.txStatus))
			c.rfqs.Store(c.bs.rfqs)
			if !res.clientGone {
				if _, err := c.cio.Write(buf[:n]); err != nil {
					res.clientGone = true
				}
			}
			if c.srv.draining.Load() && c.bs.atBoundary() && c.idle() {
				// Wake serve so it can end the session between transactions.
				c.raw.SetReadDeadline(time.Now())
			}
		}
		if rerr != nil {
			if c.stopping.Load() && errors.Is(rerr, os.ErrDeadlineExceeded) && c.bs.atBoundary() {
				res.clean = true
				return true
			}
			res.err = rerr
			if !c.stopping.Load() {
				// The backend went away on its own. Tell the client, unless
				// the server's own FATAL error already did, and wake serve.
				if !res.clientGone && c.bs.atBoundary() && c.bs.last != 'E' {
					c.log.Info("backend connection lost", "backend_pid", be.PID(), "err", rerr)
					c.sendError(fatal(CodeConnectionFailure, "server closed the connection unexpectedly", rerr))
				}
				c.raw.Close()
			}
			return true
		}
		if c.stopping.Load() && c.bs.atBoundary() && c.syncs.Load() == c.bs.rfqs {
			res.clean = true
			return true
		}
		return false
	}
	stopped := false
	if r := be.Reader(); r.Buffered() > 0 {
		// Answers the pool's own exchange read ahead (none, normally).
		n, err := r.Read(buf)
		stopped = handle(n, err)
	}
	if !stopped {
		loop := chunkLoop{
			s:      be.Sock(),
			buf:    func() []byte { return buf },
			handle: handle,
			// A backend that dies after a whole message has nothing more
			// to say, and the next write to it brings a reset; one that
			// dies mid-message is read on, to see its end.
			maySkip: c.bs.atBoundary,
		}
		loop.run()
	}
	c.pumpDone <- res
}

// stopPump asks the pump to stop once every answer the backend owes has
// arrived, waiting at most wait for that, and returns how it stopped.
func (c *clientConn) stopPump(be *pool.Conn, wait time.Duration) pumpResult {
	c.stopping.Store(true)
	if c.syncs.Load() == c.rfqs.Load() {
		// Every answer may already be in: the pump could be blocked in a
		// read that nothing will satisfy. (If the last ReadyForQuery is
		// still in flight the pump sees stopping after reading it.)
		wait = 0
	}
	be.NetConn().SetReadDeadline(time.Now().Add(wait))
	res := <-c.pumpDone
	be.NetConn().SetReadDeadline(time.Time{})
	return res
}

// finish ends the session after forwardClient returned: it tells the
// client why when that is possible, then returns the backend to the pool
// if it is provably clean, and closes it otherwise.
func (c *clientConn) finish(ctx context.Context, be *pool.Conn, cause error) {
	s := c.srv
	var frameErr *wire.FrameError
	var bw errBackendWrite
	clientLeft := cause != nil && !errors.As(cause, &frameErr) && !errors.Is(cause, errDrain) && !errors.As(cause, &bw)
	// Whatever the pump still owes the client must not wait on a client
	// that stopped reading: after this, a stalled write counts as gone.
	c.raw.SetWriteDeadline(time.Now().Add(drainTimeout))
	wait := time.Duration(0)
	if !c.cs.atBoundary() {
		// The client left in the middle of a message: the server waits for
		// the rest forever, so the backend can only be closed.
	} else if c.syncs.Load() != c.rfqs.Load() {
		wait = drainTimeout
		if clientLeft && len(c.pumpDone) == 0 {
			// Nobody will read the answer: stop the query. (After a
			// Terminate the queued statements run to completion, as they
			// would on PostgreSQL.)
			cctx, cancel := context.WithTimeout(ctx, time.Second)
			be.Cancel(cctx)
			cancel()
		}
	}
	var res pumpResult
	if errors.As(cause, &bw) {
		// Give a dying server's FATAL, already on its way, a moment.
		res = c.stopPump(be, 100*time.Millisecond)
		res.clean = false
		if !res.clientGone && c.bs.atBoundary() && c.bs.last != 'E' {
			c.sendError(fatal(CodeConnectionFailure, "server closed the connection unexpectedly", bw.error))
		}
	} else {
		res = c.stopPump(be, wait)
	}
	// A cancel request in flight holds cancelMu until it has reached the
	// server, so it cannot land on the next holder of this backend.
	c.cancelMu.Lock()
	c.backend.Store(nil)
	c.cancelMu.Unlock()

	switch {
	case errors.As(cause, &frameErr):
		c.log.Info("closing client after a malformed message", "err", cause)
		if res.clean && !res.clientGone {
			c.sendError(cause)
		}
	case errors.Is(cause, errDrain):
		c.sendError(fatal(CodeAdminShutdown, "terminating connection: the sidecar is shutting down", nil))
	case errors.As(cause, &bw), res.err != nil && !res.clean:
		c.log.Debug("session ended with its backend connection", "backend_pid", be.PID(), "err", errors.Join(cause, res.err))
	case cause == nil:
		c.log.Debug("client terminated")
	default:
		c.log.Debug("client connection closed", "err", cause)
	}

	clean := res.clean && c.cs.atBoundary() && !c.cs.unsynced && !c.bs.copyIn && c.syncs.Load() == c.bs.rfqs
	if clean && c.bs.txStatus != 'I' {
		rctx, cancel := context.WithTimeout(ctx, drainTimeout)
		r, err := be.Exec(rctx, "ROLLBACK")
		cancel()
		clean = err == nil && r.TxStatus == 'I'
	}
	if clean {
		s.releaseBackend(ctx, be)
	} else {
		s.destroyBackend(be)
	}
}

// fatalFrom turns an error from a backend exchange made on the client's
// behalf at startup into a FATAL for the client.
func fatalFrom(err error) error {
	r := errorResponse(err)
	return &Error{Severity: "FATAL", Code: r.Code, Message: r.Message, Detail: r.Detail, Hint: r.Hint, Err: err}
}

// setConn makes nc the client connection: plain TCP until TLS replaces it.
// The startup phase reads through a buffered reader from a pool; the
// session reads straight into the relay's buffer.
func (c *clientConn) setConn(nc net.Conn) {
	if c.raw == nil {
		c.raw = nc
	}
	c.nc = nc
	c.cio = sockio.New(nc)
	if c.br == nil {
		c.br = startupReaders.Get().(*bufio.Reader)
	}
	c.br.Reset(c.cio)
}

var startupReaders = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, clientBufferSize) }}

// releaseStartupReader returns the startup reader to its pool once it holds
// nothing, so an idle session keeps no read buffer.
func (c *clientConn) releaseStartupReader() {
	if c.br == nil || c.br.Buffered() > 0 {
		return
	}
	c.br.Reset(nil)
	startupReaders.Put(c.br)
	c.br = nil
}

// isServerError reports whether err is an error the server answered with
// (the exchange completed) rather than a broken connection.
func isServerError(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe)
}
