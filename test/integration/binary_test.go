package integration

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// TestBinary runs the built pgsidecar command as a process. The binary is
// built once, into this test's directory, and shared by the subtests.
func TestBinary(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the pgsidecar binary: skipped in -short mode")
	}
	t.Parallel()
	bin := filepath.Join(t.TempDir(), "pgsidecar")
	build := exec.Command("go", "build", "-o", bin, "../../cmd/pgsidecar")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}

	t.Run("serves and stops on SIGTERM", func(t *testing.T) {
		t.Parallel()
		testBinarySIGTERM(t, bin)
	})
	t.Run("invalid configuration", func(t *testing.T) {
		t.Parallel()
		code, stdout, stderr := runBinary(t, bin, "--pool-size", "-1", "--auth-method", "nope", "--upstream", "postgres://127.0.0.1:1/")
		if code != 2 {
			t.Fatalf("exit code %d, want 2\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
		}
		for _, want := range []string{"pool_size", "-1", "auth_method", `"nope"`} {
			if !strings.Contains(stderr, want) {
				t.Errorf("stderr does not mention %s:\n%s", want, stderr)
			}
		}
	})
	t.Run("version", func(t *testing.T) {
		t.Parallel()
		code, stdout, stderr := runBinary(t, bin, "--version")
		if code != 0 {
			t.Fatalf("exit code %d, want 0\nstderr:\n%s", code, stderr)
		}
		if !strings.HasPrefix(stdout, "pgsidecar ") {
			t.Fatalf("--version printed %q", stdout)
		}
	})
}

// binaryEnv is the environment without PGSIDECAR_* settings, which would
// override the defaults the test relies on.
func binaryEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PGSIDECAR_") {
			env = append(env, kv)
		}
	}
	return env
}

// runBinary runs bin to completion (within 10s) and returns its exit code
// and output.
func runBinary(t *testing.T, bin string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = binaryEnv()
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		code = ee.ExitCode()
	default:
		t.Fatalf("run %s: %v", bin, err)
	}
	return code, out.String(), errOut.String()
}

// freePort returns a loopback port that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// syncBuffer is a bytes.Buffer safe to write from the process's output
// copier while the test reads it.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func testBinarySIGTERM(t *testing.T, bin string) {
	pg := env.Postgres(t)
	listen := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	httpListen := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	cmd := exec.Command(bin,
		"--listen", listen,
		"--http-listen", httpListen,
		"--upstream", pg.URL(pg.SuperUser, pg.SuperPassword, "postgres"),
		"--shutdown-grace", "0s",
		"--log-level", "debug",
	)
	cmd.Env = binaryEnv()
	logs := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// exited is closed when the process has exited; waitErr is then set.
	exited := make(chan struct{})
	var waitErr error
	go func() { waitErr = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		select {
		case <-exited:
		default:
			cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			t.Logf("pgsidecar output:\n%s", logs)
		}
	})

	client := &http.Client{Timeout: time.Second}
	readyz := "http://" + httpListen + "/readyz"
	eventually(t, 15*time.Second, "/readyz 200", func() (bool, error) {
		select {
		case <-exited:
			return false, fmt.Errorf("pgsidecar exited before it was ready: %v", waitErr)
		default:
		}
		resp, err := client.Get(readyz)
		if err != nil {
			return false, nil
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, nil
	})

	ctx := ctxT(t)
	conn, err := pgx.Connect(ctx, fmt.Sprintf("postgres://%s@%s/postgres?sslmode=disable&application_name=bin", pg.SuperUser, listen))
	if err != nil {
		t.Fatal(err)
	}
	var n int
	var app string
	if err := conn.QueryRow(ctx, "select $1::int * 2, current_setting('application_name')", 21).Scan(&n, &app); err != nil {
		t.Fatal(err)
	}
	if n != 42 || app != "bin" {
		t.Fatalf("query through the binary: %d %q", n, app)
	}
	conn.Close(ctx)

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-exited:
		if waitErr != nil {
			t.Fatalf("exit after SIGTERM: %v, want status 0", waitErr)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("still running 5s after SIGTERM")
	}
	if out := logs.String(); !strings.Contains(out, "pgsidecar stopped") {
		t.Errorf("no clean stop in the log:\n%s", out)
	}
}
