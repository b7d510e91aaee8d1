package resultcache

import (
	"errors"
	"fmt"
	"log/slog"
	"time"
)

// Defaults for the zero fields of Config.
const (
	DefaultMemoryBytes   = 64 << 20
	DefaultMaxEntryBytes = 1 << 20
	DefaultTTL           = 60 * time.Second
	DefaultRedisTimeout  = 5 * time.Millisecond
	DefaultMaxStaleness  = 250 * time.Millisecond
)

// maxEntryLimit bounds MaxEntryBytes: an entry's weight is a uint32 in otter,
// and no answer this large belongs in a cache.
const maxEntryLimit = 1 << 30

// Config configures a Cache. Every zero field means its default.
type Config struct {
	// MemoryBytes is the memory tier's budget in bytes: answers plus a
	// per-entry overhead estimate. Zero: 64 MiB. Negative: no memory tier
	// (Redis only; New then requires a Remote).
	MemoryBytes int64
	// MaxEntryBytes is the largest answer stored; larger ones are skipped
	// (and counted in Stats.StoreSkips). Zero: 1 MiB. At most 1 GiB and at
	// most MemoryBytes.
	MaxEntryBytes int
	// DefaultTTL is the lifetime the proxy gives an answer when no rule says
	// otherwise (see Cache.DefaultTTL); Put itself always takes a TTL. Zero:
	// 60s.
	DefaultTTL time.Duration
	// RedisTimeout bounds every Redis call on a client's path: a Get's
	// Redis lookup and a Bump's push. Zero: 5ms.
	RedisTimeout time.Duration
	// MaxStaleness is the cross-instance bound: with a Remote, the memory
	// tier serves only while the last successful sync with Redis started at
	// most this long ago. Zero: 250ms.
	MaxStaleness time.Duration
	// SyncInterval is how often the background sync with Redis runs. It
	// must be below MaxStaleness. Zero: MaxStaleness/3.
	SyncInterval time.Duration
	// Logger receives Redis state changes (lost, back, data loss). Zero:
	// discard.
	Logger *slog.Logger
}

// withDefaults validates cfg and fills in its zero fields, reporting every
// problem at once.
func (cfg Config) withDefaults() (Config, error) {
	var errs []error
	if cfg.MemoryBytes == 0 {
		cfg.MemoryBytes = DefaultMemoryBytes
	}
	if cfg.MaxEntryBytes == 0 {
		cfg.MaxEntryBytes = DefaultMaxEntryBytes
		if cfg.MemoryBytes > 0 {
			cfg.MaxEntryBytes = min(DefaultMaxEntryBytes, int(cfg.MemoryBytes))
		}
	}
	if cfg.DefaultTTL == 0 {
		cfg.DefaultTTL = DefaultTTL
	}
	if cfg.RedisTimeout == 0 {
		cfg.RedisTimeout = DefaultRedisTimeout
	}
	if cfg.MaxStaleness == 0 {
		cfg.MaxStaleness = DefaultMaxStaleness
	}
	if cfg.SyncInterval == 0 {
		cfg.SyncInterval = cfg.MaxStaleness / 3
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.MaxEntryBytes < 0 || cfg.MaxEntryBytes > maxEntryLimit || (cfg.MemoryBytes > 0 && int64(cfg.MaxEntryBytes) > cfg.MemoryBytes) {
		errs = append(errs, fmt.Errorf("MaxEntryBytes %d must be in [1, min(1 GiB, MemoryBytes)]", cfg.MaxEntryBytes))
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"DefaultTTL", cfg.DefaultTTL}, {"RedisTimeout", cfg.RedisTimeout}, {"MaxStaleness", cfg.MaxStaleness}, {"SyncInterval", cfg.SyncInterval}} {
		if d.v < 0 {
			errs = append(errs, fmt.Errorf("%s %v is negative", d.name, d.v))
		}
	}
	if cfg.SyncInterval > 0 && cfg.MaxStaleness > 0 && cfg.SyncInterval >= cfg.MaxStaleness {
		errs = append(errs, fmt.Errorf("SyncInterval %v must be below MaxStaleness %v", cfg.SyncInterval, cfg.MaxStaleness))
	}
	if cfg.SyncInterval == 0 && cfg.MaxStaleness > 0 {
		errs = append(errs, fmt.Errorf("MaxStaleness %v is too small for a sync interval", cfg.MaxStaleness))
	}
	if err := errors.Join(errs...); err != nil {
		return cfg, fmt.Errorf("resultcache: invalid config: %w", err)
	}
	return cfg, nil
}

// Tier says where an answer came from.
type Tier uint8

const (
	// TierNone is the tier of a miss.
	TierNone Tier = iota
	// TierMemory is this process's memory.
	TierMemory
	// TierRedis is the shared Redis tier.
	TierRedis
)

func (t Tier) String() string {
	switch t {
	case TierNone:
		return "none"
	case TierMemory:
		return "memory"
	case TierRedis:
		return "redis"
	}
	return fmt.Sprintf("Tier(%d)", uint8(t))
}
