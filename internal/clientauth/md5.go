package clientauth

import (
	"bytes"
	"crypto/md5"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"fmt"

	"github.com/jackc/pgx/v5/pgproto3"
)

// MD5Hash returns PostgreSQL's stored md5 form of a password:
// "md5" + hex(md5(password + user)).
func MD5Hash(user, password string) string {
	sum := md5.Sum([]byte(password + user))
	return "md5" + hex.EncodeToString(sum[:])
}

// md5Response returns what a client answers to AuthenticationMD5Password
// with salt, given the stored md5 hash: "md5" + hex(md5(hex part + salt)).
func md5Response(hash string, salt [4]byte) string {
	sum := md5.Sum(append([]byte(hash[len("md5"):]), salt[:]...))
	return "md5" + hex.EncodeToString(sum[:])
}

// isMD5Hash reports whether s is a stored md5 hash, classified as
// PostgreSQL does: "md5" followed by 32 lowercase hex digits.
func isMD5Hash(s string) bool {
	if len(s) != 35 || s[:3] != "md5" {
		return false
	}
	for _, r := range s[3:] {
		if !('0' <= r && r <= '9' || 'a' <= r && r <= 'f') {
			return false
		}
	}
	return true
}

// md5 runs the md5 exchange. For an unknown user, or one whose only secret
// is a SCRAM secret, it still sends a salt, reads the reply and compares it
// with a hash nobody knows, so the client cannot tell these cases from a
// wrong password.
func (a *Authenticator) md5(c Conn, user string, cred Credential, found bool) (Credential, error) {
	var hash string
	var failure error
	switch {
	case !found:
		failure = fmt.Errorf("%w (%w)", ErrPasswordMismatch, ErrUnknownUser)
	case cred.Password != "":
		hash = MD5Hash(user, cred.Password)
	case isMD5Hash(cred.MD5):
		hash = cred.MD5
	case cred.SCRAM != "":
		failure = fmt.Errorf("%w: user has only a SCRAM secret, md5 needs a password or an md5 hash", ErrNoUsableSecret)
	default:
		failure = fmt.Errorf("%w: user has no password", ErrNoUsableSecret)
	}
	if failure != nil {
		hash = "md5" + hex.EncodeToString(a.derive("md5-mock", user)[:md5.Size])
	}

	msg := &pgproto3.AuthenticationMD5Password{}
	rand.Read(msg.Salt[:])
	if err := c.Send(msg); err != nil {
		return Credential{}, fmt.Errorf("clientauth: send md5 request: %w", err)
	}
	body, err := receivePassword(c)
	if err != nil {
		return Credential{}, err
	}
	if i := bytes.IndexByte(body, 0); i != len(body)-1 {
		return Credential{}, protocolError("invalid password packet size",
			fmt.Errorf("%w: password message is not one NUL-terminated string", ErrProtocolViolation))
	}
	var pm pgproto3.PasswordMessage
	if err := pm.Decode(body); err != nil {
		return Credential{}, protocolError("invalid password packet", fmt.Errorf("%w: %w", ErrProtocolViolation, err))
	}

	match := subtle.ConstantTimeCompare([]byte(pm.Password), []byte(md5Response(hash, msg.Salt))) == 1
	if failure != nil {
		return Credential{}, authFailed(user, failure)
	}
	if !match {
		return Credential{}, authFailed(user, ErrPasswordMismatch)
	}
	return cred, nil
}
