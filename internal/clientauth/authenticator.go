package clientauth

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
)

// Authenticator runs client authentication exchanges against one Store. It
// holds a random key, drawn once by NewAuthenticator, from which it derives
// per-user values that must be stable across attempts but unknown to
// clients: the SCRAM salt of users stored with a plaintext password, and the
// fake credentials that make an unknown user look like a known one.
//
// An Authenticator is immutable and safe for concurrent use. Build one per
// process (or per Store) and keep it: a new one changes every derived salt.
type Authenticator struct {
	store Store
	key   [32]byte
	// scramNonce, when set (tests only), replaces the SCRAM server nonce.
	scramNonce func() string
}

// NewAuthenticator returns an Authenticator checking against store. A nil
// store has no users: only Trust lets anyone in.
func NewAuthenticator(store Store) *Authenticator {
	a := &Authenticator{store: store}
	rand.Read(a.key[:]) // never fails (crypto/rand since Go 1.24)
	return a
}

// Authenticate runs the exchange for method with the client on c, right
// after its StartupMessage named user. It does not send AuthenticationOk:
// on success the caller does, then continues the startup.
//
// On success it returns the user's stored credential (Credential{User: user}
// for Trust when the store has none). A failure the client should hear about
// is an *Error, to send with its ErrorResponse method: Code 28P01 for a wrong
// password or unknown user (both wrap ErrPasswordMismatch and look identical
// on the wire, in messages and in work done), 08P01 for a wrong or malformed
// message. An I/O error on c is returned wrapped, not as an *Error.
//
// Authenticate does no timing out of its own: the caller bounds the exchange
// with a deadline on the connection underneath c.
func (a *Authenticator) Authenticate(c Conn, method Method, user string) (Credential, error) {
	cred, found := a.lookup(user)
	switch method {
	case Trust:
		if !found {
			cred = Credential{User: user}
		}
		return cred, nil
	case MD5:
		return a.md5(c, user, cred, found)
	case SCRAMSHA256:
		return a.scram(c, user, cred, found)
	default:
		return Credential{}, fmt.Errorf("clientauth: unsupported method %q", method)
	}
}

func (a *Authenticator) lookup(user string) (Credential, bool) {
	if a.store == nil {
		return Credential{}, false
	}
	cred, ok := a.store.Lookup(user)
	if ok && cred.User == "" {
		cred.User = user
	}
	return cred, ok
}

// derive returns a value only this Authenticator can compute for user.
// purpose separates the uses so that no two share an output.
func (a *Authenticator) derive(purpose, user string) []byte {
	mac := hmac.New(sha256.New, a.key[:])
	mac.Write([]byte(purpose))
	mac.Write([]byte{0})
	mac.Write([]byte(user))
	return mac.Sum(nil)
}

// receivePassword reads the client's next message, which must be a
// password-type ('p') message, and returns its body (valid until the next
// Receive on c).
func receivePassword(c Conn) ([]byte, error) {
	typ, body, err := c.Receive()
	if err != nil {
		return nil, fmt.Errorf("clientauth: receive password message: %w", err)
	}
	if typ != 'p' {
		return nil, protocolError(
			fmt.Sprintf("expected password response, got message type %d", typ),
			fmt.Errorf("%w: message type %q during authentication", ErrProtocolViolation, typ))
	}
	return body, nil
}
