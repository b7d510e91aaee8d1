package integration

import (
	"testing"

	"github.com/jackc/pgx/v5"
)

func TestSmokeSessionMode(t *testing.T) {
	pg := env.Postgres(t)
	sc := startSidecar(t, pg, sidecarOptions{})
	ctx := ctxT(t)
	conn, err := pgx.Connect(ctx, sc.SuperURL(pg, "application_name=smoke"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var n int
	var app string
	if err := conn.QueryRow(ctx, "select $1::int + 1, current_setting('application_name')", 41).Scan(&n, &app); err != nil {
		t.Fatal(err)
	}
	if n != 42 || app != "smoke" {
		t.Fatalf("got %d %q", n, app)
	}
}
