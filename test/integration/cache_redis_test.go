package integration

// Result cache with its Redis tier: losing Redis costs no query and no
// correctness, and sidecars sharing one Redis serve another sidecar's
// write within the documented staleness bound (at once with the memory
// tier off).

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgsidecar/pgsidecar/internal/testenv"
)

// redisDBSize asks rd how many keys its database 0 holds.
func redisDBSize(t testing.TB, rd *testenv.Redis) int {
	t.Helper()
	conn, err := net.DialTimeout("tcp", rd.Addr(), 2*time.Second)
	if err != nil {
		t.Fatalf("dial redis: %v", err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := conn.Write([]byte("SELECT 0\r\nDBSIZE\r\n")); err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(conn)
	for _, want := range []string{"+", ":"} {
		line, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("redis: %v", err)
		}
		if !strings.HasPrefix(line, want) {
			t.Fatalf("redis answered %q", line)
		}
		if want == ":" {
			n, err := strconv.Atoi(strings.TrimSpace(line[1:]))
			if err != nil {
				t.Fatalf("redis DBSIZE %q", line)
			}
			return n
		}
	}
	panic("unreachable")
}

func pgxClient(t testing.TB, url string, mode pgx.QueryExecMode) pgxCacheClient {
	return pgxCacheClient{pgxConnect(t, url, mode), mode}
}

// TestCacheSurvivesRedisDeath: writes and reads run in a loop through a
// sidecar whose Redis is killed (SIGKILL) midway and later started again,
// empty, on the same port. Every query succeeds, none takes long, every
// read answers the latest acknowledged write, and after the restart the
// sidecar uses Redis again.
func TestCacheSurvivesRedisDeath(t *testing.T) {
	t.Parallel()
	pg := env.Postgres(t)
	zero := int64(0)
	for _, tier := range []struct {
		name   string
		memory *int64
	}{{"memory and redis", nil}, {"redis only", &zero}} {
		t.Run(tier.name, func(t *testing.T) {
			t.Parallel()
			rd := testenv.NewRedis(t)
			sc := startCacheSidecar(t, pg, cacheOpts{Redis: rd.URL(), MemoryBytes: tier.memory})
			table := kvTable(t, pg, "cache_rdeath", "0")
			writer := pgxClient(t, sc.SuperURL(pg), pgx.QueryExecModeCacheStatement)
			readers := []cacheClient{
				pgxClient(t, sc.SuperURL(pg), pgx.QueryExecModeSimpleProtocol),
				pgxClient(t, sc.SuperURL(pg), pgx.QueryExecModeCacheStatement),
			}
			read := "select v from " + table + " where id = $1"
			sc.readUntilHit(t, "warm with Redis up", func() { expectRows(t, "reader", readers[1], []string{"0"}, read, 1) })

			const (
				phaseUp = iota
				phaseDown
				phaseRestarted
			)
			var phase atomic.Int32
			var rounds [3]int
			var slowest time.Duration
			timed := func(f func()) {
				start := time.Now()
				f()
				slowest = max(slowest, time.Since(start))
			}
			last := "0" // the latest acknowledged value
			killed, restarted := make(chan error, 1), make(chan error, 1)
			deadline := time.Now().Add(20 * time.Second)
			for i := 1; ; i++ {
				p := phase.Load()
				rounds[p]++
				switch {
				case p == phaseUp && rounds[p] == 10:
					// Kill while the loop goes on: Down with no grace
					// sends SIGTERM and at once SIGKILL to the group.
					go func() {
						ctx, cancel := context.WithDeadline(context.Background(), time.Now())
						defer cancel()
						err := rd.Down(ctx)
						phase.Store(phaseDown)
						killed <- err
					}()
				case p == phaseDown && rounds[p] == 20:
					go func() {
						ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
						defer cancel()
						err := rd.Up(ctx)
						phase.Store(phaseRestarted)
						restarted <- err
					}()
				}
				if p == phaseRestarted && rounds[p] > 20 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("rounds per phase (up, down, restarted) %v after 20s", rounds)
				}
				v := strconv.Itoa(i)
				timed(func() { writer.Exec(t, "update "+table+" set v = $1 where id = $2", v, 1) })
				last = v
				for r, reader := range readers {
					for k := range 2 {
						timed(func() {
							expectRows(t, fmt.Sprintf("reader %d read %d, round %d (phase %d)", r, k, i, p), reader, []string{v}, read, 1)
						})
					}
				}
			}
			if err := <-killed; err != nil {
				t.Logf("kill Redis: %v", err) // "killed its process group" is the point
			}
			if err := <-restarted; err != nil {
				t.Fatalf("restart Redis: %v", err)
			}
			t.Logf("rounds per phase (up, down, restarted): %v; slowest query %v", rounds, slowest)
			if slowest > 3*time.Second {
				t.Errorf("slowest query took %v: a dead Redis must not stall queries", slowest)
			}

			// The Redis tier comes back into use.
			recovered := false
			for i := 0; i < 50 && !recovered; i++ {
				q := fmt.Sprintf("select v || '%d' from %s where id = $1", i, table)
				expectRows(t, "reader after the restart", readers[1], []string{last + strconv.Itoa(i)}, q, 1)
				recovered = redisDBSize(t, rd) > 0
				time.Sleep(100 * time.Millisecond)
			}
			if !recovered {
				t.Errorf("Redis was restarted, but 5s of new reads later the sidecar has stored nothing in it; metrics: %v", cacheMetricsOnly(sc.Metrics(t)))
			}
		})
	}
}

// TestCacheTwoSidecarsShareRedis: sidecars A and B share one Redis. With
// both tiers, after a write through A is acknowledged B answers the new
// value within --cache-max-staleness (plus a scheduling margin), both after
// a sleep of that long and when polled at once. With the memory tier off
// (Redis only), B answers the new value at once.
func TestCacheTwoSidecarsShareRedis(t *testing.T) {
	t.Parallel()
	pg := env.Postgres(t)
	bound := cacheMaxStaleness + cacheStalenessMargin
	read := func(table string) string { return "select v from " + table + " where id = $1" }
	setup := func(t *testing.T, opts cacheOpts) (a, b *cacheSidecar, table string, aw, ar cacheClient, bReaders []cacheClient) {
		a, b = startCacheSidecar(t, pg, opts), startCacheSidecar(t, pg, opts)
		table = kvTable(t, pg, "cache_two", "v0")
		aw = pgxClient(t, a.SuperURL(pg), pgx.QueryExecModeCacheStatement)
		ar = pgxClient(t, a.SuperURL(pg), pgx.QueryExecModeCacheStatement)
		bReaders = []cacheClient{
			pgxClient(t, b.SuperURL(pg), pgx.QueryExecModeSimpleProtocol),
			pgxClient(t, b.SuperURL(pg), pgx.QueryExecModeCacheStatement),
		}
		return
	}
	// warm reads want on A and on every B reader until each is a hit.
	warm := func(t *testing.T, a, b *cacheSidecar, table string, ar cacheClient, bReaders []cacheClient, want string) {
		t.Helper()
		a.readUntilHit(t, "A warms "+want, func() { expectRows(t, "A", ar, []string{want}, read(table), 1) })
		for i, br := range bReaders {
			b.readUntilHit(t, fmt.Sprintf("B reader %d warms %s", i, want), func() {
				expectRows(t, fmt.Sprintf("B reader %d", i), br, []string{want}, read(table), 1)
			})
		}
	}
	write := func(t *testing.T, aw cacheClient, table, v string) {
		aw.Exec(t, "update "+table+" set v = $1 where id = $2", v, 1)
	}

	t.Run("memory and redis", func(t *testing.T) {
		t.Parallel()
		rd := testenv.NewRedis(t)
		a, b, table, aw, ar, bReaders := setup(t, cacheOpts{Redis: rd.URL()})
		warm(t, a, b, table, ar, bReaders, "v0")

		// After a sleep of the bound.
		write(t, aw, table, "v1")
		expectRows(t, "A right after its own write", ar, []string{"v1"}, read(table), 1)
		time.Sleep(bound)
		for i, br := range bReaders {
			expectRows(t, fmt.Sprintf("B reader %d, %v after A's write", i, bound), br, []string{"v1"}, read(table), 1)
		}

		// Polled from the acknowledgement on.
		for round := 2; round <= 4; round++ {
			old, v := fmt.Sprintf("v%d", round-1), fmt.Sprintf("v%d", round)
			warm(t, a, b, table, ar, bReaders, old)
			write(t, aw, table, v)
			acked := time.Now()
			for i, br := range bReaders {
				var flip time.Duration
				for {
					rows := br.Query(t, read(table), 1)
					if len(rows) == 1 && rows[0] == v {
						flip = time.Since(acked)
						break
					}
					if len(rows) != 1 || rows[0] != old {
						t.Fatalf("B reader %d after A wrote %s over %s: %q", i, v, old, rows)
					}
					if time.Since(acked) > 3*time.Second {
						t.Fatalf("B reader %d still answers %s 3s after A wrote %s (bound %v)", i, old, v, cacheMaxStaleness)
					}
					time.Sleep(5 * time.Millisecond)
				}
				t.Logf("round %d: B reader %d answered the new value %v after A's write was acknowledged", round, i, flip)
				if flip > bound {
					t.Errorf("round %d: B reader %d served the old value for %v after A's write; the bound is %v (+%v margin)", round, i, flip, cacheMaxStaleness, cacheStalenessMargin)
				}
			}
		}
	})

	t.Run("redis only", func(t *testing.T) {
		t.Parallel()
		rd := testenv.NewRedis(t)
		a, b, table, aw, ar, bReaders := setup(t, redisOnly(rd.URL()))
		for round := 1; round <= 5; round++ {
			old, v := fmt.Sprintf("v%d", round-1), fmt.Sprintf("v%d", round)
			warm(t, a, b, table, ar, bReaders, old)
			write(t, aw, table, v)
			for i, br := range bReaders {
				expectRows(t, fmt.Sprintf("round %d: B reader %d right after A's write", round, i), br, []string{v}, read(table), 1)
			}
			expectRows(t, fmt.Sprintf("round %d: A right after its write", round), ar, []string{v}, read(table), 1)
		}
		for name, sc := range map[string]*cacheSidecar{"A": a, "B": b} {
			m := sc.Metrics(t)
			if m[metricHitsMemory] != 0 || m[metricHitsRedis] == 0 {
				t.Errorf("sidecar %s with --cache-memory-bytes 0: %v memory hits, %v Redis hits; want only Redis hits", name, m[metricHitsMemory], m[metricHitsRedis])
			}
		}
	})
}
