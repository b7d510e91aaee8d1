package proxy

import (
	"bytes"
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgsidecar/pgsidecar/internal/sockio"
	"github.com/pgsidecar/pgsidecar/pool"
	"github.com/pgsidecar/pgsidecar/sqlinfo"
)

// recordConn is a client connection that records what the relay writes.
type recordConn struct {
	net.Conn
	out bytes.Buffer
}

func (c *recordConn) Write(p []byte) (int, error)      { return c.out.Write(p) }
func (c *recordConn) SetDeadline(time.Time) error      { return nil }
func (c *recordConn) SetReadDeadline(time.Time) error  { return nil }
func (c *recordConn) SetWriteDeadline(time.Time) error { return nil }

// testRelay is a transaction-mode relay with an attached backend whose
// answers the test plays by hand: clientSends runs the client side, and
// backendSends the backend side, on chunks of every size.
type testRelay struct {
	t      testing.TB
	r      *txRelay
	client *recordConn
}

func newTestRelay(t testing.TB, be *pool.Conn) *testRelay {
	srv := &Server{cfg: Config{MaxMessageBytes: 1 << 20}, classifier: sqlinfo.NewClassifier(0)}
	rc := &recordConn{}
	c := &clientConn{srv: srv, raw: rc, nc: rc, cio: sockio.New(rc)}
	r := &txRelay{c: c, srv: srv, txStatus: 'I', be: be}
	r.bbuf = make([]byte, forwardBufferSize)
	return &testRelay{t: t, r: r, client: rc}
}

func newTestBackend(maxStatements int) *pool.Conn {
	return &pool.Conn{Statements: pool.NewStatements(maxStatements)}
}

// clientSends processes msgs as one client read and returns what goes to
// the backend.
func (tr *testRelay) clientSends(msgs ...pgproto3.FrontendMessage) []byte {
	tr.t.Helper()
	r := tr.r
	tr.client.out.Reset()
	var in []byte
	for _, m := range msgs {
		in, _ = m.Encode(in)
	}
	r.in, r.start, r.end = in, 0, len(in)
	if err := r.processClient(context.Background()); err != nil {
		tr.t.Fatalf("processClient: %v", err)
	}
	r.emitSynth()
	if err := r.flushClient(); err != nil {
		tr.t.Fatal(err)
	}
	out := append([]byte(nil), r.toBE...)
	r.toBE = r.toBE[:0]
	return out
}

// backendSends relays msgs from the backend in chunks of size n and
// returns what the client received since the last clientSends.
func (tr *testRelay) backendSends(n int, msgs ...pgproto3.BackendMessage) []byte {
	tr.t.Helper()
	var stream []byte
	for _, m := range msgs {
		stream, _ = m.Encode(stream)
	}
	for len(stream) > 0 {
		k := min(n, len(stream))
		chunk := append([]byte(nil), stream[:k]...)
		stream = stream[k:]
		if err := tr.r.processBackend(chunk); err != nil {
			tr.t.Fatalf("processBackend: %v", err)
		}
	}
	return append([]byte(nil), tr.client.out.Bytes()...)
}

func types(t testing.TB, stream []byte) string {
	t.Helper()
	var b strings.Builder
	for len(stream) > 0 {
		if len(stream) < 5 {
			t.Fatalf("trailing partial header % x", stream)
		}
		l := int(stream[1])<<24 | int(stream[2])<<16 | int(stream[3])<<8 | int(stream[4])
		b.WriteByte(stream[0])
		stream = stream[1+l:]
	}
	return b.String()
}

// frontendNames decodes the messages sent to the backend as "P:name"
// style tokens, so tests can see renames and injections.
func frontendNames(t testing.TB, stream []byte) []string {
	t.Helper()
	var out []string
	for len(stream) > 0 {
		l := int(stream[1])<<24 | int(stream[2])<<16 | int(stream[3])<<8 | int(stream[4])
		typ, body := stream[0], stream[5:1+l]
		stream = stream[1+l:]
		name := ""
		switch typ {
		case 'P':
			name, _, _ = cstring(body)
		case 'B':
			_, rest, _ := cstring(body)
			name, _, _ = cstring(rest)
		case 'D', 'C':
			name, _, _ = cstring(body[1:])
		}
		if strings.HasPrefix(name, serverPrefix) {
			name = "server"
		}
		out = append(out, string(typ)+":"+name)
	}
	return out
}

var (
	bindComplete  = &pgproto3.BindComplete{}
	parseComplete = &pgproto3.ParseComplete{}
	closeComplete = &pgproto3.CloseComplete{}
	rowOne        = &pgproto3.DataRow{Values: [][]byte{[]byte("1")}}
	selectOne     = &pgproto3.CommandComplete{CommandTag: []byte("SELECT 1")}
	rfqIdle       = &pgproto3.ReadyForQuery{TxStatus: 'I'}
	rowDesc       = &pgproto3.RowDescription{Fields: []pgproto3.FieldDescription{{Name: []byte("n"), DataTypeOID: 23, DataTypeSize: 4, TypeModifier: -1}}}
	paramDesc     = &pgproto3.ParameterDescription{ParameterOIDs: []uint32{23}}
)

func TestTxRelayNamedStatementIsRenamedAndShared(t *testing.T) {
	be := newTestBackend(10)
	for _, n := range []int{1, 2, 3, 7, 1 << 20} {
		// The first client prepares: the Parse goes out under the server
		// name and every answer is the backend's.
		a := newTestRelay(t, be)
		be.Statements.Clear()
		sent := a.clientSends(&pgproto3.Parse{Name: "s1", Query: "select $1::int"}, &pgproto3.Describe{ObjectType: 'S', Name: "s1"}, &pgproto3.Sync{})
		if got, want := strings.Join(frontendNames(t, sent), " "), "P:server D:server S:"; got != want {
			t.Fatalf("sent %s, want %s", got, want)
		}
		if got := types(t, a.backendSends(n, parseComplete, paramDesc, rowDesc, rfqIdle)); got != "1tTZ" {
			t.Fatalf("chunk %d: client got %q", n, got)
		}

		// A second client with the same text and settings: the backend
		// has the statement, so the Parse is answered by pgsidecar, in
		// its place before the Describe's answer.
		b := newTestRelay(t, be)
		sent = b.clientSends(&pgproto3.Parse{Name: "other", Query: "select $1::int"}, &pgproto3.Describe{ObjectType: 'S', Name: "other"}, &pgproto3.Sync{})
		if got, want := strings.Join(frontendNames(t, sent), " "), "D:server S:"; got != want {
			t.Fatalf("sent %s, want %s", got, want)
		}
		if got := types(t, b.backendSends(n, paramDesc, rowDesc, rfqIdle)); got != "1tTZ" {
			t.Fatalf("chunk %d: second client got %q", n, got)
		}
		if b.r.q.len() != 0 || b.r.awaiting != 0 {
			t.Fatalf("queue not empty: %d entries, %d awaiting", b.r.q.len(), b.r.awaiting)
		}
	}
}

func TestTxRelayLazyParseIsSwallowed(t *testing.T) {
	for _, n := range []int{1, 3, 1 << 20} {
		// The client prepared on some other backend; this one has nothing.
		tr := newTestRelay(t, newTestBackend(10))
		tr.r.stmts = map[string]*stmtDef{"s1": newStmtDef([]byte("select 1"), []byte{0, 0}, "", sqlinfo.Effects{})}
		sent := tr.clientSends(&pgproto3.Bind{PreparedStatement: "s1"}, &pgproto3.Execute{}, &pgproto3.Sync{})
		if got, want := strings.Join(frontendNames(t, sent), " "), "P:server B:server E: S:"; got != want {
			t.Fatalf("sent %s, want %s", got, want)
		}
		if got := types(t, tr.backendSends(n, parseComplete, bindComplete, rowOne, selectOne, rfqIdle)); got != "2DCZ" {
			t.Fatalf("chunk %d: client got %q, want the injected Parse's answer cut out", n, got)
		}
	}
}

// An error answering the injected Parse is the client's error; the rest of
// the batch is skipped to the Sync, as the server does.
func TestTxRelayErrorSkipsToSync(t *testing.T) {
	be := newTestBackend(10)
	tr := newTestRelay(t, be)
	def := newStmtDef([]byte("select * from gone"), []byte{0, 0}, "", sqlinfo.Effects{})
	tr.r.stmts = map[string]*stmtDef{"s1": def}
	tr.clientSends(&pgproto3.Bind{PreparedStatement: "s1"}, &pgproto3.Execute{}, &pgproto3.Sync{},
		// A second group after the Sync runs normally.
		&pgproto3.Parse{Name: "s2", Query: "select 2"}, &pgproto3.Sync{})
	got := types(t, tr.backendSends(1<<20, &pgproto3.ErrorResponse{Severity: "ERROR", Code: "42P01", Message: "relation gone does not exist"},
		rfqIdle, parseComplete, rfqIdle))
	if got != "EZ1Z" {
		t.Fatalf("client got %q, want EZ1Z", got)
	}
	if be.Statements.Has(def.server) {
		t.Error("the failed Parse is still recorded on the backend")
	}
	if tr.r.errSkip || tr.r.q.len() != 0 || tr.r.awaiting != 0 {
		t.Fatalf("state after the batch: errSkip %v, %d entries, %d awaiting", tr.r.errSkip, tr.r.q.len(), tr.r.awaiting)
	}
}

// A statement whose Parse the server skipped after an earlier error was
// never created: the synthetic ParseComplete is not sent and the client's
// name is forgotten, as PostgreSQL would have it.
func TestTxRelayErrorDropsSyntheticAnswers(t *testing.T) {
	be := newTestBackend(10)
	shared := newStmtDef([]byte("select 1"), []byte{0, 0}, "", sqlinfo.Effects{})
	be.Statements.Add(shared.server, nil)
	tr := newTestRelay(t, be)
	tr.clientSends(&pgproto3.Parse{Query: "select 1/0"}, &pgproto3.Bind{}, &pgproto3.Execute{},
		&pgproto3.Parse{Name: "s1", Query: "select 1"}, &pgproto3.Sync{})
	got := types(t, tr.backendSends(1<<20, parseComplete, bindComplete,
		&pgproto3.ErrorResponse{Severity: "ERROR", Code: "22012", Message: "division by zero"}, rfqIdle))
	if got != "12EZ" {
		t.Fatalf("client got %q, want 12EZ", got)
	}
	if _, ok := tr.r.stmts["s1"]; ok {
		t.Error("s1 exists although its Parse came after the error")
	}
}

func TestTxRelayEvictionClosesOnServer(t *testing.T) {
	be := newTestBackend(1)
	tr := newTestRelay(t, be)
	tr.clientSends(&pgproto3.Parse{Name: "a", Query: "select 1"}, &pgproto3.Sync{})
	tr.backendSends(1<<20, parseComplete, rfqIdle)
	sent := tr.clientSends(&pgproto3.Parse{Name: "b", Query: "select 2"}, &pgproto3.Sync{})
	if got, want := strings.Join(frontendNames(t, sent), " "), "C:server P:server S:"; got != want {
		t.Fatalf("sent %s, want %s", got, want)
	}
	if got := types(t, tr.backendSends(2, closeComplete, parseComplete, rfqIdle)); got != "1Z" {
		t.Fatalf("client got %q, want the eviction's CloseComplete cut out", got)
	}
	if be.Statements.Len() != 1 {
		t.Fatalf("backend records %d statements, want 1", be.Statements.Len())
	}
	// Using the evicted statement prepares it again.
	sent = tr.clientSends(&pgproto3.Bind{PreparedStatement: "a"}, &pgproto3.Execute{}, &pgproto3.Sync{})
	if got, want := strings.Join(frontendNames(t, sent), " "), "C:server P:server B:server E: S:"; got != want {
		t.Fatalf("sent %s, want %s", got, want)
	}
}

func TestTxRelayCloseAndDeallocateAreLocal(t *testing.T) {
	be := newTestBackend(10)
	tr := newTestRelay(t, be)
	tr.clientSends(&pgproto3.Parse{Name: "a", Query: "select 1"}, &pgproto3.Sync{})
	tr.backendSends(1<<20, parseComplete, rfqIdle)
	// Close and a bare Sync need no backend answer at all once detached.
	tr.r.detachForTest()
	if sent := tr.clientSends(&pgproto3.Close{ObjectType: 'S', Name: "a"}, &pgproto3.Sync{}); len(sent) != 0 {
		t.Fatalf("sent %q to a backend for Close", frontendNames(t, sent))
	}
	if got := types(t, tr.client.out.Bytes()); got != "3Z" {
		t.Fatalf("client got %q, want 3Z", got)
	}
	if len(tr.r.stmts) != 0 {
		t.Fatal("closed statement still known")
	}
	tr.r.stmts = map[string]*stmtDef{"b": newStmtDef([]byte("select 2"), []byte{0, 0}, "", sqlinfo.Effects{})}
	if sent := tr.clientSends(&pgproto3.Query{String: "DEALLOCATE b;"}); len(sent) != 0 {
		t.Fatalf("sent %q for DEALLOCATE of a client statement", frontendNames(t, sent))
	}
	if got := types(t, tr.client.out.Bytes()); got != "CZ" || len(tr.r.stmts) != 0 {
		t.Fatalf("client got %q, statements %d", got, len(tr.r.stmts))
	}
}

func (r *txRelay) detachForTest() { r.be, r.bbuf = nil, nil }

func TestDeallocateName(t *testing.T) {
	for q, want := range map[string]string{
		"DEALLOCATE a1": "a1", "deallocate prepare S_1;": "s_1", ` DEALLOCATE "Mixed""Q" `: `Mixed"Q`,
		"DEALLOCATE ALL": "", "DEALLOCATE a; select 1": "", "select 1": "", "DEALLOCATEx a": "",
	} {
		got, ok := deallocateName(q)
		if got != want || ok != (want != "") {
			t.Errorf("deallocateName(%q) = %q, %v; want %q", q, got, ok, want)
		}
	}
}

// BenchmarkTxRelayPrepared is the hot path of a prepared statement in
// transaction mode: a client's Bind/Execute/Sync renamed and queued, and
// the backend's answer matched against the queue and forwarded.
func BenchmarkTxRelayPrepared(b *testing.B) {
	be := newTestBackend(10)
	tr := newTestRelay(b, be)
	def := newStmtDef([]byte("select $1::int"), []byte{0, 1, 0, 0, 0, 23}, "", sqlinfo.Effects{})
	tr.r.stmts = map[string]*stmtDef{"s1": def}
	be.Statements.Add(def.server, nil)
	var in []byte
	in, _ = (&pgproto3.Bind{PreparedStatement: "s1", Parameters: [][]byte{[]byte("42")}}).Encode(in)
	in, _ = (&pgproto3.Execute{}).Encode(in)
	in, _ = (&pgproto3.Sync{}).Encode(in)
	var answer []byte
	for _, m := range []pgproto3.BackendMessage{bindComplete, rowOne, selectOne, rfqIdle} {
		answer, _ = m.Encode(answer)
	}
	r := tr.r
	ctx := context.Background()
	b.ReportAllocs()
	b.SetBytes(int64(len(in) + len(answer)))
	for b.Loop() {
		r.in, r.start, r.end = in, 0, len(in)
		if err := r.processClient(ctx); err != nil {
			b.Fatal(err)
		}
		r.toBE = r.toBE[:0]
		if err := r.processBackend(answer); err != nil {
			b.Fatal(err)
		}
		tr.client.out.Reset()
	}
}

// BenchmarkTxRelayRows forwards a large answer: 100 DataRows per chunk.
func BenchmarkTxRelayRows(b *testing.B) {
	tr := newTestRelay(b, newTestBackend(10))
	var answer []byte
	row := &pgproto3.DataRow{Values: [][]byte{[]byte("12345"), []byte("some text value"), nil}}
	for range 100 {
		answer, _ = row.Encode(answer)
	}
	r := tr.r
	r.q.push(respEntry{kind: 'E'})
	b.ReportAllocs()
	b.SetBytes(int64(len(answer)))
	for b.Loop() {
		if err := r.processBackend(answer); err != nil {
			b.Fatal(err)
		}
		tr.client.out.Reset()
	}
}

// FuzzTxRelay: whatever a client sends and a backend answers, the relay
// neither panics nor loses count of what the backend owes.
func FuzzTxRelay(f *testing.F) {
	var seedC, seedB []byte
	for _, m := range []pgproto3.FrontendMessage{&pgproto3.Parse{Name: "a", Query: "select $1"}, &pgproto3.Bind{PreparedStatement: "a"},
		&pgproto3.Describe{ObjectType: 'S', Name: "a"}, &pgproto3.Execute{}, &pgproto3.Close{ObjectType: 'S', Name: "a"},
		&pgproto3.Sync{}, &pgproto3.Query{String: "set search_path = x; listen y"}, &pgproto3.Terminate{}} {
		seedC, _ = m.Encode(seedC)
	}
	for _, m := range []pgproto3.BackendMessage{parseComplete, bindComplete, paramDesc, rowDesc, rowOne, selectOne, rfqIdle,
		&pgproto3.ErrorResponse{Severity: "ERROR", Code: "0A000", Routine: "RevalidateCachedQuery"}, rfqIdle} {
		seedB, _ = m.Encode(seedB)
	}
	f.Add(seedC, seedB, uint8(3))
	f.Fuzz(func(t *testing.T, client, backend []byte, chunk uint8) {
		tr := newTestRelay(t, newTestBackend(2))
		r := tr.r
		r.in, r.start, r.end = client, 0, len(client)
		if err := r.processClient(context.Background()); err != nil {
			return
		}
		n := int(chunk) + 1
		for len(backend) > 0 {
			k := min(n, len(backend))
			if err := r.processBackend(backend[:k]); err != nil {
				return
			}
			backend = backend[k:]
			if r.awaiting < 0 || r.awaiting > r.q.len() {
				t.Fatalf("awaiting %d with %d entries queued", r.awaiting, r.q.len())
			}
		}
	})
}

// A Bind that needs a shape check, after an Execute the server fails in
// the same batch: the server skips to the Sync, so nothing is checked and
// the relay must not pause again and again (review finding).
func TestTxRelayNoPauseWhileTheServerSkips(t *testing.T) {
	be := newTestBackend(10)
	tr := newTestRelay(t, be)
	r := tr.r
	s1 := newStmtDef([]byte("select 1/0"), []byte{0, 0}, "", sqlinfo.Effects{})
	s2 := newStmtDef([]byte("select 2"), []byte{0, 0}, "", sqlinfo.Effects{})
	s2.shape = []byte{0, 0}
	r.stmts = map[string]*stmtDef{"s1": s1, "s2": s2}
	be.Statements.Add(s1.server, nil)
	var in []byte
	for _, m := range []pgproto3.FrontendMessage{&pgproto3.Bind{PreparedStatement: "s1"}, &pgproto3.Execute{},
		&pgproto3.Bind{PreparedStatement: "s2"}, &pgproto3.Execute{}, &pgproto3.Sync{}} {
		in, _ = m.Encode(in)
	}
	r.in, r.start, r.end = in, 0, len(in)
	if err := r.processClient(context.Background()); err != errPause {
		t.Fatalf("first pass: %v, want errPause for the shape check", err)
	}
	tr.backendSends(1<<20, bindComplete, &pgproto3.ErrorResponse{Severity: "ERROR", Code: "22012", Message: "division by zero"})
	if !r.errSkip {
		t.Fatal("errSkip not set after the error")
	}
	r.toBE = r.toBE[:0]
	if err := r.processClient(context.Background()); err != nil {
		t.Fatalf("second pass: %v, want the rest of the batch forwarded", err)
	}
	if got := frontendNames(t, r.toBE); strings.Join(got, " ") != "B:server E: S:" {
		t.Fatalf("sent %v", got)
	}
	if got := types(t, tr.backendSends(1<<20, rfqIdle)); got != "2EZ" {
		t.Fatalf("client got %q over the batch, want 2EZ", got)
	}
}

// A client Flush followed by more messages in the same read: the later
// messages need a Flush of pgsidecar's own, or their answers never come.
func TestTxRelayFlushCoversLaterMessages(t *testing.T) {
	tr := newTestRelay(t, newTestBackend(10))
	tr.clientSends(&pgproto3.Parse{Query: "select 1"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Flush{},
		&pgproto3.Parse{Query: "select 2"}, &pgproto3.Bind{}, &pgproto3.Execute{})
	if !tr.r.unflushed {
		t.Fatal("messages after the client's Flush are not marked unflushed")
	}
	tr.clientSends(&pgproto3.Flush{})
	if tr.r.unflushed {
		t.Fatal("still unflushed after a Flush")
	}
}

// An eviction's Close that the server skips after an error leaves the
// statement on the server: it is closed before it is prepared again.
func TestTxRelaySkippedEvictionIsClosedLater(t *testing.T) {
	be := newTestBackend(1)
	tr := newTestRelay(t, be)
	tr.clientSends(&pgproto3.Parse{Name: "a", Query: "select 1"}, &pgproto3.Sync{})
	tr.backendSends(1<<20, parseComplete, rfqIdle)
	a := tr.r.stmts["a"].server
	sent := tr.clientSends(&pgproto3.Parse{Query: "select 1/0"}, &pgproto3.Bind{}, &pgproto3.Execute{},
		&pgproto3.Parse{Name: "b", Query: "select 2"}, &pgproto3.Sync{})
	if got := strings.Join(frontendNames(t, sent), " "); got != "P: B: E: C:server P:server S:" {
		t.Fatalf("sent %s", got)
	}
	tr.backendSends(1<<20, parseComplete, bindComplete, &pgproto3.ErrorResponse{Severity: "ERROR", Code: "22012"}, rfqIdle)
	if !be.Statements.Stale(a) {
		t.Fatal("the skipped Close left no trace: the next Parse of it would fail with 42P05")
	}
	other := newTestRelay(t, be)
	sent = other.clientSends(&pgproto3.Parse{Name: "x", Query: "select 1"}, &pgproto3.Sync{})
	if got := strings.Join(frontendNames(t, sent), " "); !strings.HasPrefix(got, "C:server P:server") {
		t.Fatalf("sent %s, want the orphan closed before its Parse", got)
	}
}

// A Query the server skips after an error was never counted as owed.
func TestTxRelaySkippedQueryIsNotCounted(t *testing.T) {
	tr := newTestRelay(t, newTestBackend(10))
	tr.clientSends(&pgproto3.Parse{Query: "select 1/0"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Flush{})
	tr.backendSends(1<<20, parseComplete, bindComplete, &pgproto3.ErrorResponse{Severity: "ERROR", Code: "22012"})
	tr.clientSends(&pgproto3.Query{String: "select 2"}, &pgproto3.Sync{})
	if tr.r.awaiting != 1 {
		t.Fatalf("awaiting %d, want 1 (the Sync)", tr.r.awaiting)
	}
}

// A Bind of the unnamed statement by a client that has none, on a backend
// another client left its unnamed statement on: the server must answer
// that there is none, not run the other client's query.
func TestTxRelayForeignUnnamedStatementIsDropped(t *testing.T) {
	tr := newTestRelay(t, newTestBackend(10))
	tr.r.attachGen = 1
	sent := tr.clientSends(&pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{})
	if got := strings.Join(frontendNames(t, sent), " "); got != "C: B: E: S:" {
		t.Fatalf("sent %s, want the unnamed statement closed first", got)
	}
}
