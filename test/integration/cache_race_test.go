//go:build race

package integration

// This test binary is built with -race: build the sidecar binary of the
// cache tests with it too.
func init() { cacheBuildRace = true }
