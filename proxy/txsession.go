package proxy

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgsidecar/pgsidecar/internal/sockio"
	"github.com/pgsidecar/pgsidecar/internal/wire"
	"github.com/pgsidecar/pgsidecar/pool"
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
	unsynced bool // extended-protocol messages forwarded since the last Sync
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
	ctx         context.Context
	fd          uintptr
	mayHaveData bool
	stepErr     error
	stepFn      func(uintptr) bool

	// custom lists the customized settings the client ever set: the
	// settings snapshot must ask for them by name.
	custom []string
	// The client's unnamed statement outlives a Sync on PostgreSQL, but a
	// backend changes hands: its Parse is kept and sent again before a
	// Bind or Describe that finds the session on another attach.
	unnamed    []byte
	unnamedGen uint64 // attachGen when unnamed was last parsed on the backend
	attachGen  uint64
	// deadlineSet: the client socket has a read deadline armed by an
	// idle timeout.
	deadlineSet bool
	privateSeq  uint64
	lastQ       []byte // the last short simple query, and its effects
	lastEff     sqlinfo.Effects

	stmts    map[string]*stmtDef // the client's named statements
	set      settings
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
	// login left the client's backend attached; it goes back now, already
	// holding the client's settings.
	be := c.backend.Load()
	be.Settings = r.set.key
	c.cancelMu.Lock()
	c.backend.Store(nil)
	c.cancelMu.Unlock()
	r.srv.backends.Recycle(be)

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
			if r.be == nil && r.start == r.end && r.srv.draining.Load() {
				return errDrain
			}
			r.releaseIdle()
			if err := r.readClient(); err != nil {
				if errors.Is(err, errRetryRead) {
					return nil
				}
				return err
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
		}
		r.emitSynth()
		if err := r.flushClient(); err != nil {
			return err
		}
		if len(r.toBE) == 0 {
			return nil
		}
		if r.unsynced && !r.flushed && r.q.len() > 0 {
			// The batch so far has no Sync. The server keeps its answers
			// until a Sync or Flush, or sends them when it must (a COPY
			// FROM STDIN starting, a full buffer), and the client may be
			// waiting for them: with a Flush of pgsidecar's own (it has no
			// answer) the server sends every answer it owes now, so the
			// relay knows what to wait for.
			r.toBE = append(r.toBE, 'H', 0, 0, 0, 4)
			r.flushed = true
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
	if !r.mayHaveData {
		r.mayHaveData = true
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
	// A read that filled the buffer may have left bytes behind that no
	// new readiness event will announce.
	r.mayHaveData = n == space
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
	if r.be != nil {
		return r.srv.cfg.IdleTransactionTimeout
	}
	return r.srv.cfg.ClientIdleTimeout
}

func (r *txRelay) idleTimedOut() error {
	if r.srv.draining.Load() {
		if r.be == nil {
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

// compact moves the unprocessed bytes to the front of in and makes room
// for a message of need bytes.
func (r *txRelay) compact(need int) {
	n := copy(r.in, r.in[r.start:r.end])
	r.start, r.end = 0, n
	if need > len(r.in) {
		bigger := make([]byte, max(need, 2*len(r.in)))
		copy(bigger, r.in[:n])
		if r.inp != nil {
			clientBuffers.Put(r.inp)
			r.inp = nil
		}
		r.in = bigger
	}
}

// processClient handles every complete message in in.
func (r *txRelay) processClient(ctx context.Context) error {
	max := r.srv.cfg.MaxMessageBytes
	for !r.terminating {
		avail := r.end - r.start
		if avail < 5 {
			break
		}
		p := r.in[r.start:r.end]
		typ, l := p[0], int(int32(binary.BigEndian.Uint32(p[1:5])))
		switch {
		case !validFrontend[typ]:
			return &wire.FrameError{Type: typ, Length: l, Err: errUnknownMessage}
		case l < 4:
			return &wire.FrameError{Type: typ, Length: l, Err: wire.ErrBadLength}
		case l+1 > max:
			return &wire.FrameError{Type: typ, Length: l, Err: wire.ErrMessageTooLarge}
		}
		if avail < l+1 {
			if r.start+l+1 > len(r.in) {
				r.compact(l + 1)
			}
			break
		}
		if !r.capturing && len(r.replay) == 0 && !r.retried && !r.execSinceSync && r.txStatus == 'I' && r.q.len() == 0 &&
			(typ == 'P' || typ == 'B' || typ == 'D') {
			// A batch that can be run again from any of its messages, until
			// it executes something: keep a copy until its Sync's answer.
			r.capturing = true
		}
		if err := r.clientMessage(ctx, typ, p[:l+1]); err != nil {
			if errors.Is(err, errPause) && r.capturing && len(r.replay) == 0 {
				r.capturing = false
			}
			return err
		}
		if r.capturing {
			r.replay = append(r.replay, p[:l+1]...)
			if typ == 'S' {
				r.capturing = false
			}
		}
		r.start += l + 1
	}
	if r.start == r.end {
		r.start, r.end = 0, 0
	}
	return nil
}

// clientMessage handles one complete client message.
func (r *txRelay) clientMessage(ctx context.Context, typ byte, msg []byte) error {
	body := msg[5:]
	if r.clientSkip && typ != 'S' {
		return nil
	}
	switch typ {
	case 'Q':
		if len(body) == 0 || body[len(body)-1] != 0 {
			return malformed(typ)
		}
		text := unsafe.String(unsafe.SliceData(body), len(body)-1)
		// A simple Query destroys the unnamed statement.
		r.unnamed = r.unnamed[:0]
		if startsWithD(body) {
			name, ok := deallocateName(text)
			if !ok {
				goto classify
			}
			if _, mine := r.stmts[name]; mine {
				delete(r.stmts, name)
				r.synth('C', pgMsg(&pgproto3.CommandComplete{CommandTag: []byte("DEALLOCATE")}))
				r.synth('Z', nil)
				return nil
			}
		}
	classify:
		eff := r.lastQueryEffects(body[:len(body)-1], text)
		if eff.Pin != "" && r.srv.cfg.RejectSessionState {
			if r.be == nil {
				r.synth('E', r.refusal(eff.Pin))
				r.synth('Z', nil)
				return nil
			}
			// Inside a transaction the error must abort it, as any
			// error would: the server raises it.
			r.push(respEntry{kind: 'Q'})
			r.toBE = appendQuery(r.toBE, r.refusalSQL(eff.Pin))
			return nil
		}
		if err := r.attach(ctx); err != nil {
			return err
		}
		r.applyEffects(eff)
		r.push(respEntry{kind: 'Q'})
		r.toBE = append(r.toBE, msg...)
	case 'P':
		name, query, types, ok := parseBody(body)
		if !ok {
			return malformed(typ)
		}
		if r.txStatus == 'E' && r.be != nil {
			// A failed transaction refuses every Parse (25P02) before
			// anything else is checked: the server says so itself.
			r.forwardExtended('P', msg)
			return nil
		}
		eff := r.srv.classifier.SessionEffects(unsafe.String(unsafe.SliceData(query), len(query)))
		if eff.Pin != "" && r.srv.cfg.RejectSessionState {
			r.clientSkip = true
			if r.be == nil {
				r.synth('E', r.refusal(eff.Pin))
				return nil
			}
			// The batch (or transaction) the statement is part of must
			// fail as a whole: the server raises the error.
			r.toBE = appendParse(r.toBE, "", r.refusalSQL(eff.Pin))
			r.push(respEntry{kind: 'P', action: actSwallow})
			r.toBE = append(r.toBE, msgBindUnnamed...)
			r.push(respEntry{kind: 'B', action: actSwallow})
			r.toBE = append(r.toBE, msgExecuteUnnamed...)
			r.push(respEntry{kind: 'E'})
			r.unsynced = true
			return nil
		}
		if len(name) == 0 {
			if err := r.attach(ctx); err != nil {
				return err
			}
			r.applyEffects(eff)
			r.unnamed = append(r.unnamed[:0], msg...)
			r.unnamedGen = r.attachGen
			r.forwardExtended('P', msg)
			return nil
		}
		if _, exists := r.stmts[string(name)]; exists {
			r.synth('E', pgMsg(&pgproto3.ErrorResponse{Severity: "ERROR", SeverityUnlocalized: "ERROR", Code: CodeDuplicatePreparedStatement,
				Message: fmt.Sprintf("prepared statement %q already exists", name)}))
			r.clientSkip = true
			return nil
		}
		key := r.set.key
		if r.snapshot {
			// The settings changed in this transaction and are not read
			// back yet: what the text means is not known to be what it
			// means for anyone else, so the statement is not shared.
			r.privateSeq++
			key = fmt.Sprintf("%s\x00private\x00%d\x00%d", key, r.c.id, r.privateSeq)
		}
		def := newStmtDef(query, types, key, eff)
		clientName := string(name)
		if r.stmts == nil {
			r.stmts = make(map[string]*stmtDef)
		}
		r.stmts[clientName] = def
		if err := r.attach(ctx); err != nil {
			return err
		}
		r.unsynced = true
		if r.be.Statements.Has(def.server) {
			r.used = append(r.used, def.server)
			def.sharedParse = true
			r.push(respEntry{kind: '1', action: actSynth, msg: msgParseComplete, clientName: clientName, def: def})
			r.srv.stats.parsesShared.Add(1)
			return nil
		}
		r.closeIfStale(def.server)
		r.addStatement(def.server)
		r.push(respEntry{kind: 'P', clientName: clientName, def: def, server: def.server})
		r.toBE = append(r.toBE, def.parse...)
		r.srv.stats.parses.Add(1)
	case 'B':
		portal, rest, ok := cut0(body)
		if !ok {
			return malformed(typ)
		}
		stmt, rest, ok := cut0(rest)
		if !ok {
			return malformed(typ)
		}
		if err := r.attach(ctx); err != nil {
			return err
		}
		def := r.stmts[string(stmt)]
		if len(stmt) == 0 || def == nil {
			// Unnamed, or unknown: the server answers for itself.
			if len(stmt) == 0 {
				r.ensureUnnamed()
			}
			r.forwardExtended('B', msg)
			return nil
		}
		if def.stale {
			r.synth('E', msgStalePlan)
			r.clientSkip = true
			return nil
		}
		if !r.ensurePrepared(def) {
			return errPause
		}
		if def.shape != nil {
			if sum, ok := r.be.Statements.Shape(def.server); ok && sum != def.shapeSum {
				// Another client prepared the statement anew after a
				// schema change: this client's is stale.
				def.stale = true
				r.synth('E', msgStalePlan)
				r.clientSkip = true
				return nil
			}
		}
		r.applyEffects(def.effects)
		r.toBE = appendRenamed(r.toBE, 'B', body[:len(portal)+1], def.server, rest)
		// Retried only when a changed result shape cannot surprise the
		// client: it knows the shape (and the new one is checked against
		// it), or its own Parse never reached a server.
		r.push(respEntry{kind: 'B', def: def, retry: def.shape != nil || def.sharedParse})
		r.unsynced = true
	case 'D':
		if len(body) < 2 || body[len(body)-1] != 0 {
			return malformed(typ)
		}
		if err := r.attach(ctx); err != nil {
			return err
		}
		if body[0] != 'S' {
			r.forwardExtended('d', msg)
			return nil
		}
		def := r.stmts[string(body[1:len(body)-1])]
		if def == nil {
			if len(body) == 2 {
				r.ensureUnnamed()
			}
			r.forwardExtended('D', msg)
			return nil
		}
		if !r.ensurePrepared(def) {
			return errPause
		}
		r.toBE = appendRenamed(r.toBE, 'D', []byte{'S'}, def.server, nil)
		// What the client learns here is what its statement returns: the
		// shape later replays are checked against.
		r.push(respEntry{kind: 'D', def: def, capture: true, retry: true})
		r.unsynced = true
	case 'C':
		if len(body) < 2 || body[len(body)-1] != 0 {
			return malformed(typ)
		}
		if body[0] == 'S' && len(body) > 2 {
			// The statement may be shared on the server: only the client's
			// name goes. Closing a name that does not exist is no error.
			delete(r.stmts, string(body[1:len(body)-1]))
			r.synth('3', msgCloseComplete)
			return nil
		}
		if err := r.attach(ctx); err != nil {
			return err
		}
		r.forwardExtended('C', msg)
	case 'E':
		if err := r.attach(ctx); err != nil {
			return err
		}
		r.forwardExtended('E', msg)
		r.execSinceSync = true
	case 'S':
		r.clientSkip = false
		if r.be == nil {
			r.synth('Z', nil)
			return nil
		}
		r.push(respEntry{kind: 'S'})
		r.unsynced = false
		r.execSinceSync = false
		r.toBE = append(r.toBE, msg...)
	case 'H':
		if r.be != nil {
			r.flushed = true
			r.toBE = append(r.toBE, msg...)
		}
	case 'F':
		if err := r.attach(ctx); err != nil {
			return err
		}
		r.push(respEntry{kind: 'F'})
		r.toBE = append(r.toBE, msg...)
	case 'd':
		// Outside a copy the server ignores these.
		if r.be != nil {
			r.toBE = append(r.toBE, msg...)
		}
	case 'c', 'f':
		if r.be == nil {
			return nil
		}
		r.toBE = append(r.toBE, msg...)
		if !r.copyIn {
			r.copyEnds++
		} else {
			r.copyIn = false
			// The server ignored Syncs sent during the copy (libpq sends
			// one right behind the Execute that starts it).
			for i := r.q.len() - 1; i >= 1; i-- {
				if r.q.at(i).kind == 'S' {
					r.q.removeAt(i)
					r.awaiting--
				}
			}
		}
	case 'X':
		r.terminating = true
		// Answers still owed go out only to a client that reads them.
		r.c.raw.SetWriteDeadline(time.Now().Add(drainTimeout))
	}
	return nil
}

func malformed(typ byte) error {
	return &wire.FrameError{Type: typ, Err: errors.New("malformed message body")}
}

// forwardExtended forwards an extended-protocol message unchanged.
func (r *txRelay) forwardExtended(kind byte, msg []byte) {
	r.push(respEntry{kind: kind})
	r.toBE = append(r.toBE, msg...)
	r.unsynced = true
}

// push queues an entry, unless the server is skipping to the next Sync
// after an error: then the message earns no answer, and a Parse it carried
// created nothing.
func (r *txRelay) push(e respEntry) {
	if e.kind == 'S' {
		r.errSkip = false
	} else if r.errSkip {
		r.undo(&e)
		return
	}
	switch e.kind {
	case 'S', 'Q', 'F':
		if e.action != actSynth {
			r.awaiting++
		}
	}
	e.replayAt = -1
	if r.capturing && !r.execSinceSync {
		// Nothing in the batch has run yet: an error here rolls nothing
		// back that the client was told about.
		e.replayAt = len(r.replay)
	}
	r.q.push(e)
}

// synth queues a message pgsidecar answers itself; kind 'Z' is a
// ReadyForQuery with the session's status when it is written.
func (r *txRelay) synth(kind byte, msg []byte) {
	r.push(respEntry{kind: kind, action: actSynth, msg: msg})
}

// undo reverses what an entry that will never be answered recorded.
func (r *txRelay) undo(e *respEntry) {
	switch e.kind {
	case 'P', '1':
		if e.def != nil && e.clientName != "" && r.stmts[e.clientName] == e.def {
			delete(r.stmts, e.clientName)
		}
		if e.server != "" && r.be != nil {
			r.be.Statements.Remove(e.server)
		}
	case 'S', 'Q', 'F':
		if e.action != actSynth {
			r.awaiting--
		}
	}
}

// addStatement records server as prepared on the attached backend, closing
// the least recently used statement when there are too many.
func (r *txRelay) addStatement(server string) {
	r.used = append(r.used, server)
	evict, ok := r.be.Statements.Add(server, r.inUse)
	if ok {
		r.toBE = appendClose(r.toBE, evict)
		r.push(respEntry{kind: 'C', action: actSwallow})
		r.srv.stats.evictions.Add(1)
	}
}

func (r *txRelay) inUse(name string) bool {
	for _, u := range r.used {
		if u == name {
			return true
		}
	}
	return false
}

// ensurePrepared makes sure the attached backend has def, preparing it
// first (with its answer swallowed) when it does not. When the client knows
// the statement's result shape, the new statement's shape is checked
// before anything runs it: ensurePrepared then returns false, and the
// message that needs def must wait until the backend has answered.
func (r *txRelay) ensurePrepared(def *stmtDef) bool {
	if r.be.Statements.Has(def.server) {
		r.used = append(r.used, def.server)
		return true
	}
	r.closeIfStale(def.server)
	r.addStatement(def.server)
	r.push(respEntry{kind: 'P', action: actSwallow, server: def.server})
	r.toBE = append(r.toBE, def.parse...)
	r.srv.stats.lazyParses.Add(1)
	if def.shape == nil {
		return true
	}
	r.toBE = appendRenamed(r.toBE, 'D', []byte{'S'}, def.server, nil)
	r.push(respEntry{kind: 'D', action: actSwallow, def: def, check: true})
	return false
}

// closeIfStale closes server's old statement on the backend when the
// server refused its cached plan: it must be prepared again.
func (r *txRelay) closeIfStale(server string) {
	if !r.be.Statements.Stale(server) {
		return
	}
	r.be.Statements.Remove(server)
	r.toBE = appendClose(r.toBE, server)
	r.push(respEntry{kind: 'C', action: actSwallow})
}

// applyEffects notes what a statement about to run does to the session.
func (r *txRelay) applyEffects(e sqlinfo.Effects) {
	if e.SetsSession || e.DiscardAll {
		r.snapshot = true
	}
	if e.DeallocateAll || e.DiscardAll {
		// The server drops every prepared statement on this backend,
		// including the ones pgsidecar made; the client's are gone too.
		clear(r.stmts)
		r.be.Statements.Clear()
	}
	if e.Pin != "" && r.pin == "" {
		r.pin = e.Pin
	}
	for _, name := range e.Custom {
		if !slices.Contains(r.custom, name) {
			r.custom = append(r.custom, name)
		}
	}
}

// lastQueryEffects classifies a simple query's text, remembering the last
// short one: clients repeat their queries, and the comparison is cheaper
// than the classifier's prefilter.
func (r *txRelay) lastQueryEffects(q []byte, text string) sqlinfo.Effects {
	if r.lastQ != nil && bytes.Equal(q, r.lastQ) {
		return r.lastEff
	}
	eff := r.srv.classifier.SessionEffects(text)
	if len(q) <= 512 {
		r.lastQ = append(r.lastQ[:0], q...)
		r.lastEff = eff
	}
	return eff
}

// startsWithD reports whether a query text's first non-blank byte is d or
// D: only then can it be a DEALLOCATE.
func startsWithD(q []byte) bool {
	for _, c := range q {
		switch c {
		case ' ', '\t', '\r', '\n':
			continue
		case 'd', 'D':
			return true
		}
		return false
	}
	return false
}

// ensureUnnamed sends the client's last unnamed Parse again when a Bind or
// Describe of the unnamed statement finds the session on another attach
// than the one that parsed it (another client may have replaced it).
func (r *txRelay) ensureUnnamed() {
	if len(r.unnamed) == 0 || r.unnamedGen == r.attachGen {
		return
	}
	r.toBE = append(r.toBE, r.unnamed...)
	r.push(respEntry{kind: 'P', action: actSwallow})
	r.unnamedGen = r.attachGen
	r.srv.stats.lazyParses.Add(1)
}

// refusalSQL raises, on the server, the error for a statement that needs
// a pinned session when pinning is off.
func (r *txRelay) refusalSQL(feature string) string {
	r.srv.countRefusal(feature)
	var b strings.Builder
	b.WriteString("DO $pgsidecar$BEGIN RAISE EXCEPTION USING ERRCODE = 'feature_not_supported', MESSAGE = ")
	quoteLiteral(&b, feature+" is not supported in transaction pooling mode")
	b.WriteString(", HINT = ")
	quoteLiteral(&b, "Enable pin_on_session_state, or use session pooling for this client.")
	b.WriteString("; END$pgsidecar$")
	return b.String()
}

// refusal is the error for a statement that needs a pinned session when
// pinning is off.
func (r *txRelay) refusal(feature string) []byte {
	r.srv.countRefusal(feature)
	return pgMsg(&pgproto3.ErrorResponse{Severity: "ERROR", SeverityUnlocalized: "ERROR", Code: CodeFeatureNotSupported,
		Message: fmt.Sprintf("%s is not supported in transaction pooling mode", feature),
		Hint:    "Enable pin_on_session_state, or use session pooling for this client."})
}

func pgMsg(m pgproto3.BackendMessage) []byte {
	b, err := m.Encode(nil)
	if err != nil {
		panic(err) // only fixed, valid messages are encoded here
	}
	return b
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
	if r.be == nil || r.pending || r.q.len() > 0 || r.unsynced || r.copyIn || r.txStatus != 'I' || r.errSkip || !r.fs.atBoundary() {
		return nil
	}
	be := r.be
	if r.snapshot {
		r.snapshot = false
		sctx, cancel := context.WithTimeout(ctx, drainTimeout)
		set, err := snapshotSettings(sctx, be, r.custom)
		cancel()
		if err != nil {
			return r.backendFailed(err)
		}
		r.set = set
		be.Settings = set.key
	}
	if r.pin != "" {
		return errPinned
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

// readBackend reads one chunk of answers and relays it.
func (r *txRelay) readBackend() error {
	r.c.waitingSince.Store(r.srv.epoch.Load())
	n, err := r.be.Reader().Read(r.bbuf)
	r.c.waitingSince.Store(0)
	if n > 0 {
		if err := r.processBackend(r.bbuf[:n]); err != nil {
			return err
		}
	}
	if err != nil {
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return r.checkWaiting()
		}
		return r.backendFailed(err)
	}
	return nil
}

// checkWaiting runs when the watchdog interrupted a wait for the backend
// (see Server.watch): the client left, or query_timeout passed.
func (r *txRelay) checkWaiting() error {
	r.be.NetConn().SetReadDeadline(time.Time{})
	switch waitVerdict(r.c.verdict.Swap(0)) {
	case verdictClientGone:
		return errClientGone
	case verdictQueryTimeout:
		return errBackendFailed{errQueryTimout}
	}
	// Not the watchdog's doing: some other deadline; carry on waiting.
	return nil
}

// errBackendFailed ends a session whose backend failed; the backend is
// closed.
type errBackendFailed struct{ error }

func (e errBackendFailed) Unwrap() error { return e.error }

func (r *txRelay) backendFailed(err error) error { return errBackendFailed{err} }

// processBackend relays one chunk read from the backend, following the
// queue: answers to pgsidecar's own messages are cut out, and answers
// pgsidecar owes for messages it did not send are put in their place.
func (r *txRelay) processBackend(p []byte) error {
	r.seg, r.dirty = 0, false
	i := 0
	for i < len(p) {
		if r.fs.remain > 0 {
			k := min(r.fs.remain, len(p)-i)
			if r.wantZ {
				r.zStatus = p[i]
				r.wantZ = false
			}
			if r.collect {
				r.body = append(r.body, p[i:i+k]...)
			}
			if r.drop {
				r.cut(p, i)
				r.seg = i + k
			}
			r.fs.remain -= k
			i += k
			if r.fs.remain == 0 {
				r.messageEnd(p, i)
			}
			continue
		}
		hstart := i
		held := r.heldHeader
		var ok bool
		if i, ok = r.fs.header(p, i); !ok {
			// Hold a partial header back until it is whole.
			r.cut(p, hstart)
			r.seg = len(p)
			r.heldHeader = true
			break
		}
		r.heldHeader = false
		l := r.fs.length()
		if l < 4 {
			return &wire.FrameError{Type: r.fs.hdr[0], Length: l, Err: wire.ErrBadLength}
		}
		r.fs.remain = l - 4
		r.emitSynthAt(p, hstart)
		if err := r.messageStart(r.fs.hdr[0]); err != nil {
			return err
		}
		switch {
		case r.drop:
			r.cut(p, hstart)
			r.seg = i
		case held:
			r.cut(p, hstart)
			r.toCl = append(r.toCl, r.fs.hdr[:]...)
			r.seg = i
		}
		if r.fs.remain == 0 {
			r.messageEnd(p, i)
		}
	}
	if !r.dirty {
		return r.writeClient(p)
	}
	if r.seg < len(p) {
		r.toCl = append(r.toCl, p[r.seg:]...)
	}
	r.seg = len(p)
	return r.flushClient()
}

// cut copies the chunk's pending bytes before i into toCl: from here on
// this chunk's output is rebuilt there.
func (r *txRelay) cut(p []byte, i int) {
	r.toCl = append(r.toCl, p[r.seg:i]...)
	r.seg = i
	r.dirty = true
}

// messageStart decides what happens to a backend message of type t.
func (r *txRelay) messageStart(t byte) error {
	r.curType = t
	r.drop, r.completing, r.holdErr = false, false, false
	r.collect = false
	r.body = r.body[:0]
	switch t {
	case 'N', 'A':
		return nil
	case 'S':
		r.collect = r.fs.remain <= maxParamStatus
		return nil
	}
	if r.q.len() == 0 {
		return errBackendFailed{fmt.Errorf("backend sent %q with nothing owed", t)}
	}
	e := r.q.front()
	switch t {
	case 'Z':
		r.wantZ = r.fs.remain > 0
	case 'G':
		if r.copyEnds > 0 {
			r.copyEnds--
		} else {
			r.copyIn = true
		}
	case 'W':
		return errBackendFailed{errors.New("backend started COPY BOTH, which pgsidecar does not relay")}
	}
	r.drop = e.action == actSwallow && t != 'E'
	r.completing = completes(e.kind, t)
	switch {
	case t == 'E' && e.retry && r.fs.remain <= maxHeldError:
		// Held back until it is whole: it may be pgsidecar's to handle.
		r.collect, r.holdErr, r.drop = true, true, true
	case (t == 'T' || t == 'n') && (e.capture || e.check) && r.fs.remain <= maxShape:
		r.collect = true
	}
	return nil
}

const (
	maxHeldError = 64 << 10
	maxShape     = 256 << 10
)

// msgStalePlan is PostgreSQL's answer to a Bind of a statement whose
// result shape changed since the client prepared it.
var msgStalePlan = pgMsg(&pgproto3.ErrorResponse{Severity: "ERROR", SeverityUnlocalized: "ERROR", Code: CodeFeatureNotSupported,
	Message: "cached plan must not change result type", Routine: "RevalidateCachedQuery"})

// messageEnd finishes the current backend message, which ended at i.
func (r *txRelay) messageEnd(p []byte, i int) {
	if r.collect && r.curType == 'S' {
		r.collect = false
		if name, rest, ok := cstring(r.body); ok {
			if value, _, ok := cstring(rest); ok {
				r.be.NoteParameterStatus(name, value)
				// The client changed a reported setting: read its settings
				// back at the end of the transaction.
				r.snapshot = true
			}
		}
	}
	r.drop = false
	if !r.completing {
		return
	}
	r.completing = false
	e := r.q.pop()
	switch {
	case r.curType == 'E' && extended(e.kind):
		refused := r.holdErr && r.planRefused(e)
		r.undo(&e)
		// The server now ignores everything up to the next Sync.
		for r.q.len() > 0 && r.q.front().kind != 'S' {
			d := r.q.pop()
			r.undo(&d)
		}
		// The batch can run again only if nothing was sent after its Sync
		// (which would run first otherwise).
		retry := refused && e.retry && e.replayAt >= 0 && !r.retried && !r.capturing && r.q.len() == 1
		if r.holdErr && !retry {
			r.cut(p, i)
			r.toCl = append(r.toCl, r.fs.hdr[:]...)
			r.toCl = append(r.toCl, r.body...)
		}
		if retry {
			r.retried = true
			r.replay = r.replay[e.replayAt:]
			r.srv.stats.replans.Add(1)
		}
		if r.q.len() == 0 {
			r.errSkip = true
		} else if retry {
			// The client sees neither the error nor this ReadyForQuery;
			// after it the batch runs again on a freshly prepared
			// statement.
			r.q.front().action = actSwallow
			r.q.front().retry = true
		}
	case r.curType == 'Z':
		r.awaiting--
		r.txStatus = r.zStatus
		r.copyIn = false
		r.copyEnds = 0
		if e.retry && r.retried {
			r.startReplay()
		} else {
			r.capturing = false
			r.replay = r.replay[:0]
			r.retried = false
		}
	case e.capture && (r.curType == 'T' || r.curType == 'n') && r.collect:
		e.def.shape = append(make([]byte, 0, len(r.body)), r.body...)
		e.def.shapeSum = shapeSum(r.body)
		e.def.stale = false
		r.be.Statements.SetShape(e.def.server, e.def.shapeSum)
	case e.check && (r.curType == 'T' || r.curType == 'n'):
		if r.collect {
			r.be.Statements.SetShape(e.def.server, shapeSum(r.body))
		}
		if !r.collect || !bytes.Equal(r.body, e.def.shape) {
			// The statement means something else now: as on
			// PostgreSQL, the client's statement is refused from here on.
			e.def.stale = true
		}
	}
	r.collect, r.holdErr = false, false
	if r.q.len() == 0 {
		r.used = r.used[:0]
		r.flushed = false
	}
	r.emitSynthAt(p, i)
}

// planRefused reports whether a held error answering entry e is the server
// refusing the cached plan of a statement prepared before a schema change
// ("cached plan must not change result type"). The backend's statement is
// then marked stale: whoever uses it next prepares it again, and its shape
// is checked against what that client knows. The batch itself is run again
// once when that is safe, so a client whose view already matches never
// sees the error.
func (r *txRelay) planRefused(e respEntry) bool {
	var m pgproto3.ErrorResponse
	if (e.kind != 'B' && e.kind != 'D') || e.def == nil || m.Decode(r.body) != nil {
		return false
	}
	if m.Code != CodeFeatureNotSupported || m.Routine != "RevalidateCachedQuery" {
		return false
	}
	r.be.Statements.MarkStale(e.def.server)
	return true
}

// startReplay puts the captured batch back in front of the client's
// unprocessed bytes, to be processed again.
func (r *txRelay) startReplay() {
	rest := r.in[r.start:r.end]
	in := make([]byte, 0, max(len(r.replay)+len(rest), forwardBufferSize))
	in = append(append(in, r.replay...), rest...)
	r.giveIn()
	r.in, r.start, r.end = in[:cap(in)], 0, len(in)
	r.replay = r.replay[:0]
	r.pending = true
}

// emitSynthAt writes, at position i of the chunk, the answers pgsidecar
// owes that are now at the head of the queue.
func (r *txRelay) emitSynthAt(p []byte, i int) {
	if r.q.len() == 0 || r.q.front().action != actSynth {
		return
	}
	r.cut(p, i)
	r.emitSynth()
}

// emitSynth appends the synthetic answers at the head of the queue to toCl.
func (r *txRelay) emitSynth() {
	for r.q.len() > 0 && r.q.front().action == actSynth {
		e := r.q.pop()
		if e.kind == 'Z' {
			r.toCl = append(r.toCl, 'Z', 0, 0, 0, 5, r.txStatus)
		} else {
			r.toCl = append(r.toCl, e.msg...)
		}
		if r.q.len() == 0 {
			r.used = r.used[:0]
			r.flushed = false
		}
	}
}

// flushClient writes what toCl holds.
func (r *txRelay) flushClient() error {
	if len(r.toCl) == 0 {
		return nil
	}
	err := r.writeClient(r.toCl)
	r.toCl = r.toCl[:0]
	if cap(r.toCl) > 64<<10 {
		r.toCl = nil
	}
	return err
}

func (r *txRelay) writeClient(b []byte) error {
	if _, err := r.c.cio.Write(b); err != nil {
		return errClientWrite{err}
	}
	return nil
}

type errClientWrite struct{ error }

func (e errClientWrite) Unwrap() error { return e.error }

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
		if clean {
			r.srv.backends.Recycle(be)
		} else {
			r.srv.destroyBackend(be)
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
