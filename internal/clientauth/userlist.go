package clientauth

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
)

// maxUserlistLine bounds one line of a userlist file.
const maxUserlistLine = 64 << 10

// SyntaxError is a malformed line in a userlist file.
type SyntaxError struct {
	Line int // 1-based
	Msg  string
}

func (e *SyntaxError) Error() string { return fmt.Sprintf("line %d: %s", e.Line, e.Msg) }

// LoadUserlist reads the userlist file at path; see ParseUserlist.
func LoadUserlist(path string) (MapStore, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("userlist: %w", err)
	}
	defer f.Close()
	users, err := ParseUserlist(f)
	if err != nil {
		return nil, fmt.Errorf("userlist %s: %w", path, err)
	}
	return users, nil
}

// ParseUserlist reads PgBouncer's userlist.txt format: one user per line as
//
//	"username" "password"
//
// with each field in double quotes and a doubled quote ("") standing for a
// quote inside one. Anything after the password is ignored, as PgBouncer
// does. Blank lines and lines starting with ';' or '#' are skipped. The
// password may be plaintext, an md5 hash or a SCRAM secret (see
// NewCredential). A malformed line, an empty user name or a user listed
// twice is a *SyntaxError naming the line.
func ParseUserlist(r io.Reader) (MapStore, error) {
	users := MapStore{}
	seen := map[string]int{}
	sc := bufio.NewScanner(r)
	sc.Buffer(nil, maxUserlistLine)
	n := 0
	for sc.Scan() {
		n++
		line := strings.TrimLeft(sc.Text(), " \t\r\v\f")
		if line == "" || line[0] == ';' || line[0] == '#' {
			continue
		}
		user, rest, msg := quoted(line)
		if msg != "" {
			return nil, &SyntaxError{Line: n, Msg: "user name: " + msg}
		}
		password, _, msg := quoted(strings.TrimLeft(rest, " \t\r\v\f"))
		if msg != "" {
			return nil, &SyntaxError{Line: n, Msg: "password: " + msg}
		}
		if user == "" {
			return nil, &SyntaxError{Line: n, Msg: "empty user name"}
		}
		if first, dup := seen[user]; dup {
			return nil, &SyntaxError{Line: n, Msg: fmt.Sprintf("user %q already listed on line %d", user, first)}
		}
		cred, err := NewCredential(user, password)
		if err != nil {
			return nil, &SyntaxError{Line: n, Msg: err.Error()}
		}
		seen[user] = n
		users[user] = cred
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			return nil, &SyntaxError{Line: n + 1, Msg: fmt.Sprintf("line longer than %d bytes", maxUserlistLine)}
		}
		return nil, fmt.Errorf("read userlist: %w", err)
	}
	return users, nil
}

// quoted reads the double-quoted field that s starts with and returns its
// value and what follows; msg says what is wrong when it is not one.
func quoted(s string) (value, rest, msg string) {
	if s == "" {
		return "", "", "missing"
	}
	if s[0] != '"' {
		return "", "", "must be in double quotes"
	}
	var b strings.Builder
	for i := 1; i < len(s); i++ {
		if s[i] != '"' {
			b.WriteByte(s[i])
			continue
		}
		if i+1 < len(s) && s[i+1] == '"' {
			b.WriteByte('"')
			i++
			continue
		}
		return b.String(), s[i+1:], ""
	}
	return "", "", "missing closing quote"
}
