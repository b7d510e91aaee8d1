package proxy

import (
	"context"
	"sort"
	"strings"
	"unique"

	"github.com/pgsidecar/pgsidecar/pool"
)

// Session settings in transaction mode.
//
// A client's settings are what its session would hold on PostgreSQL: its
// startup parameters at first, then whatever its own SET, RESET and
// set_config calls left. They are kept as a sorted list of (name, value)
// pairs with a key that identifies them; every backend records the key of
// the settings it holds (pool.Conn.Settings, "" for the login defaults).
// When a client's transaction lands on a backend with another key, the
// relay first makes the backend's settings the client's. After a
// transaction that may have changed settings, it reads the session's
// settings back from the server, so the record is the server's own account
// rather than a guess from the SQL text.

// settings is one client's session settings.
type settings struct {
	pairs [][2]string
	key   string
}

func newSettings(pairs [][2]string) settings {
	pairs = append([][2]string(nil), pairs...)
	sort.SliceStable(pairs, func(i, j int) bool { return pairs[i][0] < pairs[j][0] })
	var b strings.Builder
	for _, kv := range pairs {
		b.WriteString(kv[0])
		b.WriteByte(0)
		b.WriteString(kv[1])
		b.WriteByte(0)
	}
	// Canonical: every session with the same settings holds the same
	// string, so attach's comparison with a backend's Settings is a
	// pointer comparison, not a read of another session's memory.
	return settings{pairs: pairs, key: unique.Make(b.String()).Value()}
}

// syncSQL is the statement that turns a backend holding the settings with
// key from into one holding s, or "" when nothing needs to change. RESET
// ALL returns every setting to the value the backend's login gave it.
func (s settings) syncSQL(from string) string {
	if from == s.key {
		return ""
	}
	var b strings.Builder
	if from != "" {
		// RESET ALL leaves role and session_authorization alone
		// (GUC_NO_RESET_ALL): they are reset by name, the session
		// authorization first since setting it resets the role.
		b.WriteString("RESET SESSION AUTHORIZATION; RESET ROLE; RESET ALL")
	}
	if len(s.pairs) > 0 {
		if b.Len() > 0 {
			b.WriteString("; ")
		}
		b.WriteString(setConfigSQL(authFirst(s.pairs), nil))
	}
	return b.String()
}

// authFirst orders pairs so that session_authorization is set before
// role: setting the session authorization resets the role.
func authFirst(pairs [][2]string) [][2]string {
	for i, kv := range pairs {
		if kv[0] == "session_authorization" && i > 0 {
			out := make([][2]string, 0, len(pairs))
			out = append(out, kv)
			out = append(out, pairs[:i]...)
			return append(out, pairs[i+1:]...)
		}
	}
	return pairs
}

// snapshotSQL reads the settings a session changed: pg_settings shows
// those whose source is the session (SET, set_config, and the startup
// settings pgsidecar applied with set_config); role is not listed there.
// Operators are written OPERATOR(pg_catalog.x): the query runs with the
// client's search_path, whose schemas could otherwise supply their own.
// The last row is not a setting: it says whether the session holds
// temporary relations, which pin it to its backend however they were made
// (a CREATE TEMP TABLE inside a function or DO block is invisible to the
// statement classifier).
const snapshotSQL = `SELECT name, setting FROM pg_catalog.pg_settings WHERE source OPERATOR(pg_catalog.=) 'session' ` +
	`UNION ALL SELECT 'role', pg_catalog.current_setting('role') WHERE pg_catalog.current_setting('role') OPERATOR(pg_catalog.<>) 'none' ` +
	`UNION ALL SELECT '` + tempRelationsRow + `', 'yes' WHERE EXISTS (SELECT FROM pg_catalog.pg_class ` +
	`WHERE relnamespace OPERATOR(pg_catalog.=) pg_catalog.pg_my_temp_schema())`

// tempRelationsRow names snapshotSQL's row that is not a setting (no
// setting name has a space).
const tempRelationsRow = "pgsidecar temp relations"

// snapshotSettings reads be's session settings; custom names the
// customized settings the client set, which pg_settings does not list.
// temp reports whether the session holds temporary relations.
func snapshotSettings(ctx context.Context, be *pool.Conn, custom []string) (set settings, temp bool, err error) {
	var b strings.Builder
	b.WriteString(snapshotSQL)
	// session_authorization is not in pg_settings either; it counts when
	// it differs from the user the backend logged in as.
	b.WriteString(` UNION ALL SELECT 'session_authorization', pg_catalog.current_setting('session_authorization')` +
		` WHERE pg_catalog.current_setting('session_authorization') OPERATOR(pg_catalog.<>) `)
	quoteLiteral(&b, be.LoginUser())
	sql := b.String()
	if len(custom) > 0 {
		b.WriteString(" UNION SELECT n, pg_catalog.current_setting(n, true) FROM pg_catalog.unnest(")
		quoteArray(&b, custom)
		b.WriteString("::text[]) AS n WHERE COALESCE(pg_catalog.current_setting(n, true), '') OPERATOR(pg_catalog.<>) ''")
		sql = b.String()
	}
	var pairs [][2]string
	res, err := be.Query(ctx, sql, func(v [][]byte) {
		switch {
		case len(v) != 2:
		case string(v[0]) == tempRelationsRow:
			temp = true
		default:
			pairs = append(pairs, [2]string{string(v[0]), string(v[1])})
		}
	})
	if err == nil && res.TxStatus != 'I' {
		err = errNotIdle
	}
	if err != nil {
		return settings{}, false, err
	}
	return newSettings(pairs), temp, nil
}
