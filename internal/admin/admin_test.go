package admin

import (
	"context"
	"crypto/rand"
	"database/sql"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/quicprochat/quicprochat/internal/secret"
	"github.com/quicprochat/quicprochat/internal/store"
)

func newKey(t *testing.T) secret.Bytes {
	t.Helper()
	b := make([]byte, store.KeySize)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return secret.New(b)
}

// makeBackup creates a database with KeyPackages under key and writes a
// backup file of it; it returns the backup's path and the data dir.
func makeBackup(t *testing.T, key secret.Bytes) (string, string) {
	t.Helper()
	base := t.TempDir()
	dataDir := filepath.Join(base, "data")
	db, err := store.Open(context.Background(), store.Options{Path: filepath.Join(dataDir, "qpcd.db"), Key: key})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = db.WriteTx(context.Background(), func(tx *sql.Tx) error {
		for i, lr := range []int{0, 0, 1} {
			if _, err := tx.Exec(`INSERT INTO keypackages (account_id, device_id, ref, suite, last_resort, uploaded_at, expires_at, data)
				VALUES ('a', 'd', ?, 1, ?, 0, ?, x'00')`, []byte{byte(i)}, lr, time.Now().Add(time.Hour).UnixMilli()); err != nil {
				return err
			}
		}
		_, err := tx.Exec(`INSERT INTO accounts (id, name, created_at) VALUES ('0123456789abcdef0123456789abcdef', 'alice', 0)`)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	// The backup carries the database's incarnation id (qpcd creates it
	// at start); a restore must replace it.
	if _, err := db.Incarnation(context.Background()); err != nil {
		t.Fatal(err)
	}
	snap := filepath.Join(base, "snap.db")
	fr, err := db.Snapshot(context.Background(), snap)
	if err != nil {
		t.Fatal(err)
	}
	sum, n, err := FileSHA256(snap)
	if err != nil {
		t.Fatal(err)
	}
	m := Manifest{Format: BackupFormat, QPCDVersion: "test", SchemaVersion: fr.SchemaVersion, CreatedAt: time.Now().UTC(),
		DBBytes: n, DBSHA256: sum, KeyID: store.KeyID(key), Tables: fr.Tables}
	out := filepath.Join(base, "b.qpcbak")
	f, err := os.Create(out)
	if err != nil {
		t.Fatal(err)
	}
	if err := WriteBackup(f, m, snap); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return out, dataDir
}

func countKeyPackages(t *testing.T, path string, key secret.Bytes) int {
	t.Helper()
	db, err := store.Open(context.Background(), store.Options{Path: path, Key: key})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var n int
	if err := db.ReadTx(context.Background(), func(tx *sql.Tx) error {
		return tx.QueryRow("SELECT count(*) FROM keypackages").Scan(&n)
	}); err != nil {
		t.Fatal(err)
	}
	return n
}

func incarnation(t *testing.T, path string, key secret.Bytes) string {
	t.Helper()
	db, err := store.Open(context.Background(), store.Options{Path: path, Key: key})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	inc, err := db.Incarnation(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return inc
}

// TestRestoreInvalidatesKeyPackages: every KeyPackage in the backup, pool
// and last resort, is gone from the restored database, so none that was
// handed out after the backup can be handed out again.
func TestRestoreInvalidatesKeyPackages(t *testing.T) {
	key := newKey(t)
	backup, dataDir := makeBackup(t, key)
	live := filepath.Join(dataDir, "qpcd.db")
	if n := countKeyPackages(t, live, key); n != 3 {
		t.Fatalf("setup: %d KeyPackages", n)
	}
	rep, err := Restore(context.Background(), RestoreOptions{Backup: backup, DataDir: dataDir, Key: key,
		Now: func() time.Time { return time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC) }})
	if err != nil {
		t.Fatal(err)
	}
	if rep.KeyPackagesInvalidated != 3 || rep.Tables["keypackages"] != 0 || rep.Tables["accounts"] != 1 {
		t.Fatalf("report %+v", rep)
	}
	if rep.PreRestore != live+".pre-restore-20260102T030405Z" {
		t.Fatalf("pre-restore %q", rep.PreRestore)
	}
	if left, _ := filepath.Glob(filepath.Join(dataDir, "*restore-tmp*")); len(left) > 0 {
		t.Fatalf("restore left %v", left)
	}
	if n := countKeyPackages(t, live, key); n != 0 {
		t.Fatalf("%d KeyPackages after restore", n)
	}
	// A new incarnation id, so clients notice the rollback (the backup's
	// database had its own).
	if before, after := incarnation(t, rep.PreRestore, key), incarnation(t, live, key); before == after || after == "" {
		t.Fatalf("incarnation %q before the restore, %q after: want a new one", before, after)
	}
	// The kept file is the old database, KeyPackages and all.
	if n := countKeyPackages(t, rep.PreRestore, key); n != 3 {
		t.Fatalf("pre-restore file has %d KeyPackages", n)
	}
}

func TestRestoreOldKeyReencrypts(t *testing.T) {
	old := newKey(t)
	backup, dataDir := makeBackup(t, old)
	cur := newKey(t)
	if _, err := Restore(context.Background(), RestoreOptions{Backup: backup, DataDir: dataDir, Key: cur}); !errors.Is(err, ErrBackupWrongKey) {
		t.Fatalf("without the backup's key: %v", err)
	}
	rep, err := Restore(context.Background(), RestoreOptions{Backup: backup, DataDir: dataDir, Key: cur, BackupKey: old})
	if err != nil {
		t.Fatal(err)
	}
	if !rep.ReEncrypted {
		t.Fatal("not re-encrypted")
	}
	if _, err := store.VerifyFile(context.Background(), filepath.Join(dataDir, "qpcd.db"), cur); err != nil {
		t.Fatalf("restored file under the current key: %v", err)
	}
}

func TestRestoreRefusesWhileLocked(t *testing.T) {
	key := newKey(t)
	backup, dataDir := makeBackup(t, key)
	l, err := LockDataDir(dataDir, "qpcd")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Unlock()
	if _, err := Restore(context.Background(), RestoreOptions{Backup: backup, DataDir: dataDir, Key: key}); !errors.Is(err, ErrLocked) {
		t.Fatalf("restore while locked: %v", err)
	}
	// A dry run does not touch the data dir, so it needs no lock.
	if _, err := Restore(context.Background(), RestoreOptions{Backup: backup, DataDir: dataDir, Key: key, DryRun: true}); err != nil {
		t.Fatalf("dry run while locked: %v", err)
	}
}

// TestOpenBackupDamage cuts and flips the file everywhere that matters and
// checks the classification.
func TestOpenBackupDamage(t *testing.T) {
	key := newKey(t)
	backup, _ := makeBackup(t, key)
	raw, err := os.ReadFile(backup)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	try := func(b []byte) error {
		p := filepath.Join(dir, "x")
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := OpenBackup(p)
		return err
	}
	if err := try(raw); err != nil {
		t.Fatalf("intact: %v", err)
	}
	for _, n := range []int{0, 1, 7, 8, 11, 12, 40, len(raw) / 2, len(raw) - 1} {
		if err := try(raw[:n]); !errors.Is(err, ErrBackupTruncated) {
			t.Errorf("cut at %d: %v", n, err)
		}
	}
	if err := try(append(append([]byte(nil), raw...), 0)); !errors.Is(err, ErrBackupCorrupt) {
		t.Errorf("trailing byte: %v", err)
	}
	for _, pos := range []int{20, 60, len(raw) / 2, len(raw) - 1} {
		b := append([]byte(nil), raw...)
		b[pos] ^= 0x01
		if err := try(b); !errors.Is(err, ErrBackupCorrupt) {
			t.Errorf("flip at %d: %v", pos, err)
		}
	}
	b := append([]byte(nil), raw...)
	b[0] = 'X'
	if err := try(b); !errors.Is(err, ErrBackupFormat) {
		t.Errorf("bad magic: %v", err)
	}
}

// TestPeerCheckFailsClosed: a request whose peer credentials are unknown is
// refused; root and qpcd's own uid get in.
func TestPeerCheckFailsClosed(t *testing.T) {
	h := (&Server{}).handler()
	for _, c := range []struct {
		ctx  context.Context
		want int
	}{
		{context.Background(), http.StatusForbidden},
		{context.WithValue(context.Background(), peerKey{}, uint32(os.Getuid()+12345)), http.StatusForbidden},
	} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, PathStatus, nil).WithContext(c.ctx))
		if rec.Code != c.want {
			t.Errorf("status %d, want %d", rec.Code, c.want)
		}
	}
}
