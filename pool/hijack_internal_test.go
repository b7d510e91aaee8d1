package pool

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/pgsidecar/pgsidecar/internal/testenv"
)

// lateWriteReturn returns from each login write (startup and the two SCRAM
// messages) some time after the bytes went out, as a descheduled thread on
// a loaded machine does.
type lateWriteReturn struct {
	net.Conn
	writes int
}

func (c *lateWriteReturn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	if c.writes++; c.writes <= 3 {
		time.Sleep(50 * time.Millisecond)
	}
	return n, err
}

// Regression: when a login write returned late, pgconn's background reader
// (started after 15ms) read the server's answer and went back to reading;
// without SyncConn before Hijack that read stayed pending and swallowed the
// first answer meant for the relay, and the client hung. Seen once in CI
// under full parallel load.
func TestRegressionLateLoginWriteDoesNotStealFirstAnswer(t *testing.T) {
	pg := testenv.NewPostgres(t, testenv.PostgresOptions{})
	m, err := New(Config{Upstream: pg.URL(pg.SuperUser, pg.SuperPassword, "postgres"), ResetQuery: "-"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	key := Key{Database: "postgres", User: pg.SuperUser}
	kp, err := m.pool(key)
	if err != nil {
		t.Fatal(err)
	}
	var d net.Dialer
	kp.connCfg.DialFunc = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return &lateWriteReturn{Conn: c}, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := m.Acquire(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	qctx, qcancel := context.WithTimeout(ctx, 3*time.Second)
	defer qcancel()
	res, err := c.Exec(qctx, "SELECT 1")
	if err != nil {
		m.Destroy(c)
		t.Fatalf("first query on a freshly hijacked backend: %v", err)
	}
	if res.TxStatus != 'I' {
		t.Fatalf("status %q", res.TxStatus)
	}
	m.Release(ctx, c)
}
