package proxy

// The client side of the transaction-mode relay: each client message is
// checked, renamed or answered locally, and queued for its answer.

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
	"unsafe"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgsidecar/pgsidecar/internal/wire"
	"github.com/pgsidecar/pgsidecar/sqlinfo"
)

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
		if r.cacheOn() {
			if inner, ok := explainCacheQuery(text); ok {
				return r.explainCache(ctx, inner)
			}
		}
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
				r.srv.countRefusal(eff.Pin)
				r.synth('E', errorMsg(CodeFeatureNotSupported, refusalMessage(eff.Pin), refusalHint))
				r.synth('Z', nil)
				return nil
			}
			// Inside a transaction the error must abort it, as any
			// error would: the server raises it.
			r.srv.countRefusal(eff.Pin)
			r.push(respEntry{kind: 'Q'})
			r.toBE = appendQuery(r.toBE, raiseSQL(CodeFeatureNotSupported, refusalMessage(eff.Pin), refusalHint))
			// A simple Query destroys the unnamed statement.
			r.unnamed = r.unnamed[:0]
			return nil
		}
		if err := r.attach(ctx); err != nil {
			return err
		}
		r.applyEffects(eff)
		rollback := false
		if r.cacheOn() {
			r.noteWrites(r.srv.classifier.Analyze(text))
			rollback = isLoneRollback(text)
		}
		r.push(respEntry{kind: 'Q', rollback: rollback})
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
			r.srv.countRefusal(eff.Pin)
			r.raise(CodeFeatureNotSupported, refusalMessage(eff.Pin), refusalHint)
			return nil
		}
		if len(name) == 0 {
			if err := r.attach(ctx); err != nil {
				return err
			}
			r.applyEffects(eff)
			r.unnamed = append(r.unnamed[:0], msg...)
			r.unnamedEff = eff
			r.unnamedInfo = nil
			r.unnamedGen = r.attachGen
			r.push(respEntry{kind: 'P', unnamedParse: true})
			r.toBE = append(r.toBE, msg...)
			r.unsynced = true
			return nil
		}
		if _, exists := r.stmts[string(name)]; exists {
			r.raise(CodeDuplicatePreparedStatement, fmt.Sprintf("prepared statement %q already exists", name), "")
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
		if r.cacheOn() {
			r.noteBindWrites(def, len(stmt) == 0)
		}
		if len(stmt) == 0 || def == nil {
			// Unnamed, or unknown: the server answers for itself.
			if len(stmt) == 0 {
				r.ensureUnnamed()
			}
			r.forwardExtended('B', msg)
			return nil
		}
		if def.stale {
			r.raise(CodeFeatureNotSupported, "cached plan must not change result type", "")
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
				r.raise(CodeFeatureNotSupported, "cached plan must not change result type", "")
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
		r.unflushed = false
		r.execSinceSync = false
		r.toBE = append(r.toBE, msg...)
	case 'H':
		if r.be != nil {
			r.flushed = true
			r.unflushed = false
			r.toBE = append(r.toBE, msg...)
		}
	case 'F':
		if err := r.attach(ctx); err != nil {
			return err
		}
		if r.cacheOn() {
			// A function called by OID: what it writes is unknown.
			r.noteAll()
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
	r.push(respEntry{kind: kind, action: actForward})
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
		// Never counted: only what it recorded is undone.
		if e.kind != 'Q' && e.kind != 'F' {
			r.undo(&e)
		}
		return
	}
	if e.action != actSynth && extended(e.kind) {
		r.unflushed = true
	}
	switch e.kind {
	case 'S', 'Q', 'F':
		if e.action != actSynth {
			r.awaiting++
			// The writes of the segment this message ends are bumped
			// at its ReadyForQuery.
			e.writes, r.segWrites = r.segWrites, nil
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
	case 'C':
		if e.server != "" && r.be != nil {
			// A Close of pgsidecar's the server skipped: the statement
			// is still there.
			r.be.Statements.Orphan(e.server)
		}
	case 'S', 'Q', 'F':
		if e.action != actSynth {
			r.awaiting--
		}
	}
	if e.unnamedParse {
		// The client's unnamed Parse failed or was skipped: on
		// PostgreSQL it has no unnamed statement now.
		r.unnamed = r.unnamed[:0]
	}
}

// addStatement records server as prepared on the attached backend, closing
// the least recently used statement when there are too many.
func (r *txRelay) addStatement(server string) {
	r.used = append(r.used, server)
	evict, ok := r.be.Statements.Add(server, r.inUse)
	if ok {
		r.toBE = appendClose(r.toBE, evict)
		r.push(respEntry{kind: 'C', action: actSwallow, server: evict})
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
	if r.errSkip {
		// The server ignores everything up to the next Sync: nothing
		// runs the statement, and nothing would answer a check.
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
	r.push(respEntry{kind: 'C', action: actSwallow, server: server})
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
		// Whether the statement succeeds is known only later: the
		// backend's statements are closed before their next use, which
		// is harmless if they are gone.
		r.be.Statements.MarkAllStale()
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
	if r.unnamedGen == r.attachGen || r.errSkip {
		return
	}
	r.unnamedGen = r.attachGen
	if len(r.unnamed) == 0 {
		// The backend's unnamed statement is another client's: drop it,
		// so the server answers as PostgreSQL would this client (no
		// unnamed statement).
		r.toBE = append(r.toBE, msgCloseUnnamed...)
		r.push(respEntry{kind: 'C', action: actSwallow})
		return
	}
	r.applyEffects(r.unnamedEff)
	r.toBE = append(r.toBE, r.unnamed...)
	r.push(respEntry{kind: 'P', action: actSwallow, unnamedParse: true})
	r.srv.stats.lazyParses.Add(1)
}

const refusalHint = "Enable pin_on_session_state, or use session pooling for this client."

// raiseSQL is a statement that fails with the given SQLSTATE and message.
func raiseSQL(code, message, hint string) string {
	var b strings.Builder
	b.WriteString("DO $pgsidecar$BEGIN RAISE EXCEPTION USING ERRCODE = ")
	quoteLiteral(&b, code)
	b.WriteString(", MESSAGE = ")
	quoteLiteral(&b, message)
	if hint != "" {
		b.WriteString(", HINT = ")
		quoteLiteral(&b, hint)
	}
	b.WriteString("; END$pgsidecar$")
	return b.String()
}

// raise answers an extended-protocol message with an error pgsidecar
// decided on, as PostgreSQL would: the server raises it when a backend is
// attached, so that the transaction (or the implicit one of the batch)
// fails with it, and the client's messages are dropped until its Sync.
// The unnamed statement is spent on it; the client's is prepared again
// when it is next used.
func (r *txRelay) raise(code, message, hint string) {
	r.clientSkip = true
	if r.be == nil {
		r.synth('E', errorMsg(code, message, hint))
		return
	}
	r.toBE = appendParse(r.toBE, "", raiseSQL(code, message, hint))
	r.push(respEntry{kind: 'P', action: actSwallow})
	r.toBE = append(r.toBE, msgBindUnnamed...)
	r.push(respEntry{kind: 'B', action: actSwallow})
	r.toBE = append(r.toBE, msgExecuteUnnamed...)
	r.push(respEntry{kind: 'E'})
	r.unsynced = true
	r.unnamedGen = 0
}

// refusalMessage is the error message for a statement that needs a pinned
// session when pinning is off.
func refusalMessage(feature string) string {
	return feature + " is not supported in transaction pooling mode"
}

// errorMsg is an ErrorResponse pgsidecar writes itself.
func errorMsg(code, message, hint string) []byte {
	return pgMsg(&pgproto3.ErrorResponse{Severity: "ERROR", SeverityUnlocalized: "ERROR", Code: code, Message: message, Hint: hint})
}

func pgMsg(m pgproto3.BackendMessage) []byte {
	b, err := m.Encode(nil)
	if err != nil {
		panic(err) // only fixed, valid messages are encoded here
	}
	return b
}
