package clientauth

import (
	"crypto/md5"
	"encoding/hex"
	"errors"
	"io"
	"slices"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
)

// md5Client answers AuthenticationMD5Password the way libpq does, computed
// here by hand rather than with the package's helpers.
func md5Client(t *testing.T, user, password string) client {
	return func(m pgproto3.BackendMessage) ([]byte, error) {
		req, ok := m.(*pgproto3.AuthenticationMD5Password)
		if !ok {
			t.Fatalf("server sent %T, want AuthenticationMD5Password", m)
		}
		inner := md5.Sum([]byte(password + user))
		outer := md5.Sum(append([]byte(hex.EncodeToString(inner[:])), req.Salt[:]...))
		return frame(t, &pgproto3.PasswordMessage{Password: "md5" + hex.EncodeToString(outer[:])}), nil
	}
}

func TestMD5Hash(t *testing.T) {
	sum := md5.Sum([]byte("secretalice"))
	if got, want := MD5Hash("alice", "secret"), "md5"+hex.EncodeToString(sum[:]); got != want {
		t.Fatalf("MD5Hash = %s, want %s", got, want)
	}
}

func TestMD5(t *testing.T) {
	store := MapStore{
		"plain": {Password: "secret"},
		"hash":  {MD5: MD5Hash("hash", "secret")},
		"scram": {SCRAM: mustSCRAMSecret(t, "secret")},
		"none":  {},
	}
	a := NewAuthenticator(store)

	for _, user := range []string{"plain", "hash"} {
		t.Run(user, func(t *testing.T) {
			c := newFakeConn(t, md5Client(t, user, "secret"))
			cred, err := a.Authenticate(c, MD5, user)
			if err != nil {
				t.Fatalf("Authenticate: %v", err)
			}
			if cred.User != user {
				t.Errorf("cred.User = %q, want %q", cred.User, user)
			}
			if c.next() != nil {
				t.Error("server sent something after the password: AuthenticationOk is the caller's")
			}
		})
	}

	wrong := newFakeConn(t, md5Client(t, "plain", "wrong"))
	_, err := a.Authenticate(wrong, MD5, "plain")
	wantAuthFailed(t, err, "plain", ErrPasswordMismatch)

	unknown := newFakeConn(t, md5Client(t, "nobody", "secret"))
	_, err = a.Authenticate(unknown, MD5, "nobody")
	wantAuthFailed(t, err, "nobody", ErrPasswordMismatch)
	if !errors.Is(err, ErrUnknownUser) {
		t.Errorf("unknown user: errors.Is(ErrUnknownUser) = false: %v", err)
	}
	if !slices.Equal(wrong.sent, unknown.sent) {
		t.Errorf("unknown user exchange %v differs from wrong password %v", unknown.sent, wrong.sent)
	}

	for _, user := range []string{"scram", "none"} {
		c := newFakeConn(t, md5Client(t, user, "secret"))
		_, err = a.Authenticate(c, MD5, user)
		wantAuthFailed(t, err, user, ErrNoUsableSecret)
		if !slices.Equal(c.sent, wrong.sent) {
			t.Errorf("%s: exchange %v differs from wrong password %v", user, c.sent, wrong.sent)
		}
	}
}

func TestMD5SaltIsRandom(t *testing.T) {
	a := NewAuthenticator(MapStore{"u": {Password: "p"}})
	var salts [][4]byte
	for range 2 {
		c := newFakeConn(t, func(m pgproto3.BackendMessage) ([]byte, error) {
			salts = append(salts, m.(*pgproto3.AuthenticationMD5Password).Salt)
			return nil, io.EOF
		})
		if _, err := a.Authenticate(c, MD5, "u"); !errors.Is(err, io.EOF) {
			t.Fatalf("err = %v, want io.EOF", err)
		}
	}
	if salts[0] == salts[1] {
		t.Errorf("same salt twice: %x", salts[0])
	}
}

func TestMD5Malformed(t *testing.T) {
	a := NewAuthenticator(MapStore{"u": {Password: "p"}})
	for _, tc := range []struct {
		name  string
		frame []byte
	}{
		{"query instead of password", rawFrame('Q', []byte("select 1\x00"))},
		{"no terminator", rawFrame('p', []byte("md5abc"))},
		{"empty body", rawFrame('p', nil)},
		{"bytes after terminator", rawFrame('p', []byte("md5abc\x00x"))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := a.Authenticate(newFakeConn(t, script(tc.frame)), MD5, "u")
			wantError(t, err, CodeProtocolViolation)
			if !errors.Is(err, ErrProtocolViolation) {
				t.Errorf("errors.Is(ErrProtocolViolation) = false: %v", err)
			}
		})
	}
}

func TestMD5IOError(t *testing.T) {
	a := NewAuthenticator(MapStore{"u": {Password: "p"}})
	_, err := a.Authenticate(newFakeConn(t, script()), MD5, "u")
	if !errors.Is(err, io.EOF) {
		t.Fatalf("err = %v, want wrapped io.EOF", err)
	}
	var ae *Error
	if errors.As(err, &ae) {
		t.Fatalf("I/O error reported as *Error: %v", err)
	}
}
