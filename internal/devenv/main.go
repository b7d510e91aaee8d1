// Command devenv runs the sidecar against a throwaway PostgreSQL for `make
// run` when no UPSTREAM is given:
//
//	go run ./internal/devenv -- ./bin/pgsidecar --listen 127.0.0.1:6432
//
// It starts PostgreSQL through internal/testenv, creates the role app
// (password app) and the database app it owns, with a small products table,
// then runs the given command with --upstream pointing at that database as
// app. It forwards SIGINT and SIGTERM to the command, and stops PostgreSQL
// and exits with the command's status when the command exits.
//
// It is a developer tool: nothing imports it, and it keeps no state.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/pgsidecar/pgsidecar/internal/testenv"
)

const demoSQL = `
SET ROLE app;
CREATE TABLE products (
	id          serial PRIMARY KEY,
	name        text NOT NULL,
	category    text NOT NULL,
	price_cents integer NOT NULL CHECK (price_cents >= 0),
	in_stock    boolean NOT NULL DEFAULT true,
	created_at  timestamptz NOT NULL DEFAULT now()
);
INSERT INTO products (name, category, price_cents, in_stock)
SELECT 'Product ' || i,
       (ARRAY['books', 'garden', 'kitchen', 'toys'])[1 + i % 4],
       499 + i * 250,
       i % 5 <> 0
FROM generate_series(1, 20) AS i;
`

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	if len(args) > 0 && args[0] == "--" {
		args = args[1:]
	}
	if len(args) == 0 {
		fmt.Fprintln(os.Stderr, "usage: go run ./internal/devenv -- ./bin/pgsidecar [flags...]")
		return 2
	}

	// Catch signals from the start, so a Ctrl-C during setup still stops
	// PostgreSQL.
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sigs)

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	go func() {
		select {
		case <-sigs:
			cancel()
		case <-ctx.Done():
		}
	}()

	pg, err := setup(ctx)
	if err != nil {
		fmt.Fprintf(os.Stderr, "devenv: %v\n", err)
		if errors.Is(err, testenv.ErrNotInstalled) {
			fmt.Fprintln(os.Stderr, "devenv: run `make deps`, or `make run UPSTREAM=postgres://...` against your own server")
		}
		return 1
	}
	defer func() {
		if err := pg.Stop(); err != nil {
			fmt.Fprintf(os.Stderr, "devenv: stop postgres: %v\n", err)
		}
	}()
	if ctx.Err() != nil { // interrupted during setup
		return 130
	}
	cancel()

	upstream := pg.URL("app", "app", "app")
	cmd := exec.Command(args[0], append(args[1:], "--upstream", upstream)...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	// The child gets its own process group so that a terminal's Ctrl-C
	// reaches it once, through us, and it dies with us.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	fmt.Fprintf(os.Stderr, "devenv: PostgreSQL at %s (superuser: psql %q)\n",
		pg.URL("app", "", "app"), pg.URL(pg.SuperUser, pg.SuperPassword, "postgres"))
	fmt.Fprintf(os.Stderr, "devenv: connect through the sidecar (password app):\n\n    psql \"postgres://app@%s/app\"\n\n", listenAddr(args[1:]))
	if err := cmd.Start(); err != nil {
		fmt.Fprintf(os.Stderr, "devenv: %v\n", err)
		return 1
	}

	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	for {
		select {
		case sig := <-sigs:
			_ = cmd.Process.Signal(sig)
		case err := <-done:
			var exit *exec.ExitError
			switch {
			case err == nil:
				return 0
			case errors.As(err, &exit) && exit.ExitCode() >= 0:
				return exit.ExitCode()
			default:
				fmt.Fprintf(os.Stderr, "devenv: %v\n", err)
				return 1
			}
		}
	}
}

// setup starts PostgreSQL with the app role, database and demo data.
func setup(ctx context.Context) (*testenv.Postgres, error) {
	pg, err := testenv.StartPostgres(ctx, testenv.PostgresOptions{})
	if err != nil {
		return nil, err
	}
	err = pg.CreateRole(ctx, "app", "app")
	if err == nil {
		err = pg.Exec(ctx, "CREATE DATABASE app OWNER app")
	}
	if err == nil {
		err = pg.ExecIn(ctx, "app", demoSQL)
	}
	if err != nil {
		_ = pg.Stop()
		return nil, err
	}
	return pg, nil
}

// listenAddr is the value of the sidecar's --listen flag in args, or its
// default.
func listenAddr(args []string) string {
	addr := "127.0.0.1:6432"
	for i, a := range args {
		switch {
		case (a == "--listen" || a == "-listen") && i+1 < len(args):
			addr = args[i+1]
		case strings.HasPrefix(a, "--listen="), strings.HasPrefix(a, "-listen="):
			addr = a[strings.Index(a, "=")+1:]
		}
	}
	return addr
}
