package clientauth

import (
	"errors"
	"testing"
)

func TestTrust(t *testing.T) {
	a := NewAuthenticator(MapStore{"known": {Password: "secret"}})
	noIO := script() // trust must not touch the connection
	c := newFakeConn(t, noIO)

	cred, err := a.Authenticate(c, Trust, "known")
	if err != nil || cred != (Credential{User: "known", Password: "secret"}) {
		t.Errorf("known user: %+v, %v", cred, err)
	}
	cred, err = a.Authenticate(c, Trust, "stranger")
	if err != nil || cred != (Credential{User: "stranger"}) {
		t.Errorf("unknown user: %+v, %v", cred, err)
	}
	if len(c.sent) != 0 {
		t.Errorf("trust sent %v", c.sent)
	}
}

func TestNilStore(t *testing.T) {
	a := NewAuthenticator(nil)
	if cred, err := a.Authenticate(newFakeConn(t, script()), Trust, "u"); err != nil || cred.User != "u" {
		t.Errorf("trust: %+v, %v", cred, err)
	}
	_, err := a.Authenticate(newFakeConn(t, md5Client(t, "u", "")), MD5, "u")
	wantAuthFailed(t, err, "u", ErrUnknownUser)
	_, err = a.Authenticate(newFakeConn(t, scramClient(t, newClientConv(t, ""))), SCRAMSHA256, "u")
	wantAuthFailed(t, err, "u", ErrUnknownUser)
}

func TestUnsupportedMethod(t *testing.T) {
	a := NewAuthenticator(nil)
	c := newFakeConn(t, script())
	_, err := a.Authenticate(c, "password", "u")
	var ae *Error
	if err == nil || errors.As(err, &ae) {
		t.Fatalf("err = %v, want a plain error", err)
	}
	if len(c.sent) != 0 {
		t.Errorf("sent %v", c.sent)
	}
}

func TestErrorString(t *testing.T) {
	e := &Error{Code: CodeInvalidPassword, Message: "m", Err: ErrPasswordMismatch}
	if got, want := e.Error(), "m: password does not match"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
	if got := (&Error{Message: "m"}).Error(); got != "m" {
		t.Errorf("Error() = %q, want %q", got, "m")
	}
	if r := e.ErrorResponse(); r.Message != "m" || r.Code != CodeInvalidPassword || r.Detail != "" {
		t.Errorf("ErrorResponse = %+v, want code and message only", r)
	}
}
