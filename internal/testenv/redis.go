package testenv

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

// Redis is a running Redis server: one started by StartRedis, or an existing
// one reused by SharedRedis. The exported fields never change.
type Redis struct {
	// Host is the address the server listens on: 127.0.0.1 for a started
	// server.
	Host string
	// Port is the TCP port. It stays the same across Down and Up.
	Port int

	rawURL string // a reused server's URL, returned as is by URL
	lifecycle
	bin  string
	args []string
}

// StartRedis starts redis-server on 127.0.0.1 on a free port with no
// persistence, its working directory and log in a temporary directory, and
// returns once it answers PING. The server lives until Stop, whatever happens
// to ctx. An error wraps ErrNotInstalled when redis-server cannot be found.
func StartRedis(ctx context.Context) (*Redis, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	bin, err := redisBinary()
	if err != nil {
		return nil, err
	}
	dir, err := makeServerDir("pgsidecar-redis-", nil)
	if err != nil {
		return nil, err
	}
	r := &Redis{Host: "127.0.0.1", bin: bin}
	// Redis keeps no data here, so an Up after a Down starts empty.
	r.lifecycle = lifecycle{dir: dir, stopSig: syscall.SIGTERM, stopGrace: 10 * time.Second, upTimeout: 30 * time.Second, start: r.up}
	for attempt := 1; ; attempt++ {
		if r.Port, err = FreePort(); err != nil {
			break
		}
		r.args = []string{
			"--port", strconv.Itoa(r.Port),
			"--bind", r.Host,
			"--save", "",
			"--appendonly", "no",
			"--daemonize", "no",
			"--dir", dir,
			"--logfile", "",
		}
		err = r.up(ctx)
		if err == nil {
			return r, nil
		}
		if !errors.Is(err, errExitedEarly) || attempt == 3 {
			break
		}
	}
	os.RemoveAll(dir)
	return nil, err
}

// redisBinary finds redis-server.
func redisBinary() (string, error) {
	if path := os.Getenv(EnvRedisServer); path != "" {
		if fi, err := os.Stat(path); err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
			return "", fmt.Errorf("%s=%s is not an executable: %w", EnvRedisServer, path, ErrNotInstalled)
		}
		return path, nil
	}
	if path, err := exec.LookPath("redis-server"); err == nil {
		return path, nil
	}
	for _, path := range []string{"/usr/bin/redis-server", "/usr/sbin/redis-server", "/usr/local/bin/redis-server"} {
		if _, err := os.Stat(path); err == nil {
			return path, nil
		}
	}
	return "", fmt.Errorf("redis-server not found on PATH (Debian: apt-get install redis-server): %w", ErrNotInstalled)
}

// Addr is host:port, for a Redis client's Addr option.
func (r *Redis) Addr() string { return net.JoinHostPort(r.Host, strconv.Itoa(r.Port)) }

// URL is a redis:// URL for database 0, or the reused server's URL as given.
func (r *Redis) URL() string {
	if r.external {
		return r.rawURL
	}
	return "redis://" + r.Addr() + "/0"
}

// LogFile is the path of the server's log. It is removed by Stop. Empty for
// a reused server.
func (r *Redis) LogFile() string {
	if r.external {
		return ""
	}
	return filepath.Join(r.dir, "redis.log")
}

// up starts the server process and waits until it answers PING. The caller
// holds r.mu or owns r exclusively.
func (r *Redis) up(ctx context.Context) error {
	log, err := os.OpenFile(r.LogFile(), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("testenv: %w", err)
	}
	cmd := exec.Command(r.bin, r.args...)
	cmd.Dir = r.dir
	cmd.Env = childEnv()
	cmd.Stdout = log
	cmd.Stderr = log
	child, err := startProc(cmd, syscall.SIGKILL)
	log.Close()
	if err != nil {
		return fmt.Errorf("testenv: %w", err)
	}
	if err := r.waitReady(ctx, child); err != nil {
		_ = child.stop(syscall.SIGKILL, 5*time.Second)
		return fmt.Errorf("testenv: redis-server on port %d: %w%s", r.Port, err, logTail(r.LogFile()))
	}
	r.proc = child
	return nil
}

// waitReady polls with PING until the server answers +PONG, child exits
// (errExitedEarly), or ctx is done.
func (r *Redis) waitReady(ctx context.Context, child *proc) error {
	tick := time.NewTicker(25 * time.Millisecond)
	defer tick.Stop()
	for {
		err := r.ping(ctx)
		if err == nil {
			return nil
		}
		select {
		case <-child.done:
			return fmt.Errorf("%w (%v): last PING error: %v", errExitedEarly, child.err, err)
		case <-ctx.Done():
			return fmt.Errorf("not ready: %w: last PING error: %w", ctx.Err(), err)
		case <-tick.C:
		}
	}
}

// ping sends an inline PING over a fresh connection and expects +PONG.
func (r *Redis) ping(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", r.Addr())
	if err != nil {
		return err
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	if _, err := conn.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return err
	}
	if line != "+PONG\r\n" {
		return fmt.Errorf("PING answered %q", line)
	}
	return nil
}

// reuseRedis describes the existing server at rawURL without starting
// anything, and checks that it answers PING (when it needs no password).
func reuseRedis(ctx context.Context, rawURL string) (*Redis, error) {
	u, err := url.Parse(rawURL)
	if err != nil || (u.Scheme != "redis" && u.Scheme != "rediss") {
		return nil, fmt.Errorf("testenv: %s is not a redis:// URL", EnvRedisURL)
	}
	port := 6379
	if s := u.Port(); s != "" {
		if port, err = strconv.Atoi(s); err != nil {
			return nil, fmt.Errorf("testenv: %s: bad port %q", EnvRedisURL, s)
		}
	}
	r := &Redis{Host: u.Hostname(), Port: port, rawURL: rawURL, lifecycle: lifecycle{external: true}}
	if r.Host == "" {
		r.Host = "127.0.0.1"
	}
	if u.User == nil && u.Scheme == "redis" {
		if err := r.ping(ctx); err != nil {
			return nil, fmt.Errorf("testenv: %s: %w", EnvRedisURL, err)
		}
	}
	return r, nil
}
