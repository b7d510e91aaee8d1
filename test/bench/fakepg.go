package main

import (
	"net"
	"strings"
	"sync"

	"github.com/jackc/pgx/v5/pgproto3"
)

// fakeUpstream is a minimal PostgreSQL server for the memory probe. It logs
// anyone in without a password and answers every request with an empty
// success, so a proxy can hold thousands of backend connections (which
// pgsidecar in session mode does, one per logged-in client) without a real
// server behind them, and the proxy's memory is measured alone.
//
// It owns its listener, its connections, the accept goroutine and one
// goroutine per connection; Close stops them all and waits for them. It is
// safe for concurrent use.
type fakeUpstream struct {
	ln net.Listener
	wg sync.WaitGroup

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
}

func startFakeUpstream() (*fakeUpstream, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	f := &fakeUpstream{ln: ln, conns: map[net.Conn]struct{}{}}
	f.wg.Add(1)
	go f.accept()
	return f, nil
}

func (f *fakeUpstream) upstream() upstream {
	return upstream{host: "127.0.0.1", port: f.ln.Addr().(*net.TCPAddr).Port}
}

// Close closes the listener and every connection and waits for their
// goroutines. It is idempotent.
func (f *fakeUpstream) Close() {
	f.mu.Lock()
	if !f.closed {
		f.closed = true
		f.ln.Close()
		for c := range f.conns {
			c.Close()
		}
	}
	f.mu.Unlock()
	f.wg.Wait()
}

func (f *fakeUpstream) accept() {
	defer f.wg.Done()
	for {
		c, err := f.ln.Accept()
		if err != nil {
			return // closed
		}
		f.mu.Lock()
		if f.closed {
			f.mu.Unlock()
			c.Close()
			return
		}
		f.conns[c] = struct{}{}
		f.wg.Add(1) // under mu, so never after Close's Wait began
		f.mu.Unlock()
		go f.serve(c)
	}
}

// Parameters a PostgreSQL 15 server reports at login.
var fakeParams = [][2]string{
	{"application_name", ""}, {"client_encoding", "UTF8"}, {"DateStyle", "ISO, MDY"},
	{"integer_datetimes", "on"}, {"IntervalStyle", "postgres"}, {"is_superuser", "off"},
	{"server_encoding", "UTF8"}, {"server_version", "15.0 (fake)"},
	{"session_authorization", benchUser}, {"standard_conforming_strings", "on"}, {"TimeZone", "UTC"},
}

func (f *fakeUpstream) serve(c net.Conn) {
	defer f.wg.Done()
	defer func() {
		f.mu.Lock()
		delete(f.conns, c)
		f.mu.Unlock()
		c.Close()
	}()
	be := pgproto3.NewBackend(c, c)
	if !awaitStartup(be, c) {
		return
	}
	be.Send(&pgproto3.AuthenticationOk{})
	for _, p := range fakeParams {
		be.Send(&pgproto3.ParameterStatus{Name: p[0], Value: p[1]})
	}
	be.Send(&pgproto3.BackendKeyData{ProcessID: 1, SecretKey: []byte{0, 0, 0, 1}})
	be.Send(&pgproto3.ReadyForQuery{TxStatus: 'I'})
	if be.Flush() != nil {
		return
	}
	for {
		msg, err := be.Receive()
		if err != nil {
			return
		}
		switch m := msg.(type) {
		case *pgproto3.Query:
			if tag, _, _ := strings.Cut(strings.TrimSpace(m.String), " "); tag == "" || strings.HasPrefix(tag, "--") {
				be.Send(&pgproto3.EmptyQueryResponse{})
			} else {
				be.Send(&pgproto3.CommandComplete{CommandTag: []byte(strings.ToUpper(tag))})
			}
			be.Send(&pgproto3.ReadyForQuery{TxStatus: 'I'})
		case *pgproto3.Parse:
			be.Send(&pgproto3.ParseComplete{})
		case *pgproto3.Bind:
			be.Send(&pgproto3.BindComplete{})
		case *pgproto3.Describe:
			be.Send(&pgproto3.NoData{})
		case *pgproto3.Execute:
			be.Send(&pgproto3.CommandComplete{CommandTag: []byte("SELECT 0")})
		case *pgproto3.Close:
			be.Send(&pgproto3.CloseComplete{})
		case *pgproto3.Sync:
			be.Send(&pgproto3.ReadyForQuery{TxStatus: 'I'})
		case *pgproto3.Terminate:
			return
		}
		if be.Flush() != nil {
			return
		}
	}
}

// awaitStartup declines TLS and GSS encryption until the StartupMessage
// arrives; false means the connection is done (closed, or a CancelRequest:
// nothing runs here, so there is nothing to cancel).
func awaitStartup(be *pgproto3.Backend, c net.Conn) bool {
	for {
		msg, err := be.ReceiveStartupMessage()
		if err != nil {
			return false
		}
		switch msg.(type) {
		case *pgproto3.StartupMessage:
			return true
		case *pgproto3.SSLRequest, *pgproto3.GSSEncRequest:
			if _, err := c.Write([]byte{'N'}); err != nil {
				return false
			}
		default:
			return false
		}
	}
}
