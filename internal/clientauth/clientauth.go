// Package clientauth is the server side of PostgreSQL client authentication:
// trust, md5 and SCRAM-SHA-256 exchanges over a client connection, and the
// credential stores they check against (PgBouncer's userlist.txt format,
// plaintext passwords, md5 hashes and SCRAM secrets).
//
// It owns no connection: the caller hands it a Conn that reads and writes
// whole protocol messages. Everything here is safe for concurrent use once
// built; a Store is read-only after construction.
package clientauth

import (
	"github.com/jackc/pgx/v5/pgproto3"
)

// Method is a client authentication method.
type Method string

const (
	Trust       Method = "trust"
	MD5         Method = "md5"
	SCRAMSHA256 Method = "scram-sha-256"
)

// Credential is what the sidecar knows about one user. At least one of the
// secret fields is set.
type Credential struct {
	User string
	// Password is the plaintext password, when known. It is the only form
	// that also lets the sidecar log in to the backend as this user.
	Password string
	// MD5 is "md5" + hex(md5(password + user)), when known.
	MD5 string
	// SCRAM is a SCRAM-SHA-256 secret in PostgreSQL's
	// "SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>" form, when known.
	SCRAM string
}

// Store looks up credentials by user name.
type Store interface {
	Lookup(user string) (Credential, bool)
}

// Conn is the message channel to one client during authentication.
type Conn interface {
	// Send writes msg and flushes it to the client.
	Send(msg pgproto3.BackendMessage) error
	// Receive reads one whole message from the client: its type byte and
	// body (without the 4-byte length). body is valid until the next call.
	Receive() (typ byte, body []byte, err error)
}
