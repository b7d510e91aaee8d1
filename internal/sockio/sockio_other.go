//go:build !unix

package sockio

import "net"

// Conn is the net.Conn itself where raw system calls are not available.
type Conn struct{ net.Conn }

// New wraps c.
func New(c net.Conn) *Conn { return &Conn{c} }
