package proxy

// The result cache in the relay.
//
// A batch is looked up in the cache only when the session is idle (not in
// a transaction, nothing owed by a backend, nothing queued) and the batch
// is whole in the client buffer and is all the client sent: one simple
// Query, or Parse (optional), Bind, Describe of the portal (optional),
// Execute without a row limit, and Sync. Its statement must be one
// cacheable SELECT (sqlinfo), reading only plain permanent tables without
// row-level security or inheritance, calling only immutable built-in
// functions (or ones the operator allowed), checked against the backend's
// catalog and remembered for catalogTTL.
//
// The key is a SHA-256 of everything that can change the answer: the
// database, the login user, the session's settings (role, search_path,
// TimeZone, DateStyle... everything the session set, read back from the
// server), and the batch itself (texts, parameter types, values and
// formats, result formats, and which messages it has, so the stored bytes
// are exactly the client's answer to it).
//
// A hit writes the stored bytes and a ReadyForQuery; the batch's Parse is
// recorded as the relay records any Parse it has not sent yet, so the
// statement is prepared on a backend when it is next used. A miss is sent
// as usual; every byte written to the client for it is also copied, and at
// its ReadyForQuery the copy is stored under the table versions taken
// before the batch was sent, unless it holds anything but ParseComplete,
// BindComplete, RowDescription, DataRow and one SELECT CommandComplete.
//
// Writes: every statement sent is classified; the tables it may write
// (every table of the database when that cannot be known) are bumped at
// the ReadyForQuery that ends its transaction, before that ReadyForQuery
// is written to the client. A transaction that began cleanly and ends in
// a lone ROLLBACK bumps nothing.

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgsidecar/pgsidecar/resultcache"
	"github.com/pgsidecar/pgsidecar/sqlinfo"
)

// writeSet is what a segment of a session (up to a ReadyForQuery) may
// write.
type writeSet struct {
	tables []string // tables written, by bare name
	// funcs: built-in or unqualified functions called whose volatility is
	// not known yet: a volatile one may write anything.
	funcs []string
	// ops: operators used whose functions are not known yet.
	ops []string
	// all: unknown tables, or DDL: bump the whole database, which also
	// retires what pgsidecar learnt from its catalog (verdicts are tied to
	// the database's generation).
	all bool
	// txStmts counts transaction-control statements (BEGIN, COMMIT,
	// COMMIT AND CHAIN, SAVEPOINT...): a block holding one besides its
	// BEGIN and final ROLLBACK may have committed something.
	txStmts int
}

func (w *writeSet) empty() bool {
	return w == nil || (!w.all && len(w.tables) == 0 && len(w.funcs) == 0 && len(w.ops) == 0)
}

func (w *writeSet) addTable(name string) { w.tables = addName(w.tables, name) }

func addName(list []string, name string) []string {
	for _, t := range list {
		if t == name {
			return list
		}
	}
	return append(list, name)
}

func (w *writeSet) merge(o *writeSet) {
	if o == nil {
		return
	}
	w.all = w.all || o.all
	for _, t := range o.tables {
		w.addTable(t)
	}
	for _, f := range o.funcs {
		w.funcs = addName(w.funcs, f)
	}
	for _, f := range o.ops {
		w.ops = addName(w.ops, f)
	}
	w.txStmts += o.txStmts
}

func (w *writeSet) reset() {
	w.tables, w.funcs, w.ops = w.tables[:0], w.funcs[:0], w.ops[:0]
	w.all = false
	w.txStmts = 0
}

// cacheFill is a miss being captured for the cache.
type cacheFill struct {
	active bool
	zSeen  bool
	over   bool // grew past MaxEntryBytes: not stored
	key    resultcache.Key
	snap   resultcache.Snapshot
	fp     uint64
	ttl    time.Duration
	flight *resultcache.Flight
	buf    []byte
}

// cacheBatch is the batch at the head of the client buffer, as the cache
// sees it.
type cacheBatch struct {
	simple bool
	text   string // the statement's text
	types  []byte // its parameter types section (extended)
	parse  []byte // the batch's Parse message, if any
	name   string // the Parse's statement name
	binds  []byte // the Bind body after the statement name
	desc   bool   // a Describe of the portal
	def    *stmtDef
}

// Bypass reasons the relay adds to sqlinfo's.
const (
	bypassShape       = "protocol_shape"
	bypassUnsynced    = "unsynced"
	bypassTransaction = "in_transaction"
	bypassPinned      = "pinned_session"
	bypassSettings    = "settings_changing"
	bypassRelation    = "relation_not_cacheable"
	bypassFunction    = "function_not_immutable"
	bypassOperator    = "operator_not_cacheable"
	bypassType        = "type_not_builtin"
	bypassTimeParam   = "time_literal_parameter"
	bypassCatalog     = "catalog_lookup_failed"
	bypassTTL         = "ttl_never"
)

// cacheOn reports whether the relay uses the cache.
func (r *txRelay) cacheOn() bool { return r.srv.cfg.Cache != nil }

// cacheLookup looks the batch at the head of the buffer up in the cache.
// It returns true when it answered the batch from the cache.
func (r *txRelay) cacheLookup(ctx context.Context) (bool, error) {
	s := r.srv
	if r.txStatus != 'I' {
		s.countBypass(bypassTransaction)
		return false, nil
	}
	if r.unsynced || r.errSkip || r.flushed || r.copyIn {
		// Messages sent before this batch are not ended by a Sync yet (or
		// the server is skipping to one): the batch belongs to their
		// transaction, whatever the status says.
		s.countBypass(bypassUnsynced)
		return false, nil
	}
	var b cacheBatch
	if !r.splitBatch(&b) {
		// Not one whole query batch (a Parse and Describe alone, a
		// pipeline, a row limit, a portal, a partial read): sent as is.
		s.countBypass(bypassShape)
		return false, nil
	}
	if r.pin != "" {
		s.countBypass(bypassPinned)
		return false, nil
	}
	if r.snapshot {
		s.countBypass(bypassSettings)
		return false, nil
	}
	info := s.classifier.Analyze(b.text)
	if info.NotCacheable != "" {
		s.countBypass(info.NotCacheable)
		return false, nil
	}
	if !b.simple && timeLiteralParams(b.binds) {
		s.countBypass(bypassTimeParam)
		return false, nil
	}
	ttl, ok := s.cacheTTL(info)
	if !ok {
		s.countBypass(bypassTTL)
		return false, nil
	}
	if reason, err := r.checkCatalog(ctx, info); err != nil {
		return false, err
	} else if reason != "" {
		s.countBypass(reason)
		return false, nil
	}
	tables := info.ReadNames
	key := r.cacheKey(&b)
	c := s.cfg.Cache
	db := r.c.key.Database
	data, _, hit := c.Get(ctx, db, key, tables)
	var flight *resultcache.Flight
	if !hit {
		f, leader := c.Claim(key)
		if leader {
			flight = f
		} else {
			f.Wait(ctx, flightWait)
			data, _, hit = c.Get(ctx, db, key, tables)
		}
	}
	if hit {
		return true, r.answerFromCache(&b, data)
	}
	f := &r.fill
	f.active, f.zSeen, f.over = true, false, false
	f.key, f.fp, f.ttl, f.flight = key, info.Fingerprint, ttl, flight
	f.snap = c.Snapshot(db, tables)
	f.buf = f.buf[:0]
	return false, nil
}

// flightWait bounds how long a miss waits for a concurrent identical one.
const flightWait = 5 * time.Second

// splitBatch recognises a cacheable batch shape filling in[start:end].
func (r *txRelay) splitBatch(b *cacheBatch) bool {
	p := r.in[r.start:r.end]
	var types []byte
	i, step := 0, 0 // step: 0 start, 1 after P, 2 after B, 3 after D, 4 after E
	for i < len(p) {
		if len(p)-i < 5 {
			return false
		}
		typ := p[i]
		l := int(int32(binary.BigEndian.Uint32(p[i+1 : i+5])))
		if l < 4 || len(p)-i < l+1 {
			return false
		}
		msg := p[i : i+l+1]
		body := msg[5:]
		i += l + 1
		switch {
		case typ == 'Q' && step == 0 && i == len(p):
			if len(body) == 0 || body[len(body)-1] != 0 {
				return false
			}
			b.simple = true
			b.text = unsafe.String(unsafe.SliceData(body), len(body)-1)
			return true
		case typ == 'P' && step == 0:
			name, query, ty, ok := parseBody(body)
			if !ok {
				return false
			}
			if len(name) > 0 {
				if _, exists := r.stmts[string(name)]; exists {
					return false
				}
			}
			b.parse, b.name = msg, string(name)
			b.text = unsafe.String(unsafe.SliceData(query), len(query))
			types = ty
			step = 1
		case typ == 'B' && step <= 1:
			portal, rest, ok := cut0(body)
			if !ok || len(portal) != 0 {
				return false
			}
			stmt, rest, ok := cut0(rest)
			if !ok {
				return false
			}
			b.binds = rest
			if step == 0 {
				// A statement parsed before this batch.
				if len(stmt) == 0 {
					_, query, ty, ok := parseBody(r.unnamed[min(5, len(r.unnamed)):])
					if len(r.unnamed) == 0 || !ok {
						return false
					}
					b.text, types = unsafe.String(unsafe.SliceData(query), len(query)), ty
				} else {
					def := r.stmts[string(stmt)]
					if def == nil || def.stale {
						return false
					}
					_, query, ty, ok := parseBody(def.parse[5:])
					if !ok {
						return false
					}
					b.def = def
					b.text, types = unsafe.String(unsafe.SliceData(query), len(query)), ty
				}
			} else if string(stmt) != b.name {
				return false
			}
			step = 2
		case typ == 'D' && step == 2:
			if len(body) != 2 || body[0] != 'P' || body[1] != 0 {
				return false
			}
			b.desc = true
			step = 3
		case typ == 'E' && (step == 2 || step == 3):
			portal, rest, ok := cut0(body)
			if !ok || len(portal) != 0 || len(rest) != 4 || binary.BigEndian.Uint32(rest) != 0 {
				return false
			}
			step = 4
		case typ == 'S' && step == 4 && i == len(p):
			b.types = types
			return true
		default:
			return false
		}
	}
	return false
}

// timeLiteralParams reports whether a Bind's text-format parameters hold
// a word that a date or time input turns into the current time.
func timeLiteralParams(rest []byte) bool {
	if len(rest) < 2 {
		return true
	}
	nf := int(binary.BigEndian.Uint16(rest))
	rest = rest[2:]
	if len(rest) < 2*nf+2 {
		return true
	}
	rest = rest[2*nf:]
	np := int(binary.BigEndian.Uint16(rest))
	rest = rest[2:]
	for k := 0; k < np; k++ {
		if len(rest) < 4 {
			return true
		}
		l := int(int32(binary.BigEndian.Uint32(rest)))
		rest = rest[4:]
		if l < 0 {
			continue
		}
		if l > len(rest) {
			return true
		}
		// Binary parameters too: a text value sent in binary is its bytes.
		// (A binary number that happens to spell a time word only costs a
		// bypass.)
		if sqlinfo.HasTimeWord(unsafe.String(unsafe.SliceData(rest), l)) {
			return true
		}
		rest = rest[l:]
	}
	return false
}

// cacheKey hashes everything that can change the batch's answer.
func (r *txRelay) cacheKey(b *cacheBatch) resultcache.Key {
	kb := &r.keyb
	kb.Reset()
	kb.AddString("pgsidecar-cache-v1")
	kb.AddString(r.c.key.Database)
	kb.AddString(r.c.key.User)
	kb.AddString(r.set.key)
	if b.simple {
		kb.AddString("Q")
		kb.AddString(b.text)
		return kb.Sum()
	}
	shape := "E"
	switch {
	case b.parse != nil && b.desc:
		shape = "PBDES"
	case b.parse != nil:
		shape = "PBES"
	case b.desc:
		shape = "BDES"
	default:
		shape = "BES"
	}
	kb.AddString(shape)
	kb.AddString(b.text)
	kb.Add(b.types)
	kb.Add(b.binds)
	if b.def != nil {
		// The result shape the client was told when it described its
		// statement: after a schema change a client that knows the old
		// one must get PostgreSQL's refusal, not the new rows.
		kb.AddUint64(b.def.shapeSum)
	}
	return kb.Sum()
}

// answerFromCache writes a stored answer and does what the batch's
// messages do to the session besides answering.
func (r *txRelay) answerFromCache(b *cacheBatch, data []byte) error {
	if b.parse != nil {
		_, query, types, _ := parseBody(b.parse[5:])
		eff := r.srv.classifier.SessionEffects(b.text)
		if b.name == "" {
			r.unnamed = append(r.unnamed[:0], b.parse...)
			r.unnamedEff = eff
			r.unnamedInfo = nil
			// Not on any backend yet: sent before its next use.
			r.unnamedGen = 0
		} else {
			def := newStmtDef(query, types, r.set.key, eff)
			def.sharedParse = true
			if r.stmts == nil {
				r.stmts = make(map[string]*stmtDef)
			}
			r.stmts[b.name] = def
		}
	} else if b.simple {
		// A simple Query destroys the unnamed statement.
		r.unnamed = r.unnamed[:0]
	}
	r.start = r.end
	if len(data) > 4<<10 {
		// Large answers go out from the cache's own bytes, not copied.
		if err := r.flushClient(); err != nil {
			return err
		}
		if err := r.writeClient(data); err != nil {
			return err
		}
	} else {
		r.toCl = append(r.toCl, data...)
	}
	r.toCl = append(r.toCl, 'Z', 0, 0, 0, 5, 'I')
	return nil
}

// captureClient copies bytes written to the client into the fill.
func (r *txRelay) captureClient(b []byte) {
	f := &r.fill
	if f.over {
		return
	}
	if len(f.buf)+len(b) > r.srv.cfg.Cache.MaxEntryBytes() {
		f.over = true
		f.buf = f.buf[:0]
		return
	}
	f.buf = append(f.buf, b...)
}

// endFill stores a captured answer when it is one worth keeping, and lets
// concurrent identical misses go.
func (r *txRelay) endFill() {
	f := &r.fill
	if f.zSeen && !f.over {
		if data, ok := cacheableAnswer(f.buf); ok {
			r.srv.cfg.Cache.Put(f.snap, f.key, f.fp, data, f.ttl)
		}
	}
	r.abandonFill()
}

func (r *txRelay) abandonFill() {
	f := &r.fill
	if f.flight != nil {
		f.flight.Done()
		f.flight = nil
	}
	f.active, f.zSeen, f.over = false, false, false
	if cap(f.buf) > 64<<10 {
		f.buf = nil
	} else {
		f.buf = f.buf[:0]
	}
}

// cacheableAnswer returns the part of a captured answer before its
// ReadyForQuery when it is a complete, successful SELECT answer.
func cacheableAnswer(p []byte) ([]byte, bool) {
	i, completes := 0, 0
	for i+5 <= len(p) {
		t := p[i]
		l := int(int32(binary.BigEndian.Uint32(p[i+1:])))
		if l < 4 || i+1+l > len(p) {
			return nil, false
		}
		switch t {
		case '1', '2', 'T', 'D':
		case 'C':
			completes++
			if !bytes.HasPrefix(p[i+5:i+1+l], []byte("SELECT ")) {
				return nil, false
			}
		case 'Z':
			if l != 5 || p[i+5] != 'I' || completes != 1 {
				return nil, false
			}
			return p[:i], true
		default:
			return nil, false
		}
		i += 1 + l
	}
	return nil, false
}

// noteWrites adds what info may write to the segment being built. Code
// whose effects the text does not show (DO, CALL, EXECUTE, a function or
// operator that is not built in) also has the session's settings read back
// after the transaction: it may have changed them, or made temporary
// relations.
func (r *txRelay) noteWrites(info *sqlinfo.Info) {
	var w *writeSet
	get := func() *writeSet {
		if w == nil {
			if r.segWrites == nil {
				r.segWrites = &writeSet{}
			}
			w = r.segWrites
		}
		return w
	}
	if info.Unparsed {
		get().all = true
		return
	}
	cat, db := r.srv.catalog, r.c.key.Database
	var gen uint64 // read once, when a function or operator needs a verdict
	genOf := func() uint64 {
		if gen == 0 {
			gen = r.srv.cfg.Cache.Generation(db)
		}
		return gen
	}
	for i := range info.Statements {
		st := &info.Statements[i]
		if st.WritesUnknown {
			get().all = true
			r.snapshot = true
		}
		if st.Catalog {
			get().all = true
		}
		if st.Kind == sqlinfo.KindTransaction {
			get().txStmts++
		}
		for _, t := range st.Writes {
			get().addTable(t.Name)
		}
		for _, f := range st.Funcs {
			if f.Schema != "" && f.Schema != "pg_catalog" {
				get().all = true
				r.snapshot = true
				continue
			}
			if v, ok := cat.lookup(db, genOf(), catName{'f', f.Name}); ok && v.builtin && !v.mayWrite {
				continue
			}
			get().funcs = addName(get().funcs, f.Name)
		}
		for _, o := range st.Operators {
			if o.Schema != "" && o.Schema != "pg_catalog" {
				get().all = true
				r.snapshot = true
				continue
			}
			if v, ok := cat.lookup(db, genOf(), catName{'o', o.Name}); ok && !v.mayWrite {
				continue
			}
			get().ops = addName(get().ops, o.Name)
		}
	}
}

// cacheAtZ runs at a ReadyForQuery ending entry e, before it reaches the
// client: the transaction's writes are bumped when it ended.
func (r *txRelay) cacheAtZ(e *respEntry, status byte) {
	switch {
	case r.txStatus == 'I' && status != 'I':
		// A transaction block began in this segment; writes before its
		// BEGIN in the same segment, or a COMMIT AND CHAIN after it, may
		// have committed already.
		r.blockDirty = !e.writes.empty() || (e.writes != nil && e.writes.txStmts > 1)
	case r.txStatus != 'I' && e.writes != nil && e.writes.txStmts > 0 && !e.rollback:
		// COMMIT AND CHAIN, or COMMIT; BEGIN, inside the block.
		r.blockDirty = true
	}
	r.txWrites.merge(e.writes)
	if status != 'I' {
		return
	}
	if e.rollback && r.txStatus != 'I' && !r.blockDirty {
		r.txWrites.reset()
		return
	}
	r.blockDirty = false
	r.flushWrites()
}

// flushPending runs when a session ends: whatever its messages may have
// written and no ReadyForQuery settled is bumped, as the worst case (a
// procedure may have committed before the client left).
func (r *txRelay) flushPending() {
	w := &r.txWrites
	w.merge(r.segWrites)
	r.segWrites = nil
	for i := 0; i < r.q.len(); i++ {
		w.merge(r.q.at(i).writes)
	}
	w.txStmts = 0
	if w.empty() {
		return
	}
	if len(w.funcs) > 0 || len(w.ops) > 0 {
		w.all = true
	}
	r.srv.bump(r.c.key.Database, w)
	w.reset()
}

// flushWrites bumps what the transaction wrote, if anything.
func (r *txRelay) flushWrites() {
	w := &r.txWrites
	w.txStmts = 0
	if w.empty() {
		return
	}
	r.resolveWrites(w)
	r.srv.bump(r.c.key.Database, w)
	w.reset()
}

// resolveWrites settles what w may write beyond its tables: a written
// table with triggers, rules, or defaults and checks calling functions of
// the user's may write others, a function or operator that is not built in
// (or a volatile built-in that writes) may write anything, and both make w
// all. Names the catalog memo does not know are looked up when the backend
// is idle and owes nothing else; otherwise they count as the worst case.
func (r *txRelay) resolveWrites(w *writeSet) {
	if w.all {
		return
	}
	cat, db := r.srv.catalog, r.c.key.Database
	gen := r.srv.cfg.Cache.Generation(db)
	var missing []catName
	decide := func() bool {
		missing = missing[:0]
		bad := false
		check := func(kind byte, names []string, harmful func(catVerdict) bool) {
			for _, name := range names {
				v, ok := cat.lookup(db, gen, catName{kind, name})
				switch {
				case !ok:
					missing = append(missing, catName{kind, name})
				case harmful(v):
					bad = true
				}
			}
		}
		check('w', w.tables, func(v catVerdict) bool { return !v.ok })
		check('f', w.funcs, func(v catVerdict) bool { return v.mayWrite || !v.builtin })
		check('o', w.ops, func(v catVerdict) bool { return v.mayWrite })
		return bad
	}
	if decide() {
		w.all = true
		r.snapshot = true
		return
	}
	if len(missing) == 0 {
		return
	}
	if r.be == nil || r.q.len() > 0 || !r.fs.atBoundary() || r.zStatus != 'I' {
		w.all = true
		r.snapshot = true
		return
	}
	ctx, cancel := context.WithTimeout(r.srv.rootCtx, time.Second)
	found, err := lookupCatalog(ctx, r, missing)
	cancel()
	if err != nil {
		w.all = true
		r.snapshot = true
		if !isServerError(err) {
			// Timed out or cut mid-answer: what the backend still has to
			// say is unknown, so it must not serve anyone again.
			r.beBroken = err
		}
		return
	}
	cat.remember(db, gen, missing, found)
	if decide() || len(missing) > 0 {
		w.all = true
		r.snapshot = true
	}
}

// bump invalidates what w wrote in db.
func (s *Server) bump(db string, w *writeSet) {
	tables := w.tables
	if w.all {
		tables = allTables
	}
	ctx, cancel := context.WithTimeout(s.rootCtx, time.Second)
	s.cfg.Cache.Bump(ctx, db, tables)
	cancel()
}

var allTables = []string{"*"}

// isLoneRollback reports whether a simple query is just ROLLBACK or ABORT
// (not ROLLBACK TO SAVEPOINT, not ROLLBACK PREPARED).
func isLoneRollback(q string) bool {
	s := strings.TrimSpace(q)
	s = strings.TrimSpace(strings.TrimSuffix(s, ";"))
	word, rest, ok := nextWord(s)
	if !ok || (!strings.EqualFold(word, "rollback") && !strings.EqualFold(word, "abort")) {
		return false
	}
	rest = strings.TrimSpace(rest)
	if rest == "" {
		return true
	}
	word, rest, _ = nextWord(rest)
	return (strings.EqualFold(word, "work") || strings.EqualFold(word, "transaction")) && strings.TrimSpace(rest) == ""
}

// cacheTTL is how long an answer to info may be kept; false: never. A
// fingerprint rule, then a hint, choose it; a table's rule is an upper
// bound nothing raises.
func (s *Server) cacheTTL(info *sqlinfo.Info) (time.Duration, bool) {
	rules := &s.cfg.CacheRules
	ttl := s.cfg.Cache.DefaultTTL()
	if d, ok := rules.Fingerprints[info.Fingerprint]; ok {
		if d <= 0 {
			return 0, false
		}
		ttl = d
	}
	if info.Hints.TTL > 0 {
		ttl = info.Hints.TTL
	}
	for _, name := range info.ReadNames {
		if d, ok := rules.Tables[name]; ok {
			if d <= 0 {
				return 0, false
			}
			ttl = min(ttl, d)
		}
	}
	return ttl, true
}

// CacheRules are the operator's result cache policy.
type CacheRules struct {
	// Tables: an answer reading one of these tables (bare names) is kept
	// at most this long; zero or less: never cached.
	Tables map[string]time.Duration
	// Fingerprints: answers to queries with this pg_query fingerprint are
	// kept this long; zero or less: never cached.
	Fingerprints map[uint64]time.Duration
	// AllowFunctions names functions (bare names) that may be cached
	// although they are not immutable built-ins: the operator vouches that
	// they depend only on their arguments.
	AllowFunctions []string
}

// bypassCounters counts cache bypasses by reason.
type bypassCounters struct{ m sync.Map } // reason -> *atomic.Int64

func (s *Server) countBypass(reason string) {
	v, ok := s.stats.bypass.m.Load(reason)
	if !ok {
		v, _ = s.stats.bypass.m.LoadOrStore(reason, new(atomic.Int64))
	}
	v.(*atomic.Int64).Add(1)
}

func (b *bypassCounters) snapshot() map[string]int64 {
	out := make(map[string]int64)
	b.m.Range(func(k, v any) bool {
		out[k.(string)] = v.(*atomic.Int64).Load()
		return true
	})
	return out
}

// noteBindWrites adds what the statement a Bind runs may write.
func (r *txRelay) noteBindWrites(def *stmtDef, unnamed bool) {
	switch {
	case def != nil:
		if def.info == nil {
			_, query, _, _ := parseBody(def.parse[5:])
			def.info = r.srv.classifier.Analyze(unsafe.String(unsafe.SliceData(query), len(query)))
		}
		r.noteWrites(def.info)
	case unnamed && len(r.unnamed) > 0:
		if r.unnamedInfo == nil {
			_, query, _, _ := parseBody(r.unnamed[5:])
			r.unnamedInfo = r.srv.classifier.Analyze(unsafe.String(unsafe.SliceData(query), len(query)))
		}
		r.noteWrites(r.unnamedInfo)
	}
	// Anything else fails: it runs nothing.
}

// noteAll marks the segment as writing what cannot be known.
func (r *txRelay) noteAll() {
	if r.segWrites == nil {
		r.segWrites = &writeSet{}
	}
	r.segWrites.all = true
}

// explainCacheQuery recognises the admin statement EXPLAIN (PGSIDECAR)
// query, and returns the query.
func explainCacheQuery(text string) (string, bool) {
	s := strings.TrimLeft(text, " \t\r\n")
	word, rest, ok := nextWord(s)
	if !ok || !strings.EqualFold(word, "explain") {
		return "", false
	}
	rest = strings.TrimLeft(rest, " \t\r\n")
	if !strings.HasPrefix(rest, "(") {
		return "", false
	}
	opt, rest, ok := strings.Cut(rest[1:], ")")
	if !ok || !strings.EqualFold(strings.TrimSpace(opt), "pgsidecar") {
		return "", false
	}
	return strings.TrimSpace(rest), true
}

// explainCache answers EXPLAIN (PGSIDECAR) query with what the cache makes
// of query sent as a simple Query by this session now: whether it is
// cacheable and why not, and what its key is made of.
func (r *txRelay) explainCache(ctx context.Context, query string) error {
	s := r.srv
	info := s.classifier.Analyze(query)
	var rows [][2]string
	add := func(k, v string) { rows = append(rows, [2]string{k, v}) }
	reason := info.NotCacheable
	if reason == "" && r.txStatus != 'I' {
		reason = bypassTransaction
	}
	if reason == "" && r.pin != "" {
		reason = bypassPinned
	}
	ttl, ok := s.cacheTTL(info)
	if reason == "" && !ok {
		reason = bypassTTL
	}
	if reason == "" && r.txStatus == 'I' && r.q.len() == 0 {
		why, err := r.checkCatalog(ctx, info)
		if err != nil {
			return err
		}
		reason = why
	}
	if reason == "" {
		add("cacheable", "yes")
	} else {
		add("cacheable", "no")
		add("reason", reason)
	}
	add("fingerprint", fmt.Sprintf("%016x", info.Fingerprint))
	for i := range info.Statements {
		st := &info.Statements[i]
		add("kind", st.Kind.String())
		for _, t := range st.Reads {
			add("reads", t.String())
		}
		for _, t := range st.Writes {
			add("writes", t.String())
		}
		for _, f := range st.Funcs {
			add("calls", f.String())
		}
	}
	if ok {
		add("ttl", ttl.String())
	}
	for _, e := range info.Hints.Errors {
		add("hint_error", e)
	}
	add("key.database", r.c.key.Database)
	add("key.user", r.c.key.User)
	for _, kv := range r.set.pairs {
		add("key.setting", kv[0]+"="+kv[1])
	}
	add("key.statement", query)
	b := cacheBatch{simple: true, text: query}
	k := r.cacheKey(&b)
	add("key", hex.EncodeToString(k[:]))
	rd := &pgproto3.RowDescription{Fields: []pgproto3.FieldDescription{
		{Name: []byte("item"), DataTypeOID: 25, DataTypeSize: -1, TypeModifier: -1},
		{Name: []byte("value"), DataTypeOID: 25, DataTypeSize: -1, TypeModifier: -1},
	}}
	out := pgMsg(rd)
	for _, row := range rows {
		out = append(out, pgMsg(&pgproto3.DataRow{Values: [][]byte{[]byte(row[0]), []byte(row[1])}})...)
	}
	out = append(out, pgMsg(&pgproto3.CommandComplete{CommandTag: fmt.Appendf(nil, "SELECT %d", len(rows))})...)
	r.synth('C', out)
	r.synth('Z', nil)
	return nil
}
