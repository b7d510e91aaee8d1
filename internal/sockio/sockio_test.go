//go:build unix

package sockio

import (
	"bytes"
	"io"
	"net"
	"syscall"
	"testing"
	"time"
)

// echoPeer answers every read with the same bytes, like a server that only
// speaks when spoken to.
func echoPeer(t *testing.T) net.Conn {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		io.Copy(c, c)
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestWriteReadExchanges(t *testing.T) {
	s := New(echoPeer(t))
	buf := make([]byte, 64)
	for i := range 100 {
		req := []byte{byte(i), 'x', 'y'}
		got := 0
		n, err := s.WriteRead(req, buf)
		if err != nil {
			t.Fatalf("exchange %d: %v", i, err)
		}
		got += n
		for got < len(req) {
			n, err := s.Read(buf[got:])
			if err != nil {
				t.Fatal(err)
			}
			got += n
		}
		if !bytes.Equal(buf[:got], req) {
			t.Fatalf("exchange %d: got %q, want %q", i, buf[:got], req)
		}
	}
}

// A request larger than the socket buffers cannot be written before the
// peer reads: WriteRead must finish the write and still read the reply.
func TestWriteReadLargeRequest(t *testing.T) {
	s := New(echoPeer(t))
	req := bytes.Repeat([]byte("0123456789abcdef"), 1<<18) // 4 MiB
	buf := make([]byte, len(req))
	done := make(chan error, 1)
	go func() {
		// The echo peer blocks writing back unless someone reads.
		n, err := s.WriteRead(req, buf)
		if err != nil {
			done <- err
			return
		}
		for n < len(req) {
			k, err := s.Read(buf[n:])
			if err != nil {
				done <- err
				return
			}
			n += k
		}
		done <- nil
	}()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf, req) {
		t.Fatal("reply differs from request")
	}
}

func TestWriteReadPeerClosed(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			b := make([]byte, 3)
			io.ReadFull(c, b)
			c.Close()
		}
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, err = New(c).WriteRead([]byte("abc"), make([]byte, 8))
	if err != io.EOF {
		t.Fatalf("got %v, want io.EOF", err)
	}
}

// Within one RawLoop, a step that waits without trying a read after a
// short read is still woken by data that arrives later, including data
// that arrived while it was busy.
func TestRawLoopWaitsWithoutReading(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			accepted <- c
		}
	}()
	peer, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	server := <-accepted
	defer server.Close()
	s := New(server)
	if !s.Raw() {
		t.Skip("no raw sockets here")
	}

	peer.Write([]byte("a"))
	var got []byte
	buf := make([]byte, 64)
	mayHaveData := true
	rounds := 0
	err = s.RawLoop(func(fd uintptr) bool {
		for {
			if !mayHaveData {
				mayHaveData = true
				return false // wait, no read attempt
			}
			n, errno := ReadFD(fd, buf)
			if errno == syscall.EAGAIN {
				return false
			}
			if errno != 0 || n == 0 {
				t.Errorf("read: %v, %d", errno, n)
				return true
			}
			got = append(got, buf[:n]...)
			mayHaveData = n == len(buf)
			rounds++
			switch rounds {
			case 1:
				// Busy: the next message arrives before the wait.
				peer.Write([]byte("b"))
				time.Sleep(20 * time.Millisecond)
			case 2:
				go func() {
					time.Sleep(20 * time.Millisecond)
					peer.Write([]byte("c"))
				}()
			case 3:
				return true
			}
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != "abc" {
		t.Fatalf("got %q, want abc", got)
	}
}
