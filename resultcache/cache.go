package resultcache

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/maypok86/otter/v2"
)

// Cache is the result cache: a byte-budgeted memory tier, an optional Redis
// tier behind a Remote, the table versions that decide what may be served,
// and request coalescing. It is safe for concurrent use. Build it with New
// and stop it with Close.
type Cache struct {
	cfg    Config
	log    *slog.Logger
	clk    clock
	remote Remote // nil: memory only
	noMem  bool   // no memory tier: Redis only

	mem     *otter.Cache[Key, *entry]
	vers    *versions
	flights [flightShards]flightShard
	st      counters

	nDirty   atomic.Int64              // cells with a local bump to push
	gen      atomic.Uint64             // boot generation: +1 per Redis data loss
	boot     atomic.Pointer[bootState] // nil until Redis answered once, and during a reset
	lastSync atomic.Int64              // start of the last successful sync, Unix ns; 0: none
	syncOK   atomic.Bool               // the last sync succeeded

	// Background work, only with a Remote.
	ctx       context.Context // cancelled by Close
	cancel    context.CancelFunc
	puts      chan putReq
	kick      chan struct{} // wakes the sync loop early
	wg        sync.WaitGroup
	closeOnce sync.Once

	syncMu     sync.Mutex // one sync at a time; guards the fields below
	epoch      uint64
	epochKnown bool
	dirtyLog   bool // an "untrusted" warning was logged and not yet cleared
}

type bootState struct {
	id  string
	gen uint64
}

// putReq is an entry waiting to be written to Redis.
type putReq struct {
	db   string
	key  Key
	blob []byte
	ttl  time.Duration
}

// putQueue bounds the entries waiting for Redis; more are dropped.
const putQueue = 1024

// New builds a Cache. remote may be nil for a memory-only cache; otherwise
// the Cache owns it (Close closes it) and starts two goroutines: the sync
// loop (versions from Redis, retries of bumps that did not reach it) and the
// writer of entries to Redis.
func New(cfg Config, remote Remote) (*Cache, error) {
	return newCache(cfg, remote, realClock{}, false)
}

// newCache is New with a clock, and without the sync loop when manualSync
// (tests then call syncOnce themselves).
func newCache(cfg Config, remote Remote, clk clock, manualSync bool) (*Cache, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	if cfg.MemoryBytes < 0 && remote == nil {
		return nil, errors.New("resultcache: invalid config: no memory tier (MemoryBytes < 0) and no Redis tier")
	}
	c := &Cache{cfg: cfg, log: cfg.Logger, clk: clk, remote: remote, noMem: cfg.MemoryBytes < 0}
	c.vers = newVersions(&c.nDirty, c.gen.Load)
	opts := &otter.Options[Key, *entry]{
		MaximumWeight: uint64(max(cfg.MemoryBytes, 1)),
		Weigher:       func(_ Key, e *entry) uint32 { return e.weight() },
		ExpiryCalculator: otter.ExpiryWritingFunc(func(e otter.Entry[Key, *entry]) time.Duration {
			return e.Value.ttl
		}),
	}
	if _, real := clk.(realClock); !real {
		opts.Clock = otterClock{clk}
	}
	c.mem, err = otter.New(opts)
	if err != nil {
		return nil, fmt.Errorf("resultcache: %w", err)
	}
	for i := range c.flights {
		c.flights[i].m = make(map[Key]*Flight)
	}
	if remote != nil {
		c.ctx, c.cancel = context.WithCancel(context.Background())
		c.puts = make(chan putReq, putQueue)
		c.kick = make(chan struct{}, 1)
		c.wg.Add(1)
		go c.writeLoop()
		if !manualSync {
			c.wg.Add(1)
			go c.syncLoop()
		}
	}
	return c, nil
}

// Close stops the background goroutines, closes the Remote and stops the
// memory tier's maintenance. It is idempotent. Entries waiting for Redis are
// dropped. The Cache must not be used after Close.
func (c *Cache) Close() {
	c.closeOnce.Do(func() {
		if c.remote != nil {
			c.cancel()
			c.wg.Wait()
			if err := c.remote.Close(); err != nil {
				c.log.Debug("resultcache: close redis", slog.Any("error", err))
			}
		}
		c.mem.StopAllGoroutines()
	})
}

// DefaultTTL is Config.DefaultTTL (after defaults): the TTL for an answer
// that no rule gives one.
func (c *Cache) DefaultTTL() time.Duration { return c.cfg.DefaultTTL }

// Snapshot is the versions of a database's tables (and of "*") as read
// before a query is sent. Put stores the answer under them. The zero
// Snapshot makes Put a no-op. A Snapshot may be copied and used from any
// goroutine.
type Snapshot struct {
	d       *dbVersions
	refs    []ref
	boot    string // Redis boot id when taken
	redisOK bool   // every pair was trusted for the Redis tier when taken
}

// DB is the database the snapshot was taken for.
func (s Snapshot) DB() string {
	if s.d == nil {
		return ""
	}
	return s.d.name
}

// Snapshot reads the current local versions of tables and "*" of db. Take
// it before the query is sent: an answer is then never stored under versions
// newer than what it saw.
func (c *Cache) Snapshot(db string, tables []string) Snapshot {
	bs := c.boot.Load() // before the cells: see reset
	d := c.vers.db(db)
	cells := c.vers.cellsOf(d, tables)
	s := Snapshot{d: d, refs: make([]ref, len(cells)), redisOK: c.remote != nil && bs != nil}
	for i, cl := range cells {
		v, trusted := cl.read()
		s.refs[i] = ref{cell: cl, v: v}
		s.redisOK = s.redisOK && trusted
	}
	if bs != nil {
		s.boot = bs.id
	}
	return s
}

// Get returns the answer stored under key for db, if one may be served: it
// was stored under versions of exactly tables (plus "*") that are all still
// current, and (memory tier, with a Remote) the last successful sync with
// Redis is recent enough; or Redis holds one under its current versions. A
// Redis hit is copied into the memory tier. data must not be modified.
//
// Get never fails: a Redis error or timeout (bounded by RedisTimeout) is a
// miss, counted in Stats.
func (c *Cache) Get(ctx context.Context, db string, key Key, tables []string) (data []byte, tier Tier, ok bool) {
	if e, found := c.mem.GetIfPresent(key); found && !c.noMem {
		switch {
		case !e.current():
			c.dropStale(key, e)
		case e.db == db && e.sameTables(tables) && c.memFresh():
			c.st.memHits.Add(1)
			return e.data, TierMemory, true
		}
	}
	if c.remote != nil {
		if data, ok := c.getRemote(ctx, db, key, tables); ok {
			c.st.redisHits.Add(1)
			return data, TierRedis, true
		}
	}
	c.st.misses.Add(1)
	return nil, TierNone, false
}

// memFresh is the staleness gate of the memory tier.
func (c *Cache) memFresh() bool {
	if c.remote == nil {
		return true
	}
	last := c.lastSync.Load()
	return last != 0 && c.clk.Now().UnixNano()-last <= int64(c.cfg.MaxStaleness)
}

// dropStale removes e, which can never be served again, unless key was
// stored anew meanwhile.
func (c *Cache) dropStale(key Key, e *entry) {
	c.mem.ComputeIfPresent(key, func(old *entry) (*entry, otter.ComputeOp) {
		if old == e {
			return nil, otter.InvalidateOp
		}
		return old, otter.CancelOp
	})
}

func (c *Cache) getRemote(ctx context.Context, db string, key Key, tables []string) ([]byte, bool) {
	bs := c.boot.Load()
	if bs == nil {
		return nil, false
	}
	d := c.vers.db(db)
	cells := c.vers.cellsOf(d, tables)
	names := make([]string, len(cells))
	for i, cl := range cells {
		if cl.untrusted() { // a local bump Redis has not seen: its entries are suspect
			return nil, false
		}
		names[i] = cl.table
	}
	ctx, cancel := context.WithTimeout(ctx, c.cfg.RedisTimeout)
	res, err := c.remote.Fetch(ctx, db, key, names)
	cancel()
	if err == nil && len(res.Versions) != len(cells) {
		err = fmt.Errorf("%w: %d versions for %d tables", errBadReply, len(res.Versions), len(cells))
	}
	if err != nil {
		c.redisFailed("fetch", err)
		return nil, false
	}
	if res.Boot != bs.id {
		c.kickSync() // Redis lost its data, or is being reset: find out now
		return nil, false
	}
	for i, cl := range cells {
		cl.observe(bs.gen, res.Versions[i])
	}
	if res.Entry == nil {
		return nil, false
	}
	we, err := decodeEntry(res.Entry)
	if err != nil {
		c.st.redisErrors.Add(1)
		c.log.Debug("resultcache: undecodable redis entry", slog.String("key", key.String()), slog.Any("error", err))
		return nil, false
	}
	now := c.clk.Now().UnixNano()
	if we.boot != bs.id || we.db != db || len(we.tables) != len(cells) || we.expires <= now {
		return nil, false
	}
	refs := make([]ref, len(cells))
	for i, cl := range cells {
		if we.tables[i] != cl.table || we.versions[i] != res.Versions[i] {
			return nil, false
		}
		// Promote only under versions that are the local ones too: observe
		// merged Redis's, so a local version above them means the entry is
		// stale here (or the pair untrusted).
		v, trusted := cl.read()
		if !trusted || v != we.versions[i] {
			return nil, false
		}
		refs[i] = ref{cell: cl, v: v}
	}
	if len(we.data) <= c.cfg.MaxEntryBytes && !c.noMem {
		c.mem.Set(key, &entry{db: db, fp: we.fp, refs: refs, data: we.data, ttl: time.Duration(we.expires - now)})
	}
	return we.data, true
}

// Put stores an answer under the versions of snap, taken before the query
// was sent, for ttl. It copies data. It does nothing when ttl <= 0, and
// skips (counting it) an answer larger than MaxEntryBytes or one whose
// snapshot is already stale. The Redis write, when the snapshot allows one,
// is queued and done in the background; a full queue drops it (counted).
func (c *Cache) Put(snap Snapshot, key Key, fingerprint uint64, data []byte, ttl time.Duration) {
	if snap.d == nil || ttl <= 0 {
		return
	}
	if len(data) > c.cfg.MaxEntryBytes {
		c.st.storeSkips.Add(1)
		return
	}
	for _, r := range snap.refs {
		if r.cell.v.Load() != r.v {
			c.st.storeSkips.Add(1)
			return
		}
	}
	e := &entry{db: snap.d.name, fp: fingerprint, refs: snap.refs, data: append(make([]byte, 0, len(data)), data...), ttl: ttl}
	if !c.noMem {
		c.mem.Set(key, e)
		c.st.stores.Add(1)
	}
	if c.remote == nil || !snap.redisOK {
		return
	}
	if bs := c.boot.Load(); bs == nil || bs.id != snap.boot {
		return
	}
	we := wireEntry{
		boot:     snap.boot,
		fp:       fingerprint,
		expires:  c.clk.Now().Add(ttl).UnixNano(),
		db:       snap.d.name,
		tables:   make([]string, len(snap.refs)),
		versions: make([]uint64, len(snap.refs)),
		data:     e.data,
	}
	for i, r := range snap.refs {
		v, trusted := r.cell.read()
		if !trusted || v != r.v {
			return
		}
		we.tables[i], we.versions[i] = r.cell.table, r.v
	}
	select {
	case c.puts <- putReq{db: snap.d.name, key: key, blob: encodeEntry(nil, &we), ttl: ttl}:
	default:
		c.st.redisDropped.Add(1)
	}
}

// Bump makes every answer that depends on tables of db unservable: call it
// after a write commits and before its client sees ReadyForQuery. "*" among
// tables bumps the whole database. Local versions are bumped at once; with a
// Remote, the new versions are pushed to Redis within RedisTimeout (a
// cancelled ctx does not stop the push: the write happened regardless). A
// push that fails leaves the pairs untrusted (no Redis tier for them) and is
// retried in the background until it lands.
func (c *Cache) Bump(ctx context.Context, db string, tables []string) {
	if len(tables) == 0 {
		return
	}
	d := c.vers.db(db)
	cells := c.vers.cellsOf(d, tables)
	if !contains(tables, StarTable) {
		cells = removeStar(cells)
	}
	push := c.remote != nil
	gen := c.gen.Load()
	floors := make([]uint64, len(cells))
	for i, cl := range cells {
		floors[i] = cl.bump(push)
	}
	c.st.invalidations.Add(uint64(len(cells)))
	if push {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.cfg.RedisTimeout)
		defer cancel()
		c.push(ctx, db, cells, floors, gen)
	}
}

func removeStar(cells []*cell) []*cell {
	out := cells[:0]
	for _, cl := range cells {
		if cl.table != StarTable {
			out = append(out, cl)
		}
	}
	return out
}

// push sends floors of cells to Redis and records the outcome in each cell,
// whose pending count the caller raised.
func (c *Cache) push(ctx context.Context, db string, cells []*cell, floors []uint64, gen uint64) bool {
	names := make([]string, len(cells))
	for i, cl := range cells {
		names[i] = cl.table
	}
	got, err := c.remote.Bump(ctx, db, names, floors)
	if err == nil && len(got) != len(cells) {
		err = fmt.Errorf("%w: %d versions for %d tables", errBadReply, len(got), len(cells))
	}
	if err != nil {
		for i, cl := range cells {
			cl.pushFailed(floors[i])
		}
		c.redisFailed("bump", err)
		c.kickSync()
		return false
	}
	for i, cl := range cells {
		cl.pushed(gen, floors[i], got[i])
	}
	return true
}

// PurgeFingerprint removes every memory-tier entry stored with fingerprint
// fp and returns how many it removed.
func (c *Cache) PurgeFingerprint(fp uint64) int {
	n := 0
	for k, e := range c.mem.All() {
		if e.fp == fp {
			if _, ok := c.mem.Invalidate(k); ok {
				n++
			}
		}
	}
	return n
}

// errBadReply is a Remote answer of the wrong shape.
var errBadReply = errors.New("resultcache: malformed reply from the remote tier")

// redisFailed counts a failed Redis call.
func (c *Cache) redisFailed(op string, err error) {
	if isTimeout(err) {
		c.st.redisTimeouts.Add(1)
	} else {
		c.st.redisErrors.Add(1)
	}
	c.log.Debug("resultcache: redis "+op+" failed", slog.Any("error", err))
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) ||
		(errors.As(err, &ne) && ne.Timeout())
}

// clock is time as the Cache reads it; tests move it.
type clock interface{ Now() time.Time }

type realClock struct{}

func (realClock) Now() time.Time { return time.Now() }

// otterClock gives otter a test clock, without periodic clean-ups.
type otterClock struct{ c clock }

func (o otterClock) NowNano() int64                      { return o.c.Now().UnixNano() }
func (o otterClock) Tick(time.Duration) <-chan time.Time { return nil }
