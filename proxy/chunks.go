package proxy

import (
	"io"
	"os"
	"sync/atomic"
	"syscall"

	"github.com/pgsidecar/pgsidecar/internal/sockio"
)

// chunkLoop reads a socket chunk by chunk for the session-mode relay.
type chunkLoop struct {
	s *sockio.Conn
	// buf returns the slice to read into.
	buf func() []byte
	// handle takes each read's result and reports whether to stop. A read
	// error is passed to it too (and stops the loop unless it is the
	// poller's: a deadline or a close, reported after a wait).
	handle func(n int, err error) bool
	// beforeWait, when not nil, runs before each wait; true stops.
	beforeWait func() bool
	// maySkip, when not nil, says whether a wait after a read that did not
	// fill the buffer may go without a read attempt first. It must say no
	// when an end of file that came with the last bytes could go unseen:
	// nothing would announce it.
	maySkip func() bool
	// skippedAt, when not nil, is set to the watchdog's epoch (epoch)
	// while such a wait lasts, so the watchdog can peek at the socket.
	skippedAt *atomic.Int64
	epoch     *atomic.Int64
}

// run reads until handle stops it. On a raw socket the reads run inside
// one read operation (sockio.Conn.RawLoop), so that after a read that did
// not fill the buffer the next wait needs no read attempt (the poller
// keeps readiness within one operation): one system call fewer per round
// trip.
func (l *chunkLoop) run() {
	if !l.s.Raw() {
		for {
			if l.beforeWait != nil && l.beforeWait() {
				return
			}
			n, err := l.s.Read(l.buf())
			if l.handle(n, err) {
				return
			}
		}
	}
	for {
		mayHaveData, stopped := true, false
		err := l.s.RawLoop(func(fd uintptr) bool {
			for {
				if !mayHaveData {
					mayHaveData = true
					if l.beforeWait != nil && l.beforeWait() {
						stopped = true
						return true
					}
					if l.skippedAt != nil {
						l.skippedAt.Store(l.epoch.Load())
					}
					return false
				}
				p := l.buf()
				n, errno := sockio.ReadFD(fd, p)
				if errno == syscall.EAGAIN {
					if l.beforeWait != nil && l.beforeWait() {
						stopped = true
						return true
					}
					return false
				}
				if l.skippedAt != nil {
					l.skippedAt.Store(0)
				}
				var rerr error
				switch {
				case errno != 0:
					rerr = os.NewSyscallError("read", errno)
					n = 0
				case n == 0:
					rerr = io.EOF
				}
				if l.handle(n, rerr) || rerr != nil {
					stopped = true
					return true
				}
				mayHaveData = n == len(p) || l.maySkip == nil || !l.maySkip()
			}
		})
		if stopped || l.handle(0, err) {
			return
		}
	}
}
