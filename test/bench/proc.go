package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/user"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// proc is a proxy process the bench started. It owns the process and one
// goroutine, which waits for it and closes done; stop ends both.
type proc struct {
	name string
	cmd  *exec.Cmd
	port int
	// metricsURL is pgsidecar's /metrics on its --http-listen address; ""
	// for other proxies.
	metricsURL string
	stderr     *headBuffer
	why        func() string // extra reason an exited process gives, e.g. from its log; nil: none
	done       chan struct{} // closed once the process has exited and its output is copied
	waitErr    error         // set before done is closed
	stopOnce   sync.Once
}

// startProc starts cmd, which gets cmd.SysProcAttr.Pdeathsig (SIGKILL when
// unset) if the bench dies. Unless cmd.Stderr is set (a proxy that logs
// there: why should then read its log), its stderr goes to ours, and its
// first lines are kept for exitedError. With SysProcAttr.Setpgid, stop's
// last resort kills the whole process group, children included.
func startProc(name string, cmd *exec.Cmd, port int, why func() string) (*proc, error) {
	p := &proc{name: name, cmd: cmd, port: port, why: why, stderr: &headBuffer{max: 4096}, done: make(chan struct{})}
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	if cmd.SysProcAttr.Pdeathsig == 0 {
		cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	}
	cmd.Stdout = os.Stdout
	if cmd.Stderr == nil {
		cmd.Stderr = io.MultiWriter(os.Stderr, p.stderr)
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	go func() {
		p.waitErr = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

// waitReady polls ready until it holds, the process exits (an
// *exitedError) or 30s pass.
func (p *proc) waitReady(ctx context.Context, ready func() bool) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for !ready() {
		select {
		case <-p.done:
			msg := firstLine(p.stderr.String())
			if msg == "" && p.why != nil {
				msg = p.why()
			}
			if msg == "" {
				msg = p.waitErr.Error()
			}
			return &exitedError{name: p.name, err: p.waitErr, msg: msg}
		case <-ctx.Done():
			return fmt.Errorf("%s did not become ready: %w", p.name, ctx.Err())
		case <-t.C:
		}
	}
	return nil
}

// stop sends SIGTERM, kills after 5s, and waits for the exit. It is
// idempotent.
func (p *proc) stop() {
	p.stopOnce.Do(func() {
		select {
		case <-p.done:
			return
		default:
		}
		p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(5 * time.Second):
			if p.cmd.SysProcAttr.Setpgid {
				syscall.Kill(-p.pid(), syscall.SIGKILL)
			}
			p.cmd.Process.Kill()
			<-p.done
		}
	})
}

// exitedError is a proxy that exited before it was ready, typically because
// it refused its configuration.
type exitedError struct {
	name string
	err  error  // from Wait
	msg  string // the first line of its error
}

func (e *exitedError) Error() string {
	return fmt.Sprintf("%s exited before it was ready (%v): %s", e.name, e.err, e.msg)
}

func (e *exitedError) Unwrap() error { return e.err }

// firstLine is the first non-empty line of s. A line that only introduces a
// list ("pgsidecar: invalid configuration:") is joined with the list's
// first item, which is what the reader needs.
func firstLine(s string) string {
	var lines []string
	for l := range strings.SplitSeq(s, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			lines = append(lines, l)
		}
	}
	if len(lines) == 0 {
		return ""
	}
	if strings.HasSuffix(lines[0], ":") && len(lines) > 1 {
		return lines[0] + " " + strings.TrimPrefix(lines[1], "- ")
	}
	return lines[0]
}

// headBuffer keeps the first max bytes written to it.
type headBuffer struct {
	max int
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *headBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if room := b.max - b.buf.Len(); room > 0 {
		b.buf.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

func (b *headBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// raiseNoFile raises the open-files limit of this process, and so of the
// servers it starts, to at least need: past the hard limit when we may
// (root), else up to it. It returns the new soft limit. (Go raises its own
// soft limit at startup but hands children the original one, unless the
// program calls Setrlimit itself, as here.)
func raiseNoFile(need uint64) (uint64, error) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0, fmt.Errorf("getrlimit NOFILE: %w", err)
	}
	want := syscall.Rlimit{Cur: max(lim.Cur, need), Max: max(lim.Max, need)}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want); err != nil {
		want = syscall.Rlimit{Cur: max(lim.Cur, min(need, lim.Max)), Max: lim.Max}
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want); err != nil {
			return 0, fmt.Errorf("setrlimit NOFILE %d: %w", want.Cur, err)
		}
	}
	if want.Cur < need {
		fmt.Printf("warning: open files limit %d is below the %d this run may need (raise the hard limit, or lower -mem-clients)\n", want.Cur, need)
	}
	return want.Cur, nil
}

// asPostgresWhenRoot makes cmd run as the postgres user when the bench runs
// as root: PgBouncer and pgpool-II refuse root, as PostgreSQL does.
func asPostgresWhenRoot(cmd *exec.Cmd, what string) error {
	if os.Geteuid() != 0 {
		return nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return fmt.Errorf("%s is run as postgres when the bench is root, and there is no postgres user: %w", what, err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Credential = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	return nil
}

// startListening starts cmd and waits until it accepts TCP connections on
// port.
func startListening(ctx context.Context, name string, cmd *exec.Cmd, port int, why func() string) (*proc, error) {
	p, err := startProc(name, cmd, port, why)
	if err != nil {
		return nil, err
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	if err := p.waitReady(ctx, func() bool {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
		}
		return err == nil
	}); err != nil {
		p.stop()
		return nil, err
	}
	return p, nil
}
