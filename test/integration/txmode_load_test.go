package integration

// Transaction mode under load: thousands of short-lived clients through a
// pool of a few backends, with a generous and with a tiny
// query_wait_timeout, and pgbench's prepared mode. These tests are not
// parallel: they run alone, so the timing-sensitive tests around them do
// not compete with them for the CPU.

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgsidecar/pgsidecar/pool"
	"github.com/pgsidecar/pgsidecar/proxy"
)

// raiseFileLimit makes sure the process may open n files (each in-process
// client is two sockets), or skips t.
func raiseFileLimit(t testing.TB, n uint64) {
	t.Helper()
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Skipf("getrlimit: %v", err)
	}
	if lim.Cur >= n {
		return
	}
	if lim.Max < n {
		t.Skipf("RLIMIT_NOFILE hard limit %d is below the %d files this test needs", lim.Max, n)
	}
	lim.Cur = n
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Skipf("setrlimit: %v", err)
	}
}

// loadClient is one short-lived client: it connects, waits until every
// client is connected (so that they really are concurrent), runs five
// transactions (one an extended-protocol query with a named statement
// every client prepares, one an explicit transaction that runs hold), and
// leaves. It returns the first error.
func loadClient(ctx context.Context, cfg *pgconn.Config, i int, connected *sync.WaitGroup, hold string) error {
	conn, err := pgconn.ConnectConfig(ctx, cfg.Copy())
	connected.Done()
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer conn.Close(context.Background())
	connected.Wait()

	value := func(what string, results []*pgconn.Result, err error, want string) error {
		if err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		last := results[len(results)-1]
		if len(last.Rows) != 1 || string(last.Rows[0][0]) != want {
			return fmt.Errorf("%s: rows %q, want %q", what, last.Rows, want)
		}
		return nil
	}
	res, err := conn.Exec(ctx, "select "+strconv.Itoa(i)).ReadAll()
	if err := value("simple query", res, err, strconv.Itoa(i)); err != nil {
		return err
	}
	if _, err := conn.Prepare(ctx, "add", "select $1::int + 1", nil); err != nil {
		return fmt.Errorf("prepare: %w", err)
	}
	r := conn.ExecPrepared(ctx, "add", [][]byte{[]byte(strconv.Itoa(i))}, nil, nil).Read()
	if err := value("prepared statement", []*pgconn.Result{r}, r.Err, strconv.Itoa(i+1)); err != nil {
		return err
	}
	for _, sql := range []string{"BEGIN", hold} {
		if _, err := conn.Exec(ctx, sql).ReadAll(); err != nil {
			return fmt.Errorf("%s: %w", sql, err)
		}
	}
	res, err = conn.Exec(ctx, "select txid_current_if_assigned() is null").ReadAll()
	if err := value("in transaction", res, err, "t"); err != nil {
		return err
	}
	if _, err := conn.Exec(ctx, "COMMIT").ReadAll(); err != nil {
		return fmt.Errorf("COMMIT: %w", err)
	}
	res, err = conn.Exec(ctx, "select 'done'").ReadAll()
	return value("last query", res, err, "done")
}

// runLoad runs clients loadClients through sc at once and returns their
// errors.
func runLoad(t *testing.T, sc *sidecar, url string, clients int, hold string) []error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Second)
	defer cancel()
	cfg, err := pgconn.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	var connected sync.WaitGroup
	connected.Add(clients)
	errs := make([]error, clients)
	start := time.Now()
	go func() {
		connected.Wait()
		t.Logf("all %d clients connected after %s", clients, time.Since(start))
	}()
	runParallel(clients, func(i int) {
		errs[i] = loadClient(ctx, cfg, i, &connected, hold)
	})
	t.Logf("%d clients in %s; proxy %+v", clients, time.Since(start), sc.Server.Stats())
	var out []error
	for _, err := range errs {
		if err != nil {
			out = append(out, err)
		}
	}
	return out
}

func TestTxLoadManyClientsFewBackends(t *testing.T) {
	if testing.Short() {
		t.Skip("load test")
	}
	const clients, poolSize = 2000, 20
	raiseFileLimit(t, 3*clients+512)
	pg := env.Postgres(t)
	sc := txSidecar(t, pg, poolSize, proxy.Config{MaxClientConn: clients + 100, QueryWaitTimeout: 60 * time.Second}, pool.Config{})
	errs := runLoad(t, sc, sc.SuperURL(pg), clients, "select 1")
	for i, err := range errs {
		if i == 10 {
			t.Errorf("... %d errors in all", len(errs))
			break
		}
		t.Errorf("client error: %v", err)
	}
	st := sc.Server.Stats()
	if st.Accepted != clients {
		t.Errorf("Accepted = %d, want %d", st.Accepted, clients)
	}
	// Every client prepared the same statement: the backends parsed it
	// once each.
	if st.Parses > poolSize || st.Parses+st.ParsesShared != clients {
		t.Errorf("Parses = %d, ParsesShared = %d; want at most %d real parses of %d", st.Parses, st.ParsesShared, poolSize, clients)
	}
	if ps := sc.Pool.Stats(); ps.Connects > poolSize {
		t.Errorf("the pool opened %d backends, want at most %d", ps.Connects, poolSize)
	}
}

// TestTxLoadTinyQueryWaitTimeout: with two backends and a 50ms
// query_wait_timeout, many clients holding a backend for 10ms each must
// time out waiting, and the only error any of them sees is that one.
func TestTxLoadTinyQueryWaitTimeout(t *testing.T) {
	if testing.Short() {
		t.Skip("load test")
	}
	const clients = 300
	raiseFileLimit(t, 3*clients+512)
	pg := env.Postgres(t)
	sc := txSidecar(t, pg, 2, proxy.Config{QueryWaitTimeout: 50 * time.Millisecond}, pool.Config{})
	errs := runLoad(t, sc, sc.SuperURL(pg), clients, "select pg_sleep(0.01)")
	const want = "no backend connection became free within query_wait_timeout"
	other := 0
	for _, err := range errs {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "53300" && pgErr.Message == want {
			continue
		}
		if other++; other <= 10 {
			t.Errorf("error other than 53300 %q: %v", want, err)
		}
	}
	if other > 10 {
		t.Errorf("... %d such errors in all", other)
	}
	t.Logf("%d of %d clients timed out waiting for a backend", len(errs)-other, clients)
	if len(errs) == 0 {
		t.Errorf("no client timed out: the test did not exercise query_wait_timeout")
	}
}

var failedTxRe = regexp.MustCompile(`(?m)^number of failed transactions: (\d+) `)

// TestTxPgbenchPrepared: pgbench -M prepared names its statements per
// connection (P0_1, ...) and prepares them once; eight of them through
// three backends.
func TestTxPgbenchPrepared(t *testing.T) {
	t.Parallel()
	pgbench := clientBinary(t, "pgbench")
	pg := env.Postgres(t)
	ctx := ctxT(t)
	db := scratchDatabase(t, ctx, pg, "txpgbench")
	// An upstream URL without a database: backends open the client's.
	sc := startSidecar(t, pg, sidecarOptions{
		Upstream: pg.URL(pg.SuperUser, pg.SuperPassword, ""),
		Proxy:    proxy.Config{PoolMode: proxy.PoolModeTransaction},
		Pool:     pool.Config{PoolSize: 3},
	})
	env := libpqEnv(sc, pg, db)
	if out, errOut, err := runClient(ctx, env, pgbench, "-i", "-s", "1", "-q"); err != nil {
		t.Fatalf("pgbench -i: %v\nstdout:\n%s\nstderr:\n%s", err, out, errOut)
	}
	out, errOut, err := runClient(ctx, env, pgbench, "-n", "-S", "-M", "prepared", "-c", "8", "-j", "2", "-t", "200")
	if err != nil {
		t.Fatalf("pgbench: %v\nstdout:\n%s\nstderr:\n%s", err, out, errOut)
	}
	m := processedRe.FindStringSubmatch(out)
	if m == nil || m[1] != "1600" || m[2] != "1600" {
		t.Fatalf("pgbench did not process 1600/1600 transactions:\n%s\nstderr:\n%s", out, errOut)
	}
	if f := failedTxRe.FindStringSubmatch(out); f != nil && f[1] != "0" {
		t.Fatalf("pgbench reported failed transactions:\n%s", out)
	}
	if !strings.Contains(out, "query mode: prepared") {
		t.Fatalf("pgbench did not run in prepared mode:\n%s", out)
	}
	st := sc.Server.Stats()
	t.Logf("proxy %+v", st)
	if st.ParsesShared == 0 {
		t.Errorf("8 pgbench clients prepared the same statement on 3 backends, but ParsesShared = 0")
	}
}
