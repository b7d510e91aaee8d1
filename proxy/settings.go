package proxy

import (
	"context"
	"sort"
	"strings"

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
	return settings{pairs: pairs, key: b.String()}
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
		b.WriteString("RESET ALL")
	}
	if len(s.pairs) > 0 {
		if b.Len() > 0 {
			b.WriteString("; ")
		}
		b.WriteString(setConfigSQL(s.pairs, nil))
	}
	return b.String()
}

// snapshotSQL reads the settings a session changed: pg_settings shows
// those whose source is the session (SET, set_config, and the startup
// settings pgsidecar applied with set_config); role is not listed there.
const snapshotSQL = `SELECT name, setting FROM pg_catalog.pg_settings WHERE source = 'session' ` +
	`UNION ALL SELECT 'role', pg_catalog.current_setting('role') WHERE pg_catalog.current_setting('role') <> 'none'`

// snapshotSettings reads be's session settings; custom names the
// customized settings the client set, which pg_settings does not list.
func snapshotSettings(ctx context.Context, be *pool.Conn, custom []string) (settings, error) {
	sql := snapshotSQL
	if len(custom) > 0 {
		var b strings.Builder
		b.WriteString(snapshotSQL)
		b.WriteString(" UNION SELECT n, pg_catalog.current_setting(n, true) FROM pg_catalog.unnest(ARRAY[")
		for i, name := range custom {
			if i > 0 {
				b.WriteString(", ")
			}
			quoteLiteral(&b, name)
		}
		b.WriteString("]::text[]) AS n WHERE COALESCE(pg_catalog.current_setting(n, true), '') <> ''")
		sql = b.String()
	}
	var pairs [][2]string
	res, err := be.Query(ctx, sql, func(v [][]byte) {
		if len(v) == 2 {
			pairs = append(pairs, [2]string{string(v[0]), string(v[1])})
		}
	})
	if err == nil && res.TxStatus != 'I' {
		err = errNotIdle
	}
	if err != nil {
		return settings{}, err
	}
	return newSettings(pairs), nil
}
