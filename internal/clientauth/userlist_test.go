package clientauth

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseUserlist(t *testing.T) {
	secret := xdgSecret(t, "secret", []byte("0123456789abcdef"), 4096)
	hash := MD5Hash("bob", "secret")
	in := strings.Join([]string{
		"; PgBouncer comment",
		"# shell comment",
		"",
		"   ",
		`"alice" "plain text"`,
		`  "bob"	"` + hash + `"`,
		`"carol" "` + secret + `" trailing fields are ignored`,
		`"dave" "say ""hi"""`,
		`"we""ird" ""`,
		`"upper" "MD5` + strings.ToUpper(hash[3:]) + `"`,
		"\"crlf\" \"pw\"\r",
	}, "\n")
	got, err := ParseUserlist(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]Credential{
		"alice":  {User: "alice", Password: "plain text"},
		"bob":    {User: "bob", MD5: hash},
		"carol":  {User: "carol", SCRAM: secret},
		"dave":   {User: "dave", Password: `say "hi"`},
		`we"ird`: {User: `we"ird`},
		"upper":  {User: "upper", Password: "MD5" + strings.ToUpper(hash[3:])},
		"crlf":   {User: "crlf", Password: "pw"},
	}
	if len(got) != len(want) {
		t.Errorf("got %d users, want %d: %v", len(got), len(want), got)
	}
	for user, w := range want {
		if c, ok := got.Lookup(user); !ok || c != w {
			t.Errorf("Lookup(%q) = %+v, %v; want %+v", user, c, ok, w)
		}
	}
	if _, ok := got.Lookup("nobody"); ok {
		t.Error("Lookup(nobody) found")
	}
}

func TestParseUserlistErrors(t *testing.T) {
	for _, tc := range []struct {
		in   string
		line int
		msg  string
	}{
		{`alice "pw"`, 1, "user name: must be in double quotes"},
		{"; ok\n\"alice\" pw", 2, "password: must be in double quotes"},
		{"\n\n\"alice\"", 3, "password: missing"},
		{`"alice`, 1, "user name: missing closing quote"},
		{`"alice" "pw`, 1, "password: missing closing quote"},
		{`"alice" "pw""`, 1, "password: missing closing quote"},
		{`"" "pw"`, 1, "empty user name"},
		{"\"a\" \"1\"\n\"b\" \"2\"\n\"a\" \"3\"", 3, `user "a" already listed on line 1`},
		{`"a" "SCRAM-SHA-256$4096:bad"`, 1, ""},
		{"\"a\" \"" + strings.Repeat("x", maxUserlistLine) + "\"", 1, "line longer than 65536 bytes"},
	} {
		_, err := ParseUserlist(strings.NewReader(tc.in))
		var se *SyntaxError
		if !errors.As(err, &se) {
			t.Errorf("%q: err = %v, want *SyntaxError", tc.in, err)
			continue
		}
		if se.Line != tc.line || (tc.msg != "" && se.Msg != tc.msg) {
			t.Errorf("%q: got line %d %q, want line %d %q", tc.in, se.Line, se.Msg, tc.line, tc.msg)
		}
	}
}

func TestLoadUserlist(t *testing.T) {
	path := filepath.Join(t.TempDir(), "userlist.txt")
	if err := os.WriteFile(path, []byte("\"u\" \"p\"\n\"bad\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := LoadUserlist(path)
	var se *SyntaxError
	if !errors.As(err, &se) || se.Line != 2 || !strings.Contains(err.Error(), path) {
		t.Errorf("err = %v, want line 2 of %s", err, path)
	}

	if err := os.WriteFile(path, []byte("\"u\" \"p\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	users, err := LoadUserlist(path)
	if err != nil || len(users) != 1 || users["u"].Password != "p" {
		t.Errorf("LoadUserlist = %v, %v", users, err)
	}

	if _, err := LoadUserlist(filepath.Join(t.TempDir(), "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: err = %v, want os.ErrNotExist", err)
	}
}

func TestNewCredential(t *testing.T) {
	hash := MD5Hash("u", "p")
	secret := mustSCRAMSecret(t, "p")
	for _, tc := range []struct {
		secret string
		want   Credential
	}{
		{"p", Credential{User: "u", Password: "p"}},
		{hash, Credential{User: "u", MD5: hash}},
		{"md5" + strings.Repeat("g", 32), Credential{User: "u", Password: "md5" + strings.Repeat("g", 32)}},
		{hash + "0", Credential{User: "u", Password: hash + "0"}},
		{secret, Credential{User: "u", SCRAM: secret}},
		{"", Credential{User: "u"}},
	} {
		if got, err := NewCredential("u", tc.secret); err != nil || got != tc.want {
			t.Errorf("NewCredential(%q) = %+v, %v; want %+v", tc.secret, got, err, tc.want)
		}
	}
	if _, err := NewCredential("u", "SCRAM-SHA-256$nope"); err == nil {
		t.Error("malformed SCRAM secret accepted")
	}
}

// FuzzParseUserlist: no input panics, and every user parsed is non-empty
// and round-trips through Lookup.
func FuzzParseUserlist(f *testing.F) {
	f.Add(`"alice" "secret"`)
	f.Add("; comment\n# comment\n\n\"bob\" \"md5" + strings.Repeat("a", 32) + "\"\n")
	f.Add(`"carol" "SCRAM-SHA-256$4096:MDEyMzQ1Njc4OWFiY2RlZg==$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="`)
	f.Add(`"we""ird" "say ""hi""" extra`)
	f.Add("\"a\" \"1\"\r\n\"a\" \"2\"")
	f.Add(`"unterminated`)
	f.Add(`"a" "SCRAM-SHA-256$x:$:"`)
	f.Add("\"\" \"\"\n")
	f.Fuzz(func(t *testing.T, in string) {
		users, err := ParseUserlist(strings.NewReader(in))
		if err != nil {
			var se *SyntaxError
			if !errors.As(err, &se) || se.Line < 1 {
				t.Fatalf("err = %v, want *SyntaxError with a line", err)
			}
			return
		}
		for name := range users {
			if c, ok := users.Lookup(name); name == "" || !ok || c.User != name {
				t.Fatalf("user %q: %+v", name, c)
			}
		}
	})
}
