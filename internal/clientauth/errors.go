package clientauth

import (
	"errors"

	"github.com/jackc/pgx/v5/pgproto3"
)

// SQLSTATE codes of the failures Authenticate reports.
const (
	// CodeInvalidPassword is invalid_password: wrong password, unknown
	// user, or a user with no secret usable with the method.
	CodeInvalidPassword = "28P01"
	// CodeProtocolViolation is protocol_violation: the client sent a
	// message of the wrong type or a malformed one.
	CodeProtocolViolation = "08P01"
)

var (
	// ErrPasswordMismatch is wrapped by the *Error returned for a wrong
	// password and for an unknown user: the client cannot tell them apart.
	ErrPasswordMismatch = errors.New("password does not match")
	// ErrUnknownUser is wrapped, next to ErrPasswordMismatch, when the
	// store has no such user. It is for the operator's log only.
	ErrUnknownUser = errors.New("user not found")
	// ErrNoUsableSecret is wrapped when the user exists but the stored
	// secret cannot check this method (an md5 hash with scram-sha-256, a
	// SCRAM secret with md5, or no secret at all). The client sees the same
	// message as for a wrong password.
	ErrNoUsableSecret = errors.New("no stored secret usable with this method")
	// ErrProtocolViolation is wrapped by the *Error returned for an
	// unexpected or malformed client message.
	ErrProtocolViolation = errors.New("protocol violation")
)

// Error is an authentication failure to report to the client as a FATAL
// ErrorResponse. Message is safe to show the client; Err holds the detail
// for the operator's log and never a password.
type Error struct {
	Code    string // SQLSTATE, one of the Code constants
	Message string // as PostgreSQL words it
	Err     error
}

func (e *Error) Error() string {
	if e.Err == nil {
		return e.Message
	}
	return e.Message + ": " + e.Err.Error()
}

func (e *Error) Unwrap() error { return e.Err }

// ErrorResponse returns the message to send the client before closing the
// connection. It carries Code and Message only, never Err.
func (e *Error) ErrorResponse() *pgproto3.ErrorResponse {
	return &pgproto3.ErrorResponse{
		Severity:            "FATAL",
		SeverityUnlocalized: "FATAL",
		Code:                e.Code,
		Message:             e.Message,
	}
}

// authFailed is the error for a wrong password, an unknown user and a user
// without a usable secret; the client sees the same thing in every case.
func authFailed(user string, err error) *Error {
	return &Error{
		Code:    CodeInvalidPassword,
		Message: `password authentication failed for user "` + user + `"`,
		Err:     err,
	}
}

// protocolError is the error for a bad client message.
func protocolError(msg string, err error) *Error {
	return &Error{Code: CodeProtocolViolation, Message: msg, Err: err}
}
