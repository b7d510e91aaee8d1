package pool_test

import (
	"strings"
	"testing"
	"time"

	"github.com/pgsidecar/pgsidecar/pool"
)

// joined splits an errors.Join error into its parts.
func joined(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	if err == nil {
		return nil
	}
	return []error{err}
}

func TestConfigValidateListsEveryProblem(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		cfg  pool.Config
		want []string // one substring per expected problem, in order
	}{
		{
			name: "valid",
			cfg:  pool.Config{Upstream: "postgres://u@db:5432/app", Databases: map[string]string{"other": "postgresql://h/x"}, PoolSize: 5, MinPoolSize: 5},
		},
		{
			name: "empty upstream, negative sizes and timeout",
			cfg:  pool.Config{PoolSize: -1, MinPoolSize: -2, ConnectTimeout: -time.Second},
			want: []string{"upstream is required", "pool_size must be positive, got -1", "min_pool_size must not be negative, got -2", "server_connect_timeout must not be negative"},
		},
		{
			name: "bad schemes and min above max",
			cfg: pool.Config{
				Upstream:    "mysql://u@db/app",
				Databases:   map[string]string{"reports": "http://h/x"},
				PoolSize:    2,
				MinPoolSize: 3,
			},
			want: []string{`upstream: scheme must be postgres:// or postgresql://, got "mysql://"`, `databases.reports: scheme must be postgres:// or postgresql://, got "http://"`, "min_pool_size (3) must not exceed pool_size (2)"},
		},
		{
			name: "unparsable upstream",
			cfg:  pool.Config{Upstream: "postgres://u@db:port/app"},
			want: []string{"upstream: not a valid URL"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.Validate()
			got := joined(err)
			if len(got) != len(tt.want) {
				t.Fatalf("Validate() = %v\nwant %d problems: %q", err, len(tt.want), tt.want)
			}
			for i, want := range tt.want {
				if !strings.Contains(got[i].Error(), want) {
					t.Errorf("problem %d = %q, want it to mention %q", i, got[i], want)
				}
			}
			// New validates the same way and starts nothing on failure
			// (TestMain's leak check would see a maintainer).
			if err != nil {
				if m, nerr := pool.New(tt.cfg); nerr == nil {
					m.Close()
					t.Errorf("New accepted a config Validate rejects")
				}
			}
		})
	}
}

func TestNewFillsDefaultsBeforeValidating(t *testing.T) {
	t.Parallel()
	// A zero PoolSize means 20, so MinPoolSize 10 is within it.
	m, err := pool.New(pool.Config{Upstream: "postgres://u@127.0.0.1:1/app", MinPoolSize: 10})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	m.Close()
}
