// Package resultcache owns pgsidecar's result cache: the cache key, the
// entry encoding, the byte-budgeted memory tier (otter), the table versions
// that decide whether an answer may be served, the link to a shared Redis
// tier (through the Remote interface, implemented by redisstore), request
// coalescing, and Stats. It does not parse SQL, decide what is cacheable or
// build keys' contents (the proxy does), and it imports no Redis client.
//
// A Cache is safe for concurrent use. With a Remote it owns two goroutines
// (version sync, Redis writer), stopped by Close.
//
// # Versions
//
// Every (database, table) pair has a version, a uint64 that never goes down;
// the table "*" of a database is its generation, which every entry depends
// on. Table names are opaque strings chosen by the proxy. The proxy takes a
// Snapshot of the versions of the tables a query reads before sending it, and
// Puts the answer under that Snapshot; Get serves an entry only while every
// version it was stored under is still the current one. A write is followed
// by Bump before its client sees ReadyForQuery, which makes every answer
// stored under older versions unservable.
//
// # Staleness contract
//
// Within one instance: once Bump returns, no answer read before the write is
// served by this instance, from either tier.
//
// Across instances sharing a Redis: Bump pushes the new versions to Redis
// (within RedisTimeout) before it returns. Then
//
//   - the Redis tier of every instance refuses older answers at once: a Redis
//     hit is checked against Redis's current versions in the same round trip;
//   - the memory tier of every instance refuses them within MaxStaleness: an
//     instance serves from memory only while its last successful sync started
//     at most MaxStaleness ago, and a sync that started after the push
//     completed has merged it.
//
// So after a write through any instance is acknowledged, no instance serves
// an answer older than the write for longer than MaxStaleness (default
// 250ms). The bound holds for writes whose push reached Redis. A push that
// fails (Redis down or slow past RedisTimeout) does not fail the write: the
// writing instance bumps locally, marks the pairs untrusted (it neither reads
// nor writes the Redis tier for entries that involve them) and retries the
// push in the background until it lands; other instances learn of that write
// only when it does, and meanwhile their own view of Redis is what they
// serve by. If Redis is unreachable for them too, their memory tier stops
// serving after MaxStaleness and their Redis tier misses.
//
// # Keeping versions monotonic
//
// A local bump adds one to the local version (which already includes
// everything merged from Redis); the push then sets Redis's version to
// max(Redis, local)+1 and the local one adopts the result. Syncing merges
// Redis's versions with max, so a late sync never brings an old version
// back. A version is only ever trusted for the Redis tier when it is known
// to be Redis's: while a local bump is not known to have landed, a value
// read from Redis moves the local version past both (an equal number in
// Redis may stand for a different write).
//
// Redis losing its data (its boot id changes or disappears) is detected by
// the sync: every instance then bumps the "*" of every database it knows (no
// memory entry survives) and pushes its versions to the new Redis. Entries in
// Redis carry the boot id they were stored under, and a Redis hit needs it to
// be the current one, so no entry written before the loss is served after.
//
// # Tiers and failures
//
// Redis is never on a client's path for longer than RedisTimeout: a Get's
// Redis lookup is a miss on any error or timeout (counted in Stats), entries
// are written to Redis in the background through a bounded queue (dropped
// and counted when full), and a Bump's push falls back to the untrusted
// state above. A Redis hit is copied into the memory tier under the same
// versions, unless the local ones are already newer.
//
// # Coalescing
//
// Claim collapses concurrent misses of a key: the leader runs the query and
// calls Flight.Done after its Put; followers Wait (bounded), then Get again,
// and run the query themselves if it still misses.
package resultcache
