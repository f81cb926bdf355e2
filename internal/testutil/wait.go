// Package testutil holds helpers shared by the project's tests. Only test
// files import it.
package testutil

import (
	"testing"
	"time"
)

// WaitFor polls cond every interval until it holds, failing the test after
// within: tests wait on conditions, never on fixed sleeps. Choose the
// interval by what cond costs (a map read: 5 ms; an HTTP query: 50 ms).
func WaitFor(t testing.TB, within, interval time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", within, what)
		}
		time.Sleep(interval)
	}
}
