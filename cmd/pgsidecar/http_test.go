package main

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

type fakeBool bool

func (b fakeBool) Ready() bool     { return bool(b) }
func (b fakeBool) Reachable() bool { return bool(b) }
func (b fakeBool) Started() bool   { return bool(b) }

func get(t *testing.T, mux http.Handler, method, path string) *httptest.ResponseRecorder {
	t.Helper()
	rec := httptest.NewRecorder()
	mux.ServeHTTP(rec, httptest.NewRequest(method, path, nil))
	return rec
}

func decodeStatus(t *testing.T, rec *httptest.ResponseRecorder) probeStatus {
	t.Helper()
	if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
		t.Fatalf("Content-Type = %q, want application/json", ct)
	}
	var st probeStatus
	if err := json.Unmarshal(rec.Body.Bytes(), &st); err != nil {
		t.Fatalf("body %q: %v", rec.Body.String(), err)
	}
	return st
}

func TestLivez(t *testing.T) {
	mux := newMux(health{Proxy: fakeBool(false), Upstream: fakeBool(false), Startup: fakeBool(false)})
	for _, method := range []string{http.MethodGet, http.MethodHead} {
		rec := get(t, mux, method, "/livez")
		if rec.Code != http.StatusOK {
			t.Errorf("%s /livez = %d, want 200 even when nothing is ready", method, rec.Code)
		}
	}
	if body := get(t, mux, http.MethodGet, "/livez").Body.String(); body != "ok\n" {
		t.Errorf("/livez body = %q", body)
	}
	if rec := get(t, mux, http.MethodPost, "/livez"); rec.Code != http.StatusMethodNotAllowed {
		t.Errorf("POST /livez = %d, want 405", rec.Code)
	}
}

func TestReadyz(t *testing.T) {
	tests := []struct {
		name            string
		proxy, upstream bool
		wantCode        int
		wantReasons     []string
	}{
		{"ready", true, true, http.StatusOK, nil},
		{"proxy draining", false, true, http.StatusServiceUnavailable, []string{"proxy"}},
		{"upstream never reached", true, false, http.StatusServiceUnavailable, []string{"upstream"}},
		{"neither", false, false, http.StatusServiceUnavailable, []string{"proxy", "upstream"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mux := newMux(health{Proxy: fakeBool(tt.proxy), Upstream: fakeBool(tt.upstream), Startup: fakeBool(true)})
			rec := get(t, mux, http.MethodGet, "/readyz")
			if rec.Code != tt.wantCode {
				t.Fatalf("code = %d, want %d", rec.Code, tt.wantCode)
			}
			st := decodeStatus(t, rec)
			if len(st.Reasons) != len(tt.wantReasons) {
				t.Fatalf("reasons = %q, want %d mentioning %q", st.Reasons, len(tt.wantReasons), tt.wantReasons)
			}
			for i, want := range tt.wantReasons {
				if !strings.Contains(st.Reasons[i], want) {
					t.Errorf("reason %d = %q, want it to mention %q", i, st.Reasons[i], want)
				}
			}
			wantStatus := "ready"
			if tt.wantCode != http.StatusOK {
				wantStatus = "not ready"
			}
			if st.Status != wantStatus {
				t.Errorf("status = %q, want %q", st.Status, wantStatus)
			}
		})
	}
}

func TestStartupz(t *testing.T) {
	st := newStartupState()
	mux := newMux(health{Proxy: fakeBool(true), Upstream: fakeBool(true), Startup: st})
	check := func(want int) {
		t.Helper()
		if rec := get(t, mux, http.MethodGet, "/startupz"); rec.Code != want {
			t.Fatalf("/startupz = %d (%s), want %d", rec.Code, rec.Body, want)
		}
	}
	check(http.StatusServiceUnavailable)
	st.markProbed()
	check(http.StatusServiceUnavailable) // probed, but the listener is not open
	st.listening.Store(true)
	check(http.StatusOK)
	st.markProbed() // idempotent
	check(http.StatusOK)
}

func TestMuxUnknownPath(t *testing.T) {
	mux := newMux(health{Proxy: fakeBool(true), Upstream: fakeBool(true), Startup: fakeBool(true)})
	if rec := get(t, mux, http.MethodGet, "/nope"); rec.Code != http.StatusNotFound {
		t.Errorf("/nope = %d, want 404", rec.Code)
	}
	// Routes can be added next to the probes, as /metrics will be.
	mux.Handle("GET /metrics", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {}))
	if rec := get(t, mux, http.MethodGet, "/metrics"); rec.Code != http.StatusOK {
		t.Errorf("/metrics = %d, want 200", rec.Code)
	}
}
