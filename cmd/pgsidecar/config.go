package main

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/go-viper/mapstructure/v2"
	"github.com/spf13/pflag"
	"github.com/spf13/viper"
	"go.yaml.in/yaml/v3"

	"github.com/pgsidecar/pgsidecar/internal/clientauth"
)

// Config is the whole pgsidecar configuration as the user wrote it, after
// flags > env > file > defaults have been merged. build turns it into the
// proxy and pool configurations.
//
// Print it with String or log it as a slog value: both redact secrets.
type Config struct {
	Listen          string            `mapstructure:"listen" yaml:"listen"`
	HTTPListen      string            `mapstructure:"http_listen" yaml:"http_listen"`
	Upstream        string            `mapstructure:"upstream" yaml:"upstream"`
	Databases       map[string]string `mapstructure:"databases" yaml:"databases"`
	PoolMode        string            `mapstructure:"pool_mode" yaml:"pool_mode"`
	PoolSize        int               `mapstructure:"pool_size" yaml:"pool_size"`
	MinPoolSize     int               `mapstructure:"min_pool_size" yaml:"min_pool_size"`
	MaxClientConn   int               `mapstructure:"max_client_conn" yaml:"max_client_conn"`
	MaxMessageBytes int               `mapstructure:"max_message_bytes" yaml:"max_message_bytes"`
	// AuthMethod is empty when nobody chose one; build turns that into
	// trust on a loopback listen address and an error otherwise.
	AuthMethod string            `mapstructure:"auth_method" yaml:"auth_method"`
	AuthFile   string            `mapstructure:"auth_file" yaml:"auth_file"`
	Users      map[string]string `mapstructure:"users" yaml:"users"`

	ClientLoginTimeout   time.Duration `mapstructure:"client_login_timeout" yaml:"client_login_timeout"`
	QueryWaitTimeout     time.Duration `mapstructure:"query_wait_timeout" yaml:"query_wait_timeout"`
	ServerConnectTimeout time.Duration `mapstructure:"server_connect_timeout" yaml:"server_connect_timeout"`
	ServerIdleTimeout    time.Duration `mapstructure:"server_idle_timeout" yaml:"server_idle_timeout"`
	ServerLifetime       time.Duration `mapstructure:"server_lifetime" yaml:"server_lifetime"`
	ServerCheckDelay     time.Duration `mapstructure:"server_check_delay" yaml:"server_check_delay"`
	ServerResetQuery     string        `mapstructure:"server_reset_query" yaml:"server_reset_query"`
	ShutdownTimeout      time.Duration `mapstructure:"shutdown_timeout" yaml:"shutdown_timeout"`
	ShutdownGrace        time.Duration `mapstructure:"shutdown_grace" yaml:"shutdown_grace"`

	PinOnSessionState      bool          `mapstructure:"pin_on_session_state" yaml:"pin_on_session_state"`
	MaxPreparedStatements  int           `mapstructure:"max_prepared_statements" yaml:"max_prepared_statements"`
	ClientIdleTimeout      time.Duration `mapstructure:"client_idle_timeout" yaml:"client_idle_timeout"`
	IdleTransactionTimeout time.Duration `mapstructure:"idle_transaction_timeout" yaml:"idle_transaction_timeout"`
	QueryTimeout           time.Duration `mapstructure:"query_timeout" yaml:"query_timeout"`
	ReservePoolSize        int           `mapstructure:"reserve_pool_size" yaml:"reserve_pool_size"`
	ReservePoolTimeout     time.Duration `mapstructure:"reserve_pool_timeout" yaml:"reserve_pool_timeout"`

	TLS   TLSConfig   `mapstructure:"tls" yaml:"tls"`
	Log   LogConfig   `mapstructure:"log" yaml:"log"`
	Cache CacheConfig `mapstructure:"cache" yaml:"cache"`
}

// CacheConfig is the result cache section.
type CacheConfig struct {
	Enabled       bool          `mapstructure:"enabled" yaml:"enabled"`
	Redis         string        `mapstructure:"redis" yaml:"redis"`
	MemoryBytes   int64         `mapstructure:"memory_bytes" yaml:"memory_bytes"`
	MaxEntryBytes int           `mapstructure:"max_entry_bytes" yaml:"max_entry_bytes"`
	DefaultTTL    time.Duration `mapstructure:"default_ttl" yaml:"default_ttl"`
	RedisTimeout  time.Duration `mapstructure:"redis_timeout" yaml:"redis_timeout"`
	MaxStaleness  time.Duration `mapstructure:"max_staleness" yaml:"max_staleness"`
	// Tables and Fingerprints map a bare table name, or a pg_query
	// fingerprint in hex, to a TTL ("30s") or "never". File-only.
	Tables       map[string]string `mapstructure:"tables" yaml:"tables"`
	Fingerprints map[string]string `mapstructure:"fingerprints" yaml:"fingerprints"`
	// AllowFunctions names functions the operator vouches for: answers
	// calling them may be cached. File-only.
	AllowFunctions []string `mapstructure:"allow_functions" yaml:"allow_functions"`
}

// TLSConfig is the client-facing TLS section.
type TLSConfig struct {
	CertFile   string `mapstructure:"cert_file" yaml:"cert_file"`
	KeyFile    string `mapstructure:"key_file" yaml:"key_file"`
	ClientMode string `mapstructure:"client_mode" yaml:"client_mode"`
}

// LogConfig is the logging section.
type LogConfig struct {
	Level  string `mapstructure:"level" yaml:"level"`
	Format string `mapstructure:"format" yaml:"format"`
}

// setting is one scalar configuration key: its YAML key (dotted inside a
// section), its flag and default, and what it means. Its environment
// variable is envName(flag). The map databases is file-only; users can also
// come from PGSIDECAR_USERS in userlist.txt format.
type setting struct {
	key   string
	flag  string
	def   any // string, int or time.Duration; picks the flag type
	usage string
}

// settings is the read-only table that registers flags, binds environment
// variables and sets defaults, so the three can never disagree.
var settings = []setting{
	{"listen", "listen", "127.0.0.1:6432", "address for PostgreSQL clients (host:port)"},
	{"http_listen", "http-listen", "127.0.0.1:9187", "address for /livez, /readyz and /startupz (host:port)"},
	{"upstream", "upstream", "", "PostgreSQL URL of the real server (required); without a user, clients' own users and passwords are used"},
	{"pool_mode", "pool-mode", "session", "how long a client keeps a backend: session or transaction (a databases URL may override it with ?pool_mode=)"},
	{"pool_size", "pool-size", 20, "maximum backend connections per (database, user)"},
	{"min_pool_size", "min-pool-size", 0, "idle backend connections kept open per (database, user) once used"},
	{"max_client_conn", "max-client-conn", 1000, "maximum concurrent client connections"},
	{"max_message_bytes", "max-message-bytes", 64 << 20, "largest client message accepted, in bytes"},
	{"auth_method", "auth-method", "", "client authentication: trust, md5 or scram-sha-256 (default trust, allowed only when listen is a loopback address)"},
	{"auth_file", "auth-file", "", "PgBouncer-style userlist.txt with client users and passwords"},
	{"client_login_timeout", "client-login-timeout", 60 * time.Second, "time a client has to finish startup and authentication"},
	{"query_wait_timeout", "query-wait-timeout", 120 * time.Second, "time a client waits for a free backend"},
	{"pin_on_session_state", "pin-on-session-state", true, "transaction mode: keep a client on its backend after LISTEN, session advisory locks, temp tables, WITH HOLD cursors or SQL PREPARE (false: refuse them with 0A000)"},
	{"max_prepared_statements", "max-prepared-statements", 200, "transaction mode: prepared statements kept per backend, least recently used closed first (0: no limit)"},
	{"client_idle_timeout", "client-idle-timeout", time.Duration(0), "transaction mode: close a client idle this long while it holds no backend (0 disables)"},
	{"idle_transaction_timeout", "idle-transaction-timeout", time.Duration(0), "transaction mode: close a client idle this long inside a transaction, rolling it back (0 disables)"},
	{"query_timeout", "query-timeout", time.Duration(0), "transaction mode: close a client whose backend has not answered for this long, cancelling the query (0 disables)"},
	{"reserve_pool_size", "reserve-pool-size", 0, "extra backends per (database, user) for clients that waited longer than reserve_pool_timeout"},
	{"reserve_pool_timeout", "reserve-pool-timeout", 5 * time.Second, "how long a client waits before it may use the reserve pool"},
	{"server_connect_timeout", "server-connect-timeout", 15 * time.Second, "time to connect and authenticate to the upstream"},
	{"server_idle_timeout", "server-idle-timeout", 600 * time.Second, "close backends idle longer than this (0 disables)"},
	{"server_lifetime", "server-lifetime", 3600 * time.Second, "close backends older than this when next idle (0 disables)"},
	{"server_check_delay", "server-check-delay", 30 * time.Second, "check backends idle longer than this before use (0 disables)"},
	{"server_reset_query", "server-reset-query", "DISCARD ALL", "query run on a backend after a session (empty disables)"},
	{"shutdown_timeout", "shutdown-timeout", 30 * time.Second, "on SIGTERM, how long sessions may finish before they are cut"},
	{"shutdown_grace", "shutdown-grace", 2 * time.Second, "on SIGTERM, how long to keep accepting (reporting not ready) before draining"},
	{"tls.cert_file", "tls-cert-file", "", "PEM certificate for client TLS"},
	{"tls.key_file", "tls-key-file", "", "PEM private key for client TLS"},
	{"tls.client_mode", "tls-client-mode", "allow", "client TLS policy: disable, allow or require"},
	{"cache.enabled", "cache", false, "answer cacheable read-only queries from the result cache (off by default)"},
	{"cache.redis", "redis", "", "Redis URL of the cache tier shared by every sidecar (redis://host:port/db; empty: memory only)"},
	{"cache.memory_bytes", "cache-memory-bytes", int64(64 << 20), "memory tier budget in bytes (0: no memory tier, Redis only)"},
	{"cache.max_entry_bytes", "cache-max-entry-bytes", 1 << 20, "larger answers are never cached, in bytes"},
	{"cache.default_ttl", "cache-default-ttl", 60 * time.Second, "how long a cached answer lives unless a rule or hint says otherwise"},
	{"cache.redis_timeout", "cache-redis-timeout", 5 * time.Millisecond, "longest a client waits for Redis; slower is a miss"},
	{"cache.max_staleness", "cache-max-staleness", 250 * time.Millisecond, "with Redis: longest another sidecar may serve an answer older than a write through this one"},
	{"log.level", "log-level", "info", "log level: debug, info, warn or error"},
	{"log.format", "log-format", "text", "log format: text or json"},
}

// envPrefix starts every environment variable; envName derives the rest.
const envPrefix = "PGSIDECAR_"

func envName(flag string) string {
	return envPrefix + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// cliOptions are the flags that steer the command rather than configure the
// sidecar.
type cliOptions struct {
	configFile  string
	help        bool
	version     bool
	printConfig bool
}

// newFlagSet registers every flag. Flag defaults mirror the settings table
// so that --help shows them.
func newFlagSet(opts *cliOptions) *pflag.FlagSet {
	fs := pflag.NewFlagSet("pgsidecar", pflag.ContinueOnError)
	fs.SortFlags = false
	fs.StringVar(&opts.configFile, "config", "", "YAML configuration `file` (env "+envName("config")+")")
	for _, s := range settings {
		usage := s.usage + " (env " + envName(s.flag) + ")"
		switch d := s.def.(type) {
		case string:
			fs.String(s.flag, d, usage)
		case int:
			fs.Int(s.flag, d, usage)
		case int64:
			fs.Int64(s.flag, d, usage)
		case time.Duration:
			fs.Duration(s.flag, d, usage)
		case bool:
			fs.Bool(s.flag, d, usage)
		default:
			panic(fmt.Sprintf("setting %s: unsupported default type %T", s.key, s.def))
		}
	}
	fs.BoolVar(&opts.printConfig, "print-config", false, "print the effective configuration, secrets redacted, and exit")
	fs.BoolVar(&opts.version, "version", false, "print the version and exit")
	fs.BoolVarP(&opts.help, "help", "h", false, "show this help and exit")
	return fs
}

// loadConfig merges flags (already parsed into fs), environment variables,
// the YAML file and defaults, in that order of precedence, into a Config.
// It reports every problem it finds at once. It does not validate values:
// build does.
func loadConfig(fs *pflag.FlagSet, opts cliOptions) (Config, error) {
	v := viper.New()
	for _, s := range settings {
		v.SetDefault(s.key, s.def)
		if err := v.BindEnv(s.key, envName(s.flag)); err != nil {
			return Config{}, err
		}
		if err := v.BindPFlag(s.key, fs.Lookup(s.flag)); err != nil {
			return Config{}, err
		}
	}

	var errs []error
	path := opts.configFile
	if !fs.Changed("config") {
		path = os.Getenv(envName("config"))
	}
	var raw []byte
	if path != "" {
		var err error
		raw, err = os.ReadFile(path)
		if err != nil {
			return Config{}, fmt.Errorf("config file: %w", err)
		}
		v.SetConfigType("yaml")
		if err := v.ReadConfig(bytes.NewReader(raw)); err != nil {
			return Config{}, fmt.Errorf("config file %s: %w", path, err)
		}
	}

	var cfg Config
	if err := v.UnmarshalExact(&cfg); err != nil {
		errs = append(errs, decodeProblems(v, err)...)
	}
	if raw != nil {
		// Viper lower-cases map keys, but database and user names are
		// case-sensitive in PostgreSQL: read both maps again as written.
		var maps struct {
			Databases map[string]string `yaml:"databases"`
			Users     map[string]string `yaml:"users"`
		}
		if err := yaml.Unmarshal(raw, &maps); err != nil {
			errs = append(errs, fmt.Errorf("config file %s: %w", path, err))
		}
		cfg.Databases, cfg.Users = maps.Databases, maps.Users
	}
	if list := os.Getenv(envName("users")); list != "" {
		// Users from the environment (for example a Kubernetes Secret), in
		// userlist.txt format; they win over the file's users map.
		fromEnv, err := clientauth.ParseUserlist(strings.NewReader(list))
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", envName("users"), err))
		}
		if len(fromEnv) > 0 && cfg.Users == nil {
			cfg.Users = map[string]string{}
		}
		for user, cred := range fromEnv {
			cfg.Users[user] = cmp.Or(cred.Password, cred.SCRAM, cred.MD5)
		}
	}
	return cfg, errors.Join(errs...)
}

// decodeProblems turns viper's decoding error (a tree of mapstructure
// errors under one heading) into one error per key, naming the key and the
// value that was given.
func decodeProblems(v *viper.Viper, err error) []error {
	var joined interface{ Unwrap() []error }
	if !errors.As(err, &joined) {
		return []error{describeDecodeError(v, err)}
	}
	var out []error
	for _, e := range joined.Unwrap() {
		out = append(out, decodeProblems(v, e)...)
	}
	return out
}

func describeDecodeError(v *viper.Viper, err error) error {
	var de *mapstructure.DecodeError
	if !errors.As(err, &de) {
		return fmt.Errorf("config: %w", err)
	}
	key, cause := de.Name(), de.Unwrap()
	if unused, ok := strings.CutPrefix(cause.Error(), "has invalid keys: "); ok {
		var keys []string
		for _, k := range strings.Split(unused, ", ") {
			if key != "" {
				k = key + "." + k
			}
			keys = append(keys, k)
		}
		return fmt.Errorf("unknown configuration key %s", strings.Join(keys, ", "))
	}
	return fmt.Errorf("%s: invalid value %q: %v", key, fmt.Sprint(v.Get(key)), cause)
}
