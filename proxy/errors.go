package proxy

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgsidecar/pgsidecar/internal/clientauth"
	"github.com/pgsidecar/pgsidecar/internal/wire"
	"github.com/pgsidecar/pgsidecar/pool"
)

// SQLSTATE codes the proxy itself raises. Backend errors pass through with
// their own codes.
const (
	CodeProtocolViolation          = "08P01"
	CodeConnectionFailure          = "08006"
	CodeCannotConnect              = "08001"
	CodeTooManyConnections         = "53300"
	CodeAdminShutdown              = "57P01"
	CodeQueryCanceled              = "57014"
	CodeInvalidPassword            = "28P01"
	CodeInvalidAuthorization       = "28000"
	CodeFeatureNotSupported        = "0A000"
	CodeInvalidParameterValue      = "22023"
	CodeInternalError              = "XX000"
	CodeCannotConnectNow           = "57P03"
	CodeInvalidCatalogName         = "3D000"
	CodeProgramLimitExceeded       = "54000"
	CodeConfigurationLimitExceed   = "53400"
	CodeIdleInTransactionTimeout   = "25P03"
	CodeIdleSessionTimeout         = "57P05"
	CodeDuplicatePreparedStatement = "42P05"
)

// errUnknownMessage marks a message type no client may send.
var errUnknownMessage = errors.New("invalid frontend message type")

// Error is a failure the proxy reports to a client as an ErrorResponse.
type Error struct {
	Severity string // ERROR or FATAL; FATAL closes the connection
	Code     string
	Message  string
	Detail   string
	Hint     string
	Err      error // the cause, for logs; never sent to the client
}

func (e *Error) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("%s %s: %s: %v", e.Severity, e.Code, e.Message, e.Err)
	}
	return fmt.Sprintf("%s %s: %s", e.Severity, e.Code, e.Message)
}

func (e *Error) Unwrap() error { return e.Err }

func fatal(code, msg string, cause error) *Error {
	return &Error{Severity: "FATAL", Code: code, Message: msg, Err: cause}
}

// errorResponse maps any error the proxy meets to the ErrorResponse a client
// sees. This is the one place where proxy faults get their SQLSTATE: backend
// errors keep the server's fields, and every other error gets a code that
// says what happened.
func errorResponse(err error) *pgproto3.ErrorResponse {
	var pe *Error
	if errors.As(err, &pe) {
		return &pgproto3.ErrorResponse{Severity: pe.Severity, SeverityUnlocalized: pe.Severity, Code: pe.Code, Message: pe.Message, Detail: pe.Detail, Hint: pe.Hint}
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		// The server refused something on the client's behalf: pass it on.
		// A login failure ends the client's connection too.
		sev := pgErr.Severity
		var ce *pool.ConnectError
		if errors.As(err, &ce) {
			sev = "FATAL"
		}
		return &pgproto3.ErrorResponse{
			Severity: sev, SeverityUnlocalized: sev, Code: pgErr.Code, Message: pgErr.Message,
			Detail: pgErr.Detail, Hint: pgErr.Hint, Position: pgErr.Position, InternalPosition: pgErr.InternalPosition,
			InternalQuery: pgErr.InternalQuery, Where: pgErr.Where, SchemaName: pgErr.SchemaName, TableName: pgErr.TableName,
			ColumnName: pgErr.ColumnName, DataTypeName: pgErr.DataTypeName, ConstraintName: pgErr.ConstraintName,
			File: pgErr.File, Line: pgErr.Line, Routine: pgErr.Routine,
		}
	}
	var authErr *clientauth.Error
	var frameErr *wire.FrameError
	var ce *pool.ConnectError
	e := &Error{Severity: "FATAL"}
	switch {
	case errors.As(err, &authErr):
		e.Code, e.Message = authErr.Code, authErr.Message
	case errors.As(err, &frameErr):
		e.Code = CodeProtocolViolation
		switch {
		case errors.Is(err, errUnknownMessage):
			e.Message = fmt.Sprintf("invalid frontend message type %d", frameErr.Type)
		case errors.Is(err, wire.ErrMessageTooLarge):
			e.Message = fmt.Sprintf("invalid message length: %d bytes exceeds max_message_bytes", frameErr.Length)
		default:
			e.Message = fmt.Sprintf("invalid message length %d", frameErr.Length)
		}
	case errors.Is(err, pool.ErrAcquireTimeout):
		e.Severity = "ERROR"
		e.Code = CodeTooManyConnections
		e.Message = "no backend connection became free within query_wait_timeout"
		e.Hint = "The pool is exhausted: raise pool_size, or shorten the transactions holding backends."
	case errors.Is(err, pool.ErrClosed):
		e.Code, e.Message = CodeAdminShutdown, "terminating connection: the sidecar is shutting down"
	case errors.As(err, &ce):
		e.Code, e.Message = CodeCannotConnect, "could not connect to the PostgreSQL server: "+ce.Err.Error()
	case errors.Is(err, context.Canceled):
		e.Code, e.Message = CodeQueryCanceled, "canceling statement: the client went away"
	default:
		e.Code, e.Message = CodeInternalError, "internal proxy error"
	}
	return &pgproto3.ErrorResponse{Severity: e.Severity, SeverityUnlocalized: e.Severity, Code: e.Code, Message: e.Message, Hint: e.Hint}
}
