package sqlinfo

import (
	"context"
	"strings"
	"sync/atomic"

	"github.com/maypok86/otter/v2"
	"github.com/maypok86/otter/v2/stats"
)

// DefaultMaxEntries is the memo size NewClassifier uses when given zero or less.
const DefaultMaxEntries = 10000

// MaxMemoTextLen is the longest text a Classifier memoises, in bytes. Longer
// texts (bulk INSERTs, mostly) are parsed on every call. The bound keeps each
// memo's memory near maxEntries × MaxMemoTextLen at worst, not maxEntries ×
// the largest message a client may send. (An Info's lists hold names taken
// from its text, so it stays within a small multiple of the text's size.)
const MaxMemoTextLen = 8 << 10

// Classifier memoises SessionEffects and Analyze by exact text, each in its
// own memo bounded by entry count (so the memory bound below applies to each).
// It is safe for concurrent use and starts no goroutines.
//
// Before the SessionEffects memo, a lexical prefilter (no parsing, no
// allocation) answers Effects{} for texts that contain none of the words an
// effect needs; those are neither parsed nor memoised. One consequence:
// Unparsed is only reported for texts that pass the prefilter. Analyze has no
// prefilter: every text needs its answer. Concurrent misses on the same text
// are collapsed into one parse.
type Classifier struct {
	// memo maps a text to its Effects. The eviction policy (W-TinyLFU) keeps
	// the texts that are used often; the executor runs maintenance on the
	// calling goroutine, so the cache owns no goroutine.
	memo   *otter.Cache[string, Effects]
	loader otter.Loader[string, Effects]

	// counts holds Hits and Misses in otter's striped counters, so that
	// concurrent hits do not all write one cache line; it is not handed to
	// the memo, whose own view of hits and misses differs from ours.
	counts *stats.Counter
	parsed atomic.Uint64

	// infos maps a text to its analysis, shared by every caller that asks
	// for the text: an *Info is never written after it is stored.
	infos      *otter.Cache[string, *Info]
	infoLoader otter.Loader[string, *Info]
	infoCounts *stats.Counter
	infoParsed atomic.Uint64
}

// ClassifierStats is a snapshot of a Classifier's counters. The first four
// count SessionEffects, where texts rejected by the prefilter count nowhere;
// the Analyze ones count Analyze.
type ClassifierStats struct {
	// Hits: candidate texts answered from the memo.
	Hits uint64
	// Misses: candidate texts not found in the memo.
	Misses uint64
	// Parsed: texts that went to the parser. At most Misses: concurrent
	// misses on one text share a parse.
	Parsed uint64
	// Entries: texts in the memo now (an estimate under concurrent use).
	Entries int

	// AnalyzeHits, AnalyzeMisses, AnalyzeParsed and AnalyzeEntries are the
	// same counts for Analyze.
	AnalyzeHits    uint64
	AnalyzeMisses  uint64
	AnalyzeParsed  uint64
	AnalyzeEntries int
}

// NewClassifier returns a Classifier whose memos each hold at most maxEntries
// texts; maxEntries <= 0 means DefaultMaxEntries.
func NewClassifier(maxEntries int) *Classifier {
	if maxEntries <= 0 {
		maxEntries = DefaultMaxEntries
	}
	c := &Classifier{counts: stats.NewCounter(), infoCounts: stats.NewCounter()}
	c.memo = otter.Must(&otter.Options[string, Effects]{
		MaximumSize: maxEntries,
		// Maintenance inline: no goroutine of the cache's own, so a
		// Classifier needs no Close.
		Executor: func(fn func()) { fn() },
		// Otter logs only failures of refreshes and callbacks, which this
		// cache does not use; keep it off the process-wide slog default.
		Logger: &otter.NoopLogger{},
	})
	c.loader = otter.LoaderFunc[string, Effects](func(_ context.Context, sql string) (Effects, error) {
		c.parsed.Add(1)
		return SessionEffects(sql), nil
	})
	c.infos = otter.Must(&otter.Options[string, *Info]{
		MaximumSize: maxEntries,
		Executor:    func(fn func()) { fn() },
		Logger:      &otter.NoopLogger{},
	})
	c.infoLoader = otter.LoaderFunc[string, *Info](func(_ context.Context, sql string) (*Info, error) {
		c.infoParsed.Add(1)
		return Analyze(sql), nil
	})
	return c
}

// SessionEffects returns the session effects of sql, as the package-level
// SessionEffects does, except that a text the prefilter rejects gets
// Effects{} (never Unparsed).
func (c *Classifier) SessionEffects(sql string) Effects {
	if !isCandidate(sql) {
		return Effects{}
	}
	if e, ok := c.memo.GetIfPresent(sql); ok {
		c.counts.RecordHits(1)
		return e
	}
	c.counts.RecordMisses(1)
	if len(sql) > MaxMemoTextLen {
		c.parsed.Add(1)
		return SessionEffects(sql)
	}
	// The key is kept: copy it, in case the caller's string aliases a buffer
	// it will reuse. Parsing is CPU work that always finishes, so the load
	// needs no deadline and cannot fail.
	e, err := c.memo.Get(context.Background(), strings.Clone(sql), c.loader)
	if err != nil {
		c.parsed.Add(1)
		return SessionEffects(sql)
	}
	return e
}

// Analyze returns Analyze(sql), memoised by exact text. The *Info returned is
// shared with every other caller that asks for the same text: it, and every
// slice in it, must be treated as read-only. Texts longer than MaxMemoTextLen
// are analysed on every call and not memoised. A hit does not allocate.
func (c *Classifier) Analyze(sql string) *Info {
	if info, ok := c.infos.GetIfPresent(sql); ok {
		c.infoCounts.RecordHits(1)
		return info
	}
	c.infoCounts.RecordMisses(1)
	if len(sql) > MaxMemoTextLen {
		c.infoParsed.Add(1)
		return Analyze(sql)
	}
	// As in SessionEffects: keep a copy of the key; the load cannot fail.
	info, err := c.infos.Get(context.Background(), strings.Clone(sql), c.infoLoader)
	if err != nil {
		c.infoParsed.Add(1)
		return Analyze(sql)
	}
	return info
}

// Stats returns a snapshot of the counters.
func (c *Classifier) Stats() ClassifierStats {
	counts := c.counts.Snapshot()
	infoCounts := c.infoCounts.Snapshot()
	return ClassifierStats{
		Hits:           counts.Hits,
		Misses:         counts.Misses,
		Parsed:         c.parsed.Load(),
		Entries:        c.memo.EstimatedSize(),
		AnalyzeHits:    infoCounts.Hits,
		AnalyzeMisses:  infoCounts.Misses,
		AnalyzeParsed:  c.infoParsed.Load(),
		AnalyzeEntries: c.infos.EstimatedSize(),
	}
}
