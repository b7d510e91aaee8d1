package testenv_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/goleak"

	"github.com/pgsidecar/pgsidecar/internal/testenv"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func ctxFor(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// queryValue runs sql over connURL and returns the first column of the first row.
func queryValue(t *testing.T, ctx context.Context, connURL, sql string) string {
	t.Helper()
	conn, err := pgconn.Connect(ctx, connURL)
	if err != nil {
		t.Fatalf("connect %s: %v", connURL, err)
	}
	defer conn.Close(ctx)
	results, err := conn.Exec(ctx, sql).ReadAll()
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	if len(results) != 1 || len(results[0].Rows) != 1 {
		t.Fatalf("%s: got %d results, want one row", sql, len(results))
	}
	return string(results[0].Rows[0][0])
}

func TestPostgres(t *testing.T) {
	pg := testenv.NewPostgres(t, testenv.PostgresOptions{})
	ctx := ctxFor(t)
	super := pg.URL(pg.SuperUser, pg.SuperPassword, "postgres")

	if got := queryValue(t, ctx, super, "SELECT 1"); got != "1" {
		t.Fatalf("SELECT 1 = %q", got)
	}
	if got := queryValue(t, ctx, super, "SHOW max_connections"); got != "300" {
		t.Errorf("max_connections = %q, want 300", got)
	}
	if got := queryValue(t, ctx, super, "SHOW server_encoding"); got != "UTF8" {
		t.Errorf("server_encoding = %q, want UTF8", got)
	}

	if err := pg.CreateRole(ctx, "alice", "s3cr'et", "CREATEDB"); err != nil {
		t.Fatal(err)
	}
	if got := queryValue(t, ctx, super, "SELECT left(rolpassword, 14) FROM pg_authid WHERE rolname = 'alice'"); got != "SCRAM-SHA-256$" {
		t.Errorf("alice's secret starts %q, want a SCRAM secret", got)
	}
	if got := queryValue(t, ctx, pg.URL("alice", "s3cr'et", "postgres"), "SELECT current_user"); got != "alice" {
		t.Errorf("current_user = %q, want alice", got)
	}
	_, err := pgconn.Connect(ctx, pg.URL("alice", "wrong", "postgres"))
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "28P01" {
		t.Errorf("login with a wrong password: %v, want SQLSTATE 28P01", err)
	}

	if err := pg.Exec(ctx, "CREATE DATABASE app OWNER alice"); err != nil {
		t.Fatal(err)
	}
	if err := pg.ExecIn(ctx, "app", "SET ROLE alice; CREATE TABLE t (x int); INSERT INTO t VALUES (1), (2)"); err != nil {
		t.Fatal(err)
	}
	if err := pg.Exec(ctx, "SELECT * FROM no_such_table"); err == nil {
		t.Error("Exec of a failing statement returned nil")
	}

	if err := pg.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	if got := queryValue(t, ctx, pg.URL("alice", "s3cr'et", "app"), "SELECT count(*) FROM t"); got != "2" {
		t.Errorf("after restart: count = %q, want 2", got)
	}

	if err := pg.Down(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := pgconn.Connect(ctx, super); err == nil {
		t.Error("connected while the server was down")
	}
	if err := pg.Up(ctx); err != nil {
		t.Fatal(err)
	}
	if got := queryValue(t, ctx, super, "SELECT 2"); got != "2" {
		t.Errorf("after Up: SELECT 2 = %q", got)
	}

	log := pg.LogFile()
	if _, err := os.Stat(log); err != nil {
		t.Errorf("log file: %v", err)
	}
	if err := pg.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := pg.Stop(); err != nil {
		t.Errorf("second Stop: %v", err)
	}
	if _, err := os.Stat(log); !os.IsNotExist(err) {
		t.Errorf("after Stop, log file still there: %v", err)
	}
	if err := pg.Up(ctx); !errors.Is(err, testenv.ErrStopped) {
		t.Errorf("Up after Stop = %v, want ErrStopped", err)
	}
}

func TestPostgresSSLAndSettings(t *testing.T) {
	pg := testenv.NewPostgres(t, testenv.PostgresOptions{
		SSL:            true,
		MaxConnections: 50,
		Settings:       map[string]string{"application_name": "testenv"},
	})
	ctx := ctxFor(t)
	if pg.CertFile() == "" || pg.CertPool() == nil {
		t.Fatal("no certificate with SSL on")
	}
	super := pg.URL(pg.SuperUser, pg.SuperPassword, "postgres")
	tlsURL := strings.Replace(super, "sslmode=disable", "sslmode=verify-full&sslrootcert="+pg.CertFile(), 1)
	if got := queryValue(t, ctx, tlsURL, "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"); got != "t" {
		t.Errorf("ssl = %q over a verify-full connection", got)
	}
	if got := queryValue(t, ctx, super, "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"); got != "f" {
		t.Errorf("ssl = %q over an sslmode=disable connection", got)
	}
	if got := queryValue(t, ctx, super, "SHOW max_connections"); got != "50" {
		t.Errorf("max_connections = %q, want 50", got)
	}
	if got := queryValue(t, ctx, super, "SHOW application_name"); got != "testenv" {
		t.Errorf("application_name = %q, want testenv", got)
	}
}

// redisCommand sends one inline command over a raw socket and returns the
// first reply line.
func redisCommand(t *testing.T, addr, cmd string) string {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("dial redis: %v", err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := conn.Write([]byte(cmd + "\r\n")); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimRight(line, "\r\n")
}

func TestRedis(t *testing.T) {
	rd := testenv.NewRedis(t)
	ctx := ctxFor(t)
	if got := redisCommand(t, rd.Addr(), "PING"); got != "+PONG" {
		t.Fatalf("PING = %q", got)
	}
	if got := redisCommand(t, rd.Addr(), "SET k v"); got != "+OK" {
		t.Fatalf("SET = %q", got)
	}
	if err := goleak.Find(); err == nil {
		t.Error("goleak sees no goroutine for the running server")
	}
	if err := goleak.Find(goleak.IgnoreAnyFunction(testenv.WaiterFunc)); err != nil {
		t.Errorf("goleak with WaiterFunc ignored: %v", err)
	}
	if want := "redis://" + rd.Addr() + "/0"; rd.URL() != want {
		t.Errorf("URL = %q, want %q", rd.URL(), want)
	}
	if err := rd.Down(ctx); err != nil {
		t.Fatal(err)
	}
	if c, err := net.DialTimeout("tcp", rd.Addr(), time.Second); err == nil {
		c.Close()
		t.Fatal("dialed redis while it was down")
	}
	if err := rd.Up(ctx); err != nil {
		t.Fatal(err)
	}
	if got := redisCommand(t, rd.Addr(), "PING"); got != "+PONG" {
		t.Fatalf("PING after Up = %q", got)
	}
	if err := rd.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := rd.Stop(); err != nil {
		t.Errorf("second Stop: %v", err)
	}
}

func TestSharedReusesEnvironment(t *testing.T) {
	pg := testenv.NewPostgres(t, testenv.PostgresOptions{})
	rd := testenv.NewRedis(t)
	ctx := ctxFor(t)
	t.Setenv(testenv.EnvPostgresURL, pg.URL(pg.SuperUser, pg.SuperPassword, "postgres"))
	t.Setenv(testenv.EnvRedisURL, rd.URL())

	var env testenv.Shared
	spg := env.Postgres(t)
	if spg.Port != pg.Port || spg.SuperUser != pg.SuperUser {
		t.Errorf("shared postgres is %s:%d as %s, want the one in %s", spg.Host, spg.Port, spg.SuperUser, testenv.EnvPostgresURL)
	}
	if env.Postgres(t) != spg {
		t.Error("second Shared.Postgres returned another server")
	}
	if err := spg.CreateRole(ctx, "bob", "pw"); err != nil {
		t.Fatal(err)
	}
	if err := spg.Restart(ctx); !errors.Is(err, testenv.ErrExternal) {
		t.Errorf("Restart of a reused server = %v, want ErrExternal", err)
	}
	if srd := env.Redis(t); srd.URL() != rd.URL() {
		t.Errorf("shared redis URL = %q, want %q", srd.URL(), rd.URL())
	}
	env.Close()

	// Close left the reused servers running.
	if got := queryValue(t, ctx, pg.URL("bob", "pw", "postgres"), "SELECT 1"); got != "1" {
		t.Errorf("SELECT 1 = %q", got)
	}
	if got := redisCommand(t, rd.Addr(), "PING"); got != "+PONG" {
		t.Errorf("PING = %q", got)
	}
}

func TestNotInstalled(t *testing.T) {
	ctx := ctxFor(t)
	_, err := testenv.StartPostgres(ctx, testenv.PostgresOptions{BinDir: t.TempDir()})
	if !errors.Is(err, testenv.ErrNotInstalled) {
		t.Errorf("StartPostgres with an empty BinDir: %v, want ErrNotInstalled", err)
	}
	t.Setenv(testenv.EnvRedisServer, "/nonexistent/redis-server")
	_, err = testenv.StartRedis(ctx)
	if !errors.Is(err, testenv.ErrNotInstalled) {
		t.Errorf("StartRedis with a missing binary: %v, want ErrNotInstalled", err)
	}
}

// fakeTB records what SkipOrFail decided. Embedding testing.TB satisfies
// the interface's unexported method; only the methods used are overridden.
type fakeTB struct {
	testing.TB
	skipped, failed bool
}

func (f *fakeTB) Helper()                        {}
func (f *fakeTB) Skipf(string, ...any)           { f.skipped = true }
func (f *fakeTB) Fatalf(string, ...any)          { f.failed = true }
func (f *fakeTB) Errorf(format string, a ...any) { f.failed = true }

func TestSkipOrFail(t *testing.T) {
	notInstalled := errors.Join(errors.New("initdb not found"), testenv.ErrNotInstalled)
	for _, tc := range []struct {
		name       string
		ci         string
		err        error
		skip, fail bool
	}{
		{"nil", "", nil, false, false},
		{"nil in CI", "true", nil, false, false},
		{"missing on a laptop", "", notInstalled, true, false},
		{"missing with CI=false", "false", notInstalled, true, false},
		{"missing in CI", "true", notInstalled, false, true},
		{"missing with CI=1", "1", notInstalled, false, true},
		{"other error", "", errors.New("boom"), false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv(testenv.EnvCI, tc.ci)
			f := &fakeTB{}
			testenv.SkipOrFail(f, tc.err)
			if f.skipped != tc.skip || f.failed != tc.fail {
				t.Errorf("skipped=%v failed=%v, want skipped=%v failed=%v", f.skipped, f.failed, tc.skip, tc.fail)
			}
		})
	}
}

func TestFreePort(t *testing.T) {
	port, err := testenv.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		t.Fatalf("listen on the free port %d: %v", port, err)
	}
	l.Close()
}

func TestSelfSignedCert(t *testing.T) {
	certPEM, keyPEM, err := testenv.SelfSignedCert("127.0.0.1", "localhost")
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(certPEM)
	for _, host := range []string{"127.0.0.1", "localhost"} {
		if _, err := pair.Leaf.Verify(x509.VerifyOptions{DNSName: host, Roots: roots}); err != nil {
			t.Errorf("verify for %s: %v", host, err)
		}
	}
	if _, err := pair.Leaf.Verify(x509.VerifyOptions{DNSName: "example.com", Roots: roots}); err == nil {
		t.Error("verified for a host not in the certificate")
	}
}
