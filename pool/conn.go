package pool

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/jackc/puddle/v2"

	"github.com/pgsidecar/pgsidecar/internal/sockio"
	"github.com/pgsidecar/pgsidecar/internal/wire"
)

// readBufferSize is the backend read buffer. Backends are few, so it is
// sized for throughput, not memory.
const readBufferSize = 32 << 10

// maxServerMessage bounds a message the pool itself reads (reset and check
// answers are tiny; a NOTICE can be long).
const maxServerMessage = 1 << 20

// Conn is one backend connection. Between Acquire and Release the proxy
// reads from Reader() and writes to NetConn() directly.
type Conn struct {
	nc     net.Conn
	sock   *sockio.Conn
	br     *bufio.Reader
	pid    uint32
	secret []byte
	params map[string]string
	login  string // the session user the backend logged in as
	tlsCfg *tls.Config
	dialer pgconn.DialFunc

	pool *keyPool
	res  *puddle.Resource[*Conn]
	slot slotKind
	buf  []byte // scratch for the pool's own exchanges

	// Statements and Settings belong to the holder, like the socket: they
	// record what a transaction-mode proxy left on the connection (its
	// prepared statements, and a key for the session settings it applied;
	// "" means the login defaults). The reset query clears both.
	Statements *Statements
	Settings   string

	onRow func([][]byte) // set by Query
}

// dial opens and authenticates one backend connection with pgconn, then
// takes over its socket.
func dial(ctx context.Context, cfg *pgconn.Config) (*Conn, error) {
	if cfg.ConnectTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, cfg.ConnectTimeout)
		defer cancel()
	}
	pc, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, err
	}
	// pgconn may have started a background reader during a slow login
	// write; its documentation requires SyncConn (which stops it and
	// drains pgconn's buffer) before the socket changes hands.
	if err := pc.SyncConn(ctx); err != nil {
		pc.Close(ctx)
		return nil, err
	}
	hc, err := pc.Hijack()
	if err != nil {
		pc.Close(ctx)
		return nil, err
	}
	params := make(map[string]string, len(hc.ParameterStatuses))
	for k, v := range hc.ParameterStatuses {
		params[k] = v
	}
	sock := sockio.New(hc.Conn)
	return &Conn{
		nc:     hc.Conn,
		sock:   sock,
		br:     bufio.NewReaderSize(sock, readBufferSize),
		pid:    hc.PID,
		secret: hc.SecretKey,
		params: params,
		login:  params["session_authorization"],
		tlsCfg: hc.TLSConfig,
		dialer: cfg.DialFunc,
	}, nil
}

// LoginUser is the user the backend logged in as (its first
// session_authorization).
func (c *Conn) LoginUser() string { return c.login }

// NetConn is the backend socket, for deadlines.
func (c *Conn) NetConn() net.Conn { return c.nc }

// Reader is the buffered reader over the backend socket. Anything read
// through it belongs to the current holder of c. A read larger than what
// is buffered goes straight to the socket, without a copy.
func (c *Conn) Reader() *bufio.Reader { return c.br }

// Writer writes to the backend socket (raw system calls on plain TCP).
func (c *Conn) Writer() io.Writer { return c.sock }

// WriteRead writes a request and reads the first bytes of the answer into
// r, with one system call fewer than a write and a read (see
// sockio.Conn.WriteRead). Only for a connection that owes nothing and has
// sent nothing unread.
func (c *Conn) WriteRead(w, r []byte) (int, error) {
	if c.br.Buffered() > 0 {
		if _, err := c.sock.Write(w); err != nil {
			return 0, err
		}
		return c.br.Read(r)
	}
	return c.sock.WriteRead(w, r)
}

// Exchange writes msgs, a batch of protocol messages ending in Sync or a
// Query, and reads the answers up to ReadyForQuery, discarding them; a
// server error in them is not an error of the exchange. The connection must
// be idle when it ends: anything else is an error, and c must be destroyed.
func (c *Conn) Exchange(ctx context.Context, msgs []byte) error {
	if dl, ok := ctx.Deadline(); ok {
		c.nc.SetDeadline(dl)
		defer c.nc.SetDeadline(time.Time{})
	}
	if _, err := c.sock.Write(msgs); err != nil {
		return err
	}
	for {
		typ, body, err := wire.ReadMessage(c.br, c.buf[:0], maxServerMessage)
		if err != nil {
			return err
		}
		if cap(body) > cap(c.buf) && cap(body) <= 64<<10 {
			c.buf = body[:0]
		}
		switch typ {
		case 'S':
			var m pgproto3.ParameterStatus
			if err := m.Decode(body); err != nil {
				return err
			}
			c.params[m.Name] = m.Value
		case 'Z':
			if len(body) != 1 || body[0] != 'I' {
				return errors.New("exchange did not leave the connection idle")
			}
			return nil
		case 'G', 'H', 'W':
			return fmt.Errorf("unexpected COPY response %q", typ)
		}
	}
}

// Sock is the backend socket for raw reads (sockio.Conn.RawLoop); only
// when Reader has nothing buffered.
func (c *Conn) Sock() *sockio.Conn { return c.sock }

// PID is the backend's process id.
func (c *Conn) PID() uint32 { return c.pid }

// Params is the server's ParameterStatus set as last reported. The caller
// must not modify it; it is exact as long as the holder passes every report
// it relays to NoteParameterStatus.
func (c *Conn) Params() map[string]string { return c.params }

// NoteParameterStatus records a ParameterStatus the server sent while the
// connection was lent, so Params stays exact. Only the holder calls it. A
// Conn built by hand (a test's) has no map yet and gets one.
func (c *Conn) NoteParameterStatus(name, value string) {
	if c.params == nil {
		c.params = make(map[string]string)
	}
	c.params[name] = value
}

// Key is the pool this connection belongs to.
func (c *Conn) Key() Key { return c.pool.key }

func (c *Conn) close() { c.nc.Close() }

// Cancel asks the server to cancel whatever c is running, on a new
// connection, as PostgreSQL's CancelRequest does. The address is the one c
// is connected to, so a DNS change cannot misdirect it.
func (c *Conn) Cancel(ctx context.Context) error {
	addr := c.nc.RemoteAddr()
	dial := c.dialer
	if dial == nil {
		var d net.Dialer
		dial = d.DialContext
	}
	nc, err := dial(ctx, addr.Network(), addr.String())
	if err != nil {
		return err
	}
	defer nc.Close()
	if dl, ok := ctx.Deadline(); ok {
		nc.SetDeadline(dl)
	}
	if c.tlsCfg != nil {
		// Encrypt the cancel like the session, so the key is not exposed.
		if _, err := nc.Write(sslRequest()); err != nil {
			return err
		}
		var b [1]byte
		if _, err := nc.Read(b[:]); err != nil {
			return err
		}
		if b[0] == 'S' {
			tc := tls.Client(nc, c.tlsCfg)
			if err := tc.HandshakeContext(ctx); err != nil {
				return err
			}
			nc = tc
		}
	}
	msg := make([]byte, 0, 16+len(c.secret))
	msg = binary.BigEndian.AppendUint32(msg, uint32(12+len(c.secret)))
	msg = binary.BigEndian.AppendUint32(msg, wire.CancelRequestCode)
	msg = binary.BigEndian.AppendUint32(msg, c.pid)
	msg = append(msg, c.secret...)
	if _, err := nc.Write(msg); err != nil {
		return err
	}
	// The server closes the connection when it has read the request.
	var b [1]byte
	nc.Read(b[:])
	return nil
}

func sslRequest() []byte {
	b := make([]byte, 8)
	binary.BigEndian.PutUint32(b, 8)
	binary.BigEndian.PutUint32(b[4:], wire.SSLRequestCode)
	return b
}

// Result is what a simple-protocol exchange run by the pool produced.
type Result struct {
	// Changed holds ParameterStatus messages received, in order.
	Changed []pgproto3.ParameterStatus
	// TxStatus is the status byte of the final ReadyForQuery.
	TxStatus byte
}

// Exec runs sql with the simple protocol and reads through ReadyForQuery,
// discarding rows. A server error is returned as *pgconn.PgError after the
// exchange completes, so c stays usable. Any other error leaves c in an
// unknown state: Destroy it.
func (c *Conn) Exec(ctx context.Context, sql string) (Result, error) {
	var res Result
	if dl, ok := ctx.Deadline(); ok {
		c.nc.SetDeadline(dl)
		defer c.nc.SetDeadline(time.Time{})
	}
	out, _ := (&pgproto3.Query{String: sql}).Encode(c.buf[:0])
	if _, err := c.sock.Write(out); err != nil {
		return res, err
	}
	var serverErr *pgconn.PgError
	for {
		typ, body, err := wire.ReadMessage(c.br, c.buf[:0], maxServerMessage)
		if err != nil {
			return res, err
		}
		if cap(body) > cap(c.buf) && cap(body) <= 64<<10 {
			c.buf = body[:0]
		}
		switch typ {
		case 'E':
			var m pgproto3.ErrorResponse
			if err := m.Decode(body); err != nil {
				return res, err
			}
			serverErr = pgconn.ErrorResponseToPgError(&m)
		case 'S':
			var m pgproto3.ParameterStatus
			if err := m.Decode(body); err != nil {
				return res, err
			}
			c.params[m.Name] = m.Value
			res.Changed = append(res.Changed, m)
		case 'Z':
			if len(body) != 1 {
				return res, errors.New("malformed ReadyForQuery")
			}
			res.TxStatus = body[0]
			if serverErr != nil {
				return res, serverErr
			}
			return res, nil
		case 'G', 'H', 'W':
			// COPY: the pool never sends one; a server asking for data is
			// in a state we cannot account for.
			return res, fmt.Errorf("unexpected COPY response %q", typ)
		case 'D':
			if c.onRow != nil {
				var m pgproto3.DataRow
				if err := m.Decode(body); err != nil {
					return res, err
				}
				c.onRow(m.Values)
			}
		}
		// Other rows, command tags, notices and notifications are discarded.
	}
}

// Query runs sql with the simple protocol like Exec and passes each data
// row's text values to row. The values are valid only during the call.
func (c *Conn) Query(ctx context.Context, sql string, row func(values [][]byte)) (Result, error) {
	c.onRow = row
	defer func() { c.onRow = nil }()
	return c.Exec(ctx, sql)
}

// check confirms that an idle connection still answers.
func (c *Conn) check(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	res, err := c.Exec(ctx, "")
	if err != nil {
		return err
	}
	if res.TxStatus != 'I' {
		return fmt.Errorf("idle check: transaction status %q", res.TxStatus)
	}
	return nil
}

// reset runs the reset query and confirms the connection is idle after it.
func (c *Conn) reset(ctx context.Context, query string) error {
	res, err := c.Exec(ctx, query)
	if err != nil {
		return err
	}
	if res.TxStatus != 'I' {
		return fmt.Errorf("reset: transaction status %q", res.TxStatus)
	}
	return nil
}
