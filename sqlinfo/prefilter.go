package sqlinfo

// The prefilter answers, without parsing or allocating, whether a text could
// have any session effect at all. It must never say "no" to a text that has
// one: SessionEffects of a text it rejects is the zero Effects (apart from
// Unparsed), and FuzzSessionEffects checks exactly that.
//
// Every effect needs one of these words in the text, in any ASCII case (the
// lexer folds only ASCII letters, so no other spelling of a keyword exists):
//
//	set        SET, RESET, set_config, SET ROLE, SET NAMES, ...
//	discard    DISCARD ALL
//	deallocate DEALLOCATE ALL
//	listen     LISTEN
//	temp       TEMP, TEMPORARY, pg_temp
//	advisory   pg_advisory_lock, pg_try_advisory_lock, ..._shared
//	hold       WITH HOLD
//	prepare    PREPARE
//	load       LOAD
//	into       SELECT ... INTO TEMP
//
// Keywords can only be written out, but identifiers (function and schema
// names) can also be spelled with Unicode escapes, U&"\0073et_config", which
// hides the word. So any text with a U&" identifier is a candidate too.

// prefilterFirst marks the bytes, either case, that can start a word above,
// and 'u' for U&". Read-only.
var prefilterFirst = [256]bool{
	's': true, 'S': true,
	'd': true, 'D': true,
	'c': true, 'C': true,
	'l': true, 'L': true,
	't': true, 'T': true,
	'a': true, 'A': true,
	'h': true, 'H': true,
	'p': true, 'P': true,
	'i': true, 'I': true,
	'u': true, 'U': true,
}

// isCandidate reports whether sql contains, in any ASCII case, one of the
// words listed above, or a Unicode-escaped identifier. It does not allocate.
func isCandidate(sql string) bool {
	// Every word has at least two bytes, so the last byte starts none.
	for i := 0; i+1 < len(sql); i++ {
		c := sql[i]
		if !prefilterFirst[c] {
			continue
		}
		// Most candidate letters start ordinary words (SELECT, FROM,
		// accounts): their first two bytes, folded as hasPrefixFold folds
		// them, reject them without a call.
		switch uint16(c|0x20)<<8 | uint16(sql[i+1]|0x20) {
		case 's'<<8 | 'e', 'd'<<8 | 'i', 'd'<<8 | 'e', 'd'<<8 | 'o', 'c'<<8 | 'a', 'l'<<8 | 'i', 'l'<<8 | 'o',
			't'<<8 | 'e', 'a'<<8 | 'd', 'h'<<8 | 'o', 'p'<<8 | 'r', 'i'<<8 | 'n', 'u'<<8 | '&':
		default:
			continue
		}
		rest := sql[i:]
		switch c | 0x20 {
		case 's':
			if hasPrefixFold(rest, "set") {
				return true
			}
		case 'd':
			if hasPrefixFold(rest, "discard") || hasPrefixFold(rest, "deallocate") || isWordFold(rest, "do") {
				return true
			}
		case 'c':
			if isWordFold(rest, "call") {
				return true
			}
		case 'l':
			if hasPrefixFold(rest, "listen") || hasPrefixFold(rest, "load") {
				return true
			}
		case 't':
			if hasPrefixFold(rest, "temp") {
				return true
			}
		case 'a':
			if hasPrefixFold(rest, "advisory") {
				return true
			}
		case 'h':
			if hasPrefixFold(rest, "hold") {
				return true
			}
		case 'p':
			if hasPrefixFold(rest, "prepare") {
				return true
			}
		case 'i':
			if hasPrefixFold(rest, "into") {
				return true
			}
		case 'u':
			if len(rest) >= 3 && rest[1] == '&' && rest[2] == '"' {
				return true
			}
		}
	}
	return false
}

// hasPrefixFold reports whether s starts with word, comparing ASCII letters
// without regard to case. word must be lower-case letters only: for those,
// c|0x20 equals the letter exactly when c is the letter in either case.
func hasPrefixFold(s, word string) bool {
	if len(s) < len(word) {
		return false
	}
	for i := 0; i < len(word); i++ {
		if s[i]|0x20 != word[i] {
			return false
		}
	}
	return true
}

// isWordFold reports whether s starts with word, in any case, followed by
// something that cannot continue an identifier.
func isWordFold(s, word string) bool {
	if !hasPrefixFold(s, word) {
		return false
	}
	if len(s) == len(word) {
		return true
	}
	c := s[len(word)]
	return !(c == '_' || c == '$' || c >= '0' && c <= '9' || c|0x20 >= 'a' && c|0x20 <= 'z' || c >= 0x80)
}
