package pool_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/pgsidecar/pgsidecar/pool"
)

func TestCancel(t *testing.T) {
	t.Parallel()
	pg := env.Postgres(t)
	ctx := testCtx(t)
	a := newAdmin(t, ctx, pg)
	m := newManager(t, pool.Config{Upstream: superURL(pg, "postgres"), PoolSize: 1})

	c := acquire(t, ctx, m, superKey)
	defer m.Release(ctx, c)

	type result struct {
		res pool.Result
		err error
	}
	done := make(chan result, 1)
	go func() {
		res, err := c.Exec(ctx, "select pg_sleep(30)")
		done <- result{res, err}
	}()
	// A CancelRequest that arrives before the query starts cancels
	// nothing: wait until the server is running it.
	eventually(t, 10*time.Second, "pg_sleep to be running", func() bool {
		return a.value(fmt.Sprintf("SELECT count(*) FROM pg_stat_activity WHERE pid = %d AND state = 'active' AND query LIKE 'select pg_sleep%%'", c.PID())) == "1"
	})

	cancelCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := c.Cancel(cancelCtx); err != nil {
		t.Fatalf("Cancel: %v", err)
	}
	select {
	case r := <-done:
		if code := pgCode(r.err); code != "57014" {
			t.Errorf("cancelled Exec = %v, want SQLSTATE 57014 (query_canceled)", r.err)
		}
		if r.res.TxStatus != 'I' {
			t.Errorf("cancelled Exec left transaction status %q, want 'I'", r.res.TxStatus)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Exec still running 10s after Cancel")
	}

	// The Conn is still usable.
	res, err := c.Exec(ctx, "SELECT 1")
	if err != nil || res.TxStatus != 'I' {
		t.Errorf("Exec after the cancel = %+v, %v; want transaction status 'I'", res, err)
	}
}

func TestExecResult(t *testing.T) {
	t.Parallel()
	pg := env.Postgres(t)
	ctx := testCtx(t)
	m := newManager(t, pool.Config{Upstream: superURL(pg, "postgres"), PoolSize: 1})
	c := acquire(t, ctx, m, superKey)
	defer m.Release(ctx, c)

	steps := []struct {
		sql      string
		wantCode string
		wantTx   byte
	}{
		{"BEGIN", "", 'T'},
		{"SELECT 1/0", "22012", 'E'},
		{"SELECT 1", "25P02", 'E'}, // in a failed transaction
		{"ROLLBACK", "", 'I'},
		// Several statements, rows and notices are read through to the end.
		{"SELECT generate_series(1, 10000); DO $$ BEGIN RAISE NOTICE 'hi'; END $$", "", 'I'},
		{"", "", 'I'}, // an empty query
	}
	for _, s := range steps {
		res, err := c.Exec(ctx, s.sql)
		if code := pgCode(err); code != s.wantCode || (err != nil && code == "") {
			t.Errorf("Exec(%q) error = %v, want SQLSTATE %q", s.sql, err, s.wantCode)
		}
		if res.TxStatus != s.wantTx {
			t.Errorf("Exec(%q) transaction status = %q, want %q", s.sql, res.TxStatus, s.wantTx)
		}
	}
	// Nothing was left unread: the next exchange lines up.
	if got := mustQuery(t, ctx, c, "SELECT 42"); got != "42" {
		t.Errorf("SELECT 42 = %q after the Exec steps", got)
	}
}

func TestParams(t *testing.T) {
	t.Parallel()
	pg := env.Postgres(t)
	ctx := testCtx(t)
	m := newManager(t, pool.Config{Upstream: superURL(pg, "postgres"), PoolSize: 1})

	c := acquire(t, ctx, m, superKey)
	p := c.Params()
	if p["server_version"] == "" || p["client_encoding"] != "UTF8" {
		t.Errorf("startup Params = %v, want server_version and client_encoding UTF8", p)
	}

	res, err := c.Exec(ctx, "SET application_name = 'x'")
	if err != nil {
		t.Fatal(err)
	}
	if got := c.Params()["application_name"]; got != "x" {
		t.Errorf(`Params()["application_name"] = %q after SET, want "x"`, got)
	}
	if len(res.Changed) != 1 || res.Changed[0].Name != "application_name" || res.Changed[0].Value != "x" {
		t.Errorf("Result.Changed = %+v, want application_name = x", res.Changed)
	}

	// What the holder relays is recorded.
	if _, err := queryConn(t, ctx, c, "SET application_name = 'relayed'"); err != nil {
		t.Fatal(err)
	}
	if got := c.Params()["application_name"]; got != "relayed" {
		t.Errorf(`Params()["application_name"] = %q after NoteParameterStatus, want "relayed"`, got)
	}

	// The reset query's own reports keep Params exact for the next holder.
	m.Release(ctx, c)
	c = acquire(t, ctx, m, superKey)
	defer m.Release(ctx, c)
	if got := c.Params()["application_name"]; got != "" {
		t.Errorf(`Params()["application_name"] = %q after DISCARD ALL, want ""`, got)
	}
}
