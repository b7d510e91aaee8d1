package clientauth

import (
	"bytes"
	"crypto/hmac"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/xdg-go/scram"
	"github.com/xdg-go/stringprep"
)

const (
	// scramMechanism is the only SASL mechanism offered. The -PLUS variant
	// (channel binding) is not: the client's TLS session, if any, ends in
	// the caller, not here.
	scramMechanism = "SCRAM-SHA-256"
	// scramIterations is the PBKDF2 iteration count used for secrets this
	// package makes, as PostgreSQL's default scram_iterations.
	scramIterations = 4096
	scramSaltLen    = 16
	scramPrefix     = "SCRAM-SHA-256$"
)

// NewSCRAMSecret returns a SCRAM-SHA-256 secret for password in PostgreSQL's
// form, with a random salt and 4096 iterations: what PostgreSQL stores and
// what userlist.txt may hold instead of the password. It fails only when
// crypto/pbkdf2 refuses the password (FIPS 140-only mode).
func NewSCRAMSecret(password string) (string, error) {
	salt := make([]byte, scramSaltLen)
	rand.Read(salt)
	sc, err := scramKeys(password, salt, scramIterations)
	if err != nil {
		return "", err
	}
	return scramPrefix + strconv.Itoa(sc.Iters) + ":" +
		base64.StdEncoding.EncodeToString([]byte(sc.Salt)) + "$" +
		base64.StdEncoding.EncodeToString(sc.StoredKey) + ":" +
		base64.StdEncoding.EncodeToString(sc.ServerKey), nil
}

// parseSCRAMSecret parses "SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>"
// (base64 salt and keys).
func parseSCRAMSecret(s string) (scram.StoredCredentials, error) {
	var sc scram.StoredCredentials
	rest, ok := strings.CutPrefix(s, scramPrefix)
	if !ok {
		return sc, errors.New("SCRAM secret does not start with " + scramPrefix)
	}
	factors, keys, ok := strings.Cut(rest, "$")
	if !ok {
		return sc, errors.New("SCRAM secret has no '$' before the keys")
	}
	iter, salt, ok := strings.Cut(factors, ":")
	if !ok {
		return sc, errors.New("SCRAM secret has no ':' between iterations and salt")
	}
	n, err := strconv.Atoi(iter)
	if err != nil || n < 1 {
		return sc, fmt.Errorf("SCRAM secret has an invalid iteration count %q", iter)
	}
	rawSalt, err := base64.StdEncoding.DecodeString(salt)
	if err != nil || len(rawSalt) == 0 {
		return sc, errors.New("SCRAM secret has an invalid salt")
	}
	stored, server, ok := strings.Cut(keys, ":")
	if !ok {
		return sc, errors.New("SCRAM secret has no ':' between StoredKey and ServerKey")
	}
	sc.StoredKey, err = base64.StdEncoding.DecodeString(stored)
	if err != nil || len(sc.StoredKey) != sha256.Size {
		return sc, errors.New("SCRAM secret has an invalid StoredKey")
	}
	sc.ServerKey, err = base64.StdEncoding.DecodeString(server)
	if err != nil || len(sc.ServerKey) != sha256.Size {
		return sc, errors.New("SCRAM secret has an invalid ServerKey")
	}
	sc.Salt, sc.Iters = string(rawSalt), n
	return sc, nil
}

// scramKeys derives the stored credentials for password, SASLprepped as
// PostgreSQL does (the raw password when SASLprep rejects it).
// It fails only in FIPS 140-only mode, which refuses short passwords.
func scramKeys(password string, salt []byte, iters int) (scram.StoredCredentials, error) {
	if prepped, err := stringprep.SASLprep.Prepare(password); err == nil {
		password = prepped
	}
	salted, err := pbkdf2.Key(sha256.New, password, salt, iters, sha256.Size)
	if err != nil {
		return scram.StoredCredentials{}, fmt.Errorf("clientauth: derive SCRAM keys: %w", err)
	}
	clientKey := hmacSHA256(salted, "Client Key")
	storedKey := sha256.Sum256(clientKey)
	return scram.StoredCredentials{
		KeyFactors: scram.KeyFactors{Salt: string(salt), Iters: iters},
		StoredKey:  storedKey[:],
		ServerKey:  hmacSHA256(salted, "Server Key"),
	}, nil
}

func hmacSHA256(key []byte, msg string) []byte {
	mac := hmac.New(sha256.New, key)
	mac.Write([]byte(msg))
	return mac.Sum(nil)
}

// scramCredentials picks what the exchange for user checks against, and the
// reason it must fail whatever the client sends (nil when it may succeed).
//
// Every path runs exactly one PBKDF2 of scramIterations rounds, on the
// password when the store has it and on a throwaway one otherwise, so an
// unknown user, a user stored with a SCRAM secret and one stored with a
// password cost the same. The salt of a password user and of an unknown user
// is derived from the name with the Authenticator's key: stable across
// attempts, so the two look alike.
//
// err is set only when the keys cannot be derived at all; failure is the
// reason the exchange must fail.
func (a *Authenticator) scramCredentials(user string, cred Credential, found bool) (sc scram.StoredCredentials, failure, err error) {
	salt := a.derive("scram-salt", user)[:scramSaltLen]
	password := hex.EncodeToString(a.derive("scram-mock-password", user))
	if found && cred.SCRAM == "" && cred.Password != "" {
		password = cred.Password
	}
	derived, err := scramKeys(password, salt, scramIterations)
	if err != nil {
		return sc, nil, err
	}

	switch {
	case !found:
		return derived, fmt.Errorf("%w (%w)", ErrPasswordMismatch, ErrUnknownUser), nil
	case cred.SCRAM != "":
		parsed, perr := parseSCRAMSecret(cred.SCRAM)
		if perr != nil {
			return derived, fmt.Errorf("%w: %w", ErrNoUsableSecret, perr), nil
		}
		return parsed, nil, nil
	case cred.Password != "":
		return derived, nil, nil
	case cred.MD5 != "":
		return derived, fmt.Errorf("%w: user has only an md5 hash, scram-sha-256 needs a password or a SCRAM secret", ErrNoUsableSecret), nil
	default:
		return derived, fmt.Errorf("%w: user has no password", ErrNoUsableSecret), nil
	}
}

// scram runs the SASL SCRAM-SHA-256 exchange (RFC 5802, RFC 7677) as
// PostgreSQL does: without channel binding, ignoring the user name in the
// client-first message (PostgreSQL clients send "n=", the user is the
// startup user), rejecting an authorization identity.
func (a *Authenticator) scram(c Conn, user string, cred Credential, found bool) (Credential, error) {
	sc, failure, err := a.scramCredentials(user, cred, found)
	if err != nil {
		return Credential{}, err
	}
	// The lookup ignores the name from the client-first message: the
	// xdg-go server hands it over as parsed ("" from PostgreSQL clients).
	srv, err := scram.SHA256.NewServer(func(string) (scram.StoredCredentials, error) { return sc, nil })
	if err != nil {
		return Credential{}, fmt.Errorf("clientauth: scram server: %w", err)
	}
	if a.scramNonce != nil {
		srv = srv.WithNonceGenerator(a.scramNonce)
	}
	conv := srv.NewConversation()

	if err := c.Send(&pgproto3.AuthenticationSASL{AuthMechanisms: []string{scramMechanism}}); err != nil {
		return Credential{}, fmt.Errorf("clientauth: send SASL request: %w", err)
	}
	body, err := receivePassword(c)
	if err != nil {
		return Credential{}, err
	}
	clientFirst, perr := decodeSASLInitialResponse(body)
	if perr != nil {
		return Credential{}, perr
	}
	serverFirst, err := conv.Step(clientFirst)
	if err != nil {
		return Credential{}, malformedSCRAM(err)
	}
	if conv.AuthzID() != "" {
		return Credential{}, protocolError("client uses authorization identity, but it is not supported",
			fmt.Errorf("%w: SCRAM authzid given", ErrProtocolViolation))
	}

	if err := c.Send(&pgproto3.AuthenticationSASLContinue{Data: []byte(serverFirst)}); err != nil {
		return Credential{}, fmt.Errorf("clientauth: send SASL continue: %w", err)
	}
	body, err = receivePassword(c)
	if err != nil {
		return Credential{}, err
	}
	var resp pgproto3.SASLResponse
	if err := resp.Decode(body); err != nil {
		return Credential{}, protocolError("invalid SASL response", fmt.Errorf("%w: %w", ErrProtocolViolation, err))
	}
	serverFinal, err := conv.Step(string(resp.Data))
	switch {
	case err != nil && serverFinal == scram.ErrInvalidProof:
		if failure == nil {
			failure = ErrPasswordMismatch
		}
		return Credential{}, authFailed(user, failure)
	case err != nil:
		return Credential{}, malformedSCRAM(err)
	case failure != nil:
		// A valid proof against a fake credential: cannot happen without
		// this Authenticator's key, and must not let anyone in.
		return Credential{}, authFailed(user, failure)
	}

	if err := c.Send(&pgproto3.AuthenticationSASLFinal{Data: []byte(serverFinal)}); err != nil {
		return Credential{}, fmt.Errorf("clientauth: send SASL final: %w", err)
	}
	return cred, nil
}

// decodeSASLInitialResponse checks the SASLInitialResponse body: mechanism,
// declared length, and a non-empty client-first message, which it returns.
func decodeSASLInitialResponse(body []byte) (string, *Error) {
	var init pgproto3.SASLInitialResponse
	if err := init.Decode(body); err != nil {
		return "", protocolError("invalid message format", fmt.Errorf("%w: %w", ErrProtocolViolation, err))
	}
	// Decode skips the data length; PostgreSQL checks it.
	i := bytes.IndexByte(body, 0)
	n := int32(binary.BigEndian.Uint32(body[i+1:]))
	if n != -1 && int64(n) != int64(len(init.Data)) || n == -1 && len(init.Data) != 0 {
		return "", protocolError("invalid message format",
			fmt.Errorf("%w: SASLInitialResponse declares %d bytes of data, has %d", ErrProtocolViolation, n, len(init.Data)))
	}
	if init.AuthMechanism != scramMechanism {
		return "", protocolError("client selected an invalid SASL authentication mechanism",
			fmt.Errorf("%w: SASL mechanism %q", ErrProtocolViolation, init.AuthMechanism))
	}
	if len(init.Data) == 0 {
		return "", malformedSCRAM(errors.New("empty client-first message"))
	}
	return string(init.Data), nil
}

func malformedSCRAM(err error) *Error {
	return protocolError("malformed SCRAM message", fmt.Errorf("%w: %w", ErrProtocolViolation, err))
}
