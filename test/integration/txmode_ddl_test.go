package integration

// Prepared statements across a schema change, in transaction mode. The
// backends' statements are shared between clients, so a statement one
// client prepared before an ALTER TABLE can meet a client that prepared
// after it. Every client must see exactly what it would see on PostgreSQL
// directly: the server's "cached plan must not change result type" (0A000)
// only for a client whose own statement predates the change.

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgsidecar/pgsidecar/pool"
	"github.com/pgsidecar/pgsidecar/proxy"
)

// ddlStep is what one query returned: the row, or the SQLSTATE of the
// error.
type ddlStep struct {
	Row  string
	Code string
}

func (s ddlStep) String() string {
	if s.Code != "" {
		return "error " + s.Code
	}
	return s.Row
}

// selectAll runs "select * from table" with pgx's statement cache and
// returns the row as text.
func selectAll(ctx context.Context, conn *pgx.Conn, table string) ddlStep {
	rows, err := conn.Query(ctx, "select * from "+table)
	var vals []any
	if err == nil {
		for rows.Next() {
			vals, err = rows.Values()
		}
		rows.Close()
		if err == nil {
			err = rows.Err()
		}
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return ddlStep{Code: pe.Code}
	}
	if err != nil {
		return ddlStep{Code: "client: " + err.Error()}
	}
	return ddlStep{Row: fmt.Sprint(vals...)}
}

// ddlScenario plays the same story against connect: an old client
// prepares, the table changes, a new client prepares and runs, the old
// client runs twice (pgx drops its statement after the error).
func ddlScenario(t *testing.T, ctx context.Context, connect func() *pgx.Conn, ddl func(string)) []ddlStep {
	table := uniq("ddl")
	ddl("create table " + table + " (a int); insert into " + table + " values (1)")
	old := connect()
	var steps []ddlStep
	steps = append(steps, selectAll(ctx, old, table))
	ddl("alter table " + table + " add column b int default 7")
	fresh := connect()
	steps = append(steps, selectAll(ctx, fresh, table), selectAll(ctx, fresh, table))
	steps = append(steps, selectAll(ctx, old, table), selectAll(ctx, old, table))
	// A third client after all that, and the new one again.
	third := connect()
	steps = append(steps, selectAll(ctx, third, table), selectAll(ctx, fresh, table))
	return steps
}

func TestTxPreparedStatementsAcrossSchemaChange(t *testing.T) {
	t.Parallel()
	pg := env.Postgres(t)
	ctx := ctxT(t)
	// One backend: every client shares its statements.
	sc := startSidecar(t, pg, sidecarOptions{
		Proxy: proxy.Config{PoolMode: proxy.PoolModeTransaction},
		Pool:  pool.Config{PoolSize: 1},
	})
	ddl := func(sql string) {
		if err := pg.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
	}
	open := func(url string) func() *pgx.Conn {
		return func() *pgx.Conn {
			conn, err := pgx.Connect(ctx, url)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { conn.Close(context.Background()) })
			return conn
		}
	}

	want := ddlScenario(t, ctx, open(pg.URL(pg.SuperUser, pg.SuperPassword, "postgres")), ddl)
	got := ddlScenario(t, ctx, open(sc.SuperURL(pg)), ddl)
	t.Logf("directly: %v; through the sidecar: %v", want, got)
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("through the sidecar: %v\ndirectly:            %v", got, want)
	}
	// The sanity of the story itself: the old client's statement is
	// refused once, nobody else's is.
	if want[3].Code != "0A000" || want[1].Code != "" {
		t.Fatalf("PostgreSQL itself behaved unexpectedly: %v", want)
	}
	if st := sc.Server.Stats(); st.Replans == 0 {
		t.Errorf("Replans = 0: the new client never met the old shared statement (stats %+v)", st)
	}
}
