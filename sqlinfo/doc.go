// Package sqlinfo tells the proxy what a piece of SQL text does, from the real
// PostgreSQL parser (pg_query, PostgreSQL 17's grammar, through cgo).
//
// Today it owns one question: the session effects of a text (SessionEffects),
// which transaction-mode pooling needs to decide whether a client's session
// state must follow it from backend to backend, or whether the client must
// stay on one backend because the state cannot be moved at all.
//
// SessionEffects is a pure function and safe for concurrent use. A Classifier
// memoises it by exact text behind a cheap lexical prefilter and is safe for
// concurrent use; it starts no goroutines. The package holds no mutable
// package-level state, performs no I/O and never talks to PostgreSQL: it sees
// only the text it is given.
//
// What the text alone cannot tell, and the caller must handle:
//
//   - Code that runs elsewhere: a function, procedure or DO block that calls
//     set_config or takes an advisory lock, and EXECUTE of a prepared
//     statement, look harmless here. (PREPARE itself pins, so EXECUTE of a
//     statement prepared with SQL is covered.)
//   - Lexing depends on standard_conforming_strings: the parser assumes it is
//     on (the server default since 9.1). With it off, a backslash in a string
//     literal can move where statements start, and the answer may be wrong.
//   - Unparsed means this parser rejected the text. A server of the same major
//     version rejects it too; a newer server may accept syntax this parser
//     does not know, so callers should treat Unparsed as "unknown", not as
//     "harmless".
package sqlinfo
