package pgtest

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// The cluster shared by one test binary's tests.
var shared struct {
	mu      sync.Mutex
	started bool
	cluster *Cluster
	err     error
}

var databaseSeq atomic.Int64

// Shared returns the test binary's shared cluster (default Options),
// starting it on first use. A test binary that calls Shared must call Main
// from TestMain, which stops it. When PostgreSQL cannot be started (not
// installed, no postgres user, ...) the test fails, naming the fix: a
// missing engine fails the run, it is never skipped.
func Shared(t testing.TB) *Cluster {
	t.Helper()
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if !shared.started {
		shared.started = true
		ctx, cancel := context.WithTimeout(context.Background(), defaultStartTimeout)
		shared.cluster, shared.err = Start(ctx, Options{})
		cancel()
	}
	if shared.err != nil {
		t.Fatalf("pgtest: the shared PostgreSQL cluster did not start: %v", shared.err)
	}
	return shared.cluster
}

// NewDatabase creates a fresh, empty database on the shared cluster, named
// after the test, and returns its DSN. The database is dropped, with any
// connections still open to it, when the test ends.
func NewDatabase(t testing.TB) string {
	t.Helper()
	c := Shared(t)
	name := fmt.Sprintf("t_%s_%d", slug(t.Name(), 40), databaseSeq.Add(1))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dsn, err := c.CreateDatabase(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := c.DropDatabase(ctx, name); err != nil {
			t.Error(err)
		}
	})
	return dsn
}

// Main runs the tests and then stops the shared cluster, if one was
// started, before exiting with the tests' code (1 if they passed but the
// cluster did not stop cleanly). Call it from TestMain:
//
//	func TestMain(m *testing.M) { pgtest.Main(m) }
func Main(m *testing.M) {
	code := m.Run()
	if err := StopShared(); err != nil && code == 0 {
		code = 1
	}
	os.Exit(code)
}

// StopShared stops the shared cluster if one was started (for a TestMain
// that runs the tests itself, such as storetest.Main). The error is also
// printed.
func StopShared() error {
	shared.mu.Lock()
	c := shared.cluster
	shared.cluster, shared.started = nil, false
	shared.mu.Unlock()
	if c == nil {
		return nil
	}
	if err := c.Stop(); err != nil {
		fmt.Fprintf(os.Stderr, "pgtest: stopping the shared PostgreSQL cluster: %v\n", err)
		return err
	}
	return nil
}

// slug turns a test name into lower-case letters, digits and single
// underscores, at most n bytes.
func slug(s string, n int) string {
	var b strings.Builder
	under := true // no leading underscore
	for _, r := range strings.ToLower(s) {
		switch {
		case r >= 'a' && r <= 'z' || r >= '0' && r <= '9':
			b.WriteRune(r)
			under = false
		case !under:
			b.WriteByte('_')
			under = true
		}
		if b.Len() >= n {
			break
		}
	}
	return strings.TrimSuffix(b.String()[:min(b.Len(), n)], "_")
}
