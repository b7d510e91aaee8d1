package resultcache

import (
	"context"
	"time"
)

// Remote is what a Cache needs from the shared tier (Redis). The Redis
// implementation is redisstore.Store; its package doc describes the layout.
// Every method must be safe for concurrent use, must honour ctx's deadline,
// and returns an error for anything but a clean answer: the Cache treats an
// error as "Redis did not see this", never as "nothing there".
type Remote interface {
	// Fetch reads, in one round trip, the entry stored under (db, key), the
	// current versions of tables (same order; 0 for a table never bumped)
	// and the current boot id. An absent entry is a nil Entry and no error.
	// The Versions must be read no earlier than the Entry.
	Fetch(ctx context.Context, db string, key Key, tables []string) (RemoteFetch, error)
	// Store writes an encoded entry under (db, key) with a TTL.
	Store(ctx context.Context, db string, key Key, entry []byte, ttl time.Duration) error
	// Bump atomically sets, for each table i of db, version =
	// max(current, floors[i]) + 1, and returns the new versions. It then
	// advances the epoch, and succeeds only when both happened, in that
	// order: a State that sees the new epoch must see the new versions.
	Bump(ctx context.Context, db string, tables []string, floors []uint64) ([]uint64, error)
	// State returns the boot id (creating one when there is none) and the
	// epoch, which changes with every Bump.
	State(ctx context.Context) (RemoteState, error)
	// Versions returns every table version of each of dbs (same order), in
	// one round trip.
	Versions(ctx context.Context, dbs []string) ([]map[string]uint64, error)
	// Close releases the connections.
	Close() error
}

// RemoteFetch is the answer to Remote.Fetch.
type RemoteFetch struct {
	Entry    []byte   // nil: no entry
	Versions []uint64 // of the tables asked for, same order
	Boot     string   // the current boot id, "" if there is none
}

// RemoteState is the answer to Remote.State.
type RemoteState struct {
	Boot  string // never empty
	Epoch uint64
}
