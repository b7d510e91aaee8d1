package pool

import (
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"time"
)

// Config configures a Manager. The zero value of each optional field is
// documented next to it; New fills defaults and validates.
type Config struct {
	// Upstream is the PostgreSQL URL used for every database: host, port,
	// dbname, user, password, sslmode and other libpq parameters. When it
	// names a user, every backend logs in as that user; otherwise backends
	// log in as the client's user with the password from Passwords.
	Upstream string
	// Databases overrides Upstream per client database name, like
	// PgBouncer's [databases] section. Nil: none.
	Databases map[string]string
	// Passwords returns the plaintext password to log in to the backend as
	// user when the upstream URL names no user. Nil: no password is sent.
	Passwords func(user string) (string, bool)

	// PoolSize is the maximum number of backend connections per
	// (database, user). Zero: 20.
	PoolSize int
	// MinPoolSize is how many idle connections are kept open per pool once
	// the pool has been used. Zero: none.
	MinPoolSize int
	// ConnectTimeout bounds dialing and authenticating one backend. Zero: 15s.
	ConnectTimeout time.Duration
	// IdleTimeout closes backends idle longer than this. Zero: 600s;
	// negative: never.
	IdleTimeout time.Duration
	// Lifetime closes backends older than this when they are next idle.
	// Zero: 3600s; negative: never.
	Lifetime time.Duration
	// CheckDelay: a backend idle longer than this is checked with an empty
	// query before it is handed out. Zero: 30s; negative: never.
	CheckDelay time.Duration
	// ResetQuery runs on a backend before it returns to the pool after a
	// session. Zero: "DISCARD ALL". Set to "-" to disable.
	ResetQuery string
	// ReservePoolSize is how many connections beyond PoolSize a pool may
	// lend to clients that have waited ReservePoolTimeout. Zero: none.
	ReservePoolSize int
	// ReservePoolTimeout is how long a client waits for an ordinary slot
	// before it may use the reserve. Zero: 5s.
	ReservePoolTimeout time.Duration
	// MaxPreparedStatements bounds the prepared statements a transaction-mode
	// proxy keeps on each backend connection (see Statements). Zero: 200;
	// negative: no bound.
	MaxPreparedStatements int
	// MaintenanceInterval is how often idle and old connections are reaped
	// and MinPoolSize is topped up. Zero: 1s.
	MaintenanceInterval time.Duration

	// Logger receives structured logs. Nil: slog.Default().
	Logger *slog.Logger
}

func (c *Config) setDefaults() {
	if c.PoolSize == 0 {
		c.PoolSize = 20
	}
	if c.ConnectTimeout == 0 {
		c.ConnectTimeout = 15 * time.Second
	}
	if c.IdleTimeout == 0 {
		c.IdleTimeout = 600 * time.Second
	}
	if c.Lifetime == 0 {
		c.Lifetime = time.Hour
	}
	if c.CheckDelay == 0 {
		c.CheckDelay = 30 * time.Second
	}
	if c.ResetQuery == "" {
		c.ResetQuery = "DISCARD ALL"
	}
	if c.ReservePoolTimeout == 0 {
		c.ReservePoolTimeout = 5 * time.Second
	}
	if c.MaxPreparedStatements == 0 {
		c.MaxPreparedStatements = 200
	}
	if c.MaintenanceInterval == 0 {
		c.MaintenanceInterval = time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// Validate reports every problem in c at once.
func (c *Config) Validate() error {
	var errs []error
	if c.Upstream == "" {
		errs = append(errs, errors.New("upstream is required (a postgres:// URL)"))
	} else if err := checkURL(c.Upstream); err != nil {
		errs = append(errs, fmt.Errorf("upstream: %w", err))
	}
	for name, u := range c.Databases {
		if err := checkURL(u); err != nil {
			errs = append(errs, fmt.Errorf("databases.%s: %w", name, err))
		}
	}
	if c.PoolSize < 0 {
		errs = append(errs, fmt.Errorf("pool_size must be positive, got %d", c.PoolSize))
	}
	if c.MinPoolSize < 0 {
		errs = append(errs, fmt.Errorf("min_pool_size must not be negative, got %d", c.MinPoolSize))
	}
	if c.PoolSize > 0 && c.MinPoolSize > c.PoolSize {
		errs = append(errs, fmt.Errorf("min_pool_size (%d) must not exceed pool_size (%d)", c.MinPoolSize, c.PoolSize))
	}
	if c.ReservePoolSize < 0 {
		errs = append(errs, fmt.Errorf("reserve_pool_size must not be negative, got %d", c.ReservePoolSize))
	}
	if c.ConnectTimeout < 0 {
		errs = append(errs, fmt.Errorf("server_connect_timeout must not be negative, got %s", c.ConnectTimeout))
	}
	return errors.Join(errs...)
}

func checkURL(s string) error {
	u, err := url.Parse(s)
	if err != nil {
		return errors.New("not a valid URL")
	}
	if u.Scheme != "postgres" && u.Scheme != "postgresql" {
		return fmt.Errorf("scheme must be postgres:// or postgresql://, got %q", u.Scheme+"://")
	}
	return nil
}
