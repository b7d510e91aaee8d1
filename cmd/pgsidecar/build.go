package main

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/pgsidecar/pgsidecar/internal/clientauth"
	"github.com/pgsidecar/pgsidecar/pool"
	"github.com/pgsidecar/pgsidecar/proxy"
	"github.com/pgsidecar/pgsidecar/resultcache"
)

// built is a Config checked and turned into what the packages take: files
// read, secrets parsed. The Logger fields are left for run to set.
type built struct {
	proxy    proxy.Config
	pool     pool.Config
	logLevel slog.Level
	logJSON  bool
	// warnings are legal but risky choices, logged once the logger exists.
	warnings []string
	// The result cache, when cacheOn.
	cacheOn  bool
	cache    resultcache.Config
	redisURL string
}

// build validates c and turns it into the proxy and pool configurations. It
// reports every problem at once: its own checks, then proxy.Config.Validate
// and pool.Config.Validate on the result.
func (c Config) build() (built, error) {
	var (
		b    built
		errs []error
	)
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }

	listenOK := true
	if err := checkAddr(c.Listen); err != nil {
		bad("listen: %v", err)
		listenOK = false
	}
	if err := checkAddr(c.HTTPListen); err != nil {
		bad("http_listen: %v", err)
	} else if c.HTTPListen == c.Listen && !strings.HasSuffix(c.Listen, ":0") {
		bad("http_listen must differ from listen (both %s)", c.Listen)
	}

	// Zero would silently mean "the package default" below; refuse it so a
	// mistyped value is not mistaken for a choice. Negative values are
	// reported by the packages' own Validate.
	for _, f := range []struct {
		key string
		n   int
	}{{"pool_size", c.PoolSize}, {"max_client_conn", c.MaxClientConn}, {"max_message_bytes", c.MaxMessageBytes}} {
		if f.n == 0 {
			bad("%s must be positive, got 0", f.key)
		}
	}
	for _, f := range []struct {
		key string
		d   time.Duration
	}{
		{"client_login_timeout", c.ClientLoginTimeout},
		{"query_wait_timeout", c.QueryWaitTimeout},
		{"server_connect_timeout", c.ServerConnectTimeout},
		{"shutdown_timeout", c.ShutdownTimeout},
	} {
		if f.d == 0 {
			bad("%s must be positive, got 0s", f.key)
		}
	}
	for _, f := range []struct {
		key string
		d   time.Duration
	}{
		{"server_idle_timeout", c.ServerIdleTimeout},
		{"server_lifetime", c.ServerLifetime},
		{"server_check_delay", c.ServerCheckDelay},
	} {
		if f.d < 0 {
			bad("%s must not be negative (0 disables it), got %s", f.key, f.d)
		}
	}

	method := clientauth.Method(c.AuthMethod)
	if method == "" && listenOK {
		if isLoopback(c.Listen) {
			method = clientauth.Trust
		} else {
			bad("auth_method is required because listen %s is not a loopback address: "+
				"choose md5 or scram-sha-256 (with auth_file or users), or trust to let anyone in without a password", c.Listen)
		}
	}
	if method == clientauth.Trust && listenOK && !isLoopback(c.Listen) {
		b.warnings = append(b.warnings, fmt.Sprintf(
			"auth_method trust on non-loopback listen %s: any client that can reach it gets in without a password", c.Listen))
	}

	creds, err := c.credentials()
	if err != nil {
		errs = append(errs, err)
	}
	var users clientauth.Store
	if len(creds) > 0 {
		users = clientauth.MapStore(creds)
	}
	if upstreamNeedsPasswords(c.Upstream) {
		if missing := withoutPassword(creds); len(missing) > 0 {
			b.warnings = append(b.warnings, fmt.Sprintf(
				"upstream names no user, so backends log in with each client's plaintext password, "+
					"but these users have none (only a hash): %s", strings.Join(missing, ", ")))
		}
	}

	tlsCfg, err := c.TLS.load()
	if err != nil {
		errs = append(errs, err)
	}

	if err := b.logLevel.UnmarshalText([]byte(c.Log.Level)); err != nil {
		bad("log.level must be debug, info, warn or error, got %q", c.Log.Level)
	}
	switch c.Log.Format {
	case "text":
	case "json":
		b.logJSON = true
	default:
		bad("log.format must be text or json, got %q", c.Log.Format)
	}

	dbURLs, dbModes, err := splitPoolModes(c.Databases)
	if err != nil {
		errs = append(errs, err)
	}
	for _, f := range []struct {
		key string
		d   time.Duration
	}{
		{"client_idle_timeout", c.ClientIdleTimeout},
		{"idle_transaction_timeout", c.IdleTransactionTimeout},
		{"query_timeout", c.QueryTimeout},
		{"reserve_pool_timeout", c.ReservePoolTimeout},
	} {
		if f.d < 0 {
			bad("%s must not be negative (0 disables it), got %s", f.key, f.d)
		}
	}
	if c.MaxPreparedStatements < 0 {
		bad("max_prepared_statements must not be negative (0: no limit), got %d", c.MaxPreparedStatements)
	}

	b.proxy = proxy.Config{
		ListenAddr:             c.Listen,
		MaxClientConn:          c.MaxClientConn,
		MaxMessageBytes:        c.MaxMessageBytes,
		ClientLoginTimeout:     c.ClientLoginTimeout,
		QueryWaitTimeout:       c.QueryWaitTimeout,
		ShutdownTimeout:        c.ShutdownTimeout,
		ShutdownGrace:          c.ShutdownGrace,
		PoolMode:               proxy.PoolMode(c.PoolMode),
		RejectSessionState:     !c.PinOnSessionState,
		ClientIdleTimeout:      c.ClientIdleTimeout,
		IdleTransactionTimeout: c.IdleTransactionTimeout,
		QueryTimeout:           c.QueryTimeout,
		DatabasePoolModes:      dbModes,
		TLS:                    tlsCfg,
		TLSMode:                proxy.TLSMode(c.TLS.ClientMode),
		AuthMethod:             method,
		Users:                  users,
	}
	resetQuery := c.ServerResetQuery
	if resetQuery == "" {
		resetQuery = "-" // pool's spelling of "none"; its zero means the default
	}
	maxPrepared := c.MaxPreparedStatements
	if maxPrepared == 0 {
		maxPrepared = -1 // pool's spelling of "no limit"
	}
	b.pool = pool.Config{
		Upstream:              c.Upstream,
		Databases:             dbURLs,
		ReservePoolSize:       c.ReservePoolSize,
		ReservePoolTimeout:    c.ReservePoolTimeout,
		MaxPreparedStatements: maxPrepared,
		Passwords:             plaintextPasswords(creds),
		PoolSize:              c.PoolSize,
		MinPoolSize:           c.MinPoolSize,
		ConnectTimeout:        c.ServerConnectTimeout,
		IdleTimeout:           disableIfZero(c.ServerIdleTimeout),
		Lifetime:              disableIfZero(c.ServerLifetime),
		CheckDelay:            disableIfZero(c.ServerCheckDelay),
		ResetQuery:            resetQuery,
	}
	if c.Cache.Enabled {
		b.cacheOn = true
		b.redisURL = c.Cache.Redis
		mem := c.Cache.MemoryBytes
		switch {
		case mem < 0:
			bad("cache.memory_bytes must not be negative (0: no memory tier), got %d", mem)
		case mem == 0 && c.Cache.Redis == "":
			bad("cache.memory_bytes is 0 (no memory tier) and cache.redis is empty: the cache would have no tier")
		case mem == 0:
			mem = -1 // resultcache's spelling of "no memory tier"
		}
		b.cache = resultcache.Config{
			MemoryBytes:   mem,
			MaxEntryBytes: c.Cache.MaxEntryBytes,
			DefaultTTL:    c.Cache.DefaultTTL,
			RedisTimeout:  c.Cache.RedisTimeout,
			MaxStaleness:  c.Cache.MaxStaleness,
		}
		rules, err := c.Cache.rules()
		if err != nil {
			errs = append(errs, err)
		}
		b.proxy.CacheRules = rules
	}
	// Validate takes a pointer; check copies so nothing leaks back.
	proxyCfg, poolCfg := b.proxy, b.pool
	errs = append(errs, proxyCfg.Validate(), poolCfg.Validate())
	if err := errors.Join(errs...); err != nil {
		return built{}, err
	}
	return b, nil
}

// credentials merges auth_file and users. A user in both is a mistake.
func (c Config) credentials() (map[string]clientauth.Credential, error) {
	creds := map[string]clientauth.Credential{}
	var errs []error
	if c.AuthFile != "" {
		fromFile, err := clientauth.LoadUserlist(c.AuthFile)
		if err != nil {
			errs = append(errs, fmt.Errorf("auth_file: %w", err))
		}
		for user, cred := range fromFile {
			creds[user] = cred
		}
	}
	for _, user := range slices.Sorted(maps.Keys(c.Users)) {
		secret := c.Users[user]
		if secret == "" {
			errs = append(errs, fmt.Errorf("users.%s: password must not be empty", user))
			continue
		}
		if _, dup := creds[user]; dup {
			errs = append(errs, fmt.Errorf("users.%s: also defined in auth_file %s; keep one", user, c.AuthFile))
			continue
		}
		cred, err := clientauth.NewCredential(user, secret)
		if err != nil {
			errs = append(errs, fmt.Errorf("users.%s: %w", user, err))
			continue
		}
		creds[user] = cred
	}
	return creds, errors.Join(errs...)
}

// plaintextPasswords is pool.Config.Passwords: the password a backend logs
// in with when the upstream URL names no user.
func plaintextPasswords(creds map[string]clientauth.Credential) func(string) (string, bool) {
	return func(user string) (string, bool) {
		cred, ok := creds[user]
		if !ok || cred.Password == "" {
			return "", false
		}
		return cred.Password, true
	}
}

func withoutPassword(creds map[string]clientauth.Credential) []string {
	var users []string
	for _, user := range slices.Sorted(maps.Keys(creds)) {
		if creds[user].Password == "" {
			users = append(users, user)
		}
	}
	return users
}

// upstreamNeedsPasswords reports whether the upstream URL names no user, so
// that backends log in as each client's user.
func upstreamNeedsPasswords(upstream string) bool {
	u, err := url.Parse(upstream)
	if err != nil || upstream == "" {
		return false
	}
	return u.User.Username() == "" && u.Query().Get("user") == ""
}

// load reads the certificate and key, if configured.
func (t TLSConfig) load() (*tls.Config, error) {
	switch {
	case t.CertFile == "" && t.KeyFile == "":
		return nil, nil
	case t.CertFile == "" || t.KeyFile == "":
		return nil, errors.New("tls: cert_file and key_file must be set together")
	}
	cert, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("tls: %w", err)
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}, nil
}

// disableIfZero maps our "0 disables" to pool's "negative: never" (its zero
// means the default).
func disableIfZero(d time.Duration) time.Duration {
	if d == 0 {
		return -1
	}
	return d
}

func checkAddr(addr string) error {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("want host:port, got %q", addr)
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return fmt.Errorf("bad port in %q", addr)
	}
	return nil
}

// isLoopback reports whether addr listens only on the loopback interface.
// An empty host listens everywhere; other host names are not trusted to be
// local.
func isLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// splitPoolModes takes PgBouncer's per-database pool_mode out of the
// databases URLs (postgres://...?pool_mode=transaction): the proxy gets the
// modes, the pool gets URLs PostgreSQL understands.
func splitPoolModes(dbs map[string]string) (map[string]string, map[string]proxy.PoolMode, error) {
	if len(dbs) == 0 {
		return dbs, nil, nil
	}
	urls := make(map[string]string, len(dbs))
	var modes map[string]proxy.PoolMode
	var errs []error
	for name, raw := range dbs {
		u, err := url.Parse(raw)
		if err != nil {
			urls[name] = raw // the pool reports it
			continue
		}
		q := u.Query()
		if m := q.Get("pool_mode"); m != "" {
			if modes == nil {
				modes = make(map[string]proxy.PoolMode)
			}
			switch proxy.PoolMode(m) {
			case proxy.PoolModeSession, proxy.PoolModeTransaction:
				modes[name] = proxy.PoolMode(m)
			default:
				errs = append(errs, fmt.Errorf("databases.%s: pool_mode must be session or transaction, got %q", name, m))
			}
			q.Del("pool_mode")
			u.RawQuery = q.Encode()
		}
		urls[name] = u.String()
	}
	return urls, modes, errors.Join(errs...)
}

// rules turns the cache's file-only rules into the proxy's policy.
func (c CacheConfig) rules() (proxy.CacheRules, error) {
	r := proxy.CacheRules{AllowFunctions: c.AllowFunctions}
	var errs []error
	ttl := func(what, v string) time.Duration {
		if strings.EqualFold(strings.TrimSpace(v), "never") {
			return 0
		}
		d, err := time.ParseDuration(strings.TrimSpace(v))
		if err != nil || d <= 0 {
			errs = append(errs, fmt.Errorf("cache.%s: want a positive duration or \"never\", got %q", what, v))
		}
		return d
	}
	if len(c.Tables) > 0 {
		r.Tables = make(map[string]time.Duration, len(c.Tables))
		for name, v := range c.Tables {
			r.Tables[name] = ttl("tables."+name, v)
		}
	}
	if len(c.Fingerprints) > 0 {
		r.Fingerprints = make(map[uint64]time.Duration, len(c.Fingerprints))
		for fp, v := range c.Fingerprints {
			n, err := strconv.ParseUint(strings.TrimPrefix(fp, "0x"), 16, 64)
			if err != nil {
				errs = append(errs, fmt.Errorf("cache.fingerprints: %q is not a hexadecimal pg_query fingerprint", fp))
				continue
			}
			r.Fingerprints[n] = ttl("fingerprints."+fp, v)
		}
	}
	return r, errors.Join(errs...)
}
