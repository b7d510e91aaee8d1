package proxy

import (
	"encoding/binary"

	"github.com/pgsidecar/pgsidecar/internal/wire"
	"github.com/pgsidecar/pgsidecar/pool"
)

// frameState follows message boundaries through a byte stream that arrives
// in arbitrary chunks, so the forwarding loops can pass whole reads through
// without decoding or copying them. Only the 5-byte header is looked at (and
// copied, when it straddles two reads).
type frameState struct {
	hdr    [5]byte
	nhdr   int // header bytes seen of the current message
	remain int // body bytes still to come of the current message
}

// atBoundary reports whether the stream so far ends exactly between
// messages.
func (f *frameState) atBoundary() bool { return f.nhdr == 0 && f.remain == 0 }

// header consumes header bytes from p starting at i. It returns the new
// index and whether a complete header is now in f.hdr.
func (f *frameState) header(p []byte, i int) (int, bool) {
	if f.nhdr == 0 && len(p)-i >= 5 {
		copy(f.hdr[:], p[i:i+5])
		return i + 5, true
	}
	n := copy(f.hdr[f.nhdr:], p[i:])
	f.nhdr += n
	if f.nhdr < 5 {
		return i + n, false
	}
	f.nhdr = 0
	return i + n, true
}

func (f *frameState) length() int { return int(int32(binary.BigEndian.Uint32(f.hdr[1:]))) }

// validFrontend marks the message types a client may send after startup.
var validFrontend = func() (t [256]bool) {
	for _, c := range []byte("BCdcfDEHFPpQSX") {
		t[c] = true
	}
	return t
}()

// clientScan is what a client's stream tells the session.
type clientScan struct {
	remain   int   // body bytes still to come of the current message
	syncs    int64 // Query, Sync and FunctionCall messages: each earns one ReadyForQuery
	unsynced bool  // extended-protocol messages sent since the last Sync
	max      int   // max_message_bytes

	// PostgreSQL ignores Sync while a COPY FROM STDIN runs (libpq sends
	// one right after the Execute that starts it): Syncs sent after the
	// last Execute or Query are uncounted at the CopyDone or CopyFail that
	// ends a copy the server started.
	syncsSinceExec int64
	copyEnded      bool // a CopyDone or CopyFail ended a server-started copy
}

// atBoundary reports whether everything forwarded so far ends between
// messages.
func (s *clientScan) atBoundary() bool { return s.remain == 0 }

// scan walks bytes read from the client. It returns how many leading bytes
// may be forwarded: everything up to a trailing partial header (which the
// caller keeps and presents again with the next read, so a header is only
// ever forwarded whole and checked), or the bytes before a Terminate (term)
// or before a malformed header (err).
//
// copyIn says whether the server has started a COPY FROM STDIN that the
// client has not ended yet.
func (s *clientScan) scan(p []byte, copyIn bool) (n int, term bool, err error) {
	i := 0
	for {
		if s.remain > 0 {
			k := min(s.remain, len(p)-i)
			s.remain -= k
			i += k
		}
		if len(p)-i < 5 {
			return i, false, nil
		}
		typ, l := p[i], int(int32(binary.BigEndian.Uint32(p[i+1:])))
		switch {
		case !validFrontend[typ]:
			return i, false, &wire.FrameError{Type: typ, Length: l, Err: errUnknownMessage}
		case l < 4:
			return i, false, &wire.FrameError{Type: typ, Length: l, Err: wire.ErrBadLength}
		case l+1 > s.max:
			return i, false, &wire.FrameError{Type: typ, Length: l, Err: wire.ErrMessageTooLarge}
		}
		switch typ {
		case 'Q':
			s.syncs++
			s.syncsSinceExec = 0
		case 'F':
			s.syncs++
		case 'S':
			s.syncs++
			s.syncsSinceExec++
			s.unsynced = false
		case 'E':
			s.syncsSinceExec = 0
			s.unsynced = true
		case 'P', 'B', 'D', 'C', 'H':
			s.unsynced = true
		case 'c', 'f':
			if copyIn && !s.copyEnded {
				s.syncs -= s.syncsSinceExec
				s.syncsSinceExec = 0
				s.copyEnded = true
			}
		case 'X':
			return i, true, nil
		}
		s.remain = l - 4
		i += 5
	}
}

// backendScan is what a backend's stream tells the session.
type backendScan struct {
	frameState
	rfqs     int64 // ReadyForQuery messages seen
	txStatus byte  // status byte of the last ReadyForQuery
	wantZ    bool  // the next body byte is a ReadyForQuery status
	copyIn   bool  // the server asked for COPY data and has not finished
	// copyStarts counts CopyInResponse messages.
	copyStarts int64
	last       byte // type of the last message header seen

	// ParameterStatus bodies are collected (they are rare and small) so
	// the backend's record of its reported settings stays exact: the
	// server reports a setting only when it differs from what it last
	// reported, so every report must be seen.
	param   []byte
	inParam bool
	be      *pool.Conn // receives completed reports; nil in tests
}

// maxParamStatus bounds a collected ParameterStatus body.
const maxParamStatus = 64 << 10

// scan walks a chunk read from the backend. It only fails on a length no
// server sends, which means the stream is not PostgreSQL.
func (s *backendScan) scan(p []byte) error {
	i := 0
	for i < len(p) {
		if s.remain > 0 {
			if s.wantZ {
				s.txStatus = p[i]
				s.wantZ = false
				s.rfqs++
			}
			k := min(s.remain, len(p)-i)
			if s.inParam {
				s.param = append(s.param, p[i:i+k]...)
			}
			s.remain -= k
			i += k
			if s.inParam && s.remain == 0 {
				s.paramDone()
			}
			continue
		}
		var ok bool
		if i, ok = s.header(p, i); !ok {
			return nil
		}
		l := s.length()
		if l < 4 {
			return &wire.FrameError{Type: s.hdr[0], Length: l, Err: wire.ErrBadLength}
		}
		s.remain = l - 4
		s.last = s.hdr[0]
		switch s.hdr[0] {
		case 'Z':
			s.wantZ = s.remain > 0
			s.copyIn = false
		case 'G':
			s.copyIn = true
			s.copyStarts++
		case 'C', 'E':
			s.copyIn = false
		case 'S':
			if s.remain <= maxParamStatus {
				s.inParam = true
				s.param = s.param[:0]
				if s.remain == 0 {
					s.paramDone()
				}
			}
		}
	}
	return nil
}

func (s *backendScan) paramDone() {
	s.inParam = false
	name, rest, ok := cstring(s.param)
	if !ok {
		return
	}
	value, _, ok := cstring(rest)
	if ok && s.be != nil {
		s.be.NoteParameterStatus(name, value)
	}
}
