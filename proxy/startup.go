package proxy

import (
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgsidecar/pgsidecar/internal/wire"
)

// startup is what the client asked for in its StartupMessage.
type startup struct {
	user     string
	database string
	// params are the run-time settings the client asked for (its startup
	// parameters and options -c), applied to its backend session, in a
	// stable order.
	params [][2]string
	// unsupported are "_pq_." protocol options this proxy does not know.
	unsupported []string
	minor       uint32
}

// readStartup negotiates encryption and reads the StartupMessage. A
// CancelRequest is handled here and reported as errCancelRequest.
func (c *clientConn) readStartup() (*startup, error) {
	tlsDone := false
	for {
		code, body, err := wire.ReadStartup(c.br, c.scratch[:0])
		if err != nil {
			return nil, err
		}
		switch {
		case code == wire.SSLRequestCode:
			if tlsDone {
				return nil, fatal(CodeProtocolViolation, "SSLRequest sent twice", nil)
			}
			if err := c.negotiateTLS(); err != nil {
				return nil, err
			}
			tlsDone = true
		case code == wire.GSSENCRequestCode:
			if _, err := c.cio.Write([]byte{'N'}); err != nil {
				return nil, err
			}
		case code == wire.CancelRequestCode:
			c.srv.handleCancel(body)
			return nil, errCancelRequest
		case code>>16 == 3:
			if c.srv.cfg.TLSMode == TLSRequire && !c.tls {
				return nil, fatal(CodeInvalidAuthorization, "SSL required", nil)
			}
			return parseStartup(code, body)
		default:
			return nil, fatal(CodeFeatureNotSupported, fmt.Sprintf("unsupported frontend protocol %d.%d: server supports 3.0", code>>16, code&0xffff), nil)
		}
	}
}

var errCancelRequest = errors.New("cancel request handled")

// tlsHandshakeError is a failed client TLS handshake.
type tlsHandshakeError struct{ error }

func (e tlsHandshakeError) Error() string { return "TLS handshake: " + e.error.Error() }
func (e tlsHandshakeError) Unwrap() error { return e.error }

func (c *clientConn) negotiateTLS() error {
	if c.srv.cfg.TLS == nil || c.srv.cfg.TLSMode == TLSDisable {
		_, err := c.cio.Write([]byte{'N'})
		return err
	}
	// Bytes the client sent after SSLRequest and before the handshake would
	// be read as if they came over TLS: refuse them (CVE-2021-23222).
	if c.br.Buffered() > 0 {
		return fatal(CodeProtocolViolation, "received unencrypted data after SSL request", nil)
	}
	if _, err := c.cio.Write([]byte{'S'}); err != nil {
		return err
	}
	tc := tls.Server(c.nc, c.srv.cfg.TLS)
	if err := tc.Handshake(); err != nil {
		return tlsHandshakeError{err}
	}
	c.setConn(tc)
	c.tls = true
	return nil
}

// parseStartup decodes a version-3 StartupMessage body (after the version).
func parseStartup(version uint32, body []byte) (*startup, error) {
	st := &startup{minor: version & 0xffff}
	var opts string
	seen := map[string]bool{}
	for len(body) > 0 && body[0] != 0 {
		k, rest, ok := cstring(body)
		if !ok {
			return nil, fatal(CodeProtocolViolation, "invalid startup packet layout: expected terminator as last byte", nil)
		}
		v, rest, ok := cstring(rest)
		if !ok {
			return nil, fatal(CodeProtocolViolation, "invalid startup packet layout: expected terminator as last byte", nil)
		}
		body = rest
		switch {
		case k == "user":
			st.user = v
		case k == "database":
			st.database = v
		case k == "options":
			opts = v
		case k == "replication":
			if v != "false" && v != "0" && v != "off" && v != "no" {
				return nil, fatal(CodeFeatureNotSupported, "replication connections are not supported through pgsidecar", nil)
			}
		case strings.HasPrefix(k, "_pq_."):
			st.unsupported = append(st.unsupported, k)
		default:
			if !seen[strings.ToLower(k)] {
				seen[strings.ToLower(k)] = true
				st.params = append(st.params, [2]string{k, v})
			}
		}
	}
	if len(body) != 1 {
		return nil, fatal(CodeProtocolViolation, "invalid startup packet layout: expected terminator as last byte", nil)
	}
	if st.user == "" {
		return nil, fatal(CodeInvalidAuthorization, "no PostgreSQL user name specified in startup packet", nil)
	}
	if st.database == "" {
		st.database = st.user
	}
	if opts != "" {
		settings, err := parseOptions(opts)
		if err != nil {
			return nil, err
		}
		for _, kv := range settings {
			if !seen[strings.ToLower(kv[0])] {
				seen[strings.ToLower(kv[0])] = true
				st.params = append(st.params, kv)
			}
		}
	}
	sort.SliceStable(st.params, func(i, j int) bool { return st.params[i][0] < st.params[j][0] })
	return st, nil
}

func cstring(b []byte) (s string, rest []byte, ok bool) {
	i := strings.IndexByte(string(b), 0)
	if i < 0 {
		return "", nil, false
	}
	return string(b[:i]), b[i+1:], true
}

// parseOptions reads the "options" startup parameter the way PostgreSQL
// does: words split on unescaped white space (a backslash escapes the next
// character), each "-c name=value", "-cname=value" or "--name=value".
func parseOptions(s string) ([][2]string, error) {
	var words []string
	var cur strings.Builder
	inWord := false
	for i := 0; i < len(s); i++ {
		ch := s[i]
		switch {
		case ch == '\\' && i+1 < len(s):
			i++
			cur.WriteByte(s[i])
			inWord = true
		case ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r':
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			cur.WriteByte(ch)
			inWord = true
		}
	}
	if inWord {
		words = append(words, cur.String())
	}
	var out [][2]string
	for i := 0; i < len(words); i++ {
		w := words[i]
		var setting string
		switch {
		case w == "-c" && i+1 < len(words):
			i++
			setting = words[i]
		case strings.HasPrefix(w, "-c") && len(w) > 2:
			setting = w[2:]
		case strings.HasPrefix(w, "--") && len(w) > 2:
			setting = w[2:]
		default:
			return nil, fatal(CodeInvalidParameterValue, fmt.Sprintf("invalid command-line argument for server process: %s", w), nil)
		}
		name, value, ok := strings.Cut(setting, "=")
		if !ok || name == "" {
			return nil, fatal(CodeInvalidParameterValue, fmt.Sprintf("-c %s requires a value", setting), nil)
		}
		out = append(out, [2]string{strings.ReplaceAll(name, "-", "_"), value})
	}
	return out, nil
}

// negotiateVersion answers a client that asked for a newer 3.x minor
// version or for protocol options: we speak 3.0 and none of the options.
func negotiateVersion(st *startup) *pgproto3.NegotiateProtocolVersion {
	if st.minor == 0 && len(st.unsupported) == 0 {
		return nil
	}
	return &pgproto3.NegotiateProtocolVersion{NewestMinorProtocol: 0, UnrecognizedOptions: st.unsupported}
}

// setConfigSQL builds one statement that applies the client's startup
// settings with set_config, which takes the raw string like a startup packet
// does (so a list such as search_path keeps its meaning). Settings whose
// reported value already matches the backend's are skipped.
func setConfigSQL(params [][2]string, current map[string]string) string {
	var b strings.Builder
	for _, kv := range params {
		if v, ok := current[kv[0]]; ok && v == kv[1] {
			continue
		}
		if b.Len() == 0 {
			b.WriteString("SELECT ")
		} else {
			b.WriteString(", ")
		}
		b.WriteString("pg_catalog.set_config(")
		quoteLiteral(&b, kv[0])
		b.WriteString(", ")
		quoteLiteral(&b, kv[1])
		b.WriteString(", false)")
	}
	return b.String()
}

// quoteArray writes list as ARRAY[...] of quoted literals.
func quoteArray(b *strings.Builder, list []string) {
	b.WriteString("ARRAY[")
	for i, s := range list {
		if i > 0 {
			b.WriteString(", ")
		}
		quoteLiteral(b, s)
	}
	b.WriteByte(']')
}

// quoteLiteral writes s as an E” string literal, which means the same
// whatever standard_conforming_strings is.
func quoteLiteral(b *strings.Builder, s string) {
	b.WriteString("E'")
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '\'':
			b.WriteString("''")
		case '\\':
			b.WriteString(`\\`)
		default:
			b.WriteByte(s[i])
		}
	}
	b.WriteByte('\'')
}

// beKey packs a BackendKeyData pair into a map key.
func beKey(pid uint32, secret []byte) uint64 {
	if len(secret) != 4 {
		return 0
	}
	return uint64(pid)<<32 | uint64(binary.BigEndian.Uint32(secret))
}
