package pool_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"go.uber.org/goleak"

	"github.com/pgsidecar/pgsidecar/internal/testenv"
	"github.com/pgsidecar/pgsidecar/pool"
)

// env is the PostgreSQL server shared by the tests of this package. Tests
// that stop their server use testenv.NewPostgres instead.
var env testenv.Shared

func TestMain(m *testing.M) {
	code := m.Run()
	env.Close()
	if code == 0 {
		// Every Manager is closed in its test's Cleanup: its maintainer,
		// puddle's constructor and destructor goroutines must all be gone.
		if err := goleak.Find(goleak.IgnoreAnyFunction(testenv.WaiterFunc)); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

// testCtx bounds one test's round trips.
func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// newManager builds a Manager from cfg (with a silent logger) and closes it
// in t.Cleanup. Close waits for lent Conns, so a test that failed while
// holding one reports it instead of hanging.
func newManager(t *testing.T, cfg pool.Config) *pool.Manager {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	m, err := pool.New(cfg)
	if err != nil {
		t.Fatalf("pool.New: %v", err)
	}
	t.Cleanup(func() {
		done := make(chan struct{})
		go func() {
			defer close(done)
			m.Close()
		}()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Errorf("Manager.Close did not return: a Conn was never given back")
		}
	})
	return m
}

// superURL is the shared server's superuser URL for database.
func superURL(pg *testenv.Postgres, database string) string {
	return pg.URL(pg.SuperUser, pg.SuperPassword, database)
}

// superKey is the Key used with an upstream URL that names the superuser.
var superKey = pool.Key{Database: "postgres", User: "postgres"}

// uniqueName returns prefix with a random suffix, so parallel tests (and
// reruns on a reused server) never share roles or databases.
func uniqueName(prefix string) string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return prefix + "_" + hex.EncodeToString(b)
}

func acquire(t *testing.T, ctx context.Context, m *pool.Manager, key pool.Key) *pool.Conn {
	t.Helper()
	c, err := m.Acquire(ctx, key)
	if err != nil {
		t.Fatalf("Acquire(%+v): %v", key, err)
	}
	return c
}

// queryConn runs sql on a lent Conn the way the proxy does, through
// Reader and NetConn, and returns the first column of the first row ("" when
// there is none) and the server's error, if any. It relays ParameterStatus
// reports to NoteParameterStatus, as a holder must.
func queryConn(t *testing.T, ctx context.Context, c *pool.Conn, sql string) (string, error) {
	t.Helper()
	if dl, ok := ctx.Deadline(); ok {
		c.NetConn().SetDeadline(dl)
		defer c.NetConn().SetDeadline(time.Time{})
	}
	fe := pgproto3.NewFrontend(c.Reader(), c.NetConn())
	fe.Send(&pgproto3.Query{String: sql})
	if err := fe.Flush(); err != nil {
		t.Fatalf("send %q: %v", sql, err)
	}
	var (
		value string
		got   bool
		pgErr error
	)
	for {
		msg, err := fe.Receive()
		if err != nil {
			t.Fatalf("%q: receive: %v", sql, err)
		}
		switch msg := msg.(type) {
		case *pgproto3.DataRow:
			if !got && len(msg.Values) > 0 {
				value, got = string(msg.Values[0]), true
			}
		case *pgproto3.ErrorResponse:
			pgErr = pgconn.ErrorResponseToPgError(msg)
		case *pgproto3.ParameterStatus:
			c.NoteParameterStatus(msg.Name, msg.Value)
		case *pgproto3.ReadyForQuery:
			return value, pgErr
		}
	}
}

// mustQuery is queryConn for a query that must succeed.
func mustQuery(t *testing.T, ctx context.Context, c *pool.Conn, sql string) string {
	t.Helper()
	v, err := queryConn(t, ctx, c, sql)
	if err != nil {
		t.Fatalf("%q: %v", sql, err)
	}
	return v
}

// admin is a superuser connection to the server, straight to PostgreSQL,
// for looking at and acting on backends behind the pool's back. It belongs
// to the test goroutine.
type admin struct {
	t    *testing.T
	ctx  context.Context
	conn *pgconn.PgConn
}

func newAdmin(t *testing.T, ctx context.Context, pg *testenv.Postgres) *admin {
	t.Helper()
	conn, err := pgconn.Connect(ctx, superURL(pg, "postgres"))
	if err != nil {
		t.Fatalf("admin connect: %v", err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return &admin{t: t, ctx: ctx, conn: conn}
}

// value runs sql and returns the first column of the first row, "" if none.
func (a *admin) value(sql string) string {
	a.t.Helper()
	results, err := a.conn.Exec(a.ctx, sql).ReadAll()
	if err != nil {
		a.t.Fatalf("admin %q: %v", sql, err)
	}
	if len(results) == 0 || len(results[0].Rows) == 0 {
		return ""
	}
	return string(results[0].Rows[0][0])
}

// alive reports whether backend pid is in pg_stat_activity.
func (a *admin) alive(pid uint32) bool {
	a.t.Helper()
	return a.value("SELECT count(*) FROM pg_stat_activity WHERE pid = "+strconv.FormatUint(uint64(pid), 10)) == "1"
}

// waitGone polls until backend pid has left pg_stat_activity.
func (a *admin) waitGone(pid uint32) {
	a.t.Helper()
	eventually(a.t, 10*time.Second, fmt.Sprintf("backend %d to exit", pid), func() bool { return !a.alive(pid) })
}

// eventually polls cond until it holds, failing t after timeout.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		<-tick.C
	}
}

// poolStats returns the stats of key's pool (zero when there is none).
func poolStats(m *pool.Manager, key pool.Key) pool.PoolStats {
	for _, ps := range m.Stats().Pools {
		if ps.Key == key {
			return ps
		}
	}
	return pool.PoolStats{Key: key}
}

// pgCode returns the SQLSTATE of a *pgconn.PgError in err's chain, or "".
func pgCode(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code
	}
	return ""
}
