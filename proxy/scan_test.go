package proxy

import (
	"bytes"
	"errors"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgsidecar/pgsidecar/internal/wire"
)

func encode(t testing.TB, msgs ...pgproto3.Message) []byte {
	t.Helper()
	var out []byte
	for _, m := range msgs {
		var err error
		if out, err = m.Encode(out); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// feedClient scans stream in chunks of size n the way forwardClient does,
// carrying a partial header over, and returns what would be forwarded.
func feedClient(s *clientScan, stream []byte, n int) (fwd []byte, term bool, err error) {
	var pending []byte
	for len(stream) > 0 || len(pending) > 0 {
		k := min(n, len(stream))
		buf := append(pending, stream[:k]...)
		stream = stream[k:]
		f, t, e := s.scan(buf, false)
		fwd = append(fwd, buf[:f]...)
		if t || e != nil {
			return fwd, t, e
		}
		pending = append([]byte(nil), buf[f:]...)
		if k == 0 {
			break
		}
	}
	return fwd, false, nil
}

func TestClientScanCountsSyncsAcrossChunkSizes(t *testing.T) {
	stream := encode(t,
		&pgproto3.Query{String: "select 1"},
		&pgproto3.Parse{Name: "s1", Query: "select $1::int"},
		&pgproto3.Bind{PreparedStatement: "s1", Parameters: [][]byte{[]byte("42")}},
		&pgproto3.Execute{},
		&pgproto3.Sync{},
		&pgproto3.Parse{Query: "select 2"},
		&pgproto3.Flush{},
	)
	for _, n := range []int{1, 2, 3, 4, 5, 6, 7, 13, len(stream)} {
		s := clientScan{max: 1 << 20}
		fwd, term, err := feedClient(&s, stream, n)
		if err != nil || term {
			t.Fatalf("chunk %d: term=%v err=%v", n, term, err)
		}
		if !bytes.Equal(fwd, stream) {
			t.Fatalf("chunk %d: forwarded %d of %d bytes", n, len(fwd), len(stream))
		}
		if s.syncs != 2 || !s.unsynced || !s.atBoundary() {
			t.Fatalf("chunk %d: syncs=%d unsynced=%v boundary=%v", n, s.syncs, s.unsynced, s.atBoundary())
		}
	}
}

func TestClientScanStopsBeforeTerminate(t *testing.T) {
	head := encode(t, &pgproto3.Query{String: "select 1"})
	stream := append(append([]byte{}, head...), encode(t, &pgproto3.Terminate{}, &pgproto3.Query{String: "never"})...)
	for _, n := range []int{1, 5, len(stream)} {
		s := clientScan{max: 1 << 20}
		fwd, term, err := feedClient(&s, stream, n)
		if err != nil || !term || !bytes.Equal(fwd, head) {
			t.Fatalf("chunk %d: term=%v err=%v forwarded %q", n, term, err, fwd)
		}
	}
}

func TestClientScanRejectsBadFrames(t *testing.T) {
	good := encode(t, &pgproto3.Sync{})
	cases := []struct {
		name string
		bad  []byte
		want error
	}{
		{"unknown type", []byte{'Z', 0, 0, 0, 4}, errUnknownMessage},
		{"short length", []byte{'Q', 0, 0, 0, 3}, wire.ErrBadLength},
		{"negative length", []byte{'Q', 0xff, 0xff, 0xff, 0xff}, wire.ErrBadLength},
		{"too large", []byte{'Q', 0, 0x10, 0, 0}, wire.ErrMessageTooLarge},
		{"startup packet in the session", []byte{0, 0, 0, 8, 4, 0xd2}, errUnknownMessage},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := clientScan{max: 1024}
			stream := append(append([]byte{}, good...), tc.bad...)
			fwd, _, err := feedClient(&s, stream, 3)
			if !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			if !bytes.Equal(fwd, good) {
				t.Fatalf("forwarded %q, want only the good message", fwd)
			}
			if r := errorResponse(err); r.Code != CodeProtocolViolation || r.Severity != "FATAL" {
				t.Fatalf("mapped to %s %s", r.Severity, r.Code)
			}
		})
	}
}

func TestBackendScanTracksReadyForQuery(t *testing.T) {
	stream := encode(t,
		&pgproto3.RowDescription{Fields: []pgproto3.FieldDescription{{Name: []byte("a")}}},
		&pgproto3.DataRow{Values: [][]byte{[]byte("1")}},
		&pgproto3.CommandComplete{CommandTag: []byte("SELECT 1")},
		&pgproto3.ParameterStatus{Name: "TimeZone", Value: "Asia/Tokyo"},
		&pgproto3.ReadyForQuery{TxStatus: 'T'},
		&pgproto3.CopyInResponse{},
	)
	for _, n := range []int{1, 2, 5, 6, 7, len(stream)} {
		var s backendScan
		for i := 0; i < len(stream); i += n {
			if err := s.scan(stream[i:min(i+n, len(stream))]); err != nil {
				t.Fatal(err)
			}
		}
		if string(s.param) != "TimeZone\x00Asia/Tokyo\x00" || s.inParam {
			t.Fatalf("chunk %d: collected ParameterStatus %q", n, s.param)
		}
		if s.rfqs != 1 || s.txStatus != 'T' || !s.copyIn || !s.atBoundary() || s.last != 'G' {
			t.Fatalf("chunk %d: rfqs=%d status=%q copyIn=%v boundary=%v", n, s.rfqs, s.txStatus, s.copyIn, s.atBoundary())
		}
	}
}

func BenchmarkClientScan(b *testing.B) {
	// A pgbench -M prepared transaction: Bind, Execute, Sync.
	stream := encode(b,
		&pgproto3.Bind{PreparedStatement: "P0_1", ParameterFormatCodes: []int16{0}, Parameters: [][]byte{[]byte("12345")}},
		&pgproto3.Execute{},
		&pgproto3.Sync{},
	)
	s := clientScan{max: 1 << 20}
	b.SetBytes(int64(len(stream)))
	b.ReportAllocs()
	for b.Loop() {
		if _, _, err := s.scan(stream, false); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkBackendScan(b *testing.B) {
	var msgs []pgproto3.Message
	msgs = append(msgs, &pgproto3.RowDescription{Fields: []pgproto3.FieldDescription{{Name: []byte("abalance")}}})
	for i := 0; i < 100; i++ {
		msgs = append(msgs, &pgproto3.DataRow{Values: [][]byte{[]byte("123456")}})
	}
	msgs = append(msgs, &pgproto3.CommandComplete{CommandTag: []byte("SELECT 100")}, &pgproto3.ReadyForQuery{TxStatus: 'I'})
	stream := encode(b, msgs...)
	var s backendScan
	b.SetBytes(int64(len(stream)))
	b.ReportAllocs()
	for b.Loop() {
		if err := s.scan(stream); err != nil {
			b.Fatal(err)
		}
	}
}

// FuzzClientScan: whatever a client sends, scanning neither panics nor
// forwards a header it has not checked, and chunking never changes the
// verdict.
func FuzzClientScan(f *testing.F) {
	f.Add(encode(f, &pgproto3.Query{String: "select 1"}, &pgproto3.Terminate{}), 3)
	f.Add(encode(f, &pgproto3.Parse{Query: "x"}, &pgproto3.Sync{}), 1)
	f.Add([]byte{'Q', 0xff, 0, 0, 0, 'x'}, 2)
	f.Add([]byte{0, 0, 0, 8, 4, 0xd2, 0x16, 0x2f}, 7)
	f.Fuzz(func(t *testing.T, stream []byte, n int) {
		if n < 1 || n > 64 {
			n = 1 + (n&63+64)%64
		}
		whole := clientScan{max: 4096}
		wf, wt, we := feedClient(&whole, stream, len(stream)+1)
		parts := clientScan{max: 4096}
		pf, pt, pe := feedClient(&parts, stream, n)
		if !bytes.Equal(wf, pf) || wt != pt || (we == nil) != (pe == nil) || whole.syncs != parts.syncs {
			t.Fatalf("chunking changed the result: %d/%v/%v vs %d/%v/%v", len(wf), wt, we, len(pf), pt, pe)
		}
		if !bytes.HasPrefix(stream, wf) {
			t.Fatal("forwarded bytes are not a prefix of the stream")
		}
	})
}

// Regression: libpq's extended-protocol COPY FROM STDIN sends a Sync right
// after the Execute; PostgreSQL ignores it during the copy, so only the
// Sync after CopyDone earns a ReadyForQuery.
func TestClientScanUncountsSyncsIgnoredDuringCopy(t *testing.T) {
	s := clientScan{max: 1 << 20}
	head := encode(t, &pgproto3.Parse{Query: "copy t from stdin"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{})
	if _, _, err := s.scan(head, false); err != nil {
		t.Fatal(err)
	}
	// The server has answered CopyInResponse; the client sends its data.
	tail := encode(t, &pgproto3.CopyData{Data: []byte("1\n")}, &pgproto3.CopyDone{}, &pgproto3.Sync{})
	if _, _, err := s.scan(tail, true); err != nil {
		t.Fatal(err)
	}
	if s.syncs != 1 || !s.copyEnded {
		t.Fatalf("syncs = %d (want 1: one ReadyForQuery is owed), copyEnded = %v", s.syncs, s.copyEnded)
	}
	// A simple-protocol COPY has no Sync to uncount.
	s = clientScan{max: 1 << 20}
	s.scan(encode(t, &pgproto3.Query{String: "copy t from stdin"}), false)
	s.scan(encode(t, &pgproto3.CopyData{Data: []byte("1\n")}, &pgproto3.CopyDone{}), true)
	if s.syncs != 1 {
		t.Fatalf("simple COPY: syncs = %d, want 1", s.syncs)
	}
}
