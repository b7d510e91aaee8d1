package sqlinfo

import (
	"fmt"
	"reflect"
	"strings"
	"sync"
	"testing"
	"unsafe"
)

func TestClassifierMatchesSessionEffects(t *testing.T) {
	c := NewClassifier(0)
	for round := 0; round < 2; round++ { // the second round answers from the memo
		for _, tc := range effectsCases {
			want := tc.want
			if !isCandidate(tc.sql) {
				want = none
			}
			if got := c.SessionEffects(tc.sql); !withoutCustom(got).Equal(withoutCustom(want)) {
				t.Errorf("round %d: Classifier.SessionEffects(%q)\n got %+v\nwant %+v", round, tc.sql, got, want)
			}
		}
	}
	s := c.Stats()
	if s.Hits == 0 || s.Hits != s.Misses {
		t.Errorf("after two identical rounds: %+v, want Hits == Misses > 0", s)
	}
	if s.Parsed != s.Misses {
		t.Errorf("sequential calls: Parsed = %d, want Misses = %d", s.Parsed, s.Misses)
	}
}

func TestClassifierStats(t *testing.T) {
	c := NewClassifier(10)
	const noCandidate = "SELECT abalance FROM pgbench_accounts WHERE aid = $1"
	const candidate = "SET search_path TO app"

	for i := 0; i < 5; i++ {
		if got := c.SessionEffects(noCandidate); !withoutCustom(got).Equal(withoutCustom(none)) {
			t.Fatalf("SessionEffects(%q) = %+v", noCandidate, got)
		}
	}
	if s := c.Stats(); s != (ClassifierStats{}) {
		t.Fatalf("after prefilter rejects only: %+v, want all zero", s)
	}

	for i := 0; i < 3; i++ {
		if got := c.SessionEffects(candidate); !withoutCustom(got).Equal(withoutCustom(session)) {
			t.Fatalf("SessionEffects(%q) = %+v", candidate, got)
		}
	}
	want := ClassifierStats{Hits: 2, Misses: 1, Parsed: 1, Entries: 1}
	if s := c.Stats(); s != want {
		t.Fatalf("after one candidate three times: %+v, want %+v", s, want)
	}

	// A rejected text is memoised too: the server rejects it every time.
	for i := 0; i < 2; i++ {
		if got := c.SessionEffects("SET"); !withoutCustom(got).Equal(withoutCustom(bad)) {
			t.Fatalf(`SessionEffects("SET") = %+v`, got)
		}
	}
	want = ClassifierStats{Hits: 3, Misses: 2, Parsed: 2, Entries: 2}
	if s := c.Stats(); s != want {
		t.Fatalf("after an unparsed text twice: %+v, want %+v", s, want)
	}
}

func TestClassifierDefaultSize(t *testing.T) {
	for _, n := range []int{0, -1} {
		if got := NewClassifier(n).memo.GetMaximum(); got != DefaultMaxEntries {
			t.Errorf("NewClassifier(%d) holds %d entries, want %d", n, got, DefaultMaxEntries)
		}
	}
	if got := NewClassifier(7).memo.GetMaximum(); got != 7 {
		t.Errorf("NewClassifier(7) holds %d entries, want 7", got)
	}
}

func TestClassifierBoundedByEntries(t *testing.T) {
	const max = 16
	c := NewClassifier(max)
	for i := 0; i < 1000; i++ {
		sql := fmt.Sprintf("SET app.n = %d", i)
		if got := c.SessionEffects(sql); !withoutCustom(got).Equal(withoutCustom(session)) {
			t.Fatalf("SessionEffects(%q) = %+v", sql, got)
		}
	}
	c.memo.CleanUp()
	s := c.Stats()
	if s.Entries > max || s.Entries == 0 {
		t.Errorf("Entries = %d after 1000 distinct texts, want 1..%d", s.Entries, max)
	}
	if s.Misses != 1000 || s.Parsed != 1000 {
		t.Errorf("%+v, want 1000 misses and parses", s)
	}
}

func TestClassifierDoesNotMemoiseLongTexts(t *testing.T) {
	c := NewClassifier(0)
	long := "SET app.x = '" + strings.Repeat("x", MaxMemoTextLen) + "'"
	for i := 0; i < 3; i++ {
		if got := c.SessionEffects(long); !withoutCustom(got).Equal(withoutCustom(session)) {
			t.Fatalf("long SET: %+v", got)
		}
	}
	want := ClassifierStats{Misses: 3, Parsed: 3}
	if s := c.Stats(); s != want {
		t.Errorf("after a long text three times: %+v, want %+v", s, want)
	}
}

// TestClassifierCopiesKey: the memo must not keep the caller's string, which
// may alias a buffer the caller reuses for the next message.
func TestClassifierCopiesKey(t *testing.T) {
	c := NewClassifier(0)
	const sql = "SET search_path TO app"
	buf := []byte(sql)
	aliased := unsafe.String(&buf[0], len(buf))
	if got := c.SessionEffects(aliased); !withoutCustom(got).Equal(withoutCustom(session)) {
		t.Fatalf("SessionEffects(%q) = %+v", sql, got)
	}
	copy(buf, "SELECT 1 -- overwritten")
	if got := c.SessionEffects(sql); !withoutCustom(got).Equal(withoutCustom(session)) {
		t.Fatalf("after the caller's buffer changed: SessionEffects(%q) = %+v", sql, got)
	}
	if s := c.Stats(); s.Hits != 1 {
		t.Errorf("%+v: the second call should hit the memo", s)
	}
}

func TestClassifierConcurrent(t *testing.T) {
	c := NewClassifier(32) // smaller than the table, so eviction runs too
	var wg sync.WaitGroup
	errs := make(chan string, 8)
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 20; i++ {
				for _, tc := range effectsCases {
					want := tc.want
					if !isCandidate(tc.sql) {
						want = none
					}
					if got := c.SessionEffects(tc.sql); !withoutCustom(got).Equal(withoutCustom(want)) {
						errs <- fmt.Sprintf("%q: got %+v, want %+v", tc.sql, got, want)
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
	s := c.Stats()
	if s.Parsed > s.Misses {
		t.Errorf("%+v: more parses than misses", s)
	}
}

// TestClassifierHotPathsDoNotAllocate: the two answers the proxy gets for
// almost every message, a prefilter reject and a memo hit, allocate nothing.
func TestClassifierHotPathsDoNotAllocate(t *testing.T) {
	c := NewClassifier(0)
	const noCandidate = "SELECT abalance FROM pgbench_accounts WHERE aid = $1"
	if allocs := testing.AllocsPerRun(1000, func() { _ = c.SessionEffects(noCandidate) }); allocs != 0 {
		t.Errorf("no-candidate path allocates %v times per call", allocs)
	}
	const candidate = "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2"
	c.SessionEffects(candidate)
	if allocs := testing.AllocsPerRun(1000, func() { _ = c.SessionEffects(candidate) }); allocs != 0 {
		t.Errorf("memo hit allocates %v times per call", allocs)
	}
}

func BenchmarkClassifierNoCandidate(b *testing.B) {
	c := NewClassifier(0)
	const sql = "SELECT abalance FROM pgbench_accounts WHERE aid = $1"
	b.ReportAllocs()
	for b.Loop() {
		if !withoutCustom(c.SessionEffects(sql)).Equal(withoutCustom(none)) {
			b.Fatal("wrong answer")
		}
	}
	if s := c.Stats(); s.Parsed != 0 {
		b.Fatalf("%+v: a non-candidate reached the parser", s)
	}
}

func BenchmarkClassifierMemoHit(b *testing.B) {
	c := NewClassifier(0)
	const sql = "SET search_path TO app, public"
	c.SessionEffects(sql)
	b.ReportAllocs()
	for b.Loop() {
		if !withoutCustom(c.SessionEffects(sql)).Equal(withoutCustom(session)) {
			b.Fatal("wrong answer")
		}
	}
	if s := c.Stats(); s.Parsed != 1 {
		b.Fatalf("%+v: a memoised text was parsed again", s)
	}
}

func BenchmarkClassifierMemoHitParallel(b *testing.B) {
	c := NewClassifier(0)
	const sql = "SET search_path TO app, public"
	c.SessionEffects(sql)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if !withoutCustom(c.SessionEffects(sql)).Equal(withoutCustom(session)) {
				b.Error("wrong answer")
				return
			}
		}
	})
}

func TestClassifierAnalyzeMatchesAnalyze(t *testing.T) {
	c := NewClassifier(0)
	for round := 0; round < 2; round++ { // the second round answers from the memo
		for _, tc := range analyzeCases {
			if got, want := c.Analyze(tc.sql), Analyze(tc.sql); !reflect.DeepEqual(got, want) {
				t.Errorf("round %d: Classifier.Analyze(%q)\n got %+v\nwant %+v", round, tc.sql, got, want)
			}
		}
	}
	s := c.Stats()
	if s.AnalyzeHits == 0 || s.AnalyzeHits != s.AnalyzeMisses || s.AnalyzeParsed != s.AnalyzeMisses {
		t.Errorf("after two identical rounds: %+v, want AnalyzeHits == AnalyzeMisses == AnalyzeParsed > 0", s)
	}
	if s.Hits != 0 || s.Misses != 0 || s.Parsed != 0 {
		t.Errorf("%+v: Analyze counted as SessionEffects", s)
	}
}

func TestClassifierAnalyzeShares(t *testing.T) {
	c := NewClassifier(0)
	const sql = "select * from t where id = $1"
	a, b := c.Analyze(sql), c.Analyze(sql)
	if a != b {
		t.Error("a memo hit returned a different *Info")
	}
	want := ClassifierStats{AnalyzeHits: 1, AnalyzeMisses: 1, AnalyzeParsed: 1, AnalyzeEntries: 1}
	if s := c.Stats(); s != want {
		t.Errorf("%+v, want %+v", s, want)
	}
	// An unparsed text is memoised too.
	for i := 0; i < 2; i++ {
		if info := c.Analyze("selec"); !info.Unparsed {
			t.Fatalf("%+v", info)
		}
	}
	if s := c.Stats(); s.AnalyzeParsed != 2 || s.AnalyzeEntries != 2 {
		t.Errorf("after an unparsed text twice: %+v", s)
	}
}

func TestClassifierAnalyzeLongTexts(t *testing.T) {
	c := NewClassifier(0)
	long := "select '" + strings.Repeat("x", MaxMemoTextLen) + "' from t"
	for i := 0; i < 3; i++ {
		if info := c.Analyze(long); !info.Cacheable() || names(info.Statements[0].Reads) != "t" {
			t.Fatalf("long select: %+v", info)
		}
	}
	want := ClassifierStats{AnalyzeMisses: 3, AnalyzeParsed: 3}
	if s := c.Stats(); s != want {
		t.Errorf("after a long text three times: %+v, want %+v", s, want)
	}
}

func TestClassifierAnalyzeBounded(t *testing.T) {
	const max = 16
	c := NewClassifier(max)
	for i := 0; i < 500; i++ {
		c.Analyze(fmt.Sprintf("select %d from t", i))
	}
	c.infos.CleanUp()
	if s := c.Stats(); s.AnalyzeEntries > max || s.AnalyzeEntries == 0 || s.AnalyzeParsed != 500 {
		t.Errorf("after 500 distinct texts: %+v, want 1..%d entries and 500 parses", s, max)
	}
}

func TestClassifierAnalyzeCopiesKey(t *testing.T) {
	c := NewClassifier(0)
	const sql = "select * from t"
	buf := []byte(sql)
	c.Analyze(unsafe.String(&buf[0], len(buf)))
	copy(buf, "delete from u   ")
	if info := c.Analyze(sql); !info.Cacheable() || c.Stats().AnalyzeHits != 1 {
		t.Errorf("after the caller's buffer changed: %+v, %+v", info, c.Stats())
	}
}

func TestClassifierAnalyzeConcurrent(t *testing.T) {
	c := NewClassifier(32) // smaller than the table, so eviction runs too
	var wg sync.WaitGroup
	errs := make(chan string, 8)
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 5; i++ {
				for _, tc := range analyzeCases {
					if got := c.Analyze(tc.sql); got.NotCacheable != tc.reason {
						errs <- fmt.Sprintf("%q: reason %q, want %q", tc.sql, got.NotCacheable, tc.reason)
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
	if s := c.Stats(); s.AnalyzeParsed > s.AnalyzeMisses {
		t.Errorf("%+v: more parses than misses", s)
	}
}

func TestClassifierAnalyzeHitDoesNotAllocate(t *testing.T) {
	c := NewClassifier(0)
	const sql = "select abalance from pgbench_accounts where aid = $1"
	c.Analyze(sql)
	if allocs := testing.AllocsPerRun(1000, func() { _ = c.Analyze(sql) }); allocs != 0 {
		t.Errorf("memo hit allocates %v times per call", allocs)
	}
}

func BenchmarkClassifierAnalyzeHit(b *testing.B) {
	c := NewClassifier(0)
	const sql = "select abalance from pgbench_accounts where aid = $1"
	c.Analyze(sql)
	b.ReportAllocs()
	for b.Loop() {
		if !c.Analyze(sql).Cacheable() {
			b.Fatal("wrong answer")
		}
	}
	if s := c.Stats(); s.AnalyzeParsed != 1 {
		b.Fatalf("%+v: a memoised text was parsed again", s)
	}
}

func BenchmarkClassifierAnalyzeHitParallel(b *testing.B) {
	c := NewClassifier(0)
	const sql = "select abalance from pgbench_accounts where aid = $1"
	c.Analyze(sql)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if !c.Analyze(sql).Cacheable() {
				b.Error("wrong answer")
				return
			}
		}
	})
}
