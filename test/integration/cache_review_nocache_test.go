package integration

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgsidecar/pgsidecar/pool"
	"github.com/pgsidecar/pgsidecar/proxy"
)

// Control for TestReviewSessionModeStateLeaksToNextClient: the same
// sequence through a session-mode sidecar with the cache off.
func TestCacheReviewSessionModeStateNoCacheControl(t *testing.T) {
	t.Parallel()
	pg := env.Postgres(t)
	sc := startSidecar(t, pg, sidecarOptions{Proxy: proxy.Config{PoolMode: proxy.PoolModeSession}, Pool: pool.Config{PoolSize: 1}})
	sa, table := uniq("rv_nc_sa"), uniq("rv_nc")
	pgExecAll(t, pg,
		"create schema "+sa,
		"create table "+sa+"."+table+" (v text); insert into "+sa+"."+table+" values ('in a')",
		"create table public."+table+" (v text); insert into public."+table+" values ('in public')")
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		pg.Exec(ctx, "drop schema "+sa+" cascade; drop table public."+table)
	})
	url := sc.URL(pg.SuperUser, pg.SuperPassword, "postgres")
	q := "select v from " + table
	a := pgxClient(t, url, pgx.QueryExecModeSimpleProtocol)
	rawExec(t, a, "do $$begin perform set_config('search_path', '"+sa+"', false); end$$")
	expectRows(t, "a", a, []string{"in a"}, q)
	a.conn.Close(ctxT(t))
	time.Sleep(200 * time.Millisecond)
	b := pgxClient(t, url, pgx.QueryExecModeSimpleProtocol)
	expectRows(t, "b, a new session with the default search_path", b, []string{"in public"}, q)
}
