package integration

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgconn/ctxwatch"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgsidecar/pgsidecar/internal/testenv"
	"github.com/pgsidecar/pgsidecar/pool"
	"github.com/pgsidecar/pgsidecar/proxy"
)

// Startup-phase request codes, as the protocol defines them.
const (
	codeCancelRequest = 80877102
	codeSSLRequest    = 80877103
	codeGSSENCRequest = 80877104
)

// rawClient drives the protocol by hand, for what no driver will send.
type rawClient struct {
	nc net.Conn
	fe *pgproto3.Frontend
}

// dialRaw connects to addr. Every read and write is bounded by a deadline
// so that a proxy that never answers fails the test instead of hanging it.
func dialRaw(t testing.TB, addr string) *rawClient {
	t.Helper()
	nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	nc.SetDeadline(time.Now().Add(20 * time.Second))
	return &rawClient{nc: nc, fe: pgproto3.NewFrontend(nc, nc)}
}

// writeStartupCode writes an 8-byte untyped startup-phase request.
func (c *rawClient) writeStartupCode(t testing.TB, code uint32) {
	t.Helper()
	b := binary.BigEndian.AppendUint32(nil, 8)
	b = binary.BigEndian.AppendUint32(b, code)
	if _, err := c.nc.Write(b); err != nil {
		t.Fatal(err)
	}
}

// readByte reads the single-byte answer to an SSLRequest or GSSENCRequest.
func (c *rawClient) readByte(t testing.TB) byte {
	t.Helper()
	var b [1]byte
	if _, err := io.ReadFull(c.nc, b[:]); err != nil {
		t.Fatalf("read the one-byte answer: %v", err)
	}
	return b[0]
}

// startup logs in with a StartupMessage (trust) and reads through the first
// ReadyForQuery. It returns the BackendKeyData the proxy issued.
func (c *rawClient) startup(t testing.TB, user, database string) *pgproto3.BackendKeyData {
	t.Helper()
	c.fe.Send(&pgproto3.StartupMessage{
		ProtocolVersion: pgproto3.ProtocolVersionNumber,
		Parameters:      map[string]string{"user": user, "database": database},
	})
	if err := c.fe.Flush(); err != nil {
		t.Fatal(err)
	}
	var key *pgproto3.BackendKeyData
	for {
		msg, err := c.fe.Receive()
		if err != nil {
			t.Fatalf("startup: %v", err)
		}
		switch m := msg.(type) {
		case *pgproto3.AuthenticationOk, *pgproto3.ParameterStatus:
		case *pgproto3.BackendKeyData:
			key = &pgproto3.BackendKeyData{ProcessID: m.ProcessID, SecretKey: append([]byte(nil), m.SecretKey...)}
		case *pgproto3.ReadyForQuery:
			if key == nil {
				t.Fatal("startup: ReadyForQuery without BackendKeyData")
			}
			if m.TxStatus != 'I' {
				t.Fatalf("startup: transaction status %q, want 'I'", m.TxStatus)
			}
			return key
		case *pgproto3.ErrorResponse:
			t.Fatalf("startup refused: %s %s: %s", m.Severity, m.Code, m.Message)
		default:
			t.Fatalf("startup: unexpected %T", msg)
		}
	}
}

// simpleQuery runs sql with the simple protocol and reads through
// ReadyForQuery. It returns the rows' first column as text, the transaction
// status and the server error, if any.
func (c *rawClient) simpleQuery(t testing.TB, sql string) (rows []string, txStatus byte, pgErr *pgproto3.ErrorResponse) {
	t.Helper()
	c.fe.SendQuery(&pgproto3.Query{String: sql})
	if err := c.fe.Flush(); err != nil {
		t.Fatal(err)
	}
	for {
		msg, err := c.fe.Receive()
		if err != nil {
			t.Fatalf("query %q: %v", sql, err)
		}
		switch m := msg.(type) {
		case *pgproto3.DataRow:
			if len(m.Values) > 0 {
				rows = append(rows, string(m.Values[0]))
			}
		case *pgproto3.ErrorResponse:
			e := *m
			pgErr = &e
		case *pgproto3.ReadyForQuery:
			return rows, m.TxStatus, pgErr
		}
	}
}

// expectErrorThenEOF reads until the proxy closes the connection, within
// bound. It requires an ErrorResponse with code want (when want is not
// empty) and fails on anything else that is not a clean close.
func (c *rawClient) expectErrorThenEOF(t testing.TB, want string, bound time.Duration) {
	t.Helper()
	c.nc.SetReadDeadline(time.Now().Add(bound))
	var got *pgproto3.ErrorResponse
	for {
		msg, err := c.fe.Receive()
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("connection still open after %s", bound)
			}
			break
		}
		switch m := msg.(type) {
		case *pgproto3.ErrorResponse:
			if got != nil {
				t.Fatalf("second ErrorResponse %s %s", m.Code, m.Message)
			}
			e := *m
			got = &e
		case *pgproto3.NoticeResponse, *pgproto3.ParameterStatus:
		default:
			t.Fatalf("unexpected %T before close", msg)
		}
	}
	if want == "" {
		return
	}
	if got == nil {
		t.Fatalf("connection closed without an ErrorResponse; want SQLSTATE %s", want)
	}
	if got.Code != want {
		t.Fatalf("ErrorResponse %s %s: %q; want SQLSTATE %s", got.Severity, got.Code, got.Message, want)
	}
	if got.Severity != "FATAL" {
		t.Errorf("ErrorResponse severity %q before close; want FATAL", got.Severity)
	}
}

// expectClosed reads until the server closes the connection, within bound,
// and returns what it sent before closing.
func expectClosed(t testing.TB, nc net.Conn, bound time.Duration) []byte {
	t.Helper()
	nc.SetReadDeadline(time.Now().Add(bound))
	b, err := io.ReadAll(nc)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("connection still open after %s (got %q)", bound, b)
	}
	return b
}

// pgDirect connects to pg itself as the superuser, bypassing the proxy, to
// watch what the proxy does to the server.
func pgDirect(t testing.TB, pg *testenv.Postgres) *pgx.Conn {
	t.Helper()
	ctx := ctxT(t)
	conn, err := pgx.Connect(ctx, pg.URL(pg.SuperUser, pg.SuperPassword, "postgres"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// activeWith counts the other sessions on the server running a statement
// whose text contains tag.
func activeWith(ctx context.Context, conn *pgx.Conn, tag string) (int, error) {
	var n int
	err := conn.QueryRow(ctx, `select count(*) from pg_stat_activity
		where state = 'active' and pid <> pg_backend_pid() and strpos(query, $1) > 0`, tag).Scan(&n)
	return n, err
}

// eventually polls cond until it holds, failing t after bound.
func eventually(t testing.TB, bound time.Duration, what string, cond func() (bool, error)) {
	t.Helper()
	deadline := time.Now().Add(bound)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		ok, err := cond()
		if err != nil {
			t.Fatalf("waiting for %s: %v", what, err)
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, bound)
		}
		<-tick.C
	}
}

// waitActive waits until a statement tagged tag runs on the server.
func waitActive(t testing.TB, direct *pgx.Conn, tag string) {
	t.Helper()
	ctx := ctxT(t)
	eventually(t, 10*time.Second, "statement "+tag+" running on PostgreSQL", func() (bool, error) {
		n, err := activeWith(ctx, direct, tag)
		return n > 0, err
	})
}

// pgCode returns the SQLSTATE of err, or "" when it is no server error.
func pgCode(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code
	}
	return ""
}

// cancellingConn connects with pgx configured to answer a cancelled context
// with a CancelRequest (through the proxy), not by closing the socket.
func cancellingConn(t testing.TB, url string) *pgx.Conn {
	t.Helper()
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	cfg.BuildContextWatcherHandler = func(c *pgconn.PgConn) ctxwatch.Handler {
		return &pgconn.CancelRequestContextWatcherHandler{Conn: c, DeadlineDelay: 15 * time.Second}
	}
	ctx := ctxT(t)
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func selectOne(t testing.TB, conn *pgx.Conn) {
	t.Helper()
	var n int
	if err := conn.QueryRow(ctxT(t), "select 1").Scan(&n); err != nil {
		t.Fatalf("select 1: %v", err)
	}
	if n != 1 {
		t.Fatalf("select 1 = %d", n)
	}
}

func TestFaultCancelContext(t *testing.T) {
	t.Parallel()
	pg := env.Postgres(t)
	sc := startSidecar(t, pg, sidecarOptions{})
	direct := pgDirect(t, pg)
	conn := cancellingConn(t, sc.SuperURL(pg))
	ctx := ctxT(t)

	tag := uniq("cancel")
	qctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, 1)
	go func() {
		_, err := conn.Exec(qctx, "select pg_sleep(30) /* "+tag+" */")
		errc <- err
	}()
	waitActive(t, direct, tag)
	start := time.Now()
	cancel()
	select {
	case err := <-errc:
		if code := pgCode(err); code != "57014" {
			t.Fatalf("cancelled query: err %v (SQLSTATE %q), want 57014", err, code)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("cancelled query still running after 5s")
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("cancel took %s", d)
	}
	if conn.IsClosed() {
		t.Fatal("connection closed by the cancel")
	}
	selectOne(t, conn)
	if n, err := activeWith(ctx, direct, tag); err != nil || n != 0 {
		t.Fatalf("pg_sleep still running on PostgreSQL: %d (%v)", n, err)
	}
	if st := sc.Server.Stats(); st.Cancels != 1 || st.CancelsUnknown != 0 {
		t.Errorf("stats: %d cancels forwarded, %d unknown; want 1, 0", st.Cancels, st.CancelsUnknown)
	}
}

func TestFaultCancelUnknownKey(t *testing.T) {
	t.Parallel()
	pg := env.Postgres(t)
	sc := startSidecar(t, pg, sidecarOptions{})
	direct := pgDirect(t, pg)
	ctx := ctxT(t)
	conn, err := pgx.Connect(ctx, sc.SuperURL(pg))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)

	// A statement that must survive a cancel request that names nobody.
	tag := uniq("survive")
	errc := make(chan error, 1)
	go func() {
		_, err := conn.Exec(ctx, "select pg_sleep(1) /* "+tag+" */")
		errc <- err
	}()
	waitActive(t, direct, tag)

	raw := dialRaw(t, sc.Addr)
	pkt := binary.BigEndian.AppendUint32(nil, 16)
	pkt = binary.BigEndian.AppendUint32(pkt, codeCancelRequest)
	pkt = binary.BigEndian.AppendUint32(pkt, 0x7eadbeef)
	pkt = binary.BigEndian.AppendUint32(pkt, 0x01020304)
	if _, err := raw.nc.Write(pkt); err != nil {
		t.Fatal(err)
	}
	if b := expectClosed(t, raw.nc, 5*time.Second); len(b) != 0 {
		t.Errorf("proxy answered a CancelRequest with %q; PostgreSQL sends nothing", b)
	}
	eventually(t, 5*time.Second, "unknown cancel counted", func() (bool, error) {
		return sc.Server.Stats().CancelsUnknown == 1, nil
	})
	select {
	case err := <-errc:
		if err != nil {
			t.Fatalf("statement hit by a cancel request for another key: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("statement did not finish")
	}
	if st := sc.Server.Stats(); st.Cancels != 0 {
		t.Errorf("%d cancels forwarded; want 0", st.Cancels)
	}
	selectOne(t, conn)
	other, err := pgx.Connect(ctx, sc.SuperURL(pg))
	if err != nil {
		t.Fatalf("new client after an unknown cancel: %v", err)
	}
	defer other.Close(ctx)
	selectOne(t, other)
}

func TestFaultClientDisconnectMidQuery(t *testing.T) {
	t.Parallel()
	pg := env.Postgres(t)
	// query_wait_timeout 2s: once the cancelled statement has ended, the
	// only backend must come back well within that.
	sc := startSidecar(t, pg, sidecarOptions{
		Pool:  pool.Config{PoolSize: 1},
		Proxy: proxy.Config{QueryWaitTimeout: 2 * time.Second},
	})
	direct := pgDirect(t, pg)
	ctx := ctxT(t)

	raw := dialRaw(t, sc.Addr)
	raw.startup(t, pg.SuperUser, "postgres")
	tag := uniq("gone")
	raw.fe.SendQuery(&pgproto3.Query{String: "select pg_sleep(60) /* " + tag + " */"})
	if err := raw.fe.Flush(); err != nil {
		t.Fatal(err)
	}
	waitActive(t, direct, tag)
	raw.nc.Close()

	eventually(t, 5*time.Second, "pg_sleep cancelled after its client left", func() (bool, error) {
		n, err := activeWith(ctx, direct, tag)
		return n == 0, err
	})

	// The only backend is either back in the pool, clean, or replaced.
	start := time.Now()
	conn, err := pgx.Connect(ctx, sc.SuperURL(pg))
	if err != nil {
		t.Fatalf("next client with pool_size 1, %s after the statement ended: %v", time.Since(start).Round(time.Millisecond), err)
	}
	defer conn.Close(ctx)
	selectOne(t, conn)
	if s := conn.PgConn().TxStatus(); s != 'I' {
		t.Fatalf("next client's transaction status %q, want 'I'", s)
	}
}

func TestFaultClientDisconnectInTransaction(t *testing.T) {
	t.Parallel()
	pg := env.Postgres(t)
	ctx := ctxT(t)
	table := uniq("t_abandoned")
	if err := pg.Exec(ctx, "create table "+table+" (id int)"); err != nil {
		t.Fatal(err)
	}
	sc := startSidecar(t, pg, sidecarOptions{Pool: pool.Config{PoolSize: 1}})

	raw := dialRaw(t, sc.Addr)
	raw.startup(t, pg.SuperUser, "postgres")
	if _, tx, e := raw.simpleQuery(t, "begin"); e != nil || tx != 'T' {
		t.Fatalf("begin: status %q, error %v", tx, e)
	}
	if _, tx, e := raw.simpleQuery(t, "insert into "+table+" values (1)"); e != nil || tx != 'T' {
		t.Fatalf("insert: status %q, error %v", tx, e)
	}
	raw.nc.Close()

	// pool_size 1: this client gets the abandoned session's backend (rolled
	// back and reset) or a new one; inside the old transaction it would see
	// its own row.
	conn, err := pgx.Connect(ctx, sc.SuperURL(pg))
	if err != nil {
		t.Fatalf("next client with pool_size 1: %v", err)
	}
	defer conn.Close(ctx)
	var iso string
	if err := conn.QueryRow(ctx, "show transaction_isolation").Scan(&iso); err != nil {
		t.Fatalf("show transaction_isolation: %v", err)
	}
	var n int
	if err := conn.QueryRow(ctx, "select count(*) from "+table).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Fatalf("next client sees %d rows of the abandoned transaction", n)
	}
	if s := conn.PgConn().TxStatus(); s != 'I' {
		t.Fatalf("next client's transaction status %q, want 'I'", s)
	}
	// And nobody committed it later.
	conn.Close(ctx)
	direct := pgDirect(t, pg)
	if err := direct.QueryRow(ctx, "select count(*) from "+table).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Fatalf("abandoned insert committed: %d rows", n)
	}
}

func TestFaultBackendTerminated(t *testing.T) {
	t.Parallel()
	pg := env.Postgres(t)
	sc := startSidecar(t, pg, sidecarOptions{Pool: pool.Config{PoolSize: 1}})
	direct := pgDirect(t, pg)
	ctx := ctxT(t)

	conn, err := pgx.Connect(ctx, sc.SuperURL(pg))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var pid uint32
	if err := conn.QueryRow(ctx, "select pg_backend_pid()").Scan(&pid); err != nil {
		t.Fatal(err)
	}
	var ok bool
	if err := direct.QueryRow(ctx, "select pg_terminate_backend($1)", pid).Scan(&ok); err != nil || !ok {
		t.Fatalf("pg_terminate_backend(%d) = %v, %v", pid, ok, err)
	}
	eventually(t, 5*time.Second, "terminated backend gone", func() (bool, error) {
		var n int
		err := direct.QueryRow(ctx, "select count(*) from pg_stat_activity where pid = $1", pid).Scan(&n)
		return n == 0, err
	})

	_, err = conn.Exec(ctx, "select 1")
	if err == nil {
		t.Fatal("query on a terminated backend succeeded")
	}
	if code := pgCode(err); code != "57P01" && code != "08006" {
		t.Errorf("query on a terminated backend: %v (SQLSTATE %q); want 57P01 or 08006", err, code)
	}

	fresh, err := pgx.Connect(ctx, sc.SuperURL(pg))
	if err != nil {
		t.Fatalf("new client after the backend was killed: %v", err)
	}
	defer fresh.Close(ctx)
	var pid2 uint32
	if err := fresh.QueryRow(ctx, "select pg_backend_pid()").Scan(&pid2); err != nil {
		t.Fatalf("new client's first query: %v", err)
	}
	if pid2 == pid {
		t.Fatalf("new client got the terminated backend %d", pid)
	}
}

func TestFaultGarbageBeforeStartup(t *testing.T) {
	t.Parallel()
	pg := env.Postgres(t)
	sc := startSidecar(t, pg, sidecarOptions{})
	for _, tc := range []struct {
		name    string
		garbage []byte
	}{
		{"http request", []byte("GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")},
		{"negative length", []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}},
		{"short length", []byte{0, 0, 0, 3, 'x', 'y', 'z', 0}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			raw := dialRaw(t, sc.Addr)
			if _, err := raw.nc.Write(tc.garbage); err != nil {
				t.Fatal(err)
			}
			b := expectClosed(t, raw.nc, 3*time.Second)
			if len(b) > 0 {
				// Anything sent must be a well-formed protocol error.
				fe := pgproto3.NewFrontend(bytes.NewReader(b), io.Discard)
				msg, err := fe.Receive()
				if err != nil {
					t.Fatalf("proxy sent %q, not a protocol message: %v", b, err)
				}
				er, ok := msg.(*pgproto3.ErrorResponse)
				if !ok || er.Code != "08P01" {
					t.Fatalf("proxy sent %#v; want an ErrorResponse 08P01", msg)
				}
			}
		})
	}
	ctx := ctxT(t)
	conn, err := pgx.Connect(ctx, sc.SuperURL(pg))
	if err != nil {
		t.Fatalf("client after garbage: %v", err)
	}
	defer conn.Close(ctx)
	selectOne(t, conn)
}

func TestFaultUnknownMessageType(t *testing.T) {
	t.Parallel()
	pg := env.Postgres(t)
	sc := startSidecar(t, pg, sidecarOptions{})
	raw := dialRaw(t, sc.Addr)
	raw.startup(t, pg.SuperUser, "postgres")
	if rows, _, e := raw.simpleQuery(t, "select 41 + 1"); e != nil || len(rows) != 1 || rows[0] != "42" {
		t.Fatalf("query before the bad message: %v %v", rows, e)
	}
	if _, err := raw.nc.Write([]byte{'?', 0, 0, 0, 4}); err != nil {
		t.Fatal(err)
	}
	raw.expectErrorThenEOF(t, "08P01", 5*time.Second)
}

func TestFaultMessageTooLarge(t *testing.T) {
	t.Parallel()
	pg := env.Postgres(t)
	sc := startSidecar(t, pg, sidecarOptions{Proxy: proxy.Config{MaxMessageBytes: 4096}})
	ctx := ctxT(t)
	bystander, err := pgx.Connect(ctx, sc.SuperURL(pg))
	if err != nil {
		t.Fatal(err)
	}
	defer bystander.Close(ctx)

	raw := dialRaw(t, sc.Addr)
	raw.startup(t, pg.SuperUser, "postgres")
	// A Query declaring 1 MB, of which only the header is sent: the proxy
	// must refuse it from the header alone.
	hdr := []byte{'Q', 0, 0, 0, 0}
	binary.BigEndian.PutUint32(hdr[1:], 1<<20)
	if _, err := raw.nc.Write(hdr); err != nil {
		t.Fatal(err)
	}
	raw.expectErrorThenEOF(t, "08P01", 5*time.Second)

	// A message just under the limit still passes.
	var s string
	if err := bystander.QueryRow(ctx, "select $1::text", strings.Repeat("x", 3000)).Scan(&s); err != nil {
		t.Fatalf("other client after the oversized message: %v", err)
	}
	if len(s) != 3000 {
		t.Fatalf("echo of 3000 bytes came back as %d", len(s))
	}
}

func TestFaultClientLoginTimeout(t *testing.T) {
	t.Parallel()
	pg := env.Postgres(t)
	sc := startSidecar(t, pg, sidecarOptions{Proxy: proxy.Config{ClientLoginTimeout: 300 * time.Millisecond}})

	// One client sends nothing; one stops half-way through its startup packet.
	for _, tc := range []struct {
		name string
		send []byte
	}{
		{"silent", nil},
		{"partial startup", []byte{0, 0, 0, 40, 0, 3, 0, 0}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			raw := dialRaw(t, sc.Addr)
			start := time.Now()
			if len(tc.send) > 0 {
				if _, err := raw.nc.Write(tc.send); err != nil {
					t.Fatal(err)
				}
			}
			raw.expectErrorThenEOF(t, "", 2*time.Second)
			if d := time.Since(start); d < 250*time.Millisecond {
				t.Fatalf("closed after %s, before client_login_timeout", d)
			}
		})
	}
	ctx := ctxT(t)
	conn, err := pgx.Connect(ctx, sc.SuperURL(pg))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	selectOne(t, conn)
}
