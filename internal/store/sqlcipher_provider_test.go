package store

import (
	"context"
	"database/sql"
	"fmt"
	"path/filepath"
	"testing"
)

func cipherProvider(t testing.TB, db *DB) string {
	t.Helper()
	var name string
	err := db.ReadTx(context.Background(), func(tx *sql.Tx) error {
		return tx.QueryRow("PRAGMA cipher_provider").Scan(&name)
	})
	if err != nil {
		t.Fatalf("PRAGMA cipher_provider: %v", err)
	}
	return name
}

// withMemorySecurity runs the rest of the test with cipher_memory_security
// set to on, restoring the previous value afterwards.
func withMemorySecurity(t *testing.T, on bool) {
	t.Helper()
	prev := memorySecurity.Load()
	SetMemorySecurity(on)
	t.Cleanup(func() { SetMemorySecurity(prev) })
}

// The page crypto provider: Go's by default, the bundled libtomcrypt one
// when memory security is on (its key schedules are not left on the Go heap).
func TestCryptoProviderFollowsMemorySecurity(t *testing.T) {
	withMemorySecurity(t, false)
	db := openTest(t, filepath.Join(t.TempDir(), "go.db"), newKey(t))
	defer db.Close()
	if got := cipherProvider(t, db); got != ProviderGo {
		t.Fatalf("cipher_provider with memory security off = %q, want %q", got, ProviderGo)
	}

	SetMemorySecurity(true)
	db2 := openTest(t, filepath.Join(t.TempDir(), "ltc.db"), newKey(t))
	defer db2.Close()
	if got := cipherProvider(t, db2); got != ProviderLibtomcrypt {
		t.Fatalf("cipher_provider with memory security on = %q, want %q", got, ProviderLibtomcrypt)
	}
}

// A file written through one provider reads back through the other, and
// with the wrong key through either it is refused: the providers must be
// byte-compatible (same AES-256-CBC, HMAC-SHA512 over page and page number,
// PBKDF2 for the HMAC key), or the page HMACs would not verify.
func TestCryptoProvidersInteroperate(t *testing.T) {
	path := filepath.Join(t.TempDir(), "qpcd.db")
	key := newKey(t)
	ctx := context.Background()
	rounds := []struct {
		memSec   bool
		provider string
	}{{false, ProviderGo}, {true, ProviderLibtomcrypt}, {false, ProviderGo}}
	for i, r := range rounds {
		withMemorySecurity(t, r.memSec)
		db := openTest(t, path, key)
		if got := cipherProvider(t, db); got != r.provider {
			t.Fatalf("round %d: provider %q, want %q", i, got, r.provider)
		}
		if n := countRows(t, db, ""); n != i*200 {
			t.Fatalf("round %d (%s): %d rows readable, want %d", i, r.provider, n, i*200)
		}
		// Enough 1 KiB rows to spill over many pages and a WAL checkpoint.
		for j := range 200 {
			if err := db.WriteTx(ctx, insert(fmt.Sprintf("%s-%d-%d-%0900d", r.provider, i, j, j))); err != nil {
				t.Fatal(err)
			}
		}
		if err := db.Close(); err != nil {
			t.Fatal(err)
		}
		wrong := newKey(t)
		if _, err := Open(ctx, Options{Path: path, Key: wrong, Migrations: testMigrations}); err == nil {
			t.Fatalf("round %d (%s): opened with the wrong key", i, r.provider)
		}
	}
}
