// Package wire holds the small pieces of PostgreSQL framing that both sides
// of the proxy share: reading one whole message from a buffered reader with a
// size limit, and the protocol's fixed codes. It decodes nothing beyond the
// 5-byte header; message bodies are pgproto3's business.
//
// Everything here is stateless and safe for concurrent use on distinct
// readers.
package wire

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Startup-phase request codes (the 4 bytes after the length of an untyped
// startup packet).
const (
	ProtocolVersion30 = 196608   // 3.0
	ProtocolVersion32 = 196610   // 3.2
	SSLRequestCode    = 80877103 // 1234.5679
	GSSENCRequestCode = 80877104 // 1234.5680
	CancelRequestCode = 80877102 // 1234.5678
)

// MaxStartupPacket is the largest startup packet PostgreSQL accepts.
const MaxStartupPacket = 10000

// ErrMessageTooLarge is returned when a message's declared length exceeds
// the limit the caller passed.
var ErrMessageTooLarge = errors.New("message too large")

// ErrBadLength is returned for a declared length below the 4 bytes of the
// length field itself.
var ErrBadLength = errors.New("invalid message length")

// FrameError describes a malformed frame; it wraps ErrMessageTooLarge or
// ErrBadLength.
type FrameError struct {
	Type   byte
	Length int
	Err    error
}

func (e *FrameError) Error() string {
	if e.Type == 0 {
		return fmt.Sprintf("startup packet: %v (length %d)", e.Err, e.Length)
	}
	return fmt.Sprintf("message %q: %v (length %d)", e.Type, e.Err, e.Length)
}

func (e *FrameError) Unwrap() error { return e.Err }

// ReadMessage reads one typed message. The body is returned in buf when it
// fits (buf is grown otherwise) and is valid until buf is reused. max bounds
// the declared length, header included.
func ReadMessage(r *bufio.Reader, buf []byte, max int) (typ byte, body []byte, err error) {
	var hdr [5]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, nil, err
	}
	n := int(int32(binary.BigEndian.Uint32(hdr[1:])))
	if n < 4 {
		return hdr[0], nil, &FrameError{Type: hdr[0], Length: n, Err: ErrBadLength}
	}
	if n+1 > max {
		return hdr[0], nil, &FrameError{Type: hdr[0], Length: n, Err: ErrMessageTooLarge}
	}
	body, err = readBody(r, buf, n-4)
	return hdr[0], body, err
}

// ReadStartup reads one untyped startup-phase packet (StartupMessage,
// SSLRequest, GSSENCRequest or CancelRequest) and returns its code and the
// body after the code.
func ReadStartup(r *bufio.Reader, buf []byte) (code uint32, body []byte, err error) {
	var hdr [8]byte
	if _, err := io.ReadFull(r, hdr[:4]); err != nil {
		return 0, nil, err
	}
	n := int(int32(binary.BigEndian.Uint32(hdr[:4])))
	if n < 8 {
		return 0, nil, &FrameError{Length: n, Err: ErrBadLength}
	}
	if n > MaxStartupPacket {
		return 0, nil, &FrameError{Length: n, Err: ErrMessageTooLarge}
	}
	if _, err := io.ReadFull(r, hdr[4:]); err != nil {
		return 0, nil, err
	}
	body, err = readBody(r, buf, n-8)
	return binary.BigEndian.Uint32(hdr[4:]), body, err
}

func readBody(r *bufio.Reader, buf []byte, n int) ([]byte, error) {
	if cap(buf) < n {
		buf = make([]byte, n)
	}
	buf = buf[:n]
	if _, err := io.ReadFull(r, buf); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	return buf, nil
}
