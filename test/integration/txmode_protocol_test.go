package integration

// Extended-protocol state that outlives a Sync in transaction mode: the
// unnamed statement. On PostgreSQL it lasts until the session's next
// unnamed Parse, whatever Syncs come between; pgx's DescribeExec mode
// relies on that, with a Parse+Describe+Sync round trip and then a
// Bind+Execute+Sync one.

import (
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgsidecar/pgsidecar/internal/testenv"
	"github.com/pgsidecar/pgsidecar/pool"
	"github.com/pgsidecar/pgsidecar/proxy"
)

// Regression (fixed): the backend is given back at
// the Sync that follows the unnamed Parse, so the client's Bind runs
// whatever unnamed statement the backend holds then: another client's
// (its rows reach the wrong client) or none (26000 on another backend).
func TestTxUnnamedStatementAcrossSyncs(t *testing.T) {
	t.Parallel()
	pg := env.Postgres(t)

	t.Run("another client parses in between", func(t *testing.T) {
		t.Parallel()
		sc := txSidecar(t, pg, 1, proxy.Config{}, pool.Config{})
		a := rawConnect(t, sc, pg, nil)
		b := rawConnect(t, sc, pg, nil)
		a.send(&pgproto3.Parse{Query: "select 'a' as who"}, &pgproto3.Describe{ObjectType: 'S'}, &pgproto3.Sync{})
		expectMessages(t, "A's parse", a.untilReady(), []string{"1", "*pgproto3.ParameterDescription", "T who", "Z I"})
		b.send(&pgproto3.Parse{Query: "select 'b' as who, 2 as two"}, &pgproto3.Sync{})
		expectMessages(t, "B's parse", b.untilReady(), []string{"1", "Z I"})
		a.send(&pgproto3.Bind{}, &pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{}, &pgproto3.Sync{})
		expectMessages(t, "A's execute", a.untilReady(), []string{"2", "T who", "D a", "C SELECT 1", "Z I"})
	})

	t.Run("the Bind lands on another backend", func(t *testing.T) {
		t.Parallel()
		const poolSize = 2
		sc := txSidecar(t, pg, poolSize, proxy.Config{}, pool.Config{})
		a := rawConnect(t, sc, pg, nil)
		expectMessages(t, "begin", a.query("BEGIN"), []string{"C BEGIN", "Z T"})
		pid := r2i(t, a.queryValue("select pg_backend_pid()"))
		expectMessages(t, "commit", a.query("COMMIT"), []string{"C COMMIT", "Z I"})
		release := holdBackend(t, sc, pg, int32(pid), poolSize)
		a.send(&pgproto3.Parse{Query: "select 'a' as who"}, &pgproto3.Sync{})
		expectMessages(t, "A's parse", a.untilReady(), []string{"1", "Z I"})
		// Swap: the backend A parsed on is now the busy one.
		release2 := holdOther(t, sc, pg, int32(pid))
		release()
		a.send(&pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{})
		got := a.untilReady()
		release2()
		expectMessages(t, "A's execute", got, []string{"2", "D a", "C SELECT 1", "Z I"})
	})

	t.Run("pgx DescribeExec", func(t *testing.T) {
		t.Parallel()
		sc := txSidecar(t, pg, 2, proxy.Config{}, pool.Config{})
		const clients, rounds = 4, 50
		conns := make([]*pgx.Conn, clients)
		for i := range conns {
			conns[i] = pgxConnect(t, sc.SuperURL(pg), pgx.QueryExecModeDescribeExec)
		}
		wrong := make([]int, clients)
		var first [clients]string
		runParallel(clients, func(i int) {
			for r := range rounds {
				var who string
				var n int
				sql := fmt.Sprintf("select 'client %d' as who, $1::int as n", i)
				err := conns[i].QueryRow(ctxT(t), sql, r).Scan(&who, &n)
				if err == nil && who == fmt.Sprintf("client %d", i) && n == r {
					continue
				}
				if wrong[i]++; first[i] == "" {
					first[i] = fmt.Sprintf("round %d: %q %d %v", r, who, n, err)
				}
			}
		})
		for i := range clients {
			if wrong[i] > 0 {
				t.Errorf("client %d: %d of %d answers wrong or failed; first %s", i, wrong[i], rounds, first[i])
			}
		}
	})
}

// holdOther keeps busy, in an open transaction, a backend other than pid
// (which must be busy), and returns a func that commits it.
func holdOther(t testing.TB, sc *sidecar, pg *testenv.Postgres, pid int32) func() {
	t.Helper()
	ctx := ctxT(t)
	conn := pgxConnect(t, sc.SuperURL(pg), pgx.QueryExecModeSimpleProtocol)
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var got int32
	if err := tx.QueryRow(ctx, "select pg_backend_pid()").Scan(&got); err != nil {
		t.Fatal(err)
	}
	if got == pid {
		t.Fatalf("holder got backend %d, which should be busy", pid)
	}
	return func() {
		if err := tx.Commit(ctx); err != nil {
			t.Errorf("holder commit: %v", err)
		}
	}
}
