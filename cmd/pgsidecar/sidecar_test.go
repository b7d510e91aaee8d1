package main

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pgsidecar/pgsidecar/proxy"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

func TestBackoffDelay(t *testing.T) {
	b := backoff{First: 250 * time.Millisecond, Max: 2 * time.Second}
	var got []time.Duration
	for attempt := 1; attempt <= 6; attempt++ {
		got = append(got, b.delay(attempt))
	}
	want := []time.Duration{250 * time.Millisecond, 500 * time.Millisecond, time.Second, 2 * time.Second, 2 * time.Second, 2 * time.Second}
	if !slices.Equal(got, want) {
		t.Errorf("delays = %v, want %v", got, want)
	}
	if d := b.delay(1000); d != 2*time.Second {
		t.Errorf("delay(1000) = %v, want the cap", d)
	}
}

// fakeUpstream fails its first failures probes, then succeeds.
type fakeUpstream struct {
	failures  int32
	probes    atomic.Int32
	reachable atomic.Bool
	closed    atomic.Bool
}

func (f *fakeUpstream) Probe(ctx context.Context) error {
	if f.probes.Add(1) <= f.failures {
		return errors.New("connection refused")
	}
	f.reachable.Store(true)
	return nil
}
func (f *fakeUpstream) Reachable() bool { return f.reachable.Load() }
func (f *fakeUpstream) Close()          { f.closed.Store(true) }

// recordSleep returns at once and records what it was asked to wait.
type recordSleep struct {
	mu     sync.Mutex
	delays []time.Duration
}

func (r *recordSleep) sleep(ctx context.Context, d time.Duration) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.delays = append(r.delays, d)
	return ctx.Err()
}

func TestProbeUntilReachableRetriesWithBackoff(t *testing.T) {
	up := &fakeUpstream{failures: 3}
	var rec recordSleep
	b := backoff{First: time.Second, Max: 3 * time.Second}
	if err := probeUntilReachable(t.Context(), up, b, rec.sleep, discardLogger()); err != nil {
		t.Fatalf("probeUntilReachable: %v", err)
	}
	if n := up.probes.Load(); n != 4 {
		t.Errorf("probes = %d, want 4", n)
	}
	want := []time.Duration{time.Second, 2 * time.Second, 3 * time.Second}
	if !slices.Equal(rec.delays, want) {
		t.Errorf("waits = %v, want %v", rec.delays, want)
	}
}

func TestProbeUntilReachableStopsWithContext(t *testing.T) {
	up := &fakeUpstream{failures: 1 << 30}
	ctx, cancel := context.WithCancel(t.Context())
	sleep := func(ctx context.Context, d time.Duration) error {
		if up.probes.Load() == 5 {
			cancel()
		}
		return ctx.Err()
	}
	err := probeUntilReachable(ctx, up, backoff{First: time.Second, Max: time.Second}, sleep, discardLogger())
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	if n := up.probes.Load(); n != 5 {
		t.Errorf("probes = %d, want 5", n)
	}
}

type shutdownCall struct {
	hasDeadline bool
	budget      time.Duration // time left until the deadline at the call
	expired     bool          // ctx already done at the call
}

// fakeProxy serves until its context ends or Shutdown is called.
type fakeProxy struct {
	serveErr error // returned by Serve at once when set
	cut      int

	serving   chan struct{} // closed when Serve starts blocking
	stopped   chan struct{} // closed by Shutdown
	stopOnce  sync.Once
	ready     atomic.Bool
	shutdowns chan shutdownCall
}

func newFakeProxy() *fakeProxy {
	return &fakeProxy{serving: make(chan struct{}), stopped: make(chan struct{}), shutdowns: make(chan shutdownCall, 4)}
}

func (f *fakeProxy) Serve(ctx context.Context, ln net.Listener) error {
	if f.serveErr != nil {
		return f.serveErr
	}
	f.ready.Store(true)
	close(f.serving)
	select {
	case <-ctx.Done():
	case <-f.stopped:
	}
	return proxy.ErrServerClosed
}

func (f *fakeProxy) Ready() bool { return f.ready.Load() }

func (f *fakeProxy) Shutdown(ctx context.Context) (int, error) {
	f.ready.Store(false)
	call := shutdownCall{expired: ctx.Err() != nil}
	if d, ok := ctx.Deadline(); ok {
		call.hasDeadline, call.budget = true, time.Until(d)
	}
	f.shutdowns <- call
	f.stopOnce.Do(func() { close(f.stopped) })
	return f.cut, nil
}

type sidecarHarness struct {
	t      *testing.T
	proxy  *fakeProxy
	up     *fakeUpstream
	sc     *sidecar
	base   string // http://host:port of the health server
	client *http.Client
	cancel context.CancelCauseFunc
	done   chan struct{} // closed when run returned err
	err    error
}

func startSidecar(t *testing.T, p *fakeProxy, up *fakeUpstream) *sidecarHarness {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	httpLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sc := newSidecar(p, up, discardLogger())
	sc.shutdownTimeout, sc.shutdownGrace = 30*time.Second, 2*time.Second
	sc.sleep = func(ctx context.Context, _ time.Duration) error { return ctx.Err() }
	ctx, cancel := context.WithCancelCause(context.Background())
	h := &sidecarHarness{
		t: t, proxy: p, up: up, sc: sc, cancel: cancel,
		base:   "http://" + httpLn.Addr().String(),
		client: &http.Client{Transport: &http.Transport{DisableKeepAlives: true}},
		done:   make(chan struct{}),
	}
	go func() {
		h.err = sc.run(ctx, ln, httpLn)
		close(h.done)
	}()
	t.Cleanup(func() {
		cancel(errInterrupted)
		<-h.done
		h.client.CloseIdleConnections()
	})
	return h
}

func (h *sidecarHarness) status(path string) int {
	h.t.Helper()
	resp, err := h.client.Get(h.base + path)
	if err != nil {
		h.t.Fatalf("GET %s: %v", path, err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

func (h *sidecarHarness) wait() error {
	<-h.done
	return h.err
}

func (h *sidecarHarness) stop(cause error) error {
	h.cancel(cause)
	return h.wait()
}

func TestSidecarGracefulStop(t *testing.T) {
	p, up := newFakeProxy(), &fakeUpstream{failures: 2}
	p.cut = 3
	h := startSidecar(t, p, up)
	<-p.serving
	<-h.sc.startup.probed

	if code := h.status("/startupz"); code != http.StatusOK {
		t.Errorf("/startupz = %d after the probe succeeded, want 200", code)
	}
	if code := h.status("/readyz"); code != http.StatusOK {
		t.Errorf("/readyz = %d while serving, want 200", code)
	}
	if code := h.status("/livez"); code != http.StatusOK {
		t.Errorf("/livez = %d, want 200", code)
	}

	if err := h.stop(errTerminated); err != nil {
		t.Fatalf("run after SIGTERM = %v, want nil (exit 0)", err)
	}
	call := <-p.shutdowns
	if call.expired || !call.hasDeadline {
		t.Fatalf("graceful Shutdown got %+v, want a live context with a deadline", call)
	}
	if max := 32 * time.Second; call.budget > max || call.budget < max-5*time.Second {
		t.Errorf("Shutdown budget = %v, want about shutdown_grace + shutdown_timeout = %v", call.budget, max)
	}
	if !up.closed.Load() {
		t.Error("pool not closed")
	}
	if _, err := h.client.Get(h.base + "/livez"); err == nil {
		t.Error("health server still answering after stop")
	}
}

func TestSidecarInterruptStopsAtOnce(t *testing.T) {
	p, up := newFakeProxy(), &fakeUpstream{failures: 1 << 30} // upstream never comes up
	h := startSidecar(t, p, up)
	<-p.serving
	if code := h.status("/startupz"); code != http.StatusServiceUnavailable {
		t.Errorf("/startupz = %d before any probe succeeded, want 503", code)
	}
	if code := h.status("/readyz"); code != http.StatusServiceUnavailable {
		t.Errorf("/readyz = %d with the upstream unreached, want 503", code)
	}

	if err := h.stop(errInterrupted); err != nil {
		t.Fatalf("run after SIGINT = %v, want nil (exit 0)", err)
	}
	if call := <-p.shutdowns; !call.expired {
		t.Errorf("SIGINT Shutdown got %+v, want an already-expired context", call)
	}
	if !up.closed.Load() {
		t.Error("pool not closed")
	}
}

func TestSidecarServeFailure(t *testing.T) {
	p, up := newFakeProxy(), &fakeUpstream{}
	p.serveErr = errors.New("accept: too many open files")
	h := startSidecar(t, p, up)
	err := h.wait()
	if !errors.Is(err, p.serveErr) {
		t.Fatalf("run = %v, want the Serve error", err)
	}
	if call := <-p.shutdowns; !call.expired {
		t.Errorf("Shutdown after a failure got %+v, want an expired context", call)
	}
	if !up.closed.Load() {
		t.Error("pool not closed")
	}
}
