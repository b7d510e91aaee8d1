// Command pgsidecar is a PostgreSQL wire-protocol sidecar proxy: it pools
// backend connections for the applications in its pod and serves
// Kubernetes probes over HTTP.
//
// This package owns everything process-wide and nothing else does:
// configuration (flags > PGSIDECAR_* environment > YAML file > defaults,
// read with viper, which no other package imports), the logger, signals,
// the health endpoints and exit codes (0 ok, 1 runtime failure, 2 bad
// configuration). It builds the pool and the proxy and passes them down.
//
// SIGTERM stops gracefully: /readyz turns 503, the proxy keeps accepting
// for shutdown_grace, drains for at most shutdown_timeout, then cuts what is
// left. SIGINT stops at once. A second signal gets the default action and
// kills the process.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

// version is set at build time: -ldflags "-X main.version=v1.2.3".
var version = "dev"

func main() {
	ctx, stop := signalContext(context.Background())
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// signalContext returns a context cancelled by the first SIGTERM (cause
// errTerminated) or SIGINT (cause errInterrupted). After that first signal
// the handler is removed, so a second one terminates the process. stop
// releases the handler and its goroutine.
func signalContext(parent context.Context) (ctx context.Context, stop func()) {
	ctx, cancel := context.WithCancelCause(parent)
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, os.Interrupt)
	done := make(chan struct{})
	go func() {
		select {
		case sig := <-sigs:
			signal.Stop(sigs)
			if sig == os.Interrupt {
				cancel(errInterrupted)
			} else {
				cancel(errTerminated)
			}
		case <-done:
		}
	}()
	return ctx, func() {
		signal.Stop(sigs)
		close(done)
		cancel(context.Canceled)
	}
}
