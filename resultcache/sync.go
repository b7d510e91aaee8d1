package resultcache

import (
	"context"
	"log/slog"
	"time"
)

// bgTimeout bounds one background Redis call (sync, retry, entry write):
// none is on a client's path, and a sync slower than MaxStaleness is useless.
func (c *Cache) bgTimeout() time.Duration {
	return max(c.cfg.MaxStaleness, c.cfg.RedisTimeout)
}

// kickSync wakes the sync loop now (a bump failed, or Redis's boot id
// differs from ours).
func (c *Cache) kickSync() {
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

// syncLoop is the goroutine that keeps local versions up to date with Redis
// and pushes bumps that did not reach it. It exits when Close cancels c.ctx.
func (c *Cache) syncLoop() {
	defer c.wg.Done()
	t := time.NewTicker(c.cfg.SyncInterval)
	defer t.Stop()
	for {
		c.syncOnce()
		select {
		case <-c.ctx.Done():
			return
		case <-t.C:
		case <-c.kick:
		}
	}
}

// syncOnce runs one sync and, when Redis answered, one retry round.
func (c *Cache) syncOnce() {
	c.syncMu.Lock()
	defer c.syncMu.Unlock()
	start := c.clk.Now()
	ctx, cancel := context.WithTimeout(c.ctx, c.bgTimeout())
	defer cancel()
	err := c.sync(ctx, start)
	was := c.syncOK.Swap(err == nil)
	switch {
	case err != nil && was:
		c.log.Warn("resultcache: redis sync failed: the memory tier stops serving after MaxStaleness",
			slog.Duration("max_staleness", c.cfg.MaxStaleness), slog.Any("error", err))
	case err != nil:
		c.log.Debug("resultcache: redis sync failed", slog.Any("error", err))
	case !was:
		c.log.Info("resultcache: redis sync ok")
	}
	if err != nil {
		if isTimeout(err) {
			c.st.redisTimeouts.Add(1)
		} else {
			c.st.redisErrors.Add(1)
		}
		return
	}
	c.retryDirty(ctx)
}

// sync reads Redis's boot id and epoch; on a new boot id it resets; when the
// epoch moved it reads the version hash of every database this instance
// knows (only the new databases otherwise) and merges them. On success, every
// bump acknowledged before start is merged: lastSync becomes start.
func (c *Cache) sync(ctx context.Context, start time.Time) error {
	st, err := c.remote.State(ctx)
	if err != nil {
		return err
	}
	full := !c.epochKnown || st.Epoch != c.epoch
	switch bs := c.boot.Load(); {
	case bs == nil:
		c.boot.Store(&bootState{id: st.Boot, gen: c.gen.Load()})
		full = true
	case bs.id != st.Boot:
		c.resetBoot(bs.id, st.Boot)
		full = true
	}
	gen := c.boot.Load().gen
	var dbs []*dbVersions
	for _, d := range c.vers.all() {
		if full || !d.synced.Load() {
			dbs = append(dbs, d)
		}
	}
	if len(dbs) > 0 {
		names := make([]string, len(dbs))
		for i, d := range dbs {
			names[i] = d.name
		}
		maps, err := c.remote.Versions(ctx, names)
		if err != nil {
			return err
		}
		if len(maps) != len(dbs) {
			return errBadReply
		}
		for i, d := range dbs {
			for table, v := range maps[i] {
				c.vers.cell(d, table).observe(gen, v)
			}
			d.synced.Store(true)
		}
	}
	c.epoch, c.epochKnown = st.Epoch, true
	c.lastSync.Store(start.UnixNano())
	return nil
}

// resetBoot handles Redis's loss of its data (a new boot id): no version it
// had is meaningful any more. Every "*" is bumped, so no memory entry
// survives, and every versioned pair is pushed again.
func (c *Cache) resetBoot(oldID, newID string) {
	c.boot.Store(nil) // no Redis tier, and no Snapshot stamped with the old id, from here
	gen := c.gen.Add(1)
	for _, d := range c.vers.all() {
		d.synced.Store(false)
		for _, cl := range d.snapshotCells() {
			cl.reset(gen)
		}
	}
	c.boot.Store(&bootState{id: newID, gen: gen})
	c.st.redisResets.Add(1)
	c.log.Warn("resultcache: redis lost its data (boot id changed): every cached answer dropped, versions pushed again",
		slog.String("old_boot", oldID), slog.String("new_boot", newID))
}

// retryDirty pushes every dirty pair, one Bump per database.
func (c *Cache) retryDirty(ctx context.Context) {
	if c.nDirty.Load() == 0 {
		if c.dirtyLog {
			c.dirtyLog = false
			c.log.Debug("resultcache: every table version is in redis again")
		}
		return
	}
	if !c.dirtyLog {
		c.dirtyLog = true
		// Debug: concurrent bumps of one table leave it here until the next
		// sync, routinely; a Redis that fails is reported where it fails.
		c.log.Debug("resultcache: table versions not in redis: those tables skip the redis tier until pushed",
			slog.Int64("pairs", c.nDirty.Load()))
	}
	gen := c.gen.Load()
	for _, d := range c.vers.all() {
		var cells []*cell
		var floors []uint64
		for _, cl := range d.snapshotCells() {
			if floor, ok := cl.beginRetry(); ok {
				cells = append(cells, cl)
				floors = append(floors, floor)
			}
		}
		if len(cells) > 0 && !c.push(ctx, d.name, cells, floors, gen) {
			return // Redis is failing: the next round tries again
		}
	}
	if c.nDirty.Load() == 0 {
		c.dirtyLog = false
		c.log.Info("resultcache: every table version is in redis again")
	}
}

// writeLoop is the goroutine that writes queued entries to Redis. It exits
// when Close cancels c.ctx.
func (c *Cache) writeLoop() {
	defer c.wg.Done()
	for {
		select {
		case <-c.ctx.Done():
			return
		case p := <-c.puts:
			ctx, cancel := context.WithTimeout(c.ctx, c.bgTimeout())
			if err := c.remote.Store(ctx, p.db, p.key, p.blob, p.ttl); err != nil {
				c.redisFailed("store", err)
			}
			cancel()
		}
	}
}
