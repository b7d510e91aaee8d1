// Package pool owns backend PostgreSQL connections: it dials and
// authenticates them (TLS per sslmode, through pgconn, then takes the raw
// socket), keeps one puddle pool per (database, user), checks, resets, ages
// and reaps them, and reports Stats().
//
// A Manager and its pools are safe for concurrent use. A Conn belongs to one
// goroutine at a time, from Acquire until Release or Destroy; the pool never
// touches a lent Conn.
//
// The pool must not know about clients: what a session did on a Conn is the
// proxy's business, and the proxy tells the pool, by calling Release or
// Destroy, whether the Conn is in a known-clean state.
package pool

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/puddle/v2"
	"golang.org/x/sync/semaphore"
)

// Key names a pool: the client's database and user.
type Key struct {
	Database string
	User     string
}

// ErrAcquireTimeout means no backend became free before the caller's
// deadline (query_wait_timeout).
var ErrAcquireTimeout = errors.New("pool: timed out waiting for a backend connection")

// ErrClosed means the Manager was closed.
var ErrClosed = errors.New("pool: closed")

// ConnectError is a failure to open a backend connection. When the server
// refused the login, Err wraps a *pgconn.PgError that can be passed to the
// client unchanged.
type ConnectError struct {
	Key Key
	Err error
}

func (e *ConnectError) Error() string {
	return fmt.Sprintf("connect to backend for database %q user %q: %v", e.Key.Database, e.Key.User, e.Err)
}

func (e *ConnectError) Unwrap() error { return e.Err }

// Manager owns a pool per Key.
type Manager struct {
	cfg Config

	mu    sync.Mutex
	pools map[Key]*keyPool // guarded by mu
	// known mirrors pools for lookups without mu: one is made per
	// transaction in transaction mode.
	known sync.Map // Key -> *keyPool
	// closed is set under mu; read without it only as a hint.
	closed atomic.Bool

	reachable atomic.Bool

	stop chan struct{}
	wg   sync.WaitGroup

	stats counters
}

// New validates cfg and returns a Manager. It opens no connection; it starts
// one maintenance goroutine that Close stops.
func New(cfg Config) (*Manager, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	m := &Manager{cfg: cfg, pools: make(map[Key]*keyPool), stop: make(chan struct{})}
	m.wg.Add(1)
	go m.maintain()
	return m, nil
}

// keyPool is the puddle pool for one Key and what it needs to dial.
type keyPool struct {
	key     Key
	m       *Manager
	connCfg *pgconn.Config
	p       *puddle.Pool[*Conn]

	// With a reserve, p holds PoolSize+ReservePoolSize connections and
	// these gate how many are lent: slots for ordinary use, reserve for
	// clients that waited longer than ReservePoolTimeout. Nil without a
	// reserve: p's own limit (a FIFO semaphore) is the gate.
	slots, reserve *semaphore.Weighted

	handoff handoff // without a reserve
}

func (m *Manager) pool(key Key) (*keyPool, error) {
	if kp, ok := m.known.Load(key); ok && !m.closed.Load() {
		return kp.(*keyPool), nil
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed.Load() {
		return nil, ErrClosed
	}
	if kp := m.pools[key]; kp != nil {
		return kp, nil
	}
	connCfg, err := m.connConfig(key)
	if err != nil {
		return nil, &ConnectError{Key: key, Err: err}
	}
	kp := &keyPool{key: key, m: m, connCfg: connCfg}
	if m.cfg.ReservePoolSize > 0 {
		kp.slots = semaphore.NewWeighted(int64(m.cfg.PoolSize))
		kp.reserve = semaphore.NewWeighted(int64(m.cfg.ReservePoolSize))
	}
	kp.p, err = puddle.NewPool(&puddle.Config[*Conn]{
		Constructor: kp.construct,
		Destructor:  func(c *Conn) { c.close() },
		MaxSize:     int32(m.cfg.PoolSize + m.cfg.ReservePoolSize),
	})
	if err != nil {
		return nil, err
	}
	m.pools[key] = kp
	m.known.Store(key, kp)
	return kp, nil
}

// connConfig builds the pgconn configuration for key: the database's URL
// (or the default upstream), logging in as the URL's user when it names one
// and as the client's user otherwise.
func (m *Manager) connConfig(key Key) (*pgconn.Config, error) {
	raw := m.cfg.Upstream
	if u, ok := m.cfg.Databases[key.Database]; ok {
		raw = u
	}
	cfg, err := pgconn.ParseConfig(raw)
	if err != nil {
		return nil, fmt.Errorf("parse upstream URL: %w", redactParseError(err))
	}
	namesDB, namesUser := urlNames(raw)
	if !namesDB {
		cfg.Database = key.Database
	}
	if !namesUser {
		cfg.User = key.User
		cfg.Password = ""
		if m.cfg.Passwords != nil {
			if pw, ok := m.cfg.Passwords(key.User); ok {
				cfg.Password = pw
			}
		}
	}
	cfg.ConnectTimeout = m.cfg.ConnectTimeout
	// The proxy owns every byte after login; pgconn must not react to
	// notices or notifications on its own.
	cfg.OnNotice = nil
	cfg.OnNotification = nil
	return cfg, nil
}

// urlNames reports whether a postgres URL names a database and a user.
func urlNames(raw string) (db, user bool) {
	u, err := url.Parse(raw)
	if err != nil {
		return false, false
	}
	q := u.Query()
	db = (u.Path != "" && u.Path != "/") || q.Get("dbname") != ""
	user = (u.User != nil && u.User.Username() != "") || q.Get("user") != ""
	return db, user
}

// redactParseError drops pgconn's echo of the connection string, which may
// carry a password.
func redactParseError(err error) error {
	var pe *pgconn.ParseConfigError
	if errors.As(err, &pe) {
		return errors.New(pe.Unwrap().Error())
	}
	return err
}

func (kp *keyPool) construct(ctx context.Context) (*Conn, error) {
	c, err := dial(ctx, kp.connCfg)
	if err != nil {
		kp.m.stats.connectErrors.Add(1)
		return nil, &ConnectError{Key: kp.key, Err: err}
	}
	kp.m.reachable.Store(true)
	kp.m.stats.connects.Add(1)
	c.pool = kp
	c.Statements = newStatements(kp.m.cfg.MaxPreparedStatements)
	return c, nil
}

// Acquire returns an idle, checked backend for key or opens one, waiting at
// most until ctx is done. A wait that ends by ctx's deadline returns
// ErrAcquireTimeout.
func (m *Manager) Acquire(ctx context.Context, key Key) (*Conn, error) {
	kp, err := m.pool(key)
	if err != nil {
		return nil, err
	}
	if kp.slots == nil {
		timeout := 24 * time.Hour
		if dl, ok := ctx.Deadline(); ok {
			timeout = time.Until(dl)
		}
		return m.AcquireWait(ctx, NewWaiter(), key, timeout)
	}
	slot, err := kp.takeSlot(ctx)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) && ctx.Err() != nil {
			m.stats.acquireTimeouts.Add(1)
			return nil, ErrAcquireTimeout
		}
		return nil, err
	}
	c, err := m.checkedAcquire(ctx, kp)
	if err != nil {
		kp.giveSlot(slot)
		return nil, err
	}
	c.slot = slot
	return c, nil
}

// checkedAcquire takes a connection from puddle, an idle one (checked when
// it has been idle longer than CheckDelay) or a new one.
func (m *Manager) checkedAcquire(ctx context.Context, kp *keyPool) (*Conn, error) {
	for {
		res, err := kp.p.Acquire(ctx)
		if err != nil {
			switch {
			case errors.Is(err, puddle.ErrClosedPool):
				return nil, ErrClosed
			case errors.Is(err, context.DeadlineExceeded) && ctx.Err() != nil:
				m.stats.acquireTimeouts.Add(1)
				return nil, ErrAcquireTimeout
			}
			return nil, err
		}
		c := res.Value()
		if m.cfg.CheckDelay > 0 && res.IdleDuration() > m.cfg.CheckDelay {
			if err := c.check(ctx, m.cfg.ConnectTimeout); err != nil {
				m.stats.checkFailures.Add(1)
				m.cfg.Logger.Debug("backend failed its idle check; closing it", "database", kp.key.Database, "user", kp.key.User, "backend_pid", c.pid, "err", err)
				res.Destroy()
				continue
			}
		}
		c.res = res
		return c, nil
	}
}

// slotKind says which gate lent a connection.
type slotKind uint8

const (
	slotNone slotKind = iota // no reserve configured: puddle's limit
	slotNormal
	slotReserve
)

// takeSlot waits for permission to lend a connection: an ordinary slot,
// or, after ReservePoolTimeout, a reserve one if there is one free.
func (kp *keyPool) takeSlot(ctx context.Context) (slotKind, error) {
	if kp.slots == nil {
		return slotNone, nil
	}
	if kp.slots.TryAcquire(1) {
		return slotNormal, nil
	}
	wctx, cancel := context.WithTimeout(ctx, kp.m.cfg.ReservePoolTimeout)
	err := kp.slots.Acquire(wctx, 1)
	cancel()
	if err == nil {
		return slotNormal, nil
	}
	if ctx.Err() != nil {
		return slotNone, ctx.Err()
	}
	if kp.reserve.TryAcquire(1) {
		kp.m.stats.reserveUsed.Add(1)
		return slotReserve, nil
	}
	if err := kp.slots.Acquire(ctx, 1); err != nil {
		return slotNone, err
	}
	return slotNormal, nil
}

func (kp *keyPool) giveSlot(s slotKind) {
	switch s {
	case slotNormal:
		kp.slots.Release(1)
	case slotReserve:
		kp.reserve.Release(1)
	}
}

// lend ends a loan: the connection's slot is free again.
func (c *Conn) lend() *puddle.Resource[*Conn] {
	res := c.res
	c.res = nil
	if res != nil {
		c.pool.giveSlot(c.slot)
		c.slot = slotNone
	}
	return res
}

// Release returns c to its pool. The caller asserts that c is idle: no
// query in flight, no transaction open, nothing buffered. The reset query
// runs first; a failed reset, or a connection past its lifetime, closes c.
func (m *Manager) Release(ctx context.Context, c *Conn) {
	if c.res == nil {
		panic("pool: Release of a Conn that is not acquired")
	}
	if m.cfg.Lifetime > 0 && time.Since(c.res.CreationTime()) > m.cfg.Lifetime {
		m.stats.reaped.Add(1)
		m.destroy(c)
		return
	}
	if m.cfg.ResetQuery != "-" {
		rctx, cancel := context.WithTimeout(ctx, m.cfg.ConnectTimeout)
		err := c.reset(rctx, m.cfg.ResetQuery)
		cancel()
		if err != nil {
			m.stats.resetFailures.Add(1)
			m.cfg.Logger.Debug("backend reset failed; closing it", "backend_pid", c.pid, "err", err)
			m.destroy(c)
			return
		}
		c.Statements.Clear()
		c.Settings = ""
	}
	m.put(c)
}

// Recycle returns c to its pool between transactions, without the reset
// query: a transaction-mode proxy keeps c's prepared statements and
// settings, recorded in Statements and Settings, and reconciles them for
// the next holder. The caller asserts that c is idle, as for Release. A
// connection past its lifetime is closed.
func (m *Manager) Recycle(c *Conn) {
	if c.res == nil {
		panic("pool: Recycle of a Conn that is not acquired")
	}
	if m.cfg.Lifetime > 0 && time.Since(c.res.CreationTime()) > m.cfg.Lifetime {
		m.stats.reaped.Add(1)
		m.destroy(c)
		return
	}
	m.put(c)
}

// Destroy closes c instead of returning it: its state is unknown.
func (m *Manager) Destroy(c *Conn) {
	if c.res == nil {
		panic("pool: Destroy of a Conn that is not acquired")
	}
	m.stats.destroyed.Add(1)
	m.destroy(c)
}

// put gives an idle, clean c to the first waiter, or back to puddle.
func (m *Manager) put(c *Conn) {
	if m.handOver(c) {
		return
	}
	c.lend().Release()
}

// destroy closes c; a waiter gets its slot.
func (m *Manager) destroy(c *Conn) {
	kp := c.pool
	c.lend().Destroy()
	if kp.slots == nil {
		m.unlend(kp)
	}
}

// Probe opens and closes one backend connection on the default upstream
// when its URL names a user (so it can log in), or dials its TCP address
// otherwise, and records success for Reachable.
func (m *Manager) Probe(ctx context.Context) error {
	cfg, err := pgconn.ParseConfig(m.cfg.Upstream)
	if err != nil {
		return redactParseError(err)
	}
	if _, namesUser := urlNames(m.cfg.Upstream); namesUser {
		cfg.ConnectTimeout = m.cfg.ConnectTimeout
		conn, err := pgconn.ConnectConfig(ctx, cfg)
		if err != nil {
			return err
		}
		conn.Close(ctx)
	} else {
		var d net.Dialer
		dctx, cancel := context.WithTimeout(ctx, m.cfg.ConnectTimeout)
		defer cancel()
		nc, err := d.DialContext(dctx, "tcp", net.JoinHostPort(cfg.Host, fmt.Sprint(cfg.Port)))
		if err != nil {
			return err
		}
		nc.Close()
	}
	m.reachable.Store(true)
	return nil
}

// Reachable reports whether any backend connection or probe has succeeded.
func (m *Manager) Reachable() bool { return m.reachable.Load() }

// Close closes every pool: idle connections at once, lent ones when they
// come back; it waits until every lent connection has been released or
// destroyed, so stop the sessions first. It is safe to call more than once.
func (m *Manager) Close() {
	m.mu.Lock()
	if m.closed.Swap(true) {
		m.mu.Unlock()
		return
	}
	pools := m.pools
	m.mu.Unlock()
	close(m.stop)
	m.wg.Wait()
	// puddle's Close returns only when every lent connection of its pool
	// is back: close the pools side by side, so one pool's lent
	// connection does not keep another's idle ones open.
	var wg sync.WaitGroup
	for _, kp := range pools {
		wg.Go(kp.p.Close)
	}
	wg.Wait()
}

// maintain reaps idle and old connections and keeps MinPoolSize warm.
func (m *Manager) maintain() {
	defer m.wg.Done()
	t := time.NewTicker(m.cfg.MaintenanceInterval)
	defer t.Stop()
	for {
		select {
		case <-m.stop:
			return
		case <-t.C:
		}
		m.mu.Lock()
		pools := make([]*keyPool, 0, len(m.pools))
		for _, kp := range m.pools {
			pools = append(pools, kp)
		}
		m.mu.Unlock()
		for _, kp := range pools {
			kp.maintain()
		}
	}
}

func (kp *keyPool) maintain() {
	cfg := &kp.m.cfg
	// puddle destroys asynchronously: its count drops only once the
	// destructor has run, so count what this round leaves open here.
	total := kp.p.Stat().TotalResources()
	for _, res := range kp.p.AcquireAllIdle() {
		tooOld := cfg.Lifetime > 0 && time.Since(res.CreationTime()) > cfg.Lifetime
		tooIdle := cfg.IdleTimeout > 0 && res.IdleDuration() > cfg.IdleTimeout
		if (tooOld || tooIdle) && total > int32(cfg.MinPoolSize) {
			total--
			kp.m.stats.reaped.Add(1)
			res.Destroy()
			continue
		}
		res.ReleaseUnused()
	}
	for i := kp.p.Stat().TotalResources(); i < int32(cfg.MinPoolSize); i++ {
		ctx, cancel := context.WithTimeout(context.Background(), cfg.ConnectTimeout)
		err := kp.p.CreateResource(ctx)
		cancel()
		if err != nil {
			cfg.Logger.Warn("could not open a backend to keep min_pool_size", "database", kp.key.Database, "user", kp.key.User, "err", err)
			return
		}
	}
}
