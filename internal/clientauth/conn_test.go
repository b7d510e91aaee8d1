package clientauth

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
)

// client is the test side of an exchange: given the server's latest message
// (decoded from the wire bytes), it returns the next whole frame to send,
// type byte and length included, or an error for Receive to return.
type client func(m pgproto3.BackendMessage) ([]byte, error)

// fakeConn is an in-memory Conn driven by a client function, on one
// goroutine: every Send is encoded to bytes, every Receive decodes what the
// server sent since and asks the client for its answer.
type fakeConn struct {
	t      testing.TB
	client client
	out    bytes.Buffer // server to client bytes not yet decoded
	fe     *pgproto3.Frontend
	sent   []string // "%T/len" of each message sent, for comparing exchanges
}

func newFakeConn(t testing.TB, c client) *fakeConn {
	fc := &fakeConn{t: t, client: c}
	fc.fe = pgproto3.NewFrontend(&fc.out, io.Discard)
	return fc
}

func (c *fakeConn) Send(msg pgproto3.BackendMessage) error {
	b, err := msg.Encode(nil)
	if err != nil {
		c.t.Fatalf("encode %T: %v", msg, err)
	}
	c.sent = append(c.sent, fmt.Sprintf("%T/%d", msg, len(b)))
	c.out.Write(b)
	return nil
}

func (c *fakeConn) Receive() (byte, []byte, error) {
	var last pgproto3.BackendMessage
	for c.out.Len() > 0 {
		m, err := c.fe.Receive()
		if err != nil {
			c.t.Fatalf("client decode: %v", err)
		}
		last = m
	}
	f, err := c.client(last)
	if err != nil {
		return 0, nil, err
	}
	if len(f) < 5 {
		c.t.Fatalf("client frame too short: %q", f)
	}
	return f[0], f[5:], nil
}

// next decodes the one message the server sent after its last Receive (the
// SASL final message), or nil.
func (c *fakeConn) next() pgproto3.BackendMessage {
	c.t.Helper()
	if c.out.Len() == 0 {
		return nil
	}
	m, err := c.fe.Receive()
	if err != nil {
		c.t.Fatalf("client decode: %v", err)
	}
	return m
}

// frame encodes a client message.
func frame(t testing.TB, m pgproto3.FrontendMessage) []byte {
	b, err := m.Encode(nil)
	if err != nil {
		t.Fatalf("encode %T: %v", m, err)
	}
	return b
}

// rawFrame builds a frame by hand, for malformed messages.
func rawFrame(typ byte, body []byte) []byte {
	n := len(body) + 4
	return append([]byte{typ, byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)}, body...)
}

// script answers with the given frames in order, whatever the server says.
func script(frames ...[]byte) client {
	return func(pgproto3.BackendMessage) ([]byte, error) {
		if len(frames) == 0 {
			return nil, io.EOF
		}
		f := frames[0]
		frames = frames[1:]
		return f, nil
	}
}

// wantError checks err is an *Error with code, and returns it.
func wantError(t *testing.T, err error, code string) *Error {
	t.Helper()
	var ae *Error
	if !errors.As(err, &ae) {
		t.Fatalf("err = %v (%T), want *Error", err, err)
	}
	if ae.Code != code {
		t.Fatalf("code = %s, want %s (err %v)", ae.Code, code, err)
	}
	return ae
}

// wantAuthFailed checks err is the client-visible 28P01 failure for user.
func wantAuthFailed(t *testing.T, err error, user string, is error) {
	t.Helper()
	ae := wantError(t, err, CodeInvalidPassword)
	if want := `password authentication failed for user "` + user + `"`; ae.Message != want {
		t.Errorf("message = %q, want %q", ae.Message, want)
	}
	if !errors.Is(err, is) {
		t.Errorf("errors.Is(%v, %v) = false", err, is)
	}
	if r := ae.ErrorResponse(); r.Severity != "FATAL" || r.Code != CodeInvalidPassword || r.Message != ae.Message {
		t.Errorf("ErrorResponse = %+v", r)
	}
}
