package testenv

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// PostgresOptions configure StartPostgres. The zero value is a plain server
// with 300 connections and no TLS.
type PostgresOptions struct {
	// BinDir is the directory holding initdb and postgres. Zero:
	// $PGSIDECAR_PG_BINDIR, else the newest /usr/lib/postgresql/*/bin that
	// has both, else the directory of initdb on $PATH.
	BinDir string
	// MaxConnections is max_connections. Zero: 300.
	MaxConnections int
	// SSL turns ssl on with a fresh self-signed certificate for 127.0.0.1,
	// ::1 and localhost (see CertFile and CertPool). Plaintext connections
	// stay allowed. Zero: no TLS.
	SSL bool
	// Settings are extra server settings, postgresql.conf name to value,
	// passed as -c name=value; they override this package's defaults.
	// Zero: none.
	Settings map[string]string
	// StartTimeout bounds initdb plus startup, on top of ctx. Zero: 60s.
	StartTimeout time.Duration
}

// Postgres is a running PostgreSQL server: one started by StartPostgres, or
// an existing one reused by SharedPostgres. The exported fields are set
// before it is returned and never change.
type Postgres struct {
	// Host is the address the server listens on: 127.0.0.1 for a started
	// server.
	Host string
	// Port is the TCP port. It stays the same across Down, Up and Restart.
	Port int
	// SuperUser is a superuser role: "postgres" for a started server.
	SuperUser string
	// SuperPassword is SuperUser's password (generated for a started
	// server). Host connections use scram-sha-256; Unix-socket ones trust.
	SuperPassword string

	database string // Exec's database
	sslmode  string // URL's sslmode

	// lifecycle's dir holds data/, sockets, the log and the certificate.
	lifecycle
	binDir   string  // initdb and postgres
	runAs    *osUser // nil: run as ourselves
	args     []string
	certPEM  []byte
	certFile string
}

// StartPostgres initialises a new cluster in a temporary directory and starts
// it on 127.0.0.1 on a free port, returning once it accepts connections. The
// cluster has UTF8 encoding, the C locale, trust authentication on its Unix
// socket and scram-sha-256 on TCP, and durability turned off for speed. The
// server lives until Stop, whatever happens to ctx. An error wraps
// ErrNotInstalled when initdb or postgres cannot be found.
func StartPostgres(ctx context.Context, opts PostgresOptions) (*Postgres, error) {
	timeout := opts.StartTimeout
	if timeout <= 0 {
		timeout = 60 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	binDir, err := postgresBinDir(opts.BinDir)
	if err != nil {
		return nil, err
	}
	runAs, err := serverUser()
	if err != nil {
		return nil, err
	}
	dir, err := makeServerDir("pgsidecar-pg-", runAs)
	if err != nil {
		return nil, err
	}
	p := &Postgres{
		Host:          "127.0.0.1",
		SuperUser:     "postgres",
		SuperPassword: randomHex(16),
		database:      "postgres",
		sslmode:       "disable",
		binDir:        binDir,
		runAs:         runAs,
	}
	// SIGINT is PostgreSQL's fast shutdown: open connections are terminated.
	p.lifecycle = lifecycle{dir: dir, stopSig: syscall.SIGINT, stopGrace: 30 * time.Second, upTimeout: time.Minute, start: p.up}
	fail := func(err error) (*Postgres, error) {
		os.RemoveAll(dir)
		return nil, err
	}
	if err := p.initdb(ctx); err != nil {
		return fail(err)
	}
	if opts.SSL {
		if err := p.writeCert(); err != nil {
			return fail(err)
		}
	}
	// The free port can be taken before postgres binds it: a server that
	// exits during startup is retried on a new port.
	for attempt := 1; ; attempt++ {
		if p.Port, err = FreePort(); err != nil {
			return fail(err)
		}
		p.args = p.serverArgs(opts)
		err = p.up(ctx)
		if err == nil {
			return p, nil
		}
		if !errors.Is(err, errExitedEarly) || attempt == 3 {
			return fail(err)
		}
	}
}

// errExitedEarly means the server process exited before accepting
// connections.
var errExitedEarly = errors.New("server exited during startup")

// postgresBinDir finds the directory holding initdb and postgres.
func postgresBinDir(dir string) (string, error) {
	has := func(d string) bool {
		for _, name := range []string{"initdb", "postgres"} {
			if fi, err := os.Stat(filepath.Join(d, name)); err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
				return false
			}
		}
		return true
	}
	if dir == "" {
		dir = os.Getenv(EnvPostgresBinDir)
	}
	if dir != "" {
		if !has(dir) {
			return "", fmt.Errorf("initdb and postgres not found in %s: %w", dir, ErrNotInstalled)
		}
		return dir, nil
	}
	candidates, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(candidates, func(i, j int) bool { // newest major version first
		vi, _ := strconv.Atoi(filepath.Base(filepath.Dir(candidates[i])))
		vj, _ := strconv.Atoi(filepath.Base(filepath.Dir(candidates[j])))
		return vi > vj
	})
	if path, err := exec.LookPath("initdb"); err == nil {
		candidates = append(candidates, filepath.Dir(path))
	}
	for _, d := range candidates {
		if has(d) {
			return d, nil
		}
	}
	return "", fmt.Errorf("initdb and postgres not found in /usr/lib/postgresql/*/bin or on PATH (Debian: apt-get install postgresql-15): %w", ErrNotInstalled)
}

func (p *Postgres) dataDir() string { return filepath.Join(p.dir, "data") }

// LogFile is the path of the server's log (initdb's output too). It is
// removed by Stop. Empty for a reused server.
func (p *Postgres) LogFile() string {
	if p.external {
		return ""
	}
	return filepath.Join(p.dir, "postgres.log")
}

// openLog opens the log for appending, for a child's stdout and stderr.
func (p *Postgres) openLog() (*os.File, error) {
	f, err := os.OpenFile(p.LogFile(), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("testenv: %w", err)
	}
	return f, nil
}

// command builds a command for one of the server binaries, run as p.runAs
// in p.dir, with its output going to the log.
func (p *Postgres) command(name string, args ...string) (*exec.Cmd, *os.File, error) {
	log, err := p.openLog()
	if err != nil {
		return nil, nil, err
	}
	cmd := exec.Command(filepath.Join(p.binDir, name), args...)
	cmd.Dir = p.dir
	cmd.Env = childEnv()
	cmd.Stdout = log
	cmd.Stderr = log
	cmd.SysProcAttr = p.runAs.sysProcAttr()
	return cmd, log, nil
}

func (p *Postgres) initdb(ctx context.Context) error {
	pwfile := filepath.Join(p.dir, "pwfile")
	if err := os.WriteFile(pwfile, []byte(p.SuperPassword+"\n"), 0o600); err != nil {
		return fmt.Errorf("testenv: %w", err)
	}
	defer os.Remove(pwfile)
	if err := p.runAs.chown(pwfile); err != nil {
		return fmt.Errorf("testenv: %w", err)
	}
	cmd, log, err := p.command("initdb",
		"--pgdata="+p.dataDir(),
		"--username="+p.SuperUser,
		"--pwfile="+pwfile,
		"--auth-local=trust",
		"--auth-host=scram-sha-256",
		"--encoding=UTF8",
		"--locale=C",
		"--no-sync",
		"--no-instructions",
	)
	if err != nil {
		return err
	}
	child, err := startProc(cmd, syscall.SIGKILL)
	log.Close()
	if err != nil {
		return fmt.Errorf("testenv: %w", err)
	}
	select {
	case <-child.done:
	case <-ctx.Done():
		_ = child.stop(syscall.SIGKILL, 0)
		return fmt.Errorf("testenv: initdb: %w", ctx.Err())
	}
	if child.err != nil {
		return fmt.Errorf("testenv: initdb: %w%s", child.err, logTail(p.LogFile()))
	}
	return nil
}

// writeCert writes a self-signed certificate and its key where the server
// reads them; the key must belong to the server's user, mode 0600.
func (p *Postgres) writeCert() error {
	certPEM, keyPEM, err := SelfSignedCert()
	if err != nil {
		return err
	}
	certFile := filepath.Join(p.dir, "server.crt")
	keyFile := filepath.Join(p.dir, "server.key")
	for _, f := range []struct {
		path string
		data []byte
		mode os.FileMode
	}{{certFile, certPEM, 0o644}, {keyFile, keyPEM, 0o600}} {
		if err := os.WriteFile(f.path, f.data, f.mode); err != nil {
			return fmt.Errorf("testenv: %w", err)
		}
		if err := p.runAs.chown(f.path); err != nil {
			return fmt.Errorf("testenv: %w", err)
		}
	}
	p.certPEM, p.certFile = certPEM, certFile
	return nil
}

// serverArgs are the postgres arguments: this package's settings, then
// opts.Settings, in a stable order.
func (p *Postgres) serverArgs(opts PostgresOptions) []string {
	maxConns := opts.MaxConnections
	if maxConns <= 0 {
		maxConns = 300
	}
	settings := map[string]string{
		"listen_addresses":        p.Host,
		"port":                    strconv.Itoa(p.Port),
		"unix_socket_directories": p.dir,
		"max_connections":         strconv.Itoa(maxConns),
		"shared_buffers":          "32MB",
		"fsync":                   "off",
		"synchronous_commit":      "off",
		"full_page_writes":        "off",
		"huge_pages":              "off",
		"logging_collector":       "off",
		"log_destination":         "stderr",
		"log_line_prefix":         "%m [%p] %q%u@%d ",
		"lc_messages":             "C",
		"password_encryption":     "scram-sha-256",
	}
	if p.certFile != "" {
		settings["ssl"] = "on"
		settings["ssl_cert_file"] = p.certFile
		settings["ssl_key_file"] = filepath.Join(p.dir, "server.key")
	}
	for k, v := range opts.Settings {
		settings[k] = v
	}
	names := make([]string, 0, len(settings))
	for k := range settings {
		names = append(names, k)
	}
	sort.Strings(names)
	args := []string{"-D", p.dataDir()}
	for _, k := range names {
		args = append(args, "-c", k+"="+settings[k])
	}
	return args
}

// up starts the server process and waits until it accepts connections.
// The caller holds p.mu or owns p exclusively.
func (p *Postgres) up(ctx context.Context) error {
	cmd, log, err := p.command("postgres", p.args...)
	if err != nil {
		return err
	}
	// SIGQUIT is an immediate shutdown: the postmaster takes its backends
	// down with it.
	child, err := startProc(cmd, syscall.SIGQUIT)
	log.Close()
	if err != nil {
		return fmt.Errorf("testenv: %w", err)
	}
	if err := p.waitReady(ctx, child); err != nil {
		_ = child.stop(syscall.SIGQUIT, 5*time.Second)
		return fmt.Errorf("testenv: postgres on port %d: %w%s", p.Port, err, logTail(p.LogFile()))
	}
	p.proc = child
	return nil
}

// waitReady polls with a superuser connection until one succeeds, child
// exits (errExitedEarly), or ctx is done. child is nil for a reused server.
func (p *Postgres) waitReady(ctx context.Context, child *proc) error {
	var exited <-chan struct{}
	if child != nil {
		exited = child.done
	}
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		err := p.ping(ctx)
		if err == nil {
			return nil
		}
		select {
		case <-exited:
			return fmt.Errorf("%w (%v): last connect error: %v", errExitedEarly, child.err, err)
		case <-ctx.Done():
			return fmt.Errorf("not ready: %w: last connect error: %w", ctx.Err(), err)
		case <-tick.C:
		}
	}
}

// ping connects as the superuser and disconnects.
func (p *Postgres) ping(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	conn, err := pgconn.Connect(ctx, p.URL(p.SuperUser, p.SuperPassword, p.database))
	if err != nil {
		return err
	}
	return conn.Close(ctx)
}

// URL returns a postgres:// URL for user (with password, when not empty) and
// database on this server, with sslmode=disable (or, for a reused server,
// the sslmode of its URL).
func (p *Postgres) URL(user, password, database string) string {
	u := url.URL{
		Scheme:   "postgres",
		Host:     net.JoinHostPort(p.Host, strconv.Itoa(p.Port)),
		Path:     "/" + database,
		RawQuery: url.Values{"sslmode": {p.sslmode}}.Encode(),
	}
	switch {
	case user != "" && password != "":
		u.User = url.UserPassword(user, password)
	case user != "":
		u.User = url.User(user)
	}
	return u.String()
}

// Exec runs sql, which may hold several statements, as the superuser in the
// default database ("postgres", or the reused server URL's database).
func (p *Postgres) Exec(ctx context.Context, sql string) error {
	return p.ExecIn(ctx, p.database, sql)
}

// ExecIn runs sql, which may hold several statements, as the superuser in
// database.
func (p *Postgres) ExecIn(ctx context.Context, database, sql string) error {
	conn, err := pgconn.Connect(ctx, p.URL(p.SuperUser, p.SuperPassword, database))
	if err != nil {
		return fmt.Errorf("testenv: connect to %s: %w", database, err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, sql).ReadAll(); err != nil {
		return fmt.Errorf("testenv: exec in %s: %w", database, err)
	}
	return nil
}

// CreateRole creates a LOGIN role with password (none when empty), stored as
// a SCRAM-SHA-256 secret, adding the extra role options given, for example
// "SUPERUSER" or "CONNECTION LIMIT 5".
func (p *Postgres) CreateRole(ctx context.Context, name, password string, extra ...string) error {
	sql := "CREATE ROLE " + quoteIdent(name) + " LOGIN"
	if password != "" {
		sql += " PASSWORD " + quoteLiteral(password)
	}
	for _, opt := range extra {
		sql += " " + opt
	}
	return p.Exec(ctx, sql)
}

// CertFile is the PEM file of the server's self-signed certificate (its own
// CA, usable as sslrootcert), or "" without SSL. It is removed by Stop.
func (p *Postgres) CertFile() string { return p.certFile }

// CertPool returns a pool holding the server's certificate, for a client
// tls.Config's RootCAs, or nil without SSL.
func (p *Postgres) CertPool() *x509.CertPool {
	if p.certPEM == nil {
		return nil
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(p.certPEM)
	return pool
}

// reusePostgres describes the existing server at rawURL without starting
// anything, and checks that it answers.
func reusePostgres(ctx context.Context, rawURL string) (*Postgres, error) {
	u, err := url.Parse(rawURL)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		return nil, fmt.Errorf("testenv: %s is not a postgres:// URL", EnvPostgresURL)
	}
	port := 5432
	if s := u.Port(); s != "" {
		if port, err = strconv.Atoi(s); err != nil {
			return nil, fmt.Errorf("testenv: %s: bad port %q", EnvPostgresURL, s)
		}
	}
	p := &Postgres{
		Host:      u.Hostname(),
		Port:      port,
		SuperUser: u.User.Username(),
		database:  strings.TrimPrefix(u.Path, "/"),
		sslmode:   u.Query().Get("sslmode"),
		lifecycle: lifecycle{external: true},
	}
	p.SuperPassword, _ = u.User.Password()
	if p.Host == "" {
		p.Host = "127.0.0.1"
	}
	if p.SuperUser == "" {
		p.SuperUser = "postgres"
	}
	if p.database == "" {
		p.database = "postgres"
	}
	if p.sslmode == "" {
		p.sslmode = "disable"
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := p.ping(ctx); err != nil {
		return nil, fmt.Errorf("testenv: %s: %w", EnvPostgresURL, err)
	}
	return p, nil
}

func quoteIdent(s string) string   { return `"` + strings.ReplaceAll(s, `"`, `""`) + `"` }
func quoteLiteral(s string) string { return `'` + strings.ReplaceAll(s, `'`, `''`) + `'` }

// randomHex returns n random bytes in hex.
func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // never fails (crypto/rand.Read panics instead)
	return hex.EncodeToString(b)
}
