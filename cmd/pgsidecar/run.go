package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/pgsidecar/pgsidecar/metrics"
	"github.com/pgsidecar/pgsidecar/pool"
	"github.com/pgsidecar/pgsidecar/proxy"
	"github.com/pgsidecar/pgsidecar/resultcache"
	"github.com/pgsidecar/pgsidecar/resultcache/redisstore"
)

// Exit codes.
const (
	exitOK      = 0
	exitRuntime = 1 // a failure while starting or running, e.g. listen failed
	exitConfig  = 2 // the configuration is invalid
)

// exitError is a failure and the exit code it ends the process with.
type exitError struct {
	code int
	err  error
	// logged says the failure already went through the logger.
	logged bool
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func configError(err error) error  { return &exitError{code: exitConfig, err: err} }
func runtimeError(err error) error { return &exitError{code: exitRuntime, err: err} }

// Causes main cancels run's context with. Any other cancellation is treated
// like errTerminated.
var (
	// errTerminated (SIGTERM) asks for a graceful stop: report not ready,
	// drain for at most shutdown_grace + shutdown_timeout, then exit 0.
	errTerminated = errors.New("terminated")
	// errInterrupted (SIGINT) asks to stop at once: cut every connection,
	// close the pool, exit 0.
	errInterrupted = errors.New("interrupted")
)

// Timeouts of the sidecar's own plumbing.
const (
	httpReadHeaderTimeout = 5 * time.Second
	httpShutdownTimeout   = time.Second
	// goroutineExitTimeout bounds the wait for Serve, the HTTP server and the
	// probe to return once they were told to stop.
	goroutineExitTimeout = 5 * time.Second
)

// run is the whole command: it parses args, builds and validates the
// configuration, starts the sidecar and blocks until ctx is cancelled (see
// errTerminated and errInterrupted) or the sidecar fails. It returns the
// process exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	err := start(ctx, args, stdout, stderr)
	if err == nil {
		return exitOK
	}
	code := exitRuntime
	var ee *exitError
	if errors.As(err, &ee) {
		code = ee.code
		if ee.logged {
			return code
		}
	}
	if code == exitConfig {
		fmt.Fprintln(stderr, "pgsidecar: invalid configuration:")
		for _, e := range flatten(err) {
			fmt.Fprintf(stderr, "  - %v\n", e)
		}
	} else {
		fmt.Fprintf(stderr, "pgsidecar: %v\n", err)
	}
	return code
}

func start(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var opts cliOptions
	fs := newFlagSet(&opts)
	fs.SetOutput(io.Discard) // errors are reported by run, usage by --help
	if err := fs.Parse(args); err != nil {
		return configError(fmt.Errorf("%w (see pgsidecar --help)", err))
	}
	if fs.NArg() > 0 {
		return configError(fmt.Errorf("unexpected arguments %q (see pgsidecar --help)", fs.Args()))
	}
	if opts.help {
		fmt.Fprintf(stdout, "Usage: pgsidecar [flags]\n\n"+
			"pgsidecar is a PostgreSQL connection-pooling sidecar. Each setting comes from its flag,\n"+
			"else its %s* environment variable, else the --config YAML file, else its default.\n\n"+
			"Flags:\n%s", envPrefix, fs.FlagUsages())
		return nil
	}
	if opts.version {
		fmt.Fprintf(stdout, "pgsidecar %s\n", version)
		return nil
	}

	cfg, err := loadConfig(fs, opts)
	if err != nil {
		return configError(err)
	}
	b, err := cfg.build()
	if err != nil {
		return configError(err)
	}
	if opts.printConfig {
		fmt.Fprint(stdout, cfg.String())
		return nil
	}

	log := newLogger(stderr, b)
	for _, w := range b.warnings {
		log.Warn(w)
	}
	log.Info("starting pgsidecar", "version", version, "config", cfg)

	b.pool.Logger = log.With("component", "pool")
	manager, err := pool.New(b.pool)
	if err != nil {
		return configError(err)
	}
	defer manager.Close() // also closed in order by sidecar.run; idempotent
	var cache *resultcache.Cache
	if b.cacheOn {
		if cache, err = openCache(ctx, b, log); err != nil {
			return runtimeError(err)
		}
		defer cache.Close()
		b.proxy.Cache = cache
	}
	b.proxy.Logger = log.With("component", "proxy")
	server, err := proxy.New(b.proxy, manager)
	if err != nil {
		return configError(err)
	}

	ln, err := server.Listen()
	if err != nil {
		return runtimeError(fmt.Errorf("listen for clients: %w", err))
	}
	httpLn, err := net.Listen("tcp", cfg.HTTPListen)
	if err != nil {
		ln.Close()
		return runtimeError(fmt.Errorf("listen for health checks: %w", err))
	}

	sc := newSidecar(server, manager, log)
	sc.metrics = metricsHandler(server, cache)
	sc.shutdownTimeout, sc.shutdownGrace = cfg.ShutdownTimeout, cfg.ShutdownGrace
	if err := sc.run(ctx, ln, httpLn); err != nil {
		log.Error("pgsidecar failed", "err", err)
		return &exitError{code: exitRuntime, err: err, logged: true}
	}
	log.Info("pgsidecar stopped")
	return nil
}

func newLogger(w io.Writer, b built) *slog.Logger {
	opts := &slog.HandlerOptions{Level: b.logLevel}
	if b.logJSON {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// flatten lists the leaves of a tree of errors.Join results.
func flatten(err error) []error {
	if joined, ok := err.(interface{ Unwrap() []error }); ok {
		var out []error
		for _, e := range joined.Unwrap() {
			out = append(out, flatten(e)...)
		}
		return out
	}
	var ee *exitError
	if errors.As(err, &ee) && ee.err != err {
		return flatten(ee.err)
	}
	// mapstructure and others join with newlines inside one error.
	var out []error
	for _, line := range strings.Split(err.Error(), "\n") {
		if line = strings.TrimSpace(line); line != "" {
			out = append(out, errors.New(line))
		}
	}
	return out
}

// proxyServer is what the sidecar needs from *proxy.Server.
type proxyServer interface {
	readiness
	Serve(ctx context.Context, ln net.Listener) error
	Shutdown(ctx context.Context) (cut int, err error)
}

// upstream is what the sidecar needs from *pool.Manager.
type upstream interface {
	prober
	reachability
	Close()
}

// sidecar runs the proxy, the health server and the startup probe, and
// stops them in order. Build it with newSidecar; run it once.
type sidecar struct {
	proxy    proxyServer
	upstream upstream
	log      *slog.Logger

	// shutdownTimeout and shutdownGrace bound a graceful stop together:
	// the proxy keeps accepting (not ready) for the grace, then drains.
	shutdownTimeout time.Duration
	shutdownGrace   time.Duration
	backoff         backoff
	sleep           sleepFunc

	startup *startupState
	// metrics serves /metrics; nil: no such route.
	metrics http.Handler
}

func newSidecar(p proxyServer, u upstream, log *slog.Logger) *sidecar {
	return &sidecar{
		proxy:    p,
		upstream: u,
		log:      log,
		backoff:  backoff{First: probeFirstDelay, Max: probeMaxDelay},
		sleep:    sleepCtx,
		startup:  newStartupState(),
	}
}

// run serves clients on ln and health checks on httpLn until ctx is
// cancelled (nil error) or the proxy or health server fails (an error).
// Either way, every goroutine it started has returned, or been given
// goroutineExitTimeout, when it returns.
func (s *sidecar) run(ctx context.Context, ln, httpLn net.Listener) error {
	s.startup.listening.Store(true)
	mux := newMux(health{Proxy: s.proxy, Upstream: s.upstream, Startup: s.startup})
	if s.metrics != nil {
		mux.Handle("GET /metrics", s.metrics)
	}
	httpSrv := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: httpReadHeaderTimeout,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}

	var wg sync.WaitGroup
	// Buffered so that a goroutine never blocks on a result nobody reads.
	httpErr := make(chan error, 1)
	serveErr := make(chan error, 1)

	wg.Go(func() { httpErr <- httpSrv.Serve(httpLn) })

	probeCtx, stopProbe := context.WithCancel(ctx)
	defer stopProbe()
	wg.Go(func() {
		if probeUntilReachable(probeCtx, s.upstream, s.backoff, s.sleep, s.log) == nil {
			s.startup.markProbed()
		}
	})

	// Serve's context is the root of every client connection: it is
	// cancelled only after Shutdown has drained, not by the signal.
	serveCtx, cancelServe := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelServe()
	wg.Go(func() { serveErr <- s.proxy.Serve(serveCtx, ln) })

	s.log.Info("listening", "clients", ln.Addr().String(), "http", httpLn.Addr().String())

	var failure error
	graceful := false
	select {
	case <-ctx.Done():
		cause := context.Cause(ctx)
		graceful = !errors.Is(cause, errInterrupted)
		s.log.Info("stopping", "signal", cause.Error(), "graceful", graceful)
	case err := <-serveErr:
		failure = fmt.Errorf("proxy stopped serving: %w", err)
	case err := <-httpErr:
		failure = fmt.Errorf("health server stopped: %w", err)
	}
	stopProbe()

	s.shutdownProxy(ctx, graceful)
	cancelServe()
	ln.Close() // in case Serve never took it; a second Close is harmless
	s.upstream.Close()
	s.log.Info("upstream pool closed")

	if graceful {
		hctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), httpShutdownTimeout)
		if err := httpSrv.Shutdown(hctx); err != nil {
			httpSrv.Close()
		}
		cancel()
	} else {
		httpSrv.Close()
	}

	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	t := time.NewTimer(goroutineExitTimeout)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		s.log.Error("proxy, health server or probe did not stop in time", "waited", goroutineExitTimeout)
	}
	return failure
}

// shutdownProxy stops the proxy: gracefully within grace + timeout, or at
// once (with an already-expired context), and logs how many client
// connections were cut.
func (s *sidecar) shutdownProxy(parent context.Context, graceful bool) {
	base := context.WithoutCancel(parent)
	var (
		ctx    context.Context
		cancel context.CancelFunc
	)
	if graceful {
		ctx, cancel = context.WithTimeout(base, s.shutdownGrace+s.shutdownTimeout)
	} else {
		ctx, cancel = context.WithCancel(base)
		cancel()
	}
	defer cancel()
	cut, err := s.proxy.Shutdown(ctx)
	switch {
	case err != nil && graceful:
		s.log.Warn("proxy drain did not finish in time", "connections_cut", cut, "err", err)
	case cut > 0:
		s.log.Warn("proxy stopped", "connections_cut", cut)
	default:
		s.log.Info("proxy stopped", "connections_cut", 0)
	}
}

// openCache builds the result cache, with its Redis tier when one is
// configured. A Redis that cannot be reached at start is not fatal: the
// cache treats it as it treats Redis failing later (misses, and tables not
// trusted there until their versions reach it).
func openCache(ctx context.Context, b built, log *slog.Logger) (*resultcache.Cache, error) {
	cfg := b.cache
	cfg.Logger = log.With("component", "cache")
	var remote resultcache.Remote
	if b.redisURL != "" {
		store, err := redisstore.New(ctx, b.redisURL)
		if err != nil {
			return nil, fmt.Errorf("redis: %w", err)
		}
		remote = store
	}
	return resultcache.New(cfg, remote)
}

// metricsHandler serves the Prometheus registry built here, in main: Go
// runtime and process metrics, and the cache's when it is on.
func metricsHandler(server *proxy.Server, cache *resultcache.Cache) http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if cache != nil {
		reg.MustRegister(metrics.NewCacheCollector(cache, func() map[string]int64 { return server.Stats().CacheBypass }))
	}
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{})
}
