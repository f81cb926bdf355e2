// Package storetest opens qpcd databases of every storage backend for tests:
// the backend matrix that the service suites (auth, keydir, delivery, admin,
// server) run over.
//
// A package's TestMain calls Main, which runs the whole package once per
// backend (SQLCipher, then PostgreSQL on a throwaway server from pgtest);
// the tests themselves open their database with Open or NewTarget and do
// not know which backend they got. QPC_TEST_BACKENDS=sqlcipher (or
// postgres) runs one backend only, for a quick local loop; CI runs both. A
// backend that cannot run fails the run: it is never skipped.
package storetest

import (
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/quicprochat/quicprochat/internal/secret"
	"github.com/quicprochat/quicprochat/internal/store"
	"github.com/quicprochat/quicprochat/internal/store/pgtest"
)

// current is the backend of the run in progress (set by Main).
var current = store.BackendSQLCipher

// Backend returns the backend the tests of this run use.
func Backend() string { return current }

// Postgres reports whether this run uses PostgreSQL.
func Postgres() bool { return current == store.BackendPostgres }

// Backends lists the backends Main runs, from QPC_TEST_BACKENDS (comma
// separated; default both).
func Backends() ([]string, error) {
	v := os.Getenv("QPC_TEST_BACKENDS")
	if v == "" {
		return []string{store.BackendSQLCipher, store.BackendPostgres}, nil
	}
	var out []string
	for _, b := range strings.Split(v, ",") {
		switch b = strings.TrimSpace(b); b {
		case store.BackendSQLCipher, store.BackendPostgres:
			out = append(out, b)
		default:
			return nil, fmt.Errorf("QPC_TEST_BACKENDS: unknown backend %q (want sqlcipher, postgres or both, comma separated)", b)
		}
	}
	return out, nil
}

// Main runs the package's tests once per backend and exits with the first
// failing run's code. Use it as the package's TestMain:
//
//	func TestMain(m *testing.M) { storetest.Main(m) }
func Main(m *testing.M) {
	backends, err := Backends()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	code := 0
	for _, b := range backends {
		current = b
		fmt.Printf("=== storetest: backend %s\n", b)
		if c := m.Run(); c != 0 {
			fmt.Printf("=== storetest: backend %s FAILED\n", b)
			if code == 0 {
				code = c
			}
		}
	}
	if err := pgtest.StopShared(); err != nil && code == 0 {
		code = 1
	}
	os.Exit(code)
}

// Target is one test database, of the run's backend: a SQLCipher file with
// its key, or an empty PostgreSQL database. Open it as often as a test
// needs (a restart is Close then Open).
type Target struct {
	Backend string
	Path    string       // SQLCipher file
	Key     secret.Bytes // SQLCipher key
	DSN     secret.Bytes // PostgreSQL connection string
}

// NewTarget makes a fresh, empty database for the run's backend; a
// PostgreSQL database is dropped when t ends.
func NewTarget(t testing.TB) Target {
	t.Helper()
	if Postgres() {
		return Target{Backend: store.BackendPostgres, DSN: secret.New([]byte(pgtest.NewDatabase(t)))}
	}
	key := make([]byte, store.KeySize)
	if _, err := rand.Read(key); err != nil {
		t.Fatal(err)
	}
	return Target{Backend: store.BackendSQLCipher, Path: filepath.Join(t.TempDir(), "qpcd.db"), Key: secret.New(key)}
}

// Open opens (and migrates) the target. The caller closes it.
func (tg Target) Open(t testing.TB) *store.DB {
	t.Helper()
	db, err := tg.OpenErr(context.Background())
	if err != nil {
		t.Fatalf("storetest: open %s database: %v", tg.Backend, err)
	}
	return db
}

// OpenErr is Open returning the error.
func (tg Target) OpenErr(ctx context.Context) (*store.DB, error) {
	if tg.Backend == store.BackendPostgres {
		return store.OpenPostgres(ctx, store.PostgresOptions{DSN: tg.DSN.Clone(), MaxConns: 8, MinConns: 1})
	}
	return store.Open(ctx, store.Options{Path: tg.Path, Key: tg.Key.Clone()})
}

// Open returns a fresh database of the run's backend, closed when t ends.
func Open(t testing.TB) *store.DB {
	t.Helper()
	db := NewTarget(t).Open(t)
	t.Cleanup(func() { _ = db.Close() })
	return db
}

// SQLCipherOnly skips t on PostgreSQL runs: for tests of what only the
// SQLCipher backend has (its file, its key, its backups). why says so.
func SQLCipherOnly(t testing.TB, why string) {
	t.Helper()
	if Postgres() {
		t.Skipf("SQLCipher only: %s", why)
	}
}
