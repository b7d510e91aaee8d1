package integration

// Faults a code review of the transaction-mode relay found, each checked
// against what PostgreSQL itself does.

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgsidecar/pgsidecar/pool"
	"github.com/pgsidecar/pgsidecar/proxy"
)

// A client that never parsed an unnamed statement binds one on a backend
// where another client left its own: PostgreSQL says there is none (26000);
// the other client's query must not run for it.
func TestTxForeignUnnamedStatementIsNotRun(t *testing.T) {
	t.Parallel()
	pg := env.Postgres(t)
	sc := startSidecar(t, pg, sidecarOptions{
		Proxy: proxy.Config{PoolMode: proxy.PoolModeTransaction},
		Pool:  pool.Config{PoolSize: 1},
	})
	a := rawConnect(t, sc, pg, nil)
	a.send(&pgproto3.Parse{Query: "select 'secret of a' as s"}, &pgproto3.Sync{})
	expectMessages(t, "a parses", a.untilReady(), []string{"1", "Z I"})

	b := rawConnect(t, sc, pg, nil)
	b.send(&pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{})
	got := b.untilReady()
	if len(got) != 2 || got[0] != "E 26000" {
		t.Fatalf("b's Bind of an unnamed statement it never parsed: %v, want [E 26000 Z I]", got)
	}
	// a's own unnamed statement still works for a.
	a.send(&pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{})
	expectMessages(t, "a binds its own", a.untilReady(), []string{"2", "D secret of a", "C SELECT 1", "Z I"})
}

// An error pgsidecar decides on (here: a Parse reusing one of the client's
// statement names) fails the batch's implicit transaction as PostgreSQL's
// own would: the insert before it is rolled back.
func TestTxLocalErrorRollsBackTheBatch(t *testing.T) {
	t.Parallel()
	pg := env.Postgres(t)
	ctx := ctxT(t)
	table := uniq("txbatch")
	if err := pg.Exec(ctx, "create table "+table+" (v int)"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pg.Exec(context.Background(), "drop table "+table) })
	sc := startSidecar(t, pg, sidecarOptions{
		Proxy: proxy.Config{PoolMode: proxy.PoolModeTransaction},
		Pool:  pool.Config{PoolSize: 1},
	})
	c := rawConnect(t, sc, pg, nil)
	c.send(&pgproto3.Parse{Name: "s1", Query: "select 1"}, &pgproto3.Sync{})
	expectMessages(t, "prepare s1", c.untilReady(), []string{"1", "Z I"})
	c.send(&pgproto3.Parse{Query: "insert into " + table + " values (1)"}, &pgproto3.Bind{}, &pgproto3.Execute{},
		&pgproto3.Parse{Name: "s1", Query: "select 2"}, &pgproto3.Sync{})
	expectMessages(t, "insert, then a duplicate name", c.untilReady(), []string{"1", "2", "C INSERT 0 1", "E 42P05", "Z I"})
	var n int
	direct := pgxConnect(t, directURL(pg), pgx.QueryExecModeSimpleProtocol)
	if err := direct.QueryRow(ctx, "select count(*) from "+table).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Fatalf("%d rows committed; the batch failed, so PostgreSQL rolls the insert back", n)
	}
}
