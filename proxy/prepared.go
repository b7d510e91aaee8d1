package proxy

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"hash/fnv"
	"strings"

	"github.com/pgsidecar/pgsidecar/sqlinfo"
)

// Protocol-level prepared statements in transaction mode.
//
// A client's named statement lives, for the client, in its session; on the
// backends it lives under pgsidecar's own name, derived from everything
// that gives the statement its meaning: the text, the parameter types, and
// the client's session settings (search_path decides which tables a name
// means). Clients whose statements agree share them on every backend. The
// relay prepares a statement lazily on whichever backend serves the next
// transaction, and each backend keeps at most max_prepared_statements,
// closing the least recently used (pool.Statements).

// stmtDef is one client statement.
type stmtDef struct {
	server  string // the name on the backends
	parse   []byte // a complete Parse message under that name
	effects sqlinfo.Effects
	// shape is the RowDescription (or empty, for NoData) the client got
	// when it described the statement; nil when it never did.
	shape    []byte
	shapeSum uint64
	// stale: prepared again, the statement returns another shape than
	// the client knows. PostgreSQL refuses such a statement at every Bind
	// ("cached plan must not change result type"), and so does pgsidecar.
	stale bool
	// sharedParse: the client's Parse was answered by pgsidecar because
	// the backend had the statement, so the client never got the server's
	// own account of it.
	sharedParse bool
	// info is what the statement is, for the result cache (nil until
	// needed).
	info *sqlinfo.Info
}

// serverPrefix starts every statement name pgsidecar gives a backend.
const serverPrefix = "pgsc_"

// newStmtDef builds the definition of a Parse body (name, query, types)
// for a client whose settings key is settings.
func newStmtDef(query, types []byte, settings string, effects sqlinfo.Effects) *stmtDef {
	h := sha256.New()
	var n [4]byte
	for _, part := range [][]byte{query, types, []byte(settings)} {
		binary.BigEndian.PutUint32(n[:], uint32(len(part)))
		h.Write(n[:])
		h.Write(part)
	}
	var sum [sha256.Size]byte
	server := serverPrefix + hex.EncodeToString(h.Sum(sum[:0])[:16])
	msg := make([]byte, 5, 5+len(server)+1+len(query)+1+len(types))
	msg[0] = 'P'
	msg = append(msg, server...)
	msg = append(msg, 0)
	msg = append(msg, query...)
	msg = append(msg, 0)
	msg = append(msg, types...)
	binary.BigEndian.PutUint32(msg[1:], uint32(len(msg)-1))
	return &stmtDef{server: server, parse: msg, effects: effects}
}

// parseBody splits a Parse body into name, query and the parameter-type
// section (count and OIDs, kept as bytes).
func parseBody(b []byte) (name, query, types []byte, ok bool) {
	name, b, ok = cut0(b)
	if !ok {
		return
	}
	query, types, ok = cut0(b)
	if !ok || len(types) < 2 {
		return nil, nil, nil, false
	}
	n := int(binary.BigEndian.Uint16(types))
	return name, query, types, len(types) == 2+4*n
}

// cut0 splits b at its first NUL.
func cut0(b []byte) (s, rest []byte, ok bool) {
	i := bytes.IndexByte(b, 0)
	if i < 0 {
		return nil, nil, false
	}
	return b[:i], b[i+1:], true
}

// appendRenamed appends message typ whose body is prefix, name, NUL, rest.
func appendRenamed(dst []byte, typ byte, prefix []byte, name string, rest []byte) []byte {
	start := len(dst)
	dst = append(dst, typ, 0, 0, 0, 0)
	dst = append(dst, prefix...)
	dst = append(dst, name...)
	dst = append(dst, 0)
	dst = append(dst, rest...)
	binary.BigEndian.PutUint32(dst[start+1:], uint32(len(dst)-start-1))
	return dst
}

// appendClose appends a Close of the server statement name.
func appendClose(dst []byte, name string) []byte {
	return appendRenamed(dst, 'C', []byte{'S'}, name, nil)
}

// Fixed answers pgsidecar writes for messages it did not send.
var (
	msgParseComplete = []byte{'1', 0, 0, 0, 4}
	msgCloseComplete = []byte{'3', 0, 0, 0, 4}
)

// deallocateName recognises a query that is exactly one DEALLOCATE of a
// named statement ("DEALLOCATE [PREPARE] name [;]"), which transaction mode
// answers itself when the name is one of the client's protocol-level
// statements, and returns the name as PostgreSQL would fold it.
func deallocateName(q string) (string, bool) {
	s := strings.TrimSpace(q)
	s = strings.TrimSpace(strings.TrimSuffix(s, ";"))
	word, rest, ok := nextWord(s)
	if !ok || !strings.EqualFold(word, "deallocate") {
		return "", false
	}
	word, rest2, ok := nextWord(rest)
	if ok && strings.EqualFold(word, "prepare") {
		rest = rest2
	}
	rest = strings.TrimSpace(rest)
	if rest == "" || strings.EqualFold(rest, "all") {
		return "", false
	}
	if rest[0] == '"' {
		// A quoted identifier: "" is an escaped quote.
		var b strings.Builder
		for i := 1; i < len(rest); i++ {
			if rest[i] == '"' {
				if i+1 < len(rest) && rest[i+1] == '"' {
					b.WriteByte('"')
					i++
					continue
				}
				if strings.TrimSpace(rest[i+1:]) != "" {
					return "", false
				}
				return b.String(), b.Len() > 0
			}
			b.WriteByte(rest[i])
		}
		return "", false
	}
	for i := 0; i < len(rest); i++ {
		c := rest[i]
		if !(c == '_' || c == '$' || c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= 0x80) {
			return "", false
		}
	}
	return asciiLower(rest), true
}

// asciiLower folds ASCII letters only, as PostgreSQL folds identifiers.
func asciiLower(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c >= 'A' && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}

// nextWord returns the leading run of letters of s (after spaces) and what
// follows it.
func nextWord(s string) (word, rest string, ok bool) {
	s = strings.TrimLeft(s, " \t\r\n")
	i := 0
	for i < len(s) && (s[i] >= 'a' && s[i] <= 'z' || s[i] >= 'A' && s[i] <= 'Z') {
		i++
	}
	if i == 0 || (i < len(s) && s[i] != ' ' && s[i] != '\t' && s[i] != '\r' && s[i] != '\n') {
		return "", "", false
	}
	return s[:i], s[i:], true
}

// shapeSum identifies a statement description.
func shapeSum(desc []byte) uint64 {
	h := fnv.New64a()
	h.Write(desc)
	return h.Sum64()
}

// Messages pgsidecar sends on its own behalf.
var (
	msgBindUnnamed    = []byte{'B', 0, 0, 0, 12, 0, 0, 0, 0, 0, 0, 0, 0}
	msgExecuteUnnamed = []byte{'E', 0, 0, 0, 9, 0, 0, 0, 0, 0}
	msgCloseUnnamed   = []byte{'C', 0, 0, 0, 6, 'S', 0}
)

// appendQuery appends a simple Query message.
func appendQuery(dst []byte, sql string) []byte {
	start := len(dst)
	dst = append(dst, 'Q', 0, 0, 0, 0)
	dst = append(dst, sql...)
	dst = append(dst, 0)
	binary.BigEndian.PutUint32(dst[start+1:], uint32(len(dst)-start-1))
	return dst
}

// appendParse appends a Parse of sql under name, with no parameter types.
func appendParse(dst []byte, name, sql string) []byte {
	return appendRenamed(dst, 'P', nil, name, append([]byte(sql), 0, 0, 0))
}
