package main

import (
	"encoding/json"
	"net/http"
	"sync"
	"sync/atomic"
)

// readiness is what /readyz needs from the proxy: *proxy.Server.
type readiness interface{ Ready() bool }

// reachability is what /readyz needs from the pool: *pool.Manager.
type reachability interface{ Reachable() bool }

// startup is what /startupz needs: *startupState.
type startup interface{ Started() bool }

// health gathers the sources the probe endpoints read.
type health struct {
	Proxy    readiness
	Upstream reachability
	Startup  startup
}

// newMux routes the probe endpoints. The caller may add more routes (for
// example /metrics) to the returned mux.
//
//	/livez     200 while the process can answer at all.
//	/readyz    200 when the proxy accepts clients and the upstream has been
//	           reached; 503 with a JSON reason otherwise (also while draining).
//	/startupz  200 once the listener is open and the first upstream probe
//	           succeeded; 503 before.
func newMux(h health) *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /livez", func(w http.ResponseWriter, _ *http.Request) {
		writeText(w, http.StatusOK, "ok\n")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		var reasons []string
		if !h.Proxy.Ready() {
			reasons = append(reasons, "proxy is not accepting clients")
		}
		if !h.Upstream.Reachable() {
			reasons = append(reasons, "upstream has not been reached")
		}
		writeStatus(w, reasons, "ready", "not ready")
	})
	mux.HandleFunc("GET /startupz", func(w http.ResponseWriter, _ *http.Request) {
		var reasons []string
		if !h.Startup.Started() {
			reasons = append(reasons, "waiting for the listener and the first successful upstream probe")
		}
		writeStatus(w, reasons, "started", "starting")
	})
	return mux
}

// probeStatus is the JSON body of /readyz and /startupz.
type probeStatus struct {
	Status  string   `json:"status"`
	Reasons []string `json:"reasons,omitempty"`
}

func writeStatus(w http.ResponseWriter, reasons []string, ok, notOK string) {
	code, st := http.StatusOK, probeStatus{Status: ok}
	if len(reasons) > 0 {
		code, st = http.StatusServiceUnavailable, probeStatus{Status: notOK, Reasons: reasons}
	}
	body, _ := json.Marshal(st) // cannot fail: strings only
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	w.Write(append(body, '\n'))
}

func writeText(w http.ResponseWriter, code int, body string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	w.Write([]byte(body))
}

// startupState records the two facts /startupz waits for. It is safe for
// concurrent use; build it with newStartupState.
type startupState struct {
	listening atomic.Bool
	probeOnce sync.Once
	probed    chan struct{} // closed by markProbed
}

func newStartupState() *startupState {
	return &startupState{probed: make(chan struct{})}
}

// markProbed records the first successful upstream probe.
func (s *startupState) markProbed() { s.probeOnce.Do(func() { close(s.probed) }) }

// Started reports whether the listener is open and the upstream was reached.
func (s *startupState) Started() bool {
	select {
	case <-s.probed:
		return s.listening.Load()
	default:
		return false
	}
}
