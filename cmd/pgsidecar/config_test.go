package main

import (
	"bytes"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/pgsidecar/pgsidecar/internal/clientauth"
	"github.com/pgsidecar/pgsidecar/proxy"
)

// writeFile writes content to a new file in a temporary directory.
func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// parse runs the flag and config stages of the command on args.
func parse(t *testing.T, args ...string) (Config, error) {
	t.Helper()
	var opts cliOptions
	fs := newFlagSet(&opts)
	if err := fs.Parse(args); err != nil {
		t.Fatalf("parse %q: %v", args, err)
	}
	return loadConfig(fs, opts)
}

func mustParse(t *testing.T, args ...string) Config {
	t.Helper()
	cfg, err := parse(t, args...)
	if err != nil {
		t.Fatalf("loadConfig: %v", err)
	}
	return cfg
}

// runCmd runs the whole command and returns its exit code and output.
func runCmd(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code = run(t.Context(), args, &out, &errOut)
	return code, out.String(), errOut.String()
}

const precedenceYAML = `
listen: 127.0.0.1:7001
upstream: postgres://app@db.internal:5432/app
pool_size: 5
min_pool_size: 1
max_client_conn: 50
server_idle_timeout: 90s
log:
  level: debug
  format: json
tls:
  client_mode: disable
`

func TestPrecedenceFileEnvFlag(t *testing.T) {
	path := writeFile(t, "pgsidecar.yaml", precedenceYAML)
	t.Setenv("PGSIDECAR_POOL_SIZE", "7")        // beats the file
	t.Setenv("PGSIDECAR_MAX_CLIENT_CONN", "60") // beats the file, loses to the flag
	t.Setenv("PGSIDECAR_LOG_FORMAT", "text")    // nested key from env
	t.Setenv("PGSIDECAR_QUERY_WAIT_TIMEOUT", "45s")
	t.Setenv("PGSIDECAR_SERVER_LIFETIME", "") // empty means unset

	cfg := mustParse(t, "--config", path, "--max-client-conn", "70", "--tls-client-mode", "require")

	checks := []struct {
		name      string
		got, want any
	}{
		{"listen (file)", cfg.Listen, "127.0.0.1:7001"},
		{"min_pool_size (file)", cfg.MinPoolSize, 1},
		{"server_idle_timeout (file)", cfg.ServerIdleTimeout, 90 * time.Second},
		{"log.level (file)", cfg.Log.Level, "debug"},
		{"pool_size (env over file)", cfg.PoolSize, 7},
		{"log.format (env over file)", cfg.Log.Format, "text"},
		{"query_wait_timeout (env over default)", cfg.QueryWaitTimeout, 45 * time.Second},
		{"max_client_conn (flag over env and file)", cfg.MaxClientConn, 70},
		{"tls.client_mode (flag over file)", cfg.TLS.ClientMode, "require"},
		{"http_listen (default)", cfg.HTTPListen, "127.0.0.1:9187"},
		{"server_lifetime (default)", cfg.ServerLifetime, time.Hour},
		{"server_reset_query (default)", cfg.ServerResetQuery, "DISCARD ALL"},
		{"shutdown_grace (default)", cfg.ShutdownGrace, 2 * time.Second},
		{"auth_method (unset)", cfg.AuthMethod, ""},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}
}

func TestDefaultsWithoutFile(t *testing.T) {
	cfg := mustParse(t)
	for _, s := range settings {
		v := map[string]any{
			"listen": cfg.Listen, "http_listen": cfg.HTTPListen, "upstream": cfg.Upstream,
			"pool_mode": cfg.PoolMode, "pool_size": cfg.PoolSize, "min_pool_size": cfg.MinPoolSize,
			"max_client_conn": cfg.MaxClientConn, "max_message_bytes": cfg.MaxMessageBytes,
			"auth_method": cfg.AuthMethod, "auth_file": cfg.AuthFile,
			"client_login_timeout": cfg.ClientLoginTimeout, "query_wait_timeout": cfg.QueryWaitTimeout,
			"server_connect_timeout": cfg.ServerConnectTimeout, "server_idle_timeout": cfg.ServerIdleTimeout,
			"server_lifetime": cfg.ServerLifetime, "server_check_delay": cfg.ServerCheckDelay,
			"server_reset_query": cfg.ServerResetQuery, "shutdown_timeout": cfg.ShutdownTimeout,
			"shutdown_grace": cfg.ShutdownGrace, "tls.cert_file": cfg.TLS.CertFile,
			"tls.key_file": cfg.TLS.KeyFile, "tls.client_mode": cfg.TLS.ClientMode,
			"log.level": cfg.Log.Level, "log.format": cfg.Log.Format,
			"pin_on_session_state": cfg.PinOnSessionState, "max_prepared_statements": cfg.MaxPreparedStatements,
			"client_idle_timeout": cfg.ClientIdleTimeout, "idle_transaction_timeout": cfg.IdleTransactionTimeout,
			"query_timeout": cfg.QueryTimeout, "reserve_pool_size": cfg.ReservePoolSize,
			"reserve_pool_timeout": cfg.ReservePoolTimeout,
			"cache.enabled":        cfg.Cache.Enabled, "cache.redis": cfg.Cache.Redis,
			"cache.memory_bytes": cfg.Cache.MemoryBytes, "cache.max_entry_bytes": cfg.Cache.MaxEntryBytes,
			"cache.default_ttl": cfg.Cache.DefaultTTL, "cache.redis_timeout": cfg.Cache.RedisTimeout,
			"cache.max_staleness": cfg.Cache.MaxStaleness,
		}
		got, ok := v[s.key]
		if !ok {
			t.Errorf("setting %s is not checked here", s.key)
			continue
		}
		if got != s.def {
			t.Errorf("%s = %v, want default %v", s.key, got, s.def)
		}
	}
}

// The sample configuration documents every key with its default: loading it
// must give exactly the defaults.
func TestSampleConfigMatchesDefaults(t *testing.T) {
	sample := mustParse(t, "--config", "../../configs/pgsidecar.yaml")
	defaults := mustParse(t)
	sample.Upstream, defaults.Upstream = "", ""
	if got, want := sample.String(), defaults.String(); got != want {
		t.Errorf("configs/pgsidecar.yaml differs from the defaults:\n%s\nwant\n%s", got, want)
	}
}

func TestConfigFileFromEnv(t *testing.T) {
	envFile := writeFile(t, "env.yaml", "pool_size: 3\n")
	flagFile := writeFile(t, "flag.yaml", "pool_size: 4\n")
	t.Setenv("PGSIDECAR_CONFIG", envFile)
	if cfg := mustParse(t); cfg.PoolSize != 3 {
		t.Errorf("PGSIDECAR_CONFIG: pool_size = %d, want 3", cfg.PoolSize)
	}
	if cfg := mustParse(t, "--config", flagFile); cfg.PoolSize != 4 {
		t.Errorf("--config over PGSIDECAR_CONFIG: pool_size = %d, want 4", cfg.PoolSize)
	}
}

func TestMapsKeepTheirCase(t *testing.T) {
	path := writeFile(t, "c.yaml", `
upstream: postgres://db/app
databases:
  Reports: postgres://reports.internal/Reports
users:
  Alice: s3cret
  bob: "md5aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
`)
	cfg := mustParse(t, "--config", path)
	if _, ok := cfg.Databases["Reports"]; !ok {
		t.Errorf("databases = %v, want the key Reports as written", cfg.Databases)
	}
	if cfg.Users["Alice"] != "s3cret" {
		t.Errorf("users = %v, want the key Alice as written", cfg.Users)
	}
}

func TestUnknownKeyIsAnError(t *testing.T) {
	path := writeFile(t, "c.yaml", "upstream: postgres://db/app\npool_sise: 3\n")
	_, err := parse(t, "--config", path)
	if err == nil || !strings.Contains(err.Error(), "pool_sise") {
		t.Fatalf("err = %v, want it to name the unknown key pool_sise", err)
	}
}

func TestInvalidConfigListsEveryProblem(t *testing.T) {
	path := writeFile(t, "c.yaml", `
pool_mode: bogus
pool_size: -1
min_pool_size: 5
log:
  level: loud
tls:
  cert_file: /nonexistent/cert.pem
`)
	code, stdout, stderr := runCmd(t, "--config", path, "--listen", "nohost", "--log-format", "xml",
		"--client-login-timeout", "0s", "--server-idle-timeout", "-1s")
	if code != exitConfig {
		t.Fatalf("exit code = %d, want %d; stderr:\n%s", code, exitConfig, stderr)
	}
	if stdout != "" {
		t.Errorf("stdout = %q, want nothing", stdout)
	}
	for _, want := range []string{
		"listen:",                         // ours
		"client_login_timeout must be",    // ours
		"server_idle_timeout must not be", // ours
		"cert_file and key_file",          // ours
		"log.level",                       // ours
		"log.format",                      // ours
		"pool_mode must be",               // proxy.Config.Validate
		"upstream is required",            // pool.Config.Validate
		"pool_size must be positive",      // pool.Config.Validate
	} {
		if !strings.Contains(stderr, want) {
			t.Errorf("stderr does not mention %q:\n%s", want, stderr)
		}
	}
	if n := strings.Count(stderr, "\n  - "); n < 9 {
		t.Errorf("%d problems listed, want at least 9:\n%s", n, stderr)
	}
}

func TestBadValueTypes(t *testing.T) {
	t.Setenv("PGSIDECAR_POOL_SIZE", "many")
	t.Setenv("PGSIDECAR_SHUTDOWN_TIMEOUT", "soon")
	code, _, stderr := runCmd(t, "--upstream", "postgres://u@db/app")
	if code != exitConfig {
		t.Fatalf("exit code = %d, want %d", code, exitConfig)
	}
	if strings.Contains(stderr, "decoding failed") {
		t.Errorf("stderr lists the decoder's heading as a problem:\n%s", stderr)
	}
	for _, want := range []string{`pool_size: invalid value "many"`, `shutdown_timeout: invalid value "soon"`} {
		if !strings.Contains(stderr, want) {
			t.Errorf("stderr does not mention %q:\n%s", want, stderr)
		}
	}
}

func TestAuthMethodDefault(t *testing.T) {
	tests := []struct {
		listen, method string
		want           clientauth.Method
		wantErr        string
		wantWarning    bool
	}{
		{listen: "127.0.0.1:6432", want: clientauth.Trust},
		{listen: "[::1]:6432", want: clientauth.Trust},
		{listen: "localhost:6432", want: clientauth.Trust},
		{listen: "0.0.0.0:6432", wantErr: "auth_method is required"},
		{listen: ":6432", wantErr: "auth_method is required"},
		{listen: "10.0.0.5:6432", wantErr: "auth_method is required"},
		{listen: "0.0.0.0:6432", method: "trust", want: clientauth.Trust, wantWarning: true},
		{listen: "0.0.0.0:6432", method: "md5", wantErr: "needs users"},
	}
	for _, tt := range tests {
		t.Run(tt.listen+"/"+tt.method, func(t *testing.T) {
			args := []string{"--upstream", "postgres://u@db/app", "--listen", tt.listen}
			if tt.method != "" {
				args = append(args, "--auth-method", tt.method)
			}
			b, err := mustParse(t, args...).build()
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if b.proxy.AuthMethod != tt.want {
				t.Errorf("AuthMethod = %q, want %q", b.proxy.AuthMethod, tt.want)
			}
			if got := len(b.warnings) > 0; got != tt.wantWarning {
				t.Errorf("warnings = %q, want some: %v", b.warnings, tt.wantWarning)
			}
		})
	}
}

func TestBuildMapsConfig(t *testing.T) {
	userlist := writeFile(t, "userlist.txt", `"carol" "md5`+clientauth.MD5Hash("carol", "pw")[3:]+`"`+"\n")
	path := writeFile(t, "c.yaml", `
upstream: postgres://db.internal/app
auth_method: md5
auth_file: `+userlist+`
users:
  alice: plain-pw
  bob: md5`+clientauth.MD5Hash("bob", "x")[3:]+`
server_idle_timeout: 0s
server_reset_query: ""
`)
	b, err := mustParse(t, "--config", path, "--shutdown-grace", "0s").build()
	if err != nil {
		t.Fatal(err)
	}
	if b.proxy.Users == nil {
		t.Fatal("proxy Users not set")
	}
	for _, user := range []string{"alice", "bob", "carol"} {
		if _, ok := b.proxy.Users.Lookup(user); !ok {
			t.Errorf("user %s missing from the store", user)
		}
	}
	if pw, ok := b.pool.Passwords("alice"); !ok || pw != "plain-pw" {
		t.Errorf("Passwords(alice) = %q, %v; want the plaintext password", pw, ok)
	}
	for _, user := range []string{"bob", "carol", "nobody"} {
		if _, ok := b.pool.Passwords(user); ok {
			t.Errorf("Passwords(%s) found a password, want none (hash only or unknown)", user)
		}
	}
	if !strings.Contains(strings.Join(b.warnings, "\n"), "bob, carol") {
		t.Errorf("warnings = %q, want the users without a plaintext password", b.warnings)
	}
	if b.pool.IdleTimeout >= 0 {
		t.Errorf("pool IdleTimeout = %v, want negative (disabled) for server_idle_timeout 0", b.pool.IdleTimeout)
	}
	if b.pool.ResetQuery != "-" {
		t.Errorf("pool ResetQuery = %q, want \"-\" (disabled)", b.pool.ResetQuery)
	}
	if b.pool.Lifetime != time.Hour || b.pool.PoolSize != 20 || b.proxy.PoolMode != proxy.PoolModeSession {
		t.Errorf("defaults not carried: lifetime %v pool size %d mode %q", b.pool.Lifetime, b.pool.PoolSize, b.proxy.PoolMode)
	}
	if b.proxy.ShutdownGrace != 0 {
		t.Errorf("ShutdownGrace = %v, want 0 from the flag", b.proxy.ShutdownGrace)
	}
}

func TestUserInBothSourcesIsAnError(t *testing.T) {
	userlist := writeFile(t, "userlist.txt", `"alice" "one"`+"\n")
	path := writeFile(t, "c.yaml", "upstream: postgres://db/app\nauth_file: "+userlist+"\nusers:\n  alice: two\n")
	_, err := mustParse(t, "--config", path).build()
	if err == nil || !strings.Contains(err.Error(), "users.alice") {
		t.Fatalf("err = %v, want a duplicate-user error", err)
	}
}

const (
	upstreamSecret = "upstream-Secret-1"
	userSecret     = "alice-Secret-2"
	dbSecret       = "reports-Secret-3"
)

func secretConfig(t *testing.T) string {
	return writeFile(t, "c.yaml", fmt.Sprintf(`
upstream: postgres://app:%s@db.internal:5432/app?sslmode=require
databases:
  reports: postgres://db.internal/reports?password=%s
users:
  alice: %s
`, upstreamSecret, dbSecret, userSecret))
}

func assertNoSecrets(t *testing.T, what, s string) {
	t.Helper()
	for _, secret := range []string{upstreamSecret, userSecret, dbSecret} {
		if strings.Contains(s, secret) {
			t.Errorf("%s leaks %q:\n%s", what, secret, s)
		}
	}
	if !strings.Contains(s, redacted) {
		t.Errorf("%s shows no redaction marker:\n%s", what, s)
	}
}

func TestRedaction(t *testing.T) {
	cfg := mustParse(t, "--config", secretConfig(t))

	assertNoSecrets(t, "String", cfg.String())
	assertNoSecrets(t, "%v", fmt.Sprintf("%v", cfg))
	assertNoSecrets(t, "%+v", fmt.Sprintf("%+v", cfg))
	assertNoSecrets(t, "%#v", fmt.Sprintf("%#v", cfg))
	for _, json := range []bool{false, true} {
		var buf bytes.Buffer
		log := newLogger(&buf, built{logJSON: json})
		log.Info("starting", "config", cfg)
		assertNoSecrets(t, fmt.Sprintf("log (json %v)", json), buf.String())
	}
	if !strings.Contains(cfg.String(), "db.internal:5432") {
		t.Errorf("String hides more than the secrets:\n%s", cfg.String())
	}
	if cfg.Users["alice"] != userSecret {
		t.Error("redaction changed the config itself")
	}

	code, stdout, stderr := runCmd(t, "--config", secretConfig(t), "--print-config")
	if code != exitOK {
		t.Fatalf("--print-config exit %d: %s", code, stderr)
	}
	assertNoSecrets(t, "--print-config", stdout)
}

func TestRedactURL(t *testing.T) {
	tests := map[string]string{
		"":                                    "",
		"postgres://db/app":                   "postgres://db/app",
		"postgres://u:pw@db/app":              "postgres://u:xxxxx@db/app",
		"postgres://u@db/app?password=pw":     "postgres://u@db/app?password=xxxxx",
		"postgres://db/app?sslpassword=k&x=1": "postgres://db/app?sslpassword=xxxxx&x=1",
		"postgres://u:pw@db/%zz":              redacted,
	}
	for in, want := range tests {
		if got := redactURL(in); got != want {
			t.Errorf("redactURL(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestVersion(t *testing.T) {
	code, stdout, stderr := runCmd(t, "--version")
	if code != exitOK || stdout != "pgsidecar dev\n" || stderr != "" {
		t.Errorf("--version = %d, %q, %q; want 0, \"pgsidecar dev\\n\", \"\"", code, stdout, stderr)
	}
}

func TestHelpListsFlags(t *testing.T) {
	for _, arg := range []string{"--help", "-h"} {
		code, stdout, _ := runCmd(t, arg)
		if code != exitOK {
			t.Errorf("%s exit %d, want 0", arg, code)
		}
		for _, flag := range []string{"--config", "--listen", "--upstream", "--pool-mode", "--pool-size",
			"--auth-method", "--auth-file", "--http-listen", "--version", "--help", "PGSIDECAR_POOL_SIZE"} {
			if !strings.Contains(stdout, flag) {
				t.Errorf("%s output lacks %s", arg, flag)
			}
		}
	}
}

func TestBadFlagsExit2(t *testing.T) {
	for _, args := range [][]string{{"--no-such-flag"}, {"--pool-size", "x"}, {"stray"}} {
		code, _, stderr := runCmd(t, args...)
		if code != exitConfig || !strings.Contains(stderr, "--help") {
			t.Errorf("%q: exit %d, stderr %q; want 2 and a pointer to --help", args, code, stderr)
		}
	}
}

func TestMissingConfigFileExit2(t *testing.T) {
	code, _, stderr := runCmd(t, "--config", filepath.Join(t.TempDir(), "missing.yaml"))
	if code != exitConfig || !strings.Contains(stderr, "missing.yaml") {
		t.Errorf("exit %d, stderr %q; want 2 naming the file", code, stderr)
	}
}

func TestListenFailureExit1(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	code, _, stderr := runCmd(t, "--upstream", "postgres://u@127.0.0.1:1/app",
		"--listen", taken.Addr().String(), "--http-listen", "127.0.0.1:0", "--log-level", "error")
	if code != exitRuntime {
		t.Fatalf("exit %d, want %d; stderr:\n%s", code, exitRuntime, stderr)
	}
	if !strings.Contains(stderr, "listen for clients") {
		t.Errorf("stderr does not say what failed:\n%s", stderr)
	}
}

// The logger honours the configured level.
func TestLoggerLevel(t *testing.T) {
	var buf bytes.Buffer
	log := newLogger(&buf, built{logLevel: slog.LevelWarn})
	log.Info("hidden")
	log.Warn("shown")
	if strings.Contains(buf.String(), "hidden") || !strings.Contains(buf.String(), "shown") {
		t.Errorf("log output %q, want only the warning", buf.String())
	}
}

func TestUsersFromEnvOverrideFile(t *testing.T) {
	path := writeFile(t, "c.yaml", `
upstream: postgres://db/app
users:
  alice: from-file
  carol: kept
`)
	t.Setenv("PGSIDECAR_USERS", "\"alice\" \"from-env\"\n\"Bob\" \"md5aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"\n")
	cfg := mustParse(t, "--config", path)
	want := map[string]string{"alice": "from-env", "Bob": "md5aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "carol": "kept"}
	if !reflect.DeepEqual(cfg.Users, want) {
		t.Fatalf("users = %v, want %v", cfg.Users, want)
	}
	t.Setenv("PGSIDECAR_USERS", "\"broken")
	if _, err := parse(t, "--config", path); err == nil || !strings.Contains(err.Error(), "PGSIDECAR_USERS") {
		t.Fatalf("a malformed PGSIDECAR_USERS must be reported, got %v", err)
	}
}

func TestCacheConfig(t *testing.T) {
	t.Setenv("PGSIDECAR_CACHE", "true")
	cfg := mustParse(t, "--upstream", "postgres://u@h/db", "--redis", "redis://:secret@127.0.0.1:6379/0", "--cache-memory-bytes", "0")
	if !cfg.Cache.Enabled || cfg.Cache.Redis == "" || cfg.Cache.MemoryBytes != 0 {
		t.Fatalf("cache config = %+v", cfg.Cache)
	}
	if s := cfg.String(); strings.Contains(s, "secret") {
		t.Errorf("the Redis password is printed:\n%s", s)
	}
	b, err := cfg.build()
	if err != nil {
		t.Fatal(err)
	}
	if !b.cacheOn || b.cache.MemoryBytes >= 0 || b.redisURL == "" {
		t.Errorf("built cache = on %v, %+v, redis %q; want on, no memory tier, redis", b.cacheOn, b.cache, b.redisURL)
	}

	cfg.Cache.Redis = ""
	if _, err := cfg.build(); err == nil || !strings.Contains(err.Error(), "no tier") {
		t.Errorf("a cache with no tier: err = %v", err)
	}
	cfg.Cache.MemoryBytes = 1 << 20
	cfg.Cache.Tables = map[string]string{"hot": "5s", "audit": "never", "bad": "soon"}
	cfg.Cache.Fingerprints = map[string]string{"0xab": "1m", "zz": "1m"}
	_, err = cfg.build()
	for _, want := range []string{`cache.tables.bad`, `"zz" is not a hexadecimal`} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("bad rules: err = %v, want it to mention %s", err, want)
		}
	}
	delete(cfg.Cache.Tables, "bad")
	delete(cfg.Cache.Fingerprints, "zz")
	b, err = cfg.build()
	if err != nil {
		t.Fatal(err)
	}
	r := b.proxy.CacheRules
	if r.Tables["hot"] != 5*time.Second || r.Tables["audit"] != 0 || r.Fingerprints[0xab] != time.Minute {
		t.Errorf("rules = %+v", r)
	}
}
