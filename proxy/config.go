package proxy

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/pgsidecar/pgsidecar/internal/clientauth"
	"github.com/pgsidecar/pgsidecar/resultcache"
)

// PoolMode says how long a client keeps the backend connection it was given.
type PoolMode string

const (
	// PoolModeSession gives a client one backend for its whole session.
	PoolModeSession PoolMode = "session"
	// PoolModeTransaction gives a client a backend for one transaction (or one
	// statement outside a transaction).
	PoolModeTransaction PoolMode = "transaction"
)

// TLSMode is the client-side TLS policy.
type TLSMode string

const (
	// TLSDisable answers every SSLRequest with 'N'.
	TLSDisable TLSMode = "disable"
	// TLSAllow accepts TLS when the client asks and a certificate is configured,
	// and plaintext otherwise.
	TLSAllow TLSMode = "allow"
	// TLSRequire refuses clients that do not negotiate TLS.
	TLSRequire TLSMode = "require"
)

// Config is everything a Server needs. The zero value of each optional field
// is documented next to it; New fills defaults and validates.
type Config struct {
	// ListenAddr is the TCP address to listen on. Zero: 127.0.0.1:6432.
	ListenAddr string
	// MaxClientConn caps concurrent client connections; one more gets 53300.
	// Zero: 1000.
	MaxClientConn int
	// MaxMessageBytes caps a single client message, header included. Zero:
	// 64 MiB (a large COPY row or bytea parameter still fits).
	MaxMessageBytes int
	// ClientLoginTimeout bounds startup and authentication. Zero: 60s.
	ClientLoginTimeout time.Duration
	// QueryWaitTimeout bounds how long a client waits for a backend. Zero: 120s.
	QueryWaitTimeout time.Duration
	// ShutdownTimeout bounds the drain on Shutdown when the caller's context
	// has no deadline. Zero: 30s.
	ShutdownTimeout time.Duration
	// ShutdownGrace is how long the listener keeps accepting (and answering
	// 57P01) after Shutdown starts, so load balancers see not-ready first.
	// Zero: no grace.
	ShutdownGrace time.Duration
	// PoolMode is session or transaction. Zero: session.
	PoolMode PoolMode
	// DatabasePoolModes overrides PoolMode per client database name. Nil:
	// none.
	DatabasePoolModes map[string]PoolMode
	// RejectSessionState, in transaction mode, refuses with 0A000 the
	// statements that keep state on a backend beyond the transaction
	// (LISTEN, session advisory locks, temporary tables, WITH HOLD
	// cursors, SQL PREPARE). Zero: such a client is pinned to its backend
	// for the rest of its session instead (pin_on_session_state: true).
	RejectSessionState bool
	// ClientIdleTimeout closes a client that sends nothing for this long
	// while it holds no backend (transaction mode). Zero: never.
	ClientIdleTimeout time.Duration
	// IdleTransactionTimeout closes a client that sends nothing for this
	// long while it holds a backend inside a transaction (transaction
	// mode); its transaction is rolled back. Zero: never.
	IdleTransactionTimeout time.Duration
	// QueryTimeout closes a client whose backend has not answered for
	// this long (transaction mode); the backend is closed too, which ends
	// the query. Zero: never.
	QueryTimeout time.Duration

	// TLS is the server certificate configuration. Nil: SSLRequest is
	// answered 'N'.
	TLS *tls.Config
	// TLSMode is the client TLS policy. Zero: allow when TLS is set, disable
	// otherwise.
	TLSMode TLSMode

	// AuthMethod is how clients authenticate. Zero: trust.
	AuthMethod clientauth.Method
	// Users holds the credentials clients are checked against (and, when the
	// upstream URL names no user, the passwords used to log in to the
	// backend). Nil: no users, which only works with trust.
	Users clientauth.Store

	// Cache is the result cache. Nil: off.
	Cache *resultcache.Cache
	// CacheRules is the cache's policy (TTLs, allowed functions).
	CacheRules CacheRules

	// Logger receives structured logs. Nil: slog.Default().
	Logger *slog.Logger
}

func (c *Config) setDefaults() {
	if c.ListenAddr == "" {
		c.ListenAddr = "127.0.0.1:6432"
	}
	if c.MaxClientConn == 0 {
		c.MaxClientConn = 1000
	}
	if c.MaxMessageBytes == 0 {
		c.MaxMessageBytes = 64 << 20
	}
	if c.ClientLoginTimeout == 0 {
		c.ClientLoginTimeout = 60 * time.Second
	}
	if c.QueryWaitTimeout == 0 {
		c.QueryWaitTimeout = 120 * time.Second
	}
	if c.ShutdownTimeout == 0 {
		c.ShutdownTimeout = 30 * time.Second
	}
	if c.PoolMode == "" {
		c.PoolMode = PoolModeSession
	}
	if c.TLSMode == "" {
		if c.TLS != nil {
			c.TLSMode = TLSAllow
		} else {
			c.TLSMode = TLSDisable
		}
	}
	if c.AuthMethod == "" {
		c.AuthMethod = clientauth.Trust
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// Validate reports every problem in c at once.
func (c *Config) Validate() error {
	var errs []error
	if c.MaxClientConn < 0 {
		errs = append(errs, fmt.Errorf("max_client_conn must be positive, got %d", c.MaxClientConn))
	}
	if c.MaxMessageBytes < 0 || (c.MaxMessageBytes > 0 && c.MaxMessageBytes < 1024) {
		errs = append(errs, fmt.Errorf("max_message_bytes must be at least 1024, got %d", c.MaxMessageBytes))
	}
	for name, d := range map[string]time.Duration{
		"client_login_timeout":     c.ClientLoginTimeout,
		"query_wait_timeout":       c.QueryWaitTimeout,
		"shutdown_timeout":         c.ShutdownTimeout,
		"shutdown_grace":           c.ShutdownGrace,
		"client_idle_timeout":      c.ClientIdleTimeout,
		"idle_transaction_timeout": c.IdleTransactionTimeout,
		"query_timeout":            c.QueryTimeout,
	} {
		if d < 0 {
			errs = append(errs, fmt.Errorf("%s must not be negative, got %s", name, d))
		}
	}
	switch c.PoolMode {
	case "", PoolModeSession, PoolModeTransaction:
	default:
		errs = append(errs, fmt.Errorf("pool_mode must be session or transaction, got %q", c.PoolMode))
	}
	for db, m := range c.DatabasePoolModes {
		if m != PoolModeSession && m != PoolModeTransaction {
			errs = append(errs, fmt.Errorf("pool_mode of database %s must be session or transaction, got %q", db, m))
		}
	}
	switch c.TLSMode {
	case "", TLSDisable, TLSAllow:
	case TLSRequire:
		if c.TLS == nil {
			errs = append(errs, errors.New("tls client_mode require needs a certificate and key"))
		}
	default:
		errs = append(errs, fmt.Errorf("tls client_mode must be disable, allow or require, got %q", c.TLSMode))
	}
	switch c.AuthMethod {
	case "", clientauth.Trust:
	case clientauth.MD5, clientauth.SCRAMSHA256:
		if c.Users == nil {
			errs = append(errs, fmt.Errorf("auth_method %s needs users (auth_file or users)", c.AuthMethod))
		}
	default:
		errs = append(errs, fmt.Errorf("auth_method must be trust, md5 or scram-sha-256, got %q", c.AuthMethod))
	}
	return errors.Join(errs...)
}
