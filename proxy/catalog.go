package proxy

import (
	"context"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgsidecar/pgsidecar/sqlinfo"
)

// What the cache needs to know from PostgreSQL's catalog, per database and
// by bare name (whatever schema a name resolves to under a session's
// search_path, every object of that name must qualify):
//
//   - a relation is cacheable when every relation of that name is a plain
//     or materialized table, permanent, not a partition, neither inheriting
//     nor inherited from, outside pg_catalog, information_schema and the
//     temporary schemas, and, with row-level security, has no policy that
//     depends on another relation or a function that is not built in (the
//     key holds the role and settings a policy can read);
//   - a function is cacheable when every function of that name is an
//     immutable built-in (pg_catalog), and may write when one of that name
//     is volatile and not a built-in known to write no table;
//   - an operator is cacheable when no operator of that name is volatile
//     and all are built-ins (a stable built-in operator depends only on
//     settings, which are in the key);
//   - a type named in a cast is cacheable when every type of that name is
//     a built-in;
//   - a write to a table writes only that table when every relation of
//     that name is a plain or materialized table without triggers (foreign
//     keys included) or rules ('w').
//
// Answers are remembered for catalogTTL, and forgotten for the database
// when DDL passes through pgsidecar.
const catalogTTL = time.Minute

type catalog struct {
	mu    sync.RWMutex
	dbs   map[string]*dbCatalog
	allow map[string]bool
}

type dbCatalog struct {
	names map[catName]catVerdict
}

type catName struct {
	kind byte // 'r' relation read, 'w' relation written, 'f' function, 'o' operator, 't' type
	name string
}

type catVerdict struct {
	ok       bool
	mayWrite bool // functions and operators
	builtin  bool // functions: every one of that name is in pg_catalog
	at       time.Time
	gen      uint64 // the database's cache generation when it was read
}

func newCatalog(allow []string) *catalog {
	c := &catalog{dbs: make(map[string]*dbCatalog), allow: make(map[string]bool)}
	for _, f := range allow {
		c.allow[strings.ToLower(f)] = true
	}
	return c
}

// lookup returns the remembered verdict on a name, if it was read under
// the database's current generation gen: DDL anywhere (through any
// sidecar sharing Redis) bumps the generation, which retires every verdict.
func (c *catalog) lookup(db string, gen uint64, n catName) (catVerdict, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	d := c.dbs[db]
	if d == nil {
		return catVerdict{}, false
	}
	v, ok := d.names[n]
	if !ok || v.gen != gen || time.Since(v.at) > catalogTTL {
		return catVerdict{}, false
	}
	return v, true
}

func (c *catalog) store(db string, verdicts map[catName]catVerdict) {
	c.mu.Lock()
	defer c.mu.Unlock()
	d := c.dbs[db]
	if d == nil {
		d = &dbCatalog{names: make(map[catName]catVerdict)}
		c.dbs[db] = d
	}
	for n, v := range verdicts {
		d.names[n] = v
	}
}

// remember stores the verdicts found for names; a name not found is no
// such object (yet): not cacheable, and a function of that name may be
// anything.
func (c *catalog) remember(db string, gen uint64, names []catName, found map[catName]catVerdict) {
	now := time.Now()
	verdicts := make(map[catName]catVerdict, len(names))
	for _, n := range names {
		v, ok := found[n]
		if !ok {
			v = catVerdict{mayWrite: true}
		}
		v.at, v.gen = now, gen
		verdicts[n] = v
	}
	c.store(db, verdicts)
}

// builtinVolatileNoWrite are the built-in volatile functions that write no
// table: calling them does not invalidate anything.
var builtinVolatileNoWrite = []string{
	"random", "random_normal", "setseed", "nextval", "setval", "currval", "lastval",
	"clock_timestamp", "timeofday", "statement_timestamp", "txid_current", "txid_current_if_assigned",
	"pg_current_xact_id", "pg_current_xact_id_if_assigned", "gen_random_uuid", "pg_sleep", "pg_sleep_for",
	"pg_sleep_until", "set_config", "pg_notify", "pg_advisory_lock", "pg_advisory_lock_shared",
	"pg_advisory_unlock", "pg_advisory_unlock_shared", "pg_advisory_unlock_all", "pg_advisory_xact_lock",
	"pg_advisory_xact_lock_shared", "pg_try_advisory_lock", "pg_try_advisory_lock_shared",
	"pg_try_advisory_xact_lock", "pg_try_advisory_xact_lock_shared", "pg_cancel_backend",
	"pg_terminate_backend", "pg_backend_pid",
}

// checkCatalog returns why info cannot be cached given the catalog, or "".
// Names not remembered are looked up on the backend (attached for it).
func (r *txRelay) checkCatalog(ctx context.Context, info *sqlinfo.Info) (string, error) {
	cat := r.srv.catalog
	db := r.c.key.Database
	gen := r.srv.cfg.Cache.Generation(db)
	var missing []catName
	verdict := func(n catName) (catVerdict, bool) {
		v, ok := cat.lookup(db, gen, n)
		if !ok {
			missing = append(missing, n)
		}
		return v, ok
	}
	check := func() string {
		missing = missing[:0]
		for i := range info.Statements {
			st := &info.Statements[i]
			for _, t := range st.Reads {
				if v, known := verdict(catName{'r', t.Name}); known && !v.ok {
					return bypassRelation
				}
			}
			for _, f := range st.Funcs {
				if cat.allow[f.Name] {
					continue
				}
				if f.Schema != "" && f.Schema != "pg_catalog" {
					return bypassFunction
				}
				if v, known := verdict(catName{'f', f.Name}); known && !v.ok {
					return bypassFunction
				}
			}
			for _, o := range st.Operators {
				if v, known := verdict(catName{'o', o.Name}); known && !v.ok {
					return bypassOperator
				}
			}
			for _, t := range st.Types {
				if t.Schema == "pg_catalog" {
					continue
				}
				if t.Schema != "" {
					return bypassType
				}
				if v, known := verdict(catName{'t', t.Name}); known && !v.ok {
					return bypassType
				}
			}
		}
		return ""
	}
	if reason := check(); reason != "" || len(missing) == 0 {
		return reason, nil
	}
	if err := r.attach(ctx); err != nil {
		return "", err
	}
	found, err := lookupCatalog(ctx, r, missing)
	if err != nil {
		if isServerError(err) {
			return bypassCatalog, nil
		}
		return "", r.backendFailed(err)
	}
	cat.remember(db, gen, missing, found)
	if reason := check(); reason != "" || len(missing) == 0 {
		return reason, nil
	}
	return bypassCatalog, nil
}

// The catalog query runs on the client's own backend, in a transaction of
// its own whose search_path is pg_catalog alone: a client's schemas cannot
// put a function or operator of its own in the query's way.
const (
	catalogBegin = "BEGIN; SET LOCAL search_path TO pg_catalog; SET LOCAL standard_conforming_strings TO on; "
	catalogEnd   = "; COMMIT"
)

// lookupCatalog asks the attached backend about names.
func lookupCatalog(ctx context.Context, r *txRelay, names []catName) (map[catName]catVerdict, error) {
	lists := map[byte][]string{}
	for _, n := range names {
		lists[n.kind] = append(lists[n.kind], n.name)
	}
	var parts []string
	arr := func(list []string) string {
		var b strings.Builder
		quoteArray(&b, list)
		b.WriteString("::name[]")
		return b.String()
	}
	if l := lists['r']; len(l) > 0 {
		parts = append(parts, `SELECT 'r', c.relname::text, bool_and(c.relkind IN ('r','m') AND c.relpersistence = 'p'`+
			` AND NOT c.relhassubclass AND NOT c.relispartition`+
			` AND n.nspname NOT IN ('pg_catalog','information_schema','pg_toast') AND n.nspname !~ '^pg_(toast_)?temp_'`+
			` AND NOT EXISTS (SELECT 1 FROM pg_inherits i WHERE i.inhrelid = c.oid)`+
			// Row-level security: the key holds the user, role and every
			// setting the session made visibly. A policy is fine when it
			// depends on nothing else: no other relation, no function at
			// all (built-in functions leave no pg_depend row, so the
			// expression's text is checked for calls: now(),
			// current_setting(), ...).
			` AND (NOT c.relrowsecurity OR NOT EXISTS (SELECT 1 FROM pg_policy p WHERE p.polrelid = c.oid AND (`+
			`coalesce(pg_get_expr(p.polqual, p.polrelid), '') || ' ' || coalesce(pg_get_expr(p.polwithcheck, p.polrelid), '')`+
			` ~ '[[:alpha:]_][[:alnum:]_$]*\(' OR EXISTS (SELECT 1 FROM pg_depend d`+
			` WHERE d.classid = 'pg_policy'::regclass AND d.objid = p.oid`+
			` AND ((d.refclassid = 'pg_class'::regclass AND d.refobjid <> c.oid) OR d.refclassid = 'pg_proc'::regclass)))))), false, false`+
			` FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace`+
			` WHERE c.relname = ANY(`+arr(l)+`) GROUP BY c.relname`)
	}
	if l := lists['w']; len(l) > 0 {
		// Writing the table writes only it: no triggers (foreign keys
		// included), no rules, and no default or check that calls a
		// function of the user's (which may write anything).
		parts = append(parts, `SELECT 'w', c.relname::text, bool_and(c.relkind IN ('r','m') AND NOT c.relhastriggers AND NOT c.relhasrules`+
			` AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.refclassid = 'pg_proc'::regclass AND (`+
			`(d.classid = 'pg_attrdef'::regclass AND d.objid IN (SELECT a.oid FROM pg_attrdef a WHERE a.adrelid = c.oid)) OR`+
			` (d.classid = 'pg_constraint'::regclass AND d.objid IN (SELECT k.oid FROM pg_constraint k WHERE k.conrelid = c.oid))))), false, false`+
			` FROM pg_class c WHERE c.relname = ANY(`+arr(l)+`) GROUP BY c.relname`)
	}
	if l := lists['f']; len(l) > 0 {
		// Cacheable: immutable built-ins only. May write: anything not
		// built in (even a stable function may call a volatile one), and
		// volatile built-ins but those known to write no table.
		parts = append(parts, `SELECT 'f', p.proname::text, bool_and(p.provolatile = 'i' AND p.pronamespace = 'pg_catalog'::regnamespace),`+
			` bool_or(p.pronamespace <> 'pg_catalog'::regnamespace OR (p.provolatile = 'v' AND NOT p.proname = ANY(`+arr(builtinVolatileNoWrite)+`))),`+
			` bool_and(p.pronamespace = 'pg_catalog'::regnamespace)`+
			` FROM pg_proc p WHERE p.proname = ANY(`+arr(l)+`) GROUP BY p.proname`)
	}
	if l := lists['o']; len(l) > 0 {
		// Cacheable: every operator of the name immutable, or a stable
		// built-in (which depends only on settings, in the key). Extension
		// operators (citext, hstore, PostGIS) are immutable. May write: a
		// volatile one.
		parts = append(parts, `SELECT 'o', o.oprname::text, bool_and(p.provolatile = 'i' OR (p.provolatile = 's' AND o.oprnamespace = 'pg_catalog'::regnamespace)),`+
			` bool_or(p.provolatile = 'v'), bool_and(p.pronamespace = 'pg_catalog'::regnamespace)`+
			` FROM pg_operator o JOIN pg_proc p ON p.oid = o.oprcode`+
			` WHERE o.oprname = ANY(`+arr(l)+`) GROUP BY o.oprname`)
	}
	if l := lists['t']; len(l) > 0 {
		parts = append(parts, `SELECT 't', t.typname::text, bool_and(t.typnamespace = 'pg_catalog'::regnamespace), false, false`+
			` FROM pg_type t WHERE t.typname = ANY(`+arr(l)+`) GROUP BY t.typname`)
	}
	out := make(map[catName]catVerdict)
	sql := catalogBegin + strings.Join(parts, " UNION ALL ") + catalogEnd
	qctx, cancel := context.WithTimeout(ctx, r.srv.cfg.QueryWaitTimeout)
	defer cancel()
	// A simple query destroys the backend's unnamed statement: the
	// client's is sent again before its next use.
	r.unnamedGen = 0
	res, err := r.be.Query(qctx, sql, func(v [][]byte) {
		if len(v) != 5 || len(v[0]) != 1 {
			return
		}
		out[catName{v[0][0], string(v[1])}] = catVerdict{ok: string(v[2]) == "t", mayWrite: string(v[3]) == "t", builtin: string(v[4]) == "t"}
	})
	if err != nil && res.TxStatus != 'I' && isServerError(err) {
		// The catalog query failed inside its own transaction block.
		rctx, cancel := context.WithTimeout(ctx, drainTimeout)
		res, err = r.be.Exec(rctx, "ROLLBACK")
		cancel()
		if err == nil {
			err = errCatalogQuery
		}
	}
	if err == nil && res.TxStatus != 'I' {
		err = errNotIdle
	}
	return out, err
}

// errCatalogQuery: the catalog query failed and was rolled back; the
// backend is fine.
var errCatalogQuery = &pgconn.PgError{Severity: "ERROR", Code: "XX000", Message: "pgsidecar catalog query failed"}
