package integration

// How the relay notices that a client went away. It waits for a client's
// next batch without a read attempt when the last read emptied the socket, but an end of file that arrived together with the last bytes is
// only reported by a later read and by no new readiness event. These tests
// close clients in each of the ways that leave such an end of file behind.

import (
	"bytes"
	"encoding/binary"
	"net"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgsidecar/pgsidecar/pool"
	"github.com/pgsidecar/pgsidecar/proxy"
)

func TestClientClosesRightAfterItsLastBytes(t *testing.T) {
	for _, mode := range []proxy.PoolMode{proxy.PoolModeSession, proxy.PoolModeTransaction} {
		t.Run(string(mode), func(t *testing.T) {
			t.Parallel()
			clientClosesRightAfterItsLastBytes(t, mode)
		})
	}
}

func clientClosesRightAfterItsLastBytes(t *testing.T, mode proxy.PoolMode) {
	pg := env.Postgres(t)
	sc := startSidecar(t, pg, sidecarOptions{
		Proxy: proxy.Config{PoolMode: mode, QueryWaitTimeout: 10 * time.Second},
		Pool:  pool.Config{PoolSize: 1},
	})
	gone := func(what string) {
		t.Helper()
		eventually(t, 5*time.Second, what+": session ended", func() (bool, error) {
			return sc.Server.Stats().ClientsActive == 0, nil
		})
	}

	// Half a message, then close: no answer is ever written to it.
	c := rawConnect(t, sc, pg, nil)
	c.query("select 1")
	half := binary.BigEndian.AppendUint32([]byte{'Q'}, 4+100)
	half = append(half, bytes.Repeat([]byte{'x'}, 20)...)
	if _, err := c.nc.Write(half); err != nil {
		t.Fatal(err)
	}
	c.nc.Close()
	gone("client closed in the middle of a message")

	// A whole query, then close without reading the answer.
	c = rawConnect(t, sc, pg, nil)
	c.query("select 1")
	c.send(&pgproto3.Query{String: "select 2"})
	c.nc.Close()
	gone("client closed right after a query")

	// A query, then only the sending side shut: the client still reads
	// its answer, and closes for good later.
	c = rawConnect(t, sc, pg, nil)
	c.query("select 1")
	c.send(&pgproto3.Query{String: "select 3"})
	if err := c.nc.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	expectMessages(t, "answer after a half close", c.untilReady(), []string{"T ?column?", "D 3", "C SELECT 1", "Z I"})
	gone("client that shut its sending side")
	c.nc.Close()

	// The one backend is free for the next client.
	selectOne(t, connectEventually(t, sc.SuperURL(pg), 5*time.Second))
}
