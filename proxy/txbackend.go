package proxy

// The backend side of the transaction-mode relay: answers are matched
// against the queue, cut out, supplied or held back, and written to the
// client.

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgsidecar/pgsidecar/internal/wire"
)

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
	var err error
	if !r.dirty {
		err = r.writeClient(p)
	} else {
		if r.seg < len(p) {
			r.toCl = append(r.toCl, p[r.seg:]...)
		}
		r.seg = len(p)
		err = r.flushClient()
	}
	if r.fill.zSeen {
		r.endFill()
	}
	return err
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
		if r.cacheOn() {
			r.cacheAtZ(&e, r.zStatus)
			if r.fill.active && r.q.len() == 0 {
				r.fill.zSeen = true
			}
		}
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
	if r.fill.active {
		r.captureClient(b)
	}
	if _, err := r.c.cio.Write(b); err != nil {
		return errClientWrite{err}
	}
	r.wroteSinceRead = true
	return nil
}

type errClientWrite struct{ error }

func (e errClientWrite) Unwrap() error { return e.error }
