//go:build unix

// Package sockio reads and writes plain TCP sockets with raw non-blocking
// system calls, waiting through Go's poller only when a socket is not ready.
// Both sides of the relay use it: the proxy for clients, the pool for
// backends.
package sockio

import (
	"io"
	"net"
	"os"
	"syscall"
	"unsafe"
)

// Conn reads and writes a plain TCP socket with raw non-blocking system
// calls, waiting through Go's poller only when the socket is not ready.
//
// Why: a relay's writes to loopback often get the thread preempted inside
// the system call (the write wakes the peer). With ordinary system calls the
// runtime then hands the thread's P to another thread, and the extra
// wake-ups and sleeps cost more CPU than the relay itself. A raw call on a
// non-blocking socket never blocks, so the runtime does not need to know.
// TLS and other connections fall back to their own Read and Write.
//
// A Conn may be used by one reader and one writer at a time. Deadlines and
// Close are the underlying net.Conn's.
type Conn struct {
	conn net.Conn
	rc   syscall.RawConn // nil: use conn

	// State for the callbacks, bound once so a call does not allocate.
	rbuf   []byte
	rn     int
	rerrno syscall.Errno
	readFn func(fd uintptr) bool

	wbuf    []byte
	wn      int
	werrno  syscall.Errno
	writeFn func(fd uintptr) bool

	// ReadLazy's state.
	take     func() []byte
	giveBack func()
	lazyFn   func(fd uintptr) bool

	// WriteRead's state.
	wrFirst     bool
	wrPartial   bool
	writeReadFn func(fd uintptr) bool
}

// New wraps c. Reads and writes go through raw system calls when c is a
// *net.TCPConn, and through c itself otherwise (TLS, for example).
func New(c net.Conn) *Conn {
	s := &Conn{conn: c}
	if tc, ok := c.(*net.TCPConn); ok {
		if rc, err := tc.SyscallConn(); err == nil {
			s.rc = rc
		}
	}
	s.readFn = s.doRead
	s.writeFn = s.doWrite
	s.writeReadFn = s.doWriteRead
	s.lazyFn = s.doLazyRead
	return s
}

func (s *Conn) doRead(fd uintptr) bool {
	for {
		r, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(unsafe.SliceData(s.rbuf))), uintptr(len(s.rbuf)))
		switch e {
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return false
		}
		s.rn, s.rerrno = int(r), e
		return true
	}
}

// Read reads what the socket has, waiting until it has something.
func (s *Conn) Read(p []byte) (int, error) {
	if s.rc == nil {
		return s.conn.Read(p)
	}
	if len(p) == 0 {
		return 0, nil
	}
	s.rbuf, s.rn, s.rerrno = p, 0, 0
	err := s.rc.Read(s.readFn)
	s.rbuf = nil
	return s.readResult(err)
}

// readResult turns the outcome of a read callback into Read's results.
func (s *Conn) readResult(err error) (int, error) {
	switch {
	case err != nil:
		return 0, err
	case s.rerrno != 0:
		return 0, &net.OpError{Op: "read", Net: "tcp", Source: s.conn.LocalAddr(), Addr: s.conn.RemoteAddr(), Err: os.NewSyscallError("read", s.rerrno)}
	case s.rn == 0:
		return 0, io.EOF
	}
	return s.rn, nil
}

func (s *Conn) doWrite(fd uintptr) bool {
	for s.wn < len(s.wbuf) {
		rest := s.wbuf[s.wn:]
		r, _, e := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(unsafe.SliceData(rest))), uintptr(len(rest)))
		switch e {
		case 0:
			s.wn += int(r)
		case syscall.EINTR:
		case syscall.EAGAIN:
			return false
		default:
			s.werrno = e
			return true
		}
	}
	return true
}

// Write writes all of p, waiting for the socket to drain when it is full.
func (s *Conn) Write(p []byte) (int, error) {
	if s.rc == nil {
		return s.conn.Write(p)
	}
	s.wbuf, s.wn, s.werrno = p, 0, 0
	err := s.rc.Write(s.writeFn)
	n := s.wn
	s.wbuf = nil
	switch {
	case err != nil:
		return n, err
	case s.werrno != 0:
		return n, &net.OpError{Op: "write", Net: "tcp", Source: s.conn.LocalAddr(), Addr: s.conn.RemoteAddr(), Err: os.NewSyscallError("write", s.werrno)}
	}
	return n, nil
}

// WriteRead writes all of w, then reads what the socket has into r,
// waiting until it has something, like Write followed by Read but with one
// system call fewer: the write is made after the poller has been armed, so
// the wait needs no read attempt first.
//
// Use it only for a request the peer must read before it sends anything,
// with nothing unread from the peer: a reply that arrived before the write
// would not wake the wait. A backend between transactions is such a peer.
func (s *Conn) WriteRead(w, r []byte) (int, error) {
	if s.rc == nil || len(r) == 0 {
		if _, err := s.Write(w); err != nil {
			return 0, err
		}
		return s.Read(r)
	}
	s.wbuf, s.wn, s.werrno = w, 0, 0
	s.rbuf, s.rn, s.rerrno = r, 0, 0
	s.wrFirst, s.wrPartial = true, false
	err := s.rc.Read(s.writeReadFn)
	s.wbuf, s.rbuf = nil, nil
	switch {
	case err != nil:
		return 0, err
	case s.werrno != 0:
		return 0, &net.OpError{Op: "write", Net: "tcp", Source: s.conn.LocalAddr(), Addr: s.conn.RemoteAddr(), Err: os.NewSyscallError("write", s.werrno)}
	case s.wrPartial:
		// The socket filled up: finish the write, then read normally.
		if _, err := s.Write(w[s.wn:]); err != nil {
			return 0, err
		}
		return s.Read(r)
	}
	return s.readResult(nil)
}

func (s *Conn) doWriteRead(fd uintptr) bool {
	if s.wrFirst {
		s.wrFirst = false
		if !s.doWrite(fd) {
			s.wrPartial = true
			return true
		}
		// Written, or failed (werrno): a failure ends the call at once.
		return s.werrno != 0
	}
	return s.doRead(fd)
}

// ReadLazy reads like Read into the buffer take returns, but calls take
// only when it is about to read and calls giveBack when a read found
// nothing, so a connection that waits holds no buffer. It returns the
// number of bytes read into the buffer take last returned.
func (s *Conn) ReadLazy(take func() []byte, giveBack func()) (int, error) {
	if s.rc == nil {
		return s.Read(take())
	}
	s.take, s.giveBack = take, giveBack
	s.rbuf, s.rn, s.rerrno = nil, 0, 0
	err := s.rc.Read(s.lazyFn)
	s.rbuf, s.take, s.giveBack = nil, nil, nil
	return s.readResult(err)
}

func (s *Conn) doLazyRead(fd uintptr) bool {
	if s.rbuf == nil {
		s.rbuf = s.take()
	}
	if s.doRead(fd) {
		return true
	}
	s.giveBack()
	s.rbuf = nil
	return false
}

// PeerClosed reports whether the peer of c has closed the connection or
// reset it, without consuming anything: a peek that sees end of file or
// an error. Data waiting to be read, or nothing at all, means the peer is
// still there.
func PeerClosed(c net.Conn) bool {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return false
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return false
	}
	closed := false
	rc.Control(func(fd uintptr) {
		var b [1]byte
		n, _, errno := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		switch {
		case errno == nil && n == 0:
			closed = true
		case errno != nil && errno != syscall.EAGAIN && errno != syscall.EINTR:
			closed = true
		}
	})
	return closed
}

// Raw reports whether c uses raw system calls (plain TCP), and so offers
// RawLoop and ReadFD.
func (s *Conn) Raw() bool { return s.rc != nil }

// RawLoop runs step inside one read operation on the socket: step is called
// with the socket's descriptor, and when it returns false the call waits
// until the socket is readable (or its read deadline passes) and calls it
// again; it returns when step returns true. Within one RawLoop the poller
// remembers readiness that arrived while step was busy, so step may wait
// without first trying a read, provided its last read did not fill its
// buffer (a read that fills it may leave bytes no new event will announce).
// Only for a Conn where Raw is true.
func (s *Conn) RawLoop(step func(fd uintptr) bool) error { return s.rc.Read(step) }

// ReadFD reads from a non-blocking descriptor once: the bytes read, or the
// error number (EAGAIN: nothing to read yet).
func ReadFD(fd uintptr, p []byte) (int, syscall.Errno) {
	for {
		r, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(unsafe.SliceData(p))), uintptr(len(p)))
		if e == syscall.EINTR {
			continue
		}
		return int(r), e
	}
}
