//go:build !unix

package sockio

import "net"

// Conn is the net.Conn itself where raw system calls are not available.
type Conn struct{ net.Conn }

// New wraps c.
func New(c net.Conn) *Conn { return &Conn{c} }

// WriteRead writes all of w, then reads into r.
func (s *Conn) WriteRead(w, r []byte) (int, error) {
	if _, err := s.Write(w); err != nil {
		return 0, err
	}
	return s.Read(r)
}

// PeerClosed cannot tell without raw socket calls: it reports false.
func PeerClosed(c net.Conn) bool { return false }

// Raw reports false: no raw system calls here.
func (s *Conn) Raw() bool { return false }

// RawLoop is not available without raw system calls.
func (s *Conn) RawLoop(step func(fd uintptr) bool) error {
	panic("sockio: RawLoop without raw sockets")
}
