// Package redisstore is the Redis tier of resultcache: it implements
// resultcache.Remote on go-redis, against a standalone server or a cluster.
// It owns the Redis key layout below and nothing else; what is valid, and
// when, is decided by resultcache. It is the only package that imports
// go-redis. A Store is safe for concurrent use.
//
// # Layout
//
//	pgsidecar:{<db>}:v        hash: table name -> version (decimal); the field
//	                          "*" is the database generation
//	pgsidecar:{<db>}:e:<hex>  an entry (resultcache's encoding), with PX = its TTL
//	pgsidecar:epoch           counter, incremented after every bump
//	pgsidecar:boot            random id, created when missing (SET if absent):
//	                          a change or a loss means Redis lost its data
//
// <db> is the database name, or for a name that is empty or holds a brace,
// a NUL byte and the name in hex (PostgreSQL names never hold NUL). The
// braces are a cluster hash tag: a database's versions and entries share a
// slot, so a pipeline reads an entry and then its versions, in that order,
// from one node. (Entries are not spread across a cluster beyond their
// databases: the ordering is what makes a Redis hit safe.)
//
// A bump is a Lua script on the version hash: for each table,
// new = max(HGET, floor) + 1; HSET; return new. Versions are Lua numbers:
// exact up to 2^53. The epoch is incremented after the script succeeded, as
// a separate command (the two keys are in different slots), and Bump reports
// success only when both did: a sync that sees the new epoch sees the new
// versions.
//
// # Requirements on the server
//
// Version hashes, the epoch and the boot id have no TTL and must never be
// evicted on their own: run Redis with maxmemory-policy noeviction or a
// volatile-* policy (entries all have a TTL). A FLUSHALL or a restart
// without persistence is fine: the boot id goes with the data and every
// sidecar resets. In a cluster, data lost by a node that does not hold the
// boot id is not detected this way: give every primary a replica.
//
// # Timeouts
//
// Every call is bounded by its context (ContextTimeoutEnabled); the client
// never retries on its own (MaxRetries -1): resultcache decides, within its
// time budget, what a failure means.
package redisstore

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"

	"github.com/pgsidecar/pgsidecar/resultcache"
)

// Key names; see the package doc.
const (
	keyPrefix = "pgsidecar:"
	EpochKey  = keyPrefix + "epoch"
	BootKey   = keyPrefix + "boot"
)

// VersionKey is the name of db's version hash.
func VersionKey(db string) string { return keyPrefix + "{" + tag(db) + "}:v" }

// EntryKey is the name of the entry stored under (db, key).
func EntryKey(db string, key resultcache.Key) string {
	return keyPrefix + "{" + tag(db) + "}:e:" + key.String()
}

func tag(db string) string {
	if db == "" || strings.ContainsAny(db, "{}") {
		return "\x00" + hex.EncodeToString([]byte(db))
	}
	return db
}

// bumpScript: KEYS[1] the version hash; ARGV pairs of (table, floor).
var bumpScript = redis.NewScript(`
local out = {}
for i = 1, #ARGV, 2 do
  local v = tonumber(redis.call('HGET', KEYS[1], ARGV[i]) or '0')
  local floor = tonumber(ARGV[i + 1])
  if floor > v then v = floor end
  v = v + 1
  redis.call('HSET', KEYS[1], ARGV[i], string.format('%.0f', v))
  out[#out + 1] = v
end
return out
`)

// bootScript returns the boot id, creating it (ARGV[1]) when missing.
var bootScript = redis.NewScript(`
local b = redis.call('GET', KEYS[1])
if not b then
  b = ARGV[1]
  redis.call('SET', KEYS[1], b)
end
return b
`)

// Store is a Redis connection for resultcache. Build it with New.
type Store struct {
	c redis.UniversalClient
}

var _ resultcache.Remote = (*Store)(nil)

// poolSize is small: the calls are short, and a sidecar has one Redis user
// (its cache).
const poolSize = 8

// New connects to Redis at url:
//
//   - redis://… or rediss://… (redis.ParseURL): a standalone server;
//   - redis+cluster://host1:port,host2:port/?options (also rediss+cluster),
//     or a bare comma-separated list of host:port: a cluster;
//   - a bare host:port: a standalone server.
//
// It does not fail when Redis is unreachable (a cache works without it):
// ctx, and at most firstContact, bound a best-effort first contact that
// creates the boot id. Use Ping to check.
func New(ctx context.Context, url string) (*Store, error) {
	c, err := newClient(url)
	if err != nil {
		return nil, fmt.Errorf("redisstore: %w", err)
	}
	s := &Store{c: c}
	ctx, cancel := context.WithTimeout(ctx, firstContact)
	defer cancel()
	_, _ = s.State(ctx)
	return s, nil
}

// firstContact bounds New's wait for Redis.
const firstContact = time.Second

func newClient(url string) (redis.UniversalClient, error) {
	switch {
	case strings.HasPrefix(url, "redis+cluster://"), strings.HasPrefix(url, "rediss+cluster://"):
		scheme, rest, _ := strings.Cut(url, "+cluster://")
		hosts, tail := rest, ""
		if i := strings.IndexAny(rest, "/?"); i >= 0 {
			hosts, tail = rest[:i], rest[i:]
		}
		user := ""
		if i := strings.LastIndex(hosts, "@"); i >= 0 {
			user, hosts = hosts[:i+1], hosts[i+1:]
		}
		addrs := strings.Split(hosts, ",")
		u := scheme + "://" + user + addrs[0] + tail
		opts, err := redis.ParseClusterURL(u)
		if err != nil {
			return nil, err
		}
		opts.Addrs = append(opts.Addrs, addrs[1:]...)
		return redis.NewClusterClient(clusterOptions(opts)), nil
	case !strings.Contains(url, "://") && strings.Contains(url, ","):
		return redis.NewClusterClient(clusterOptions(&redis.ClusterOptions{Addrs: strings.Split(url, ",")})), nil
	case !strings.Contains(url, "://"):
		if url == "" {
			return nil, errors.New("empty Redis URL")
		}
		return redis.NewClient(options(&redis.Options{Addr: url})), nil
	}
	opts, err := redis.ParseURL(url)
	if err != nil {
		return nil, err
	}
	return redis.NewClient(options(opts)), nil
}

func options(o *redis.Options) *redis.Options {
	o.PoolSize = poolSize
	o.MaxRetries = -1
	o.DialerRetries = 1 // a dead Redis is a miss now, not after a backoff
	o.ContextTimeoutEnabled = true
	o.DisableIdentity = true
	o.Protocol = 2
	o.MaintNotificationsConfig = &maintnotifications.Config{Mode: maintnotifications.ModeDisabled}
	if o.DialTimeout == 0 {
		o.DialTimeout = time.Second
	}
	return o
}

func clusterOptions(o *redis.ClusterOptions) *redis.ClusterOptions {
	o.PoolSize = poolSize
	o.MaxRetries = -1
	o.DialerRetries = 1 // a dead Redis is a miss now, not after a backoff
	o.ContextTimeoutEnabled = true
	o.DisableIdentity = true
	o.Protocol = 2
	o.MaintNotificationsConfig = &maintnotifications.Config{Mode: maintnotifications.ModeDisabled}
	if o.DialTimeout == 0 {
		o.DialTimeout = time.Second
	}
	return o
}

// Ping checks that Redis answers.
func (s *Store) Ping(ctx context.Context) error {
	if err := s.c.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("redisstore: ping: %w", err)
	}
	return nil
}

// Close closes the connections.
func (s *Store) Close() error { return s.c.Close() }

// Fetch reads the entry, then the versions of tables, then the boot id, in
// one pipeline.
func (s *Store) Fetch(ctx context.Context, db string, key resultcache.Key, tables []string) (resultcache.RemoteFetch, error) {
	var res resultcache.RemoteFetch
	pipe := s.c.Pipeline()
	entry := pipe.Get(ctx, EntryKey(db, key))
	vers := pipe.HMGet(ctx, VersionKey(db), tables...)
	boot := pipe.Get(ctx, BootKey)
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return res, fmt.Errorf("redisstore: fetch: %w", err)
	}
	b, err := entry.Bytes()
	switch {
	case errors.Is(err, redis.Nil):
	case err != nil:
		return res, fmt.Errorf("redisstore: fetch: %w", err)
	default:
		res.Entry = b
	}
	vals, err := vers.Result()
	if err != nil {
		return res, fmt.Errorf("redisstore: fetch versions: %w", err)
	}
	if res.Versions, err = parseVersions(vals); err != nil {
		return res, err
	}
	res.Boot, err = boot.Result()
	if err != nil && !errors.Is(err, redis.Nil) {
		return res, fmt.Errorf("redisstore: fetch boot: %w", err)
	}
	return res, nil
}

func parseVersions(vals []any) ([]uint64, error) {
	out := make([]uint64, len(vals))
	for i, v := range vals {
		if v == nil {
			continue
		}
		str, ok := v.(string)
		if !ok {
			return nil, fmt.Errorf("redisstore: version of type %T", v)
		}
		n, err := strconv.ParseUint(str, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("redisstore: version %q: %w", str, err)
		}
		out[i] = n
	}
	return out, nil
}

// Store writes an entry with a TTL (at least a millisecond).
func (s *Store) Store(ctx context.Context, db string, key resultcache.Key, entry []byte, ttl time.Duration) error {
	if err := s.c.Set(ctx, EntryKey(db, key), entry, max(ttl, time.Millisecond)).Err(); err != nil {
		return fmt.Errorf("redisstore: store: %w", err)
	}
	return nil
}

// Bump runs the bump script on db's version hash, then increments the epoch.
func (s *Store) Bump(ctx context.Context, db string, tables []string, floors []uint64) ([]uint64, error) {
	if len(tables) != len(floors) {
		return nil, fmt.Errorf("redisstore: bump: %d tables, %d floors", len(tables), len(floors))
	}
	args := make([]any, 0, 2*len(tables))
	for i, t := range tables {
		args = append(args, t, strconv.FormatUint(floors[i], 10))
	}
	raw, err := bumpScript.Run(ctx, s.c, []string{VersionKey(db)}, args...).Int64Slice()
	if err != nil {
		return nil, fmt.Errorf("redisstore: bump: %w", err)
	}
	if len(raw) != len(tables) {
		return nil, fmt.Errorf("redisstore: bump returned %d versions for %d tables", len(raw), len(tables))
	}
	if err := s.c.Incr(ctx, EpochKey).Err(); err != nil {
		return nil, fmt.Errorf("redisstore: bump epoch: %w", err)
	}
	out := make([]uint64, len(raw))
	for i, v := range raw {
		out[i] = uint64(v)
	}
	return out, nil
}

// State returns the boot id, creating it when missing, and the epoch.
func (s *Store) State(ctx context.Context) (resultcache.RemoteState, error) {
	var st resultcache.RemoteState
	pipe := s.c.Pipeline()
	boot := bootScript.Eval(ctx, pipe, []string{BootKey}, newBootID())
	epoch := pipe.Get(ctx, EpochKey)
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return st, fmt.Errorf("redisstore: state: %w", err)
	}
	b, err := boot.Text()
	if err != nil || b == "" {
		return st, fmt.Errorf("redisstore: state: boot id: %q, %v", b, err)
	}
	st.Boot = b
	st.Epoch, err = epoch.Uint64()
	if err != nil && !errors.Is(err, redis.Nil) {
		return st, fmt.Errorf("redisstore: state: epoch: %w", err)
	}
	return st, nil
}

func newBootID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// Versions reads the version hash of each of dbs in one pipeline.
func (s *Store) Versions(ctx context.Context, dbs []string) ([]map[string]uint64, error) {
	pipe := s.c.Pipeline()
	cmds := make([]*redis.MapStringStringCmd, len(dbs))
	for i, db := range dbs {
		cmds[i] = pipe.HGetAll(ctx, VersionKey(db))
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return nil, fmt.Errorf("redisstore: versions: %w", err)
	}
	out := make([]map[string]uint64, len(dbs))
	for i, cmd := range cmds {
		m := cmd.Val()
		out[i] = make(map[string]uint64, len(m))
		for t, v := range m {
			n, err := strconv.ParseUint(v, 10, 64)
			if err != nil {
				return nil, fmt.Errorf("redisstore: version of %q in %q: %q: %w", t, dbs[i], v, err)
			}
			out[i][t] = n
		}
	}
	return out, nil
}
