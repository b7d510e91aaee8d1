package sqlinfo

import (
	"strings"
	"testing"
	"time"
)

type hintCase struct {
	sql     string
	nocache bool
	ttl     time.Duration
	errors  int
}

// hintCases is shared with the fuzz seed corpus.
var hintCases = []hintCase{
	{"select 1", false, 0, 0},
	{"/* pgsidecar:nocache */ select 1", true, 0, 0},
	{"select 1 -- pgsidecar:ttl=30s", false, 30 * time.Second, 0},
	{"select 1 --pgsidecar:ttl=1m30s\n", false, 90 * time.Second, 0},
	{"/* PGSIDECAR:NOCACHE */ select 1", true, 0, 0},
	{"/*pgsidecar:nocache,ttl=5m*/ select 1", true, 5 * time.Minute, 0},
	{"/* pgsidecar: nocache, ttl=5m */ select 1", true, 5 * time.Minute, 0},
	{"/* pgsidecar:ttl=250ms nocache */ select 1", true, 250 * time.Millisecond, 0},
	{"/* pgsidecar:ttl=1m */ select 1 /* pgsidecar:ttl=10s */", false, 10 * time.Second, 0},
	{"/* pgsidecar:ttl=10s */ select 1 -- pgsidecar:ttl=1m", false, 10 * time.Second, 0},
	{"select /* pgsidecar:nocache */ 1; select 2", true, 0, 0},

	// Not comments: string literals, quoted identifiers, dollar quotes.
	{"select '/* pgsidecar:nocache */'", false, 0, 0},
	{"select '-- pgsidecar:nocache'", false, 0, 0},
	{`select 1 as "-- pgsidecar:nocache"`, false, 0, 0},
	{"select $$ /* pgsidecar:nocache */ $$", false, 0, 0},
	{"select E'\\' /* pgsidecar:nocache */'", false, 0, 0},

	// Comments that are not hints: the body must start with the prefix.
	{"/* not a hint: pgsidecar:nocache */ select 1", false, 0, 0},
	{"/* a /* pgsidecar:nocache */ b */ select 1", false, 0, 0},
	{"/* pgsidecar */ select 1", false, 0, 0},

	// Ignored options, reported.
	{"/* pgsidecar:ttl=0 */ select 1", false, 0, 1},
	{"/* pgsidecar:ttl=never */ select 1", false, 0, 1},
	{"/* pgsidecar:ttl=-5s */ select 1", false, 0, 1},
	{"/* pgsidecar:ttl=30 */ select 1", false, 0, 1},
	{"/* pgsidecar:ttl = 30s */ select 1", false, 0, 3},
	{"/* pgsidecar:bogus, nocache */ select 1", true, 0, 1},
	{"/* pgsidecar: */ select 1", false, 0, 1},
	{"/* pgsidecar:" + strings.Repeat("x,", 20) + " */ select 1", false, 0, maxHintErrors},
}

func TestHints(t *testing.T) {
	for _, tc := range hintCases {
		h := Analyze(tc.sql).Hints
		if h.NoCache != tc.nocache || h.TTL != tc.ttl || len(h.Errors) != tc.errors {
			t.Errorf("hints of %q = %+v, want nocache %v ttl %v and %d errors", tc.sql, h, tc.nocache, tc.ttl, tc.errors)
		}
		for _, e := range h.Errors {
			if !strings.HasPrefix(e, "pgsidecar hint: ") || len(e) > 128 {
				t.Errorf("hints of %q: error %q", tc.sql, e)
			}
		}
	}
}

func TestHintsWithoutPrefixDoNotAllocate(t *testing.T) {
	const sql = "select * from t /* an ordinary comment */ where x = 'pgsidecar'"
	if allocs := testing.AllocsPerRun(100, func() { _ = parseHints(sql) }); allocs != 0 {
		t.Errorf("parseHints allocates %v times for a text without hints", allocs)
	}
}

func TestFoldASCII(t *testing.T) {
	for _, tc := range []struct {
		s, sub string
		want   bool
	}{
		{"x PgSideCar: y", "pgsidecar:", true},
		{"pgsidecar", "pgsidecar:", false},
		{"pgsidecar\x1a", "pgsidecar:", false},
		{"pgſidecar:", "pgsidecar:", false}, // the long s folds to s in Unicode, not here
		{"", "", true},
	} {
		if got := containsFoldASCII(tc.s, tc.sub); got != tc.want {
			t.Errorf("containsFoldASCII(%q, %q) = %v", tc.s, tc.sub, got)
		}
	}
	if equalFoldASCII("K", "\u212a") {
		t.Error("the Kelvin sign folds to K")
	}
}
