package wire

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"testing"
)

func TestReadMessage(t *testing.T) {
	in := []byte{'Q', 0, 0, 0, 8, 's', 'e', 'l', 0, 'S', 0, 0, 0, 4}
	r := bufio.NewReader(bytes.NewReader(in))
	typ, body, err := ReadMessage(r, nil, 100)
	if err != nil || typ != 'Q' || string(body) != "sel\x00" {
		t.Fatalf("got %q %q %v", typ, body, err)
	}
	typ, body, err = ReadMessage(r, nil, 100)
	if err != nil || typ != 'S' || len(body) != 0 {
		t.Fatalf("got %q %q %v", typ, body, err)
	}
	if _, _, err = ReadMessage(r, nil, 100); err != io.EOF {
		t.Fatalf("want EOF, got %v", err)
	}
}

func TestReadMessageLimits(t *testing.T) {
	for _, tc := range []struct {
		in   []byte
		want error
	}{
		{[]byte{'Q', 0, 0, 0, 3}, ErrBadLength},
		{[]byte{'Q', 0x80, 0, 0, 0}, ErrBadLength},
		{[]byte{'Q', 0, 0, 1, 0}, ErrMessageTooLarge},
		{[]byte{'Q', 0, 0, 0, 10, 'a'}, io.ErrUnexpectedEOF},
	} {
		_, _, err := ReadMessage(bufio.NewReader(bytes.NewReader(tc.in)), nil, 100)
		if !errors.Is(err, tc.want) {
			t.Errorf("%v: got %v, want %v", tc.in, err, tc.want)
		}
	}
}

func TestReadStartup(t *testing.T) {
	in := []byte{0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f}
	code, body, err := ReadStartup(bufio.NewReader(bytes.NewReader(in)), nil)
	if err != nil || code != SSLRequestCode || len(body) != 0 {
		t.Fatalf("got %d %q %v", code, body, err)
	}
	_, _, err = ReadStartup(bufio.NewReader(bytes.NewReader([]byte{0, 1, 0, 0, 0, 3, 0, 0})), nil)
	if !errors.Is(err, ErrMessageTooLarge) {
		t.Fatalf("oversized startup: %v", err)
	}
	_, _, err = ReadStartup(bufio.NewReader(bytes.NewReader([]byte{0, 0, 0, 4})), nil)
	if !errors.Is(err, ErrBadLength) {
		t.Fatalf("short startup: %v", err)
	}
}

// FuzzReadStartup: arbitrary bytes never panic, never allocate more than
// the startup limit, and a packet that reads fine round-trips.
func FuzzReadStartup(f *testing.F) {
	f.Add([]byte{0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f})
	f.Add([]byte{0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e, 0, 0, 0, 1, 0, 0, 0, 2})
	f.Add([]byte{0, 0, 0, 9, 0, 3, 0, 0, 0})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, in []byte) {
		code, body, err := ReadStartup(bufio.NewReader(bytes.NewReader(in)), nil)
		if err != nil {
			return
		}
		if len(body)+8 > MaxStartupPacket {
			t.Fatalf("body of %d bytes passed the limit", len(body))
		}
		if code == 0 && len(in) < 8 {
			t.Fatal("accepted a truncated packet")
		}
	})
}

// FuzzReadMessage: arbitrary bytes never panic or exceed max.
func FuzzReadMessage(f *testing.F) {
	f.Add([]byte{'Q', 0, 0, 0, 9, 's', 'e', 'l', 0})
	f.Add([]byte{'X', 0, 0, 0, 4})
	f.Add([]byte{'p', 0x7f, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, in []byte) {
		r := bufio.NewReader(bytes.NewReader(in))
		for {
			_, body, err := ReadMessage(r, nil, 64)
			if err != nil {
				return
			}
			if len(body)+5 > 64 {
				t.Fatalf("body of %d bytes passed the limit", len(body))
			}
		}
	})
}
