package integration

// Result cache answers are byte-identical to PostgreSQL's: the same
// RowDescription (every field of every column), the same raw values (text
// and binary formats, NULL apart from empty), the same command tag, for
// values whose text depends on session settings (TimeZone, DateStyle,
// IntervalStyle, bytea_output, extra_float_digits). Sessions whose settings
// differ never share an answer.

import (
	"context"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// wireAnswer is one statement's result as the client received it.
type wireAnswer struct {
	Fields []pgconn.FieldDescription
	Rows   []string // each value in hex, NULL as "NULL", joined by " "
	Tag    string
}

func wireOf(r *pgconn.Result) wireAnswer {
	a := wireAnswer{Fields: slices.Clone(r.FieldDescriptions), Tag: r.CommandTag.String()}
	for _, row := range r.Rows {
		vals := make([]string, len(row))
		for i, v := range row {
			vals[i] = "NULL"
			if v != nil {
				vals[i] = "x" + hex.EncodeToString(v)
			}
		}
		a.Rows = append(a.Rows, strings.Join(vals, " "))
	}
	return a
}

// diffWire describes how got differs from want, or returns "".
func diffWire(want, got []wireAnswer) string {
	if len(want) != len(got) {
		return fmt.Sprintf("%d results, want %d", len(got), len(want))
	}
	var diffs []string
	for i := range want {
		w, g := want[i], got[i]
		if !slices.Equal(w.Fields, g.Fields) {
			diffs = append(diffs, fmt.Sprintf("result %d RowDescription:\n  got  %+v\n  want %+v", i, g.Fields, w.Fields))
		}
		if w.Tag != g.Tag {
			diffs = append(diffs, fmt.Sprintf("result %d tag %q, want %q", i, g.Tag, w.Tag))
		}
		if len(w.Rows) != len(g.Rows) {
			diffs = append(diffs, fmt.Sprintf("result %d: %d rows, want %d", i, len(g.Rows), len(w.Rows)))
			continue
		}
		for r := range w.Rows {
			if w.Rows[r] != g.Rows[r] {
				diffs = append(diffs, fmt.Sprintf("result %d row %d:\n  got  %s\n  want %s", i, r, g.Rows[r], w.Rows[r]))
			}
		}
	}
	return strings.Join(diffs, "\n")
}

// wireSettings are every wire connection's startup parameters; the
// variants each change one of them with SET.
var wireSettings = map[string]string{
	"TimeZone":           "UTC",
	"DateStyle":          "ISO, MDY",
	"IntervalStyle":      "postgres",
	"bytea_output":       "hex",
	"extra_float_digits": "1",
}

var wireVariants = []struct{ name, set string }{
	{"startup settings", ""},
	{"TimeZone", "set TimeZone = 'America/St_Johns'"},
	{"bytea_output escape", "set bytea_output = escape"},
	{"DateStyle", "set DateStyle = 'SQL, DMY'"},
	{"IntervalStyle", "set IntervalStyle = iso_8601"},
	{"extra_float_digits", "set extra_float_digits = 0"},
}

// wirePath is one way of asking for an answer.
type wirePath struct {
	name string
	run  func(ctx context.Context, c *pgconn.PgConn) ([]wireAnswer, error)
}

// wireStatement is the name of the statement each wire connection prepares.
const wireStatement = "cache_wire_q"

// wireConn connects to url with wireSettings, runs set, and prepares
// wireStatement as query.
func wireConn(t testing.TB, url, set, query string) *pgconn.PgConn {
	t.Helper()
	ctx := ctxT(t)
	cfg, err := pgconn.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range wireSettings {
		cfg.RuntimeParams[k] = v
	}
	c, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		c.Close(ctx)
	})
	if set != "" {
		if _, err := c.Exec(ctx, set).ReadAll(); err != nil {
			t.Fatalf("%s: %v", set, err)
		}
	}
	if _, err := c.Prepare(ctx, wireStatement, query, nil); err != nil {
		t.Fatalf("prepare %s: %v", query, err)
	}
	return c
}

// TestCacheAnswersByteIdentical: for each settings variant and each way of
// asking (simple query; unnamed and named extended statements with text and
// with binary results), the sidecar's answer, also when it is a cache hit,
// is exactly PostgreSQL's with the same settings.
func TestCacheAnswersByteIdentical(t *testing.T) {
	t.Parallel()
	pg := env.Postgres(t)
	table := createTable(t, pg, "cache_wire", `id int primary key,
		n numeric, nt numeric(12,4), f8 float8, f4 float4,
		ts timestamptz, tsn timestamp, d date, iv interval,
		ai int[], at text[], a2 int[], tsa timestamptz[],
		j json, jb jsonb, b bytea, u text, e text, bo bool, uu uuid`)
	if err := pg.Exec(ctxT(t), `insert into `+table+` values
		(1, 12345678901234567890.123456789, 3.14159, pi(), 1.1,
		 '2024-02-29 23:59:59.123456+05:30', '2024-02-29 23:59:59.5', '2024-02-29', '1 year 2 mons 3 days 04:05:06.789',
		 '{1,NULL,3}', '{"a b","c\"d",NULL,"ü",""}', '{{1,2},{3,4}}', '{"2001-02-03 04:05:06+00","1999-12-31 23:59:59.999999-08"}',
		 '{"b": 1,  "a": [1, 2.50, null], "é": "\u00e9"}', '{"b": 1,  "a": [1, 2.50, null], "é": "\u00e9"}',
		 '\x00ff5c27e29883', 'Grüße, 世界 🐘 ' || chr(9) || '\\ "q"' || chr(10), '', true, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'),
		(2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
		(3, 'NaN', -0.0001, '-Infinity', 'NaN', '-infinity', 'infinity', '-infinity', '-178000000 years',
		 '{}', '{}', '{}', '{infinity}', 'null', '[]', '\x', '', ' ', false, NULL)`); err != nil {
		t.Fatal(err)
	}
	simple := "select * from " + table + " order by id"
	extended := "select * from " + table + " where id <= $1 order by id"
	param := [][]byte{[]byte("3")}

	paths := []wirePath{{"simple", func(ctx context.Context, c *pgconn.PgConn) ([]wireAnswer, error) {
		results, err := c.Exec(ctx, simple).ReadAll()
		var out []wireAnswer
		for _, r := range results {
			out = append(out, wireOf(r))
		}
		return out, err
	}}}
	for _, format := range []int16{0, 1} {
		formatName := map[int16]string{0: "text", 1: "binary"}[format]
		paths = append(paths,
			wirePath{"unnamed " + formatName, func(ctx context.Context, c *pgconn.PgConn) ([]wireAnswer, error) {
				r := c.ExecParams(ctx, extended, param, nil, nil, []int16{format}).Read()
				return []wireAnswer{wireOf(r)}, r.Err
			}},
			wirePath{"named " + formatName, func(ctx context.Context, c *pgconn.PgConn) ([]wireAnswer, error) {
				r := c.ExecPrepared(ctx, wireStatement, param, nil, []int16{format}).Read()
				return []wireAnswer{wireOf(r)}, r.Err
			}},
		)
	}

	forEachCacheTier(t, pg, func(t *testing.T, sc *cacheSidecar) {
		// One variant after another on the same sidecar: each later
		// variant asks what an earlier one has had cached.
		for _, v := range wireVariants {
			t.Run(v.name, func(t *testing.T) {
				direct := wireConn(t, directURL(pg), v.set, extended)
				proxied := wireConn(t, sc.SuperURL(pg), v.set, extended)
				for _, p := range paths {
					want, err := p.run(ctxT(t), direct)
					if err != nil {
						t.Fatalf("%s directly: %v", p.name, err)
					}
					sc.readUntilHit(t, v.name+", "+p.name, func() {
						got, err := p.run(ctxT(t), proxied)
						if err != nil {
							t.Fatalf("%s through the sidecar: %v", p.name, err)
						}
						if d := diffWire(want, got); d != "" {
							t.Fatalf("%s, %s: the sidecar's answer differs from PostgreSQL's:\n%s", v.name, p.name, d)
						}
					})
				}
			})
		}
	})
}
