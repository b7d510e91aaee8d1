package proxy

import (
	"context"
	"encoding/binary"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgsidecar/pgsidecar/resultcache"
	"github.com/pgsidecar/pgsidecar/sqlinfo"
)

func TestCacheableAnswer(t *testing.T) {
	enc := func(msgs ...pgproto3.BackendMessage) []byte {
		var b []byte
		for _, m := range msgs {
			b = append(b, pgMsg(m)...)
		}
		return b
	}
	rd := &pgproto3.RowDescription{Fields: []pgproto3.FieldDescription{{Name: []byte("x"), DataTypeOID: 23, DataTypeSize: 4, TypeModifier: -1}}}
	row := &pgproto3.DataRow{Values: [][]byte{[]byte("1")}}
	sel := &pgproto3.CommandComplete{CommandTag: []byte("SELECT 1")}
	zI := &pgproto3.ReadyForQuery{TxStatus: 'I'}
	body := enc(rd, row, sel)
	cases := []struct {
		name string
		in   []byte
		ok   bool
	}{
		{"simple select", enc(rd, row, sel, zI), true},
		{"extended", enc(&pgproto3.ParseComplete{}, &pgproto3.BindComplete{}, rd, row, sel, zI), true},
		{"in transaction", enc(rd, row, sel, &pgproto3.ReadyForQuery{TxStatus: 'T'}), false},
		{"error", enc(rd, row, &pgproto3.ErrorResponse{Severity: "ERROR", Code: "22012", Message: "x"}, zI), false},
		{"notice", enc(&pgproto3.NoticeResponse{Severity: "NOTICE", Message: "n"}, rd, row, sel, zI), false},
		{"parameter status", enc(rd, row, sel, &pgproto3.ParameterStatus{Name: "TimeZone", Value: "UTC"}, zI), false},
		{"not a select", enc(&pgproto3.CommandComplete{CommandTag: []byte("INSERT 0 1")}, zI), false},
		{"two commands", enc(rd, row, sel, rd, row, sel, zI), false},
		{"suspended", enc(rd, row, &pgproto3.PortalSuspended{}, zI), false},
		{"no ready", body, false},
		{"truncated", enc(rd, row, sel, zI)[:len(body)+3], false},
	}
	for _, c := range cases {
		got, ok := cacheableAnswer(c.in)
		if ok != c.ok {
			t.Errorf("%s: ok = %v, want %v", c.name, ok, c.ok)
			continue
		}
		if ok && string(got) != string(c.in[:len(c.in)-6]) {
			t.Errorf("%s: answer is not the bytes before ReadyForQuery", c.name)
		}
	}
}

// bindRest builds the part of a Bind body after the statement name.
func bindRest(formats []uint16, params [][]byte) []byte {
	b := binary.BigEndian.AppendUint16(nil, uint16(len(formats)))
	for _, f := range formats {
		b = binary.BigEndian.AppendUint16(b, f)
	}
	b = binary.BigEndian.AppendUint16(b, uint16(len(params)))
	for _, p := range params {
		if p == nil {
			b = binary.BigEndian.AppendUint32(b, 0xffffffff)
			continue
		}
		b = binary.BigEndian.AppendUint32(b, uint32(len(p)))
		b = append(b, p...)
	}
	return binary.BigEndian.AppendUint16(b, 0)
}

func TestTimeLiteralParams(t *testing.T) {
	cases := []struct {
		name    string
		formats []uint16
		params  [][]byte
		want    bool
	}{
		{"plain", nil, [][]byte{[]byte("42"), []byte("abc")}, false},
		{"now", nil, [][]byte{[]byte("42"), []byte(" NOW ")}, true},
		{"today", []uint16{0}, [][]byte{[]byte("Today")}, true},
		{"tomorrow per-param text", []uint16{1, 0}, [][]byte{[]byte{0, 0, 0, 1}, []byte("tomorrow")}, true},
		{"binary text now", []uint16{1}, [][]byte{[]byte("now")}, true},
		{"binary int", []uint16{1}, [][]byte{{0, 0, 0, 42}}, false},
		{"null", nil, [][]byte{nil}, false},
		{"yesterday inside", nil, [][]byte{[]byte("2020-01-01 yesterday")}, true},
	}
	for _, c := range cases {
		if got := timeLiteralParams(bindRest(c.formats, c.params)); got != c.want {
			t.Errorf("%s: got %v, want %v", c.name, got, c.want)
		}
	}
	if !timeLiteralParams([]byte{0}) {
		t.Error("a malformed Bind must count as suspicious")
	}
}

func TestIsLoneRollback(t *testing.T) {
	for q, want := range map[string]bool{
		"ROLLBACK":                true,
		" rollback ; ":            true,
		"abort":                   true,
		"ROLLBACK WORK":           true,
		"rollback transaction;":   true,
		"ROLLBACK TO SAVEPOINT a": false,
		"ROLLBACK PREPARED 'x'":   false,
		"rollback; insert into t": false,
		"COMMIT":                  false,
		"ROLLBACK AND CHAIN":      false,
		"select 1; rollback":      false,
	} {
		if got := isLoneRollback(q); got != want {
			t.Errorf("isLoneRollback(%q) = %v, want %v", q, got, want)
		}
	}
}

func TestWriteSet(t *testing.T) {
	var w writeSet
	if !w.empty() {
		t.Fatal("zero writeSet not empty")
	}
	w.merge(&writeSet{tables: []string{"a", "b"}})
	w.merge(&writeSet{tables: []string{"b", "c"}, funcs: []string{"f"}})
	if len(w.tables) != 3 || len(w.funcs) != 1 || w.all || w.empty() {
		t.Fatalf("merge: %+v", w)
	}
	w.reset()
	if !w.empty() {
		t.Fatalf("reset: %+v", w)
	}
	var nilSet *writeSet
	if !nilSet.empty() {
		t.Fatal("nil writeSet not empty")
	}
}

func TestSyncSQLResetsRoleAndAuthorization(t *testing.T) {
	s := newSettings([][2]string{{"role", "r1"}, {"search_path", "a"}, {"session_authorization", "u1"}})
	got := s.syncSQL("other")
	want := "RESET SESSION AUTHORIZATION; RESET ROLE; RESET ALL; SELECT pg_catalog.set_config(E'session_authorization', E'u1', false), " +
		"pg_catalog.set_config(E'role', E'r1', false), pg_catalog.set_config(E'search_path', E'a', false)"
	if got != want {
		t.Errorf("syncSQL:\n got %s\nwant %s", got, want)
	}
}

// batchOf loads msgs into a test relay's client buffer and splits it.
func batchOf(r *txRelay, msgs ...pgproto3.FrontendMessage) (cacheBatch, bool) {
	var in []byte
	for _, m := range msgs {
		in, _ = m.Encode(in)
	}
	r.in, r.start, r.end = in, 0, len(in)
	var b cacheBatch
	ok := r.splitBatch(&b)
	return b, ok
}

func TestSplitBatchShapes(t *testing.T) {
	r := newTestRelay(t, newTestBackend(10)).r
	q := "select v from t where id = $1"
	parse := &pgproto3.Parse{Query: q, ParameterOIDs: []uint32{23}}
	bind := &pgproto3.Bind{Parameters: [][]byte{[]byte("1")}}
	exec := &pgproto3.Execute{}
	sync := &pgproto3.Sync{}
	descP := &pgproto3.Describe{ObjectType: 'P'}
	cases := []struct {
		name string
		msgs []pgproto3.FrontendMessage
		ok   bool
	}{
		{"simple", []pgproto3.FrontendMessage{&pgproto3.Query{String: q}}, true},
		{"two queries", []pgproto3.FrontendMessage{&pgproto3.Query{String: q}, &pgproto3.Query{String: q}}, false},
		{"PBES", []pgproto3.FrontendMessage{parse, bind, exec, sync}, true},
		{"PBDES", []pgproto3.FrontendMessage{parse, bind, descP, exec, sync}, true},
		{"no sync", []pgproto3.FrontendMessage{parse, bind, exec}, false},
		{"describe statement", []pgproto3.FrontendMessage{parse, &pgproto3.Describe{ObjectType: 'S'}, sync}, false},
		{"row limit", []pgproto3.FrontendMessage{parse, bind, &pgproto3.Execute{MaxRows: 10}, sync}, false},
		{"named portal", []pgproto3.FrontendMessage{parse, &pgproto3.Bind{DestinationPortal: "p"}, &pgproto3.Execute{Portal: "p"}, sync}, false},
		{"two executes", []pgproto3.FrontendMessage{parse, bind, exec, exec, sync}, false},
		{"pipeline", []pgproto3.FrontendMessage{parse, bind, exec, sync, bind, exec, sync}, false},
		{"bind of another statement", []pgproto3.FrontendMessage{parse, &pgproto3.Bind{PreparedStatement: "other"}, exec, sync}, false},
		{"unnamed never parsed", []pgproto3.FrontendMessage{bind, exec, sync}, false},
		{"close", []pgproto3.FrontendMessage{parse, bind, exec, &pgproto3.Close{ObjectType: 'S'}, sync}, false},
	}
	for _, c := range cases {
		if _, ok := batchOf(r, c.msgs...); ok != c.ok {
			t.Errorf("%s: cacheable shape = %v, want %v", c.name, ok, c.ok)
		}
	}
	// A Bind of a statement the client parsed before: its text comes from
	// the client's record.
	r.unnamed = mustEncode(parse)
	b, ok := batchOf(r, bind, exec, sync)
	if !ok || b.text != q || b.def != nil {
		t.Errorf("Bind of the earlier unnamed statement: ok %v, %+v", ok, b)
	}
	r.stmts = map[string]*stmtDef{"s1": newStmtDef([]byte(q), []byte{0, 1, 0, 0, 0, 23}, "", sqlinfo.Effects{})}
	b, ok = batchOf(r, &pgproto3.Bind{PreparedStatement: "s1", Parameters: [][]byte{[]byte("1")}}, exec, sync)
	if !ok || b.text != q || b.def == nil {
		t.Errorf("Bind of a named statement parsed earlier: ok %v, %+v", ok, b)
	}
	// Parse of a name the client already has: PostgreSQL refuses it.
	if _, ok := batchOf(r, &pgproto3.Parse{Name: "s1", Query: q}, &pgproto3.Bind{PreparedStatement: "s1"}, exec, sync); ok {
		t.Error("a Parse of an existing name was taken for a cacheable batch")
	}
}

func mustEncode(m pgproto3.FrontendMessage) []byte {
	b, err := m.Encode(nil)
	if err != nil {
		panic(err)
	}
	return b
}

// Everything that can change an answer changes the key.
func TestCacheKeyCoversTheAnswer(t *testing.T) {
	r := newTestRelay(t, newTestBackend(10)).r
	q := "select v from t where id = $1"
	key := func(mutate func(r *txRelay), msgs ...pgproto3.FrontendMessage) string {
		rr := *r
		rr.c = &clientConn{key: r.c.key}
		if mutate != nil {
			mutate(&rr)
		}
		b, ok := batchOf(&rr, msgs...)
		if !ok {
			t.Fatalf("not a cacheable shape: %v", msgs)
		}
		k := rr.cacheKey(&b)
		return string(k[:])
	}
	pbes := func(p *pgproto3.Parse, b *pgproto3.Bind) []pgproto3.FrontendMessage {
		return []pgproto3.FrontendMessage{p, b, &pgproto3.Execute{}, &pgproto3.Sync{}}
	}
	parse := &pgproto3.Parse{Query: q}
	bind := &pgproto3.Bind{Parameters: [][]byte{[]byte("1")}}
	base := key(nil, pbes(parse, bind)...)
	variants := map[string]string{
		"simple":           key(nil, &pgproto3.Query{String: q}),
		"other text":       key(nil, pbes(&pgproto3.Parse{Query: q + " "}, bind)...),
		"parameter types":  key(nil, pbes(&pgproto3.Parse{Query: q, ParameterOIDs: []uint32{25}}, bind)...),
		"parameter value":  key(nil, pbes(parse, &pgproto3.Bind{Parameters: [][]byte{[]byte("2")}})...),
		"parameter format": key(nil, pbes(parse, &pgproto3.Bind{ParameterFormatCodes: []int16{1}, Parameters: [][]byte{{0, 0, 0, 1}}})...),
		"result format":    key(nil, pbes(parse, &pgproto3.Bind{Parameters: [][]byte{[]byte("1")}, ResultFormatCodes: []int16{1}})...),
		"null parameter":   key(nil, pbes(parse, &pgproto3.Bind{Parameters: [][]byte{nil}})...),
		"with describe":    key(nil, parse, bind, &pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{}, &pgproto3.Sync{}),
		"database":         key(func(r *txRelay) { r.c.key.Database = "other" }, pbes(parse, bind)...),
		"user":             key(func(r *txRelay) { r.c.key.User = "other" }, pbes(parse, bind)...),
		"settings":         key(func(r *txRelay) { r.set = newSettings([][2]string{{"search_path", "a"}}) }, pbes(parse, bind)...),
		"role":             key(func(r *txRelay) { r.set = newSettings([][2]string{{"role", "r"}}) }, pbes(parse, bind)...),
	}
	seen := map[string]string{base: "base"}
	for name, k := range variants {
		if other, dup := seen[k]; dup {
			t.Errorf("%s has the same key as %s", name, other)
		}
		seen[k] = name
	}
	if again := key(nil, pbes(&pgproto3.Parse{Name: "named", Query: q}, &pgproto3.Bind{PreparedStatement: "named", Parameters: [][]byte{[]byte("1")}})...); again != base {
		t.Error("the statement's name changed the key; the answer does not depend on it")
	}
}

// BenchmarkCacheHit is the relay's work for a memory-tier hit of a Bind,
// Execute, Sync of a statement prepared earlier: recognising the batch,
// its memoised analysis and catalog verdicts, the key, the lookup, and
// the answer queued for the client.
func BenchmarkCacheHit(b *testing.B) {
	tr := newTestRelay(b, newTestBackend(10))
	r := tr.r
	c, err := resultcache.New(resultcache.Config{}, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	r.srv.cfg.Cache = c
	r.srv.catalog = newCatalog(nil)
	r.srv.rootCtx = context.Background()
	r.c.key.Database, r.c.key.User = "app", "app"
	names := []catName{{'r', "pgbench_accounts"}, {'o', "="}}
	r.srv.catalog.remember("app", c.Generation("app"), names, map[catName]catVerdict{names[0]: {ok: true}, names[1]: {ok: true}})
	q := "SELECT abalance FROM pgbench_accounts WHERE aid = $1"
	r.stmts = map[string]*stmtDef{"P_0": newStmtDef([]byte(q), []byte{0, 0}, "", sqlinfo.Effects{})}
	batch := mustEncode(&pgproto3.Bind{PreparedStatement: "P_0", Parameters: [][]byte{[]byte("42")}})
	batch = append(batch, mustEncode(&pgproto3.Execute{})...)
	batch = append(batch, mustEncode(&pgproto3.Sync{})...)
	answer := append(pgMsg(&pgproto3.BindComplete{}), pgMsg(&pgproto3.DataRow{Values: [][]byte{[]byte("0")}})...)
	answer = append(answer, pgMsg(&pgproto3.CommandComplete{CommandTag: []byte("SELECT 1")})...)
	in := make([]byte, len(batch))
	load := func() {
		copy(in, batch)
		r.in, r.start, r.end = in, 0, len(in)
	}
	load()
	if hit, err := r.cacheLookup(context.Background()); hit || err != nil || !r.fill.active {
		b.Fatalf("first lookup: hit %v, err %v, fill %v", hit, err, r.fill.active)
	}
	r.fill.buf = append(append(r.fill.buf, answer...), 'Z', 0, 0, 0, 5, 'I')
	r.fill.zSeen = true
	r.endFill()
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		load()
		hit, err := r.cacheLookup(context.Background())
		if !hit || err != nil {
			b.Fatalf("hit %v, err %v", hit, err)
		}
		r.toCl = r.toCl[:0]
	}
}

// CacheRules.Tables says an answer reading a listed table is kept "at
// most this long"; a query hint or a fingerprint rule gets past that bound.
func TestCacheTableTTLIsAnUpperBound(t *testing.T) {
	c, err := resultcache.New(resultcache.Config{DefaultTTL: time.Minute}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s := &Server{cfg: Config{Cache: c, CacheRules: CacheRules{Tables: map[string]time.Duration{"hot": 5 * time.Second}}}}
	if ttl, ok := s.cacheTTL(sqlinfo.Analyze("select * from cold")); !ok || ttl != time.Minute {
		t.Errorf("no rule: ttl %v (ok %v), want the cache's default, 1m", ttl, ok)
	}
	hinted := sqlinfo.Analyze("/* pgsidecar:ttl=1h */ select * from hot")
	if ttl, ok := s.cacheTTL(hinted); !ok || ttl > 5*time.Second {
		t.Errorf("hint ttl=1h on a table ruled 5s: ttl %v (ok %v), want at most 5s", ttl, ok)
	}
	plain := sqlinfo.Analyze("select * from hot where id = 1")
	s.cfg.CacheRules.Fingerprints = map[uint64]time.Duration{plain.Fingerprint: time.Hour}
	if ttl, ok := s.cacheTTL(plain); !ok || ttl > 5*time.Second {
		t.Errorf("fingerprint rule 1h on a table ruled 5s: ttl %v (ok %v), want at most 5s", ttl, ok)
	}
}
