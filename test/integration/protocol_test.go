package integration

// Raw wire-protocol tests: a pgproto3.Frontend over a plain TCP connection
// to the sidecar, so every message the proxy relays (or makes up itself) is
// seen exactly as a driver would see it.

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgsidecar/pgsidecar/internal/testenv"
	"github.com/pgsidecar/pgsidecar/pool"
)

// rawDeadline bounds every raw connection: a message that never comes fails
// the test instead of hanging it.
const rawDeadline = 15 * time.Second

// rawConn is a client speaking the protocol by hand.
type rawConn struct {
	t  testing.TB
	nc net.Conn
	fe *pgproto3.Frontend

	// What the startup answer held.
	npv    *pgproto3.NegotiateProtocolVersion
	params map[string]string
	key    *pgproto3.BackendKeyData
}

// dialRawConn opens a TCP connection to the sidecar and does nothing else.
func dialRawConn(t testing.TB, sc *sidecar) *rawConn {
	t.Helper()
	nc, err := net.DialTimeout("tcp", sc.Addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	nc.SetDeadline(time.Now().Add(rawDeadline))
	r := &rawConn{t: t, nc: nc, fe: pgproto3.NewFrontend(nc, nc), params: map[string]string{}}
	t.Cleanup(func() {
		r.fe.Send(&pgproto3.Terminate{})
		r.fe.Flush()
		nc.Close()
	})
	return r
}

// rawDirect is a raw connection straight to PostgreSQL (logged in by
// pgconn, then hijacked), to compare the sidecar's answers with.
func rawDirect(t testing.TB, pg *testenv.Postgres) *rawConn {
	t.Helper()
	ctx := ctxT(t)
	pc, err := pgconn.Connect(ctx, pg.URL(pg.SuperUser, pg.SuperPassword, "postgres"))
	if err != nil {
		t.Fatal(err)
	}
	hc, err := pc.Hijack()
	if err != nil {
		t.Fatal(err)
	}
	hc.Conn.SetDeadline(time.Now().Add(rawDeadline))
	r := &rawConn{t: t, nc: hc.Conn, fe: hc.Frontend, params: hc.ParameterStatuses}
	t.Cleanup(func() {
		r.fe.Send(&pgproto3.Terminate{})
		r.fe.Flush()
		hc.Conn.Close()
	})
	return r
}

// rawConnect does the startup handshake as pg's superuser (the sidecar
// trusts it) with extra startup parameters, and fails the test unless it
// ends with ReadyForQuery.
func rawConnect(t testing.TB, sc *sidecar, pg *testenv.Postgres, params map[string]string) *rawConn {
	t.Helper()
	r := dialRawConn(t, sc)
	r.startup(rawStartup(pg, pgproto3.ProtocolVersion30, params))
	return r
}

func rawStartup(pg *testenv.Postgres, version uint32, params map[string]string) *pgproto3.StartupMessage {
	p := map[string]string{"user": pg.SuperUser, "database": "postgres"}
	for k, v := range params {
		p[k] = v
	}
	return &pgproto3.StartupMessage{ProtocolVersion: version, Parameters: p}
}

func (r *rawConn) startup(msg *pgproto3.StartupMessage) {
	r.t.Helper()
	r.fe.Send(msg)
	r.flush()
	for {
		switch m := r.recv().(type) {
		case *pgproto3.NegotiateProtocolVersion:
			r.npv = m
		case *pgproto3.AuthenticationOk:
		case *pgproto3.ParameterStatus:
			r.params[m.Name] = m.Value
		case *pgproto3.BackendKeyData:
			r.key = m
		case *pgproto3.ReadyForQuery:
			if m.TxStatus != 'I' {
				r.t.Fatalf("startup ended with ReadyForQuery %q", m.TxStatus)
			}
			return
		default:
			r.t.Fatalf("unexpected startup message %s", describe(m))
		}
	}
}

func (r *rawConn) send(msgs ...pgproto3.FrontendMessage) {
	r.t.Helper()
	for _, m := range msgs {
		r.fe.Send(m)
	}
	r.flush()
}

func (r *rawConn) flush() {
	r.t.Helper()
	if err := r.fe.Flush(); err != nil {
		r.t.Fatalf("send: %v", err)
	}
}

// recv returns the next message, copied: it stays valid after the next
// Receive.
func (r *rawConn) recv() pgproto3.BackendMessage {
	r.t.Helper()
	m, err := r.fe.Receive()
	if err != nil {
		r.t.Fatalf("receive: %v", err)
	}
	return cloneMessage(r.t, m)
}

// untilReady returns the summaries of the messages up to and including the
// next ReadyForQuery.
func (r *rawConn) untilReady() []string {
	r.t.Helper()
	var out []string
	for {
		m := r.recv()
		out = append(out, describe(m))
		if _, ok := m.(*pgproto3.ReadyForQuery); ok {
			return out
		}
	}
}

// untilCopyIn returns the summaries of the messages up to and including
// the next CopyInResponse (or ReadyForQuery, if the COPY failed to start).
func (r *rawConn) untilCopyIn() []string {
	r.t.Helper()
	var out []string
	for {
		m := r.recv()
		out = append(out, describe(m))
		switch m.(type) {
		case *pgproto3.CopyInResponse, *pgproto3.ReadyForQuery:
			return out
		}
	}
}

// query runs sql with the simple protocol and returns the message
// summaries through ReadyForQuery.
func (r *rawConn) query(sql string) []string {
	r.t.Helper()
	r.send(&pgproto3.Query{String: sql})
	return r.untilReady()
}

// queryValue runs a one-row, one-column query and returns the value.
func (r *rawConn) queryValue(sql string) string {
	r.t.Helper()
	r.send(&pgproto3.Query{String: sql})
	var vals []string
	var errResp *pgproto3.ErrorResponse
	for {
		switch m := r.recv().(type) {
		case *pgproto3.DataRow:
			for _, v := range m.Values {
				vals = append(vals, string(v))
			}
		case *pgproto3.ErrorResponse:
			errResp = m
		case *pgproto3.ReadyForQuery:
			if errResp != nil {
				r.t.Fatalf("%s: %s %s", sql, errResp.Code, errResp.Message)
			}
			if len(vals) != 1 {
				r.t.Fatalf("%s: got values %q, want one", sql, vals)
			}
			return vals[0]
		}
	}
}

// cloneMessage deep-copies m by encoding and decoding it.
func cloneMessage(t testing.TB, m pgproto3.BackendMessage) pgproto3.BackendMessage {
	t.Helper()
	b, err := m.Encode(nil)
	if err != nil {
		t.Fatalf("encode %T: %v", m, err)
	}
	c := reflect.New(reflect.TypeOf(m).Elem()).Interface().(pgproto3.BackendMessage)
	if err := c.Decode(b[5:]); err != nil {
		t.Fatalf("decode %T: %v", m, err)
	}
	return c
}

// describe is a one-line summary of a backend message, for comparing
// message sequences.
func describe(m pgproto3.BackendMessage) string {
	switch m := m.(type) {
	case *pgproto3.RowDescription:
		names := make([]string, len(m.Fields))
		for i, f := range m.Fields {
			names[i] = string(f.Name)
		}
		return "T " + strings.Join(names, ",")
	case *pgproto3.DataRow:
		vals := make([]string, len(m.Values))
		for i, v := range m.Values {
			if v == nil {
				vals[i] = "NULL"
			} else {
				vals[i] = string(v)
			}
		}
		return "D " + strings.Join(vals, ",")
	case *pgproto3.CommandComplete:
		return "C " + string(m.CommandTag)
	case *pgproto3.ReadyForQuery:
		return "Z " + string(m.TxStatus)
	case *pgproto3.ErrorResponse:
		return "E " + m.Code
	case *pgproto3.NoticeResponse:
		return "N " + m.Code + " " + m.Message
	case *pgproto3.ParameterStatus:
		return "S " + m.Name + "=" + m.Value
	case *pgproto3.EmptyQueryResponse:
		return "I"
	case *pgproto3.ParseComplete:
		return "1"
	case *pgproto3.BindComplete:
		return "2"
	case *pgproto3.CloseComplete:
		return "3"
	case *pgproto3.NoData:
		return "n"
	case *pgproto3.CopyInResponse:
		return "G"
	case *pgproto3.CopyOutResponse:
		return "H"
	case *pgproto3.CopyData:
		return "d " + string(m.Data)
	case *pgproto3.CopyDone:
		return "c"
	case *pgproto3.NotificationResponse:
		return "A " + m.Channel + " " + m.Payload
	case *pgproto3.FunctionCallResponse:
		return "V " + hex.EncodeToString(m.Result)
	}
	return fmt.Sprintf("%T", m)
}

func expectMessages(t testing.TB, what string, got, want []string) {
	t.Helper()
	if !slices.Equal(got, want) {
		t.Fatalf("%s:\ngot  %q\nwant %q", what, got, want)
	}
}

func int4Bytes(v int32) []byte { return binary.BigEndian.AppendUint32(nil, uint32(v)) }

// rawSidecar is a sidecar with a small pool for one raw-protocol test.
func rawSidecar(t *testing.T) (*testenv.Postgres, *sidecar) {
	t.Helper()
	pg := env.Postgres(t)
	return pg, startSidecar(t, pg, sidecarOptions{Pool: pool.Config{PoolSize: 4}})
}

// --- Simple query protocol ---

func TestProtocolMultiStatementQueryOneReadyForQuery(t *testing.T) {
	t.Parallel()
	pg, sc := rawSidecar(t)
	r := rawConnect(t, sc, pg, nil)
	expectMessages(t, "select 1; select 2", r.query("select 1 as a; select 2 as b"),
		[]string{"T a", "D 1", "C SELECT 1", "T b", "D 2", "C SELECT 1", "Z I"})
	// Nothing extra was left queued: the next answer is the next query's.
	expectMessages(t, "follow-up", r.query("select 3 as c"), []string{"T c", "D 3", "C SELECT 1", "Z I"})
}

func TestProtocolEmptyQuery(t *testing.T) {
	t.Parallel()
	pg, sc := rawSidecar(t)
	r := rawConnect(t, sc, pg, nil)
	expectMessages(t, "empty query", r.query(""), []string{"I", "Z I"})
	expectMessages(t, "only a semicolon", r.query(";"), []string{"I", "Z I"})
}

func TestProtocolNoticeResponse(t *testing.T) {
	t.Parallel()
	pg, sc := rawSidecar(t)
	r := rawConnect(t, sc, pg, nil)
	r.send(&pgproto3.Query{String: `DO $$ BEGIN RAISE NOTICE 'hi'; END $$`})
	notice, ok := r.recv().(*pgproto3.NoticeResponse)
	if !ok {
		t.Fatal("first answer to a RAISE NOTICE is not a NoticeResponse")
	}
	if notice.Severity != "NOTICE" || notice.SeverityUnlocalized != "NOTICE" || notice.Code != "00000" || notice.Message != "hi" || !strings.Contains(notice.Where, "PL/pgSQL") {
		t.Fatalf("notice = %+v", notice)
	}
	expectMessages(t, "after the notice", r.untilReady(), []string{"C DO", "Z I"})
}

func TestProtocolParameterStatusAfterSet(t *testing.T) {
	t.Parallel()
	pg, sc := rawSidecar(t)
	r := rawConnect(t, sc, pg, nil)
	direct := rawDirect(t, pg)
	expectMessages(t, "SET TimeZone", r.query("SET TimeZone='Asia/Tokyo'"), []string{"C SET", "S TimeZone=Asia/Tokyo", "Z I"})
	expectMessages(t, "SET application_name", r.query("SET application_name = 'renamed'"), []string{"C SET", "S application_name=renamed", "Z I"})
	direct.query("SET TimeZone='Asia/Tokyo'")
	direct.query("SET application_name = 'renamed'")
	// The server reports changes just before ReadyForQuery: check a few
	// sequences against PostgreSQL itself.
	for _, sql := range []string{
		"BEGIN; SET TimeZone='Europe/Paris'",
		"ROLLBACK",
		"SET DateStyle = 'German'; SET IntervalStyle = 'sql_standard'",
		"RESET ALL",
		"SET TimeZone='Asia/Tokyo'; SET TimeZone='UTC'; SET TimeZone='Asia/Tokyo'",
	} {
		expectMessages(t, sql, r.query(sql), direct.query(sql))
	}
}

func TestProtocolNotificationResponse(t *testing.T) {
	t.Parallel()
	pg, sc := rawSidecar(t)
	listener := rawConnect(t, sc, pg, nil)
	notifier := rawConnect(t, sc, pg, nil)
	channel := uniq("chan")

	expectMessages(t, "LISTEN", listener.query("LISTEN "+channel), []string{"C LISTEN", "Z I"})
	notifierPID, err := strconv.Atoi(notifier.queryValue("select pg_backend_pid()"))
	if err != nil {
		t.Fatal(err)
	}
	expectMessages(t, "NOTIFY", notifier.query("NOTIFY "+channel+", 'p'"), []string{"C NOTIFY", "Z I"})

	// The listener is idle: the notification arrives on its own.
	m := listener.recv()
	n, ok := m.(*pgproto3.NotificationResponse)
	if !ok {
		t.Fatalf("listener got %s, want a NotificationResponse", describe(m))
	}
	if n.Channel != channel || n.Payload != "p" || n.PID != uint32(notifierPID) {
		t.Fatalf("notification = %+v, want channel %s payload p from pid %d", n, channel, notifierPID)
	}
	expectMessages(t, "listener still usable", listener.query("select 1 as x"), []string{"T x", "D 1", "C SELECT 1", "Z I"})
}

// --- Extended query protocol ---

func TestProtocolPipelineWithSeveralSyncs(t *testing.T) {
	t.Parallel()
	pg, sc := rawSidecar(t)
	r := rawConnect(t, sc, pg, nil)
	// Three complete extended exchanges in one write.
	for i := range 3 {
		r.fe.Send(&pgproto3.Parse{Query: "select $1::int + 100 as v"})
		r.fe.Send(&pgproto3.Bind{Parameters: [][]byte{[]byte(strconv.Itoa(i))}})
		r.fe.Send(&pgproto3.Execute{})
		r.fe.Send(&pgproto3.Sync{})
	}
	r.flush()
	for i := range 3 {
		expectMessages(t, fmt.Sprintf("exchange %d", i), r.untilReady(),
			[]string{"1", "2", fmt.Sprintf("D %d", 100+i), "C SELECT 1", "Z I"})
	}
	// Named statement prepared once, executed in a pipeline with Describe.
	r.fe.Send(&pgproto3.Parse{Name: "s1", Query: "select $1::text || '!' as e"})
	r.fe.Send(&pgproto3.Describe{ObjectType: 'S', Name: "s1"})
	r.fe.Send(&pgproto3.Sync{})
	for _, arg := range []string{"a", "b"} {
		r.fe.Send(&pgproto3.Bind{PreparedStatement: "s1", Parameters: [][]byte{[]byte(arg)}})
		r.fe.Send(&pgproto3.Execute{})
		r.fe.Send(&pgproto3.Sync{})
	}
	r.flush()
	expectMessages(t, "prepare", r.untilReady(), []string{"1", "*pgproto3.ParameterDescription", "T e", "Z I"})
	expectMessages(t, "execute a", r.untilReady(), []string{"2", "D a!", "C SELECT 1", "Z I"})
	expectMessages(t, "execute b", r.untilReady(), []string{"2", "D b!", "C SELECT 1", "Z I"})
}

func TestProtocolErrorInExtendedBatchSkipsToSync(t *testing.T) {
	t.Parallel()
	pg, sc := rawSidecar(t)
	r := rawConnect(t, sc, pg, nil)
	r.send(
		&pgproto3.Parse{Query: "select $1::int as v"},
		&pgproto3.Bind{Parameters: [][]byte{[]byte("not a number")}},
		&pgproto3.Execute{},
		&pgproto3.Parse{Query: "select 42 as skipped"},
		&pgproto3.Bind{},
		&pgproto3.Execute{},
		&pgproto3.Sync{},
	)
	expectMessages(t, "failed batch", r.untilReady(), []string{"1", "E 22P02", "Z I"})
	expectMessages(t, "next query", r.query("select 7 as n"), []string{"T n", "D 7", "C SELECT 1", "Z I"})

	// The same inside an explicit transaction leaves it failed until
	// ROLLBACK.
	expectMessages(t, "begin", r.query("BEGIN"), []string{"C BEGIN", "Z T"})
	r.send(&pgproto3.Parse{Query: "select 1/0"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{})
	expectMessages(t, "error in transaction", r.untilReady(), []string{"1", "E 22012", "Z E"})
	expectMessages(t, "rollback", r.query("ROLLBACK"), []string{"C ROLLBACK", "Z I"})
}

func TestProtocolFunctionCall(t *testing.T) {
	t.Parallel()
	pg, sc := rawSidecar(t)
	r := rawConnect(t, sc, pg, nil)
	oid, err := strconv.ParseUint(r.queryValue("select 'int4pl'::regproc::oid"), 10, 32)
	if err != nil {
		t.Fatal(err)
	}
	r.send(&pgproto3.FunctionCall{
		Function:         uint32(oid),
		ArgFormatCodes:   []uint16{1},
		Arguments:        [][]byte{int4Bytes(40), int4Bytes(2)},
		ResultFormatCode: 1,
	})
	expectMessages(t, "int4pl(40, 2)", r.untilReady(), []string{"V " + hex.EncodeToString(int4Bytes(42)), "Z I"})
	// An error from a function call ends with ReadyForQuery too.
	r.send(&pgproto3.FunctionCall{
		Function:         uint32(oid),
		ArgFormatCodes:   []uint16{1},
		Arguments:        [][]byte{int4Bytes(1 << 30), int4Bytes(1 << 30)},
		ResultFormatCode: 1,
	})
	expectMessages(t, "int4pl overflow", r.untilReady(), []string{"E 22003", "Z I"})
	expectMessages(t, "next query", r.query("select 1 as ok"), []string{"T ok", "D 1", "C SELECT 1", "Z I"})
}

// --- COPY ---

func TestProtocolCopyInOutAndCopyFail(t *testing.T) {
	t.Parallel()
	pg, sc := rawSidecar(t)
	r := rawConnect(t, sc, pg, nil)
	expectMessages(t, "create", r.query("create temp table c (a int, b text)"), []string{"C CREATE TABLE", "Z I"})

	r.send(&pgproto3.Query{String: "copy c from stdin"})
	expectMessages(t, "copy from stdin", r.untilCopyIn(), []string{"G"})
	r.send(&pgproto3.CopyData{Data: []byte("1\tone\n2\t")}, &pgproto3.CopyData{Data: []byte("two\n")}, &pgproto3.CopyDone{})
	expectMessages(t, "copy done", r.untilReady(), []string{"C COPY 2", "Z I"})

	r.send(&pgproto3.Query{String: "copy c from stdin"})
	expectMessages(t, "second copy from stdin", r.untilCopyIn(), []string{"G"})
	r.send(&pgproto3.CopyData{Data: []byte("3\tthree\n")}, &pgproto3.CopyFail{Message: "client gave up"})
	m := r.recv()
	e, ok := m.(*pgproto3.ErrorResponse)
	if !ok || e.Code != "57014" || !strings.Contains(e.Message, "client gave up") {
		t.Fatalf("after CopyFail got %s (%+v), want ErrorResponse 57014 naming the reason", describe(m), m)
	}
	expectMessages(t, "after CopyFail", r.untilReady(), []string{"Z I"})
	if got := r.queryValue("select count(*) from c"); got != "2" {
		t.Fatalf("rows after a failed COPY: %s, want 2", got)
	}

	expectMessages(t, "copy to stdout", r.query("copy (select * from c order by a) to stdout"),
		[]string{"H", "d 1\tone\n", "d 2\ttwo\n", "c", "C COPY 2", "Z I"})

	// COPY FROM STDIN through the extended protocol: the Sync follows the
	// CopyDone.
	r.send(&pgproto3.Parse{Query: "copy c from stdin"}, &pgproto3.Bind{}, &pgproto3.Execute{})
	expectMessages(t, "extended copy", r.untilCopyIn(), []string{"1", "2", "G"})
	r.send(&pgproto3.CopyData{Data: []byte("4\tfour\n")}, &pgproto3.CopyDone{}, &pgproto3.Sync{})
	expectMessages(t, "extended copy done", r.untilReady(), []string{"C COPY 1", "Z I"})
	if got := r.queryValue("select string_agg(b, ',' order by a) from c"); got != "one,two,four" {
		t.Fatalf("table holds %q", got)
	}
}

// --- Startup ---

func TestProtocolStartupParameterStatus(t *testing.T) {
	t.Parallel()
	pg, sc := rawSidecar(t)
	ctx := ctxT(t)
	app := uniq("startup_app")
	r := rawConnect(t, sc, pg, map[string]string{"application_name": app, "client_encoding": "UTF8"})

	direct, err := pgconn.Connect(ctx, pg.URL(pg.SuperUser, pg.SuperPassword, "postgres")+"&client_encoding=UTF8&application_name="+app)
	if err != nil {
		t.Fatal(err)
	}
	defer direct.Close(ctx)

	for _, name := range []string{
		"server_version", "server_encoding", "client_encoding", "DateStyle", "TimeZone",
		"integer_datetimes", "standard_conforming_strings", "IntervalStyle", "application_name",
		"is_superuser", "session_authorization",
	} {
		got, ok := r.params[name]
		if !ok {
			t.Errorf("no ParameterStatus %s at startup", name)
			continue
		}
		if want := direct.ParameterStatus(name); got != want {
			t.Errorf("ParameterStatus %s = %q through the sidecar, %q from PostgreSQL", name, got, want)
		}
	}
	if r.params["application_name"] != app {
		t.Errorf("application_name = %q, want %q", r.params["application_name"], app)
	}

	if r.key == nil {
		t.Fatal("no BackendKeyData")
	}
	if len(r.key.SecretKey) != 4 {
		t.Errorf("secret key of %d bytes under protocol 3.0", len(r.key.SecretKey))
	}
	realPID := r.queryValue("select pg_backend_pid()")
	if strconv.FormatUint(uint64(r.key.ProcessID), 10) == realPID {
		t.Errorf("BackendKeyData exposes the real backend pid %s", realPID)
	}
	if r.npv != nil {
		t.Errorf("NegotiateProtocolVersion sent to a 3.0 client without options: %+v", r.npv)
	}
}

func TestProtocolStartupOptionsTakeEffect(t *testing.T) {
	t.Parallel()
	pg, sc := rawSidecar(t)
	ctx := ctxT(t)
	schema := uniq("opt_schema")
	params := map[string]string{
		"options":   `-c search_path=` + schema + `,public -c statement_timeout=1234 --lock-timeout=4321`,
		"TimeZone":  "Asia/Tokyo",
		"DateStyle": "SQL, DMY",
	}
	r := rawConnect(t, sc, pg, params)
	if r.params["TimeZone"] != "Asia/Tokyo" || r.params["DateStyle"] != "SQL, DMY" {
		t.Errorf("startup ParameterStatus TimeZone=%q DateStyle=%q", r.params["TimeZone"], r.params["DateStyle"])
	}

	cfg, err := pgconn.ParseConfig(pg.URL(pg.SuperUser, pg.SuperPassword, "postgres"))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range params {
		cfg.RuntimeParams[k] = v
	}
	direct, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer direct.Close(ctx)

	want := map[string]string{
		"search_path":       schema + ",public",
		"statement_timeout": "1234ms",
		"lock_timeout":      "4321ms",
		"TimeZone":          "Asia/Tokyo",
		"DateStyle":         "SQL, DMY",
	}
	for name, w := range want {
		got := r.queryValue("SHOW " + name)
		res, err := direct.Exec(ctx, "SHOW "+name).ReadAll()
		if err != nil {
			t.Fatal(err)
		}
		if fromPG := string(res[0].Rows[0][0]); got != fromPG || got != w {
			t.Errorf("SHOW %s = %q through the sidecar, %q from PostgreSQL, want %q", name, got, fromPG, w)
		}
	}
	if got := r.queryValue("select '2024-03-01 12:00+00'::timestamptz::text"); got != "01/03/2024 21:00:00 JST" {
		t.Errorf("timestamptz rendered as %q under SQL, DMY in Asia/Tokyo", got)
	}
}

func TestProtocolVersion32Negotiated(t *testing.T) {
	t.Parallel()
	pg, sc := rawSidecar(t)
	r := dialRawConn(t, sc)
	r.startup(rawStartup(pg, pgproto3.ProtocolVersion32, map[string]string{"_pq_.something": "on"}))
	if r.npv == nil {
		t.Fatal("no NegotiateProtocolVersion for a 3.2 request")
	}
	if r.npv.NewestMinorProtocol != 0 || !slices.Equal(r.npv.UnrecognizedOptions, []string{"_pq_.something"}) {
		t.Fatalf("NegotiateProtocolVersion = %+v, want newest minor 0 and _pq_.something unrecognized", r.npv)
	}
	if r.key == nil || len(r.key.SecretKey) != 4 {
		t.Fatalf("BackendKeyData %+v, want a 3.0 (4-byte) secret", r.key)
	}
	expectMessages(t, "query after negotiation", r.query("select 1 as one"), []string{"T one", "D 1", "C SELECT 1", "Z I"})

	// 3.2 alone: negotiated down, nothing unrecognized.
	r2 := dialRawConn(t, sc)
	r2.startup(rawStartup(pg, pgproto3.ProtocolVersion32, nil))
	if r2.npv == nil || r2.npv.NewestMinorProtocol != 0 || len(r2.npv.UnrecognizedOptions) != 0 {
		t.Fatalf("NegotiateProtocolVersion = %+v, want newest minor 0 and no options", r2.npv)
	}
	expectMessages(t, "query on 3.2 request", r2.query("select 2 as two"), []string{"T two", "D 2", "C SELECT 1", "Z I"})
}

func TestProtocolVersion2Refused(t *testing.T) {
	t.Parallel()
	_, sc := rawSidecar(t)
	r := dialRawConn(t, sc)
	// A protocol 2.0 startup packet: length, version, then fixed-width
	// database (64), user (32), options (64), unused (64) and tty (64).
	pkt := make([]byte, 296)
	binary.BigEndian.PutUint32(pkt, 296)
	binary.BigEndian.PutUint32(pkt[4:], 2<<16)
	copy(pkt[8:], "postgres")
	copy(pkt[8+64:], "postgres")
	if _, err := r.nc.Write(pkt); err != nil {
		t.Fatal(err)
	}
	m := r.recv()
	e, ok := m.(*pgproto3.ErrorResponse)
	if !ok {
		t.Fatalf("got %s, want ErrorResponse", describe(m))
	}
	if e.Code != "0A000" || e.Severity != "FATAL" || !strings.Contains(e.Message, "2.0") {
		t.Fatalf("error = %s %s %q, want FATAL 0A000 naming protocol 2.0", e.Severity, e.Code, e.Message)
	}
	if _, err := r.fe.Receive(); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("connection not closed after the refusal: %v", err)
	}
}

// TestProtocolCancelRequestWithProxyKey: the key a client got from the
// sidecar (not the backend's) cancels its query.
func TestProtocolCancelRequestWithProxyKey(t *testing.T) {
	t.Parallel()
	pg, sc := rawSidecar(t)
	r := rawConnect(t, sc, pg, nil)
	r.send(&pgproto3.Query{String: "select pg_sleep(60)"})
	// Wait (bounded by the connection deadline) until the sleep is running
	// on the server, so the cancel cannot arrive before the query.
	other := rawConnect(t, sc, pg, nil)
	deadline := time.Now().Add(10 * time.Second)
	for other.queryValue("select count(*) from pg_stat_activity where query = 'select pg_sleep(60)' and state = 'active'") != "1" {
		if time.Now().After(deadline) {
			t.Fatal("the query never started")
		}
	}

	cc, err := net.DialTimeout("tcp", sc.Addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	cc.SetDeadline(time.Now().Add(rawDeadline))
	b, err := (&pgproto3.CancelRequest{ProcessID: r.key.ProcessID, SecretKey: r.key.SecretKey}).Encode(nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cc.Write(b); err != nil {
		t.Fatal(err)
	}
	// The server answers a cancel request by closing the connection.
	if n, err := cc.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("cancel connection: read %d bytes, %v; want EOF", n, err)
	}
	expectMessages(t, "cancelled query", r.untilReady(), []string{"T pg_sleep", "E 57014", "Z I"})
	expectMessages(t, "after cancel", r.query("select 1 as ok"), []string{"T ok", "D 1", "C SELECT 1", "Z I"})
}
