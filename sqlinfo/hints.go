package sqlinfo

import (
	"strings"
	"time"

	pg_query "github.com/pganalyze/pg_query_go/v6"
)

// Hints are the options a text gives pgsidecar in its own comments. A hint
// comment's body starts with "pgsidecar:" (any ASCII case) and lists options
// separated by commas or spaces:
//
//	/* pgsidecar:nocache */ SELECT ...
//	SELECT ... -- pgsidecar:ttl=30s
//	/* pgsidecar: nocache, ttl=5m */
//
// The options are nocache (never answer this text from the cache, nor store
// its result) and ttl=<duration>, a positive Go duration (30s, 1m30s, 250ms)
// that bounds how long a result may be served. There is no "ttl=0" or
// "ttl=never": use nocache, and leave the upper bound to configuration.
//
// Only real comments count, found by PostgreSQL's own lexer: text inside a
// string literal or a quoted identifier is not a hint. Several hint comments
// combine: nocache wins, and the smallest ttl.
type Hints struct {
	// NoCache: a nocache option.
	NoCache bool
	// TTL: the smallest valid ttl option; zero when there is none.
	TTL time.Duration
	// Errors describes options that were ignored: unknown names, durations
	// that do not parse or are not positive (at most maxHintErrors, each
	// quoting at most maxHintQuote bytes of the comment). The caller may log
	// them at Debug: they quote the query text.
	Errors []string
}

const (
	hintPrefix    = "pgsidecar:"
	maxHintErrors = 8
	maxHintQuote  = 64
)

// parseHints returns the hints of sql. Texts without the prefix anywhere, in
// any case, are answered without lexing and without allocating.
func parseHints(sql string) Hints {
	var h Hints
	if !containsFoldASCII(sql, hintPrefix) {
		return h
	}
	scan, err := pg_query.Scan(sql)
	if err != nil {
		// The parser will reject the text too: Unparsed decides.
		h.errorf("comments not readable", "")
		return h
	}
	for _, tok := range scan.GetTokens() {
		start, end := int(tok.GetStart()), int(tok.GetEnd())
		if start < 0 || end > len(sql) || start > end {
			continue
		}
		text := sql[start:end]
		switch tok.GetToken() {
		case pg_query.Token_C_COMMENT:
			if len(text) < 4 || !strings.HasPrefix(text, "/*") || !strings.HasSuffix(text, "*/") {
				continue
			}
			h.comment(text[2 : len(text)-2])
		case pg_query.Token_SQL_COMMENT:
			if !strings.HasPrefix(text, "--") {
				continue
			}
			h.comment(text[2:])
		}
	}
	return h
}

// comment reads the body of one comment.
func (h *Hints) comment(body string) {
	body = strings.TrimSpace(body)
	if !hasPrefixFoldASCII(body, hintPrefix) {
		return
	}
	options := strings.FieldsFunc(body[len(hintPrefix):], func(r rune) bool {
		return r == ',' || r == ' ' || r == '\t' || r == '\n' || r == '\r' || r == '\f' || r == '\v'
	})
	if len(options) == 0 {
		h.errorf("hint without options", body)
	}
	for _, o := range options {
		switch {
		case equalFoldASCII(o, "nocache"):
			h.NoCache = true
		case hasPrefixFoldASCII(o, "ttl="):
			d, err := time.ParseDuration(o[len("ttl="):])
			if err != nil || d <= 0 {
				h.errorf("ttl is not a positive duration", o)
				continue
			}
			if h.TTL == 0 || d < h.TTL {
				h.TTL = d
			}
		default:
			h.errorf("unknown hint option", o)
		}
	}
}

// errorf records an ignored hint, quoting a bounded part of it.
func (h *Hints) errorf(msg, quote string) {
	if len(h.Errors) >= maxHintErrors {
		return
	}
	if quote != "" {
		if len(quote) > maxHintQuote {
			quote = quote[:maxHintQuote]
		}
		msg += ": " + strings.ToValidUTF8(quote, "?")
	}
	h.Errors = append(h.Errors, "pgsidecar hint: "+msg)
}

// lowerASCII folds an ASCII upper-case letter to lower case, and leaves every
// other byte alone.
func lowerASCII(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}

// equalFoldASCII reports whether s and t are equal when ASCII letters are
// compared without regard to case. Unlike strings.EqualFold, no other
// character folds (the Kelvin sign is not k).
func equalFoldASCII(s, t string) bool {
	if len(s) != len(t) {
		return false
	}
	for i := 0; i < len(s); i++ {
		if lowerASCII(s[i]) != lowerASCII(t[i]) {
			return false
		}
	}
	return true
}

func hasPrefixFoldASCII(s, prefix string) bool {
	return len(s) >= len(prefix) && equalFoldASCII(s[:len(prefix)], prefix)
}

// containsFoldASCII reports whether s contains sub, comparing ASCII letters
// without regard to case. It does not allocate.
func containsFoldASCII(s, sub string) bool {
	if len(sub) == 0 {
		return true
	}
	first := lowerASCII(sub[0])
	for i := 0; i+len(sub) <= len(s); i++ {
		if lowerASCII(s[i]) == first && equalFoldASCII(s[i:i+len(sub)], sub) {
			return true
		}
	}
	return false
}
