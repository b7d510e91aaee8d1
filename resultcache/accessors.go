package resultcache

// MaxEntryBytes is Config.MaxEntryBytes (after defaults): a capture that
// grows past it can stop copying.
func (c *Cache) MaxEntryBytes() int { return c.cfg.MaxEntryBytes }

// Generation is the current local version of db's "*": it moves whenever
// anything bumps the whole database, here or (after a sync) on another
// instance. Whoever keeps facts about a database's catalog can tie them to
// it: DDL bumps "*".
func (c *Cache) Generation(db string) uint64 {
	v, _ := c.vers.db(db).star.read()
	return v
}
