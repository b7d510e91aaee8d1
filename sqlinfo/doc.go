// Package sqlinfo tells the proxy what a piece of SQL text does, from the real
// PostgreSQL parser (pg_query, PostgreSQL 17's grammar, through cgo).
//
// It owns two questions:
//
//   - The session effects of a text (SessionEffects), which transaction-mode
//     pooling needs to decide whether a client's session state must follow it
//     from backend to backend, or whether the client must stay on one backend
//     because the state cannot be moved at all.
//   - What each statement of a text reads, writes and calls, and whether the
//     text may be answered from the result cache (Analyze): the cache's
//     candidates, the reason for every other text (Info.NotCacheable, a
//     metric label), the relations whose cached results a write makes stale,
//     and the comment hints (Hints) a client can give.
//
// SessionEffects and Analyze are pure functions and safe for concurrent use.
// A Classifier memoises both by exact text and is safe for concurrent use; it
// starts no goroutines. The *Info it returns is shared: read-only. The package
// holds no mutable package-level state, performs no I/O and never talks to
// PostgreSQL: it sees only the text it is given.
//
// What the text alone cannot tell, and the caller must handle:
//
//   - Code that runs elsewhere: a function, procedure or DO block that calls
//     set_config or takes an advisory lock, and EXECUTE of a prepared
//     statement, look harmless here. (PREPARE itself pins, so EXECUTE of a
//     statement prepared with SQL is covered.) For Analyze, DO, CALL and
//     EXECUTE write unknown relations; a function called from a SELECT may
//     read or write anything, and only its volatility, on the backend, tells.
//   - What names mean: Analyze reports relations, functions, operators and
//     types as written. Which relation a name resolves to (search_path,
//     temporary tables), whether it is a view, a partition, a foreign table
//     or has row-level security, and which tables triggers, rules and foreign
//     key actions write, live in the catalog.
//   - Lexing depends on standard_conforming_strings: the parser assumes it is
//     on (the server default since 9.1). With it off, a backslash in a string
//     literal can move where statements start, and the answer may be wrong.
//   - Unparsed means this parser rejected the text. A server of the same major
//     version rejects it too; a newer server may accept syntax this parser
//     does not know, so callers should treat Unparsed as "unknown", not as
//     "harmless".
package sqlinfo
