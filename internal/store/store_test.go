package store

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"github.com/quicprochat/quicprochat/internal/store/pgtest"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/fstest"

	sqlite3 "github.com/mutecomm/go-sqlcipher/v4"

	"github.com/quicprochat/quicprochat/internal/secret"
)

func newKey(t testing.TB) secret.Bytes {
	t.Helper()
	b := make([]byte, KeySize)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return secret.New(b)
}

// embeddedCount is the number of embedded migrations (other packages add
// theirs); the tests' own migrations follow it, so they never depend on it.
var embeddedCount int

// testMigrations adds, after the embedded ones, the tables the tests write to.
var testMigrations fstest.MapFS

// mig names a migration file relative to the embedded ones: mig(1, "x") is
// the first version after them.
func mig(offset int, name string) string {
	return fmt.Sprintf("%04d_%s.sql", embeddedCount+offset, name)
}

func TestMain(m *testing.M) {
	known, err := loadMigrations(nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, "embedded migrations:", err)
		os.Exit(1)
	}
	embeddedCount = len(known)
	testMigrations = fstest.MapFS{
		mig(1, "test_rows"): {Data: []byte(`
CREATE TABLE rows (id INTEGER PRIMARY KEY, body BLOB NOT NULL);
CREATE TABLE parent (id INTEGER PRIMARY KEY);
CREATE TABLE child (pid INTEGER NOT NULL REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED);
`)},
	}
	pgtest.Main(m)
}

func openTest(t testing.TB, path string, key secret.Bytes) *DB {
	t.Helper()
	db, err := Open(context.Background(), Options{Path: path, Key: key, Migrations: testMigrations})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return db
}

func countRows(t testing.TB, db *DB, where string) int {
	t.Helper()
	var n int
	err := db.ReadTx(context.Background(), func(tx *sql.Tx) error {
		return tx.QueryRow("SELECT count(*) FROM rows " + where).Scan(&n)
	})
	if err != nil {
		t.Fatalf("count: %v", err)
	}
	return n
}

func insert(body string) func(*sql.Tx) error {
	return func(tx *sql.Tx) error {
		_, err := tx.Exec("INSERT INTO rows (body) VALUES (?)", []byte(body))
		return err
	}
}

func TestCreateModesAndMigrations(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	path := filepath.Join(dir, "qpcd.db")
	key := newKey(t)
	db := openTest(t, path, key)

	for p, want := range map[string]fs.FileMode{dir: 0o700, path: 0o600} {
		st, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if got := st.Mode().Perm(); got != want {
			t.Errorf("%s mode %v, want %v", p, got, want)
		}
	}
	for _, suffix := range []string{"-wal", "-shm"} {
		if st, err := os.Stat(path + suffix); err == nil && st.Mode().Perm() != 0o600 {
			t.Errorf("%s%s mode %v, want 0600", path, suffix, st.Mode().Perm())
		}
	}
	if db.Path() != path {
		t.Errorf("Path() = %q", db.Path())
	}
	ctx := context.Background()
	v, err := db.SchemaVersion(ctx)
	if err != nil || v != embeddedCount+1 {
		t.Fatalf("SchemaVersion = %d, %v; want %d", v, err, embeddedCount+1)
	}
	type rec struct {
		v    int
		name string
	}
	readApplied := func(db *DB) []rec {
		var out []rec
		err := db.ReadTx(ctx, func(tx *sql.Tx) error {
			rows, err := tx.Query("SELECT version, name, applied_at FROM schema_migrations ORDER BY version")
			if err != nil {
				return err
			}
			defer rows.Close()
			for rows.Next() {
				var r rec
				var at string
				if err := rows.Scan(&r.v, &r.name, &at); err != nil {
					return err
				}
				if at == "" {
					t.Errorf("version %d has no applied_at", r.v)
				}
				out = append(out, r)
			}
			return rows.Err()
		})
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	known, err := loadMigrations(testMigrations)
	if err != nil {
		t.Fatal(err)
	}
	var want []rec
	for _, m := range known {
		want = append(want, rec{m.version, m.name})
	}
	if want[0] != (rec{1, "init"}) || want[len(want)-1] != (rec{embeddedCount + 1, "test_rows"}) {
		t.Fatalf("known migrations = %v", want)
	}
	sameRecs := func(got []rec) bool {
		if len(got) != len(want) {
			return false
		}
		for i := range got {
			if got[i] != want[i] {
				return false
			}
		}
		return true
	}
	if got := readApplied(db); !sameRecs(got) {
		t.Fatalf("schema_migrations = %v, want %v", got, want)
	}
	var app string
	var uv, aid int64
	err = db.ReadTx(ctx, func(tx *sql.Tx) error {
		if err := tx.QueryRow("SELECT value FROM meta WHERE key = 'app'").Scan(&app); err != nil {
			return err
		}
		if err := tx.QueryRow("PRAGMA user_version").Scan(&uv); err != nil {
			return err
		}
		return tx.QueryRow("PRAGMA application_id").Scan(&aid)
	})
	if err != nil || app != "qpcd" || uv != int64(embeddedCount+1) || aid != appID {
		t.Fatalf("meta.app=%q user_version=%d application_id=%#x err=%v", app, uv, aid, err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); !errors.Is(err, ErrClosed) {
		t.Fatalf("second Close = %v, want ErrClosed", err)
	}

	// Reopen: nothing re-applied, same records.
	db = openTest(t, path, key)
	if got := readApplied(db); !sameRecs(got) {
		t.Fatalf("after reopen schema_migrations = %v, want %v", got, want)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}

	// A third migration is applied on the next open, recorded as version 3.
	more := fstest.MapFS{mig(2, "more"): {Data: []byte("CREATE TABLE more (x INTEGER);")}}
	for k, v := range testMigrations {
		more[k] = v
	}
	db, err = Open(ctx, Options{Path: path, Key: key, Migrations: more})
	if err != nil {
		t.Fatal(err)
	}
	if v, err := db.SchemaVersion(ctx); err != nil || v != embeddedCount+2 {
		t.Fatalf("SchemaVersion = %d, %v; want %d", v, err, embeddedCount+2)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}

	// Opened by this (older) binary again: schema too new. The check runs on
	// a read-only connection, so the database file keeps its bytes. (With the
	// right key SQLite opens the WAL for that read and may leave an empty
	// -wal and a -shm beside it: see the package documentation.)
	before := snapshot(t, path)
	_, err = Open(ctx, Options{Path: path, Key: key, Migrations: testMigrations})
	if !errors.Is(err, ErrSchemaTooNew) {
		t.Fatalf("Open with older migrations = %v, want ErrSchemaTooNew", err)
	}
	if after := snapshot(t, path); firstLine(after) != firstLine(before) {
		t.Fatalf("schema-too-new open changed the database file:\n%s\n%s", before, after)
	}
	if st, err := os.Stat(path + "-wal"); err == nil && st.Size() != 0 {
		t.Fatalf("schema-too-new open wrote %d bytes of WAL", st.Size())
	}
}

func TestMigrationErrors(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "qpcd.db")
	key := newKey(t)

	cases := map[string]fstest.MapFS{
		"gap":       {mig(2, "x"): {Data: []byte("SELECT 1;")}},
		"bad name":  {"2_x.sql": {Data: []byte("SELECT 1;")}},
		"bad sql":   {mig(1, "bad"): {Data: []byte("CREATE TABLE (;")}},
		"duplicate": {mig(1, "a"): {Data: []byte("SELECT 1;")}, mig(1, "b"): {Data: []byte("SELECT 1;")}},
	}
	for name, m := range cases {
		t.Run(name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "qpcd.db")
			_, err := Open(ctx, Options{Path: p, Key: key, Migrations: m})
			if err == nil {
				t.Fatal("Open succeeded")
			}
			if name != "bad sql" && !errors.Is(err, ErrMigrations) {
				t.Fatalf("err = %v, want ErrMigrations", err)
			}
		})
	}

	// A failed migration leaves nothing half-applied.
	t.Run("bad sql is rolled back", func(t *testing.T) {
		p := filepath.Join(t.TempDir(), "qpcd.db")
		bad := fstest.MapFS{mig(1, "bad"): {Data: []byte("CREATE TABLE half (x INTEGER); CREATE TABLE (;")}}
		if _, err := Open(ctx, Options{Path: p, Key: key, Migrations: bad}); err == nil {
			t.Fatal("Open succeeded")
		}
		db, err := Open(ctx, Options{Path: p, Key: key})
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		var n int
		err = db.ReadTx(ctx, func(tx *sql.Tx) error {
			return tx.QueryRow("SELECT count(*) FROM sqlite_master WHERE name = 'half'").Scan(&n)
		})
		if err != nil || n != 0 {
			t.Fatalf("half-applied migration left table: n=%d err=%v", n, err)
		}
		if v, _ := db.SchemaVersion(ctx); v != embeddedCount {
			t.Fatalf("schema version %d, want %d", v, embeddedCount)
		}
	})

	// Renaming an applied migration is refused.
	db := openTest(t, path, key)
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	renamed := fstest.MapFS{mig(1, "renamed"): testMigrations[mig(1, "test_rows")]}
	if _, err := Open(ctx, Options{Path: path, Key: key, Migrations: renamed}); !errors.Is(err, ErrMigrations) {
		t.Fatalf("renamed migration: err = %v, want ErrMigrations", err)
	}
}

func TestOptionsValidation(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	if _, err := Open(ctx, Options{Key: newKey(t)}); err == nil {
		t.Error("empty path accepted")
	}
	if _, err := Open(ctx, Options{Path: filepath.Join(dir, "a.db"), Key: secret.New(make([]byte, 16))}); err == nil {
		t.Error("16-byte key accepted")
	}
	if _, err := Open(ctx, Options{Path: filepath.Join(dir, "b.db"), Key: newKey(t), Readers: -1}); err == nil {
		t.Error("negative Readers accepted")
	}
}

// snapshot describes the database file and its -wal/-shm companions: presence,
// size and SHA-256.
func snapshot(t testing.TB, path string) string {
	t.Helper()
	var b strings.Builder
	for _, p := range []string{path, path + "-wal", path + "-shm", path + "-journal"} {
		data, err := os.ReadFile(p)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			b.WriteString(filepath.Base(p) + ": absent\n")
		case err != nil:
			t.Fatal(err)
		default:
			st, err := os.Stat(p)
			if err != nil {
				t.Fatal(err)
			}
			b.WriteString(filepath.Base(p) + ": " + st.Mode().String() + " " + sha256Hex(data) + "\n")
		}
	}
	return b.String()
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}

func sha256Hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func TestRefusesWithoutTouchingFile(t *testing.T) {
	ctx := context.Background()
	goodKey := newKey(t)
	wrongKey := newKey(t)

	qpcdDB := func(t *testing.T) string {
		p := filepath.Join(t.TempDir(), "qpcd.db")
		db := openTest(t, p, goodKey)
		if err := db.WriteTx(ctx, insert("hello")); err != nil {
			t.Fatal(err)
		}
		if err := db.Close(); err != nil {
			t.Fatal(err)
		}
		return p
	}
	plainSQLite := func(t *testing.T) string {
		p := filepath.Join(t.TempDir(), "other.db")
		other, err := sql.Open("sqlite3", p) // no key: a plaintext SQLite file
		if err != nil {
			t.Fatal(err)
		}
		if _, err := other.Exec("CREATE TABLE notes (x TEXT); INSERT INTO notes VALUES ('someone else''s data')"); err != nil {
			t.Fatal(err)
		}
		if err := other.Close(); err != nil {
			t.Fatal(err)
		}
		return p
	}
	randomFile := func(size int) func(t *testing.T) string {
		return func(t *testing.T) string {
			p := filepath.Join(t.TempDir(), "random.db")
			b := make([]byte, size)
			if _, err := rand.Read(b); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, b, 0o600); err != nil {
				t.Fatal(err)
			}
			return p
		}
	}
	otherEncrypted := func(t *testing.T) string {
		// Encrypted with our key, but not a qpcd database.
		p := filepath.Join(t.TempDir(), "enc.db")
		other, err := sql.Open("sqlite3", p+"?_pragma_key=x'"+goodKey.Hex()+"'")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := other.Exec("CREATE TABLE notes (x TEXT)"); err != nil {
			t.Fatal(err)
		}
		if err := other.Close(); err != nil {
			t.Fatal(err)
		}
		return p
	}

	cases := []struct {
		name string
		make func(t *testing.T) string
		key  secret.Bytes
		want error
	}{
		{"wrong key", qpcdDB, wrongKey, ErrWrongKey},
		{"plaintext sqlite", plainSQLite, goodKey, ErrNotDatabase},
		{"random bytes, whole pages", randomFile(8192), goodKey, ErrWrongKey},
		{"random bytes, odd size", randomFile(1000), goodKey, ErrNotDatabase},
		{"encrypted, not qpcd", otherEncrypted, goodKey, ErrNotDatabase},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := tc.make(t)
			before := snapshot(t, p)
			db, err := Open(ctx, Options{Path: p, Key: tc.key, Migrations: testMigrations})
			if err == nil {
				_ = db.Close()
				t.Fatal("Open succeeded")
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			msg := strings.ToLower(err.Error())
			for _, k := range []secret.Bytes{goodKey, wrongKey} {
				if strings.Contains(msg, k.Hex()) {
					t.Fatalf("error reveals a key: %v", err)
				}
			}
			if !strings.Contains(err.Error(), p) {
				t.Errorf("error does not name the file: %v", err)
			}
			if tc.want == ErrWrongKey && !strings.Contains(err.Error(), "QPC_DB_KEY") {
				t.Errorf("wrong-key error does not name the fix: %v", err)
			}
			if after := snapshot(t, p); after != before {
				t.Fatalf("failed open changed the files:\nbefore:\n%s\nafter:\n%s", before, after)
			}
		})
	}

	// The right key still opens the database the wrong key was tried on.
	p := qpcdDB(t)
	if _, err := Open(ctx, Options{Path: p, Key: wrongKey, Migrations: testMigrations}); !errors.Is(err, ErrWrongKey) {
		t.Fatalf("wrong key: %v", err)
	}
	db := openTest(t, p, goodKey)
	defer db.Close()
	if n := countRows(t, db, ""); n != 1 {
		t.Fatalf("rows = %d, want 1", n)
	}
}

func TestNoPlaintextOnDisk(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "qpcd.db")
	db := openTest(t, path, newKey(t))
	marker := "QPC-PLAINTEXT-MARKER-7f3a9c"
	body := strings.Repeat(marker, 64)
	for i := 0; i < 50; i++ {
		if err := db.WriteTx(ctx, insert(body)); err != nil {
			t.Fatal(err)
		}
	}
	check := func(when string) {
		for _, p := range []string{path, path + "-wal", path + "-shm"} {
			data, err := os.ReadFile(p)
			if errors.Is(err, fs.ErrNotExist) {
				continue
			}
			if err != nil {
				t.Fatal(err)
			}
			for _, needle := range []string{marker, "qpcd", "schema_migrations", "SQLite format 3"} {
				if bytes.Contains(data, []byte(needle)) {
					t.Errorf("%s: %s contains plaintext %q", when, filepath.Base(p), needle)
				}
			}
		}
	}
	// While open, the rows live in the WAL.
	if st, err := os.Stat(path + "-wal"); err != nil || st.Size() == 0 {
		t.Fatalf("expected a non-empty WAL while open: %v", err)
	}
	check("open")
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(path); err != nil || st.Size() < int64(len(body)) {
		t.Fatalf("database file too small to hold the rows: %v", err)
	}
	check("closed")
}

func TestReadTxSnapshot(t *testing.T) {
	ctx := context.Background()
	db := openTest(t, filepath.Join(t.TempDir(), "qpcd.db"), newKey(t))
	defer db.Close()
	if err := db.WriteTx(ctx, insert("a")); err != nil {
		t.Fatal(err)
	}
	err := db.ReadTx(ctx, func(tx *sql.Tx) error {
		var n int
		if err := tx.QueryRow("SELECT count(*) FROM rows").Scan(&n); err != nil {
			return err
		}
		if n != 1 {
			t.Errorf("ReadTx sees %d rows, want 1", n)
		}
		// A write committed meanwhile is not visible inside this snapshot.
		if err := db.WriteTx(ctx, insert("b")); err != nil {
			return err
		}
		if err := tx.QueryRow("SELECT count(*) FROM rows").Scan(&n); err != nil {
			return err
		}
		if n != 1 {
			t.Errorf("snapshot changed: %d rows, want 1", n)
		}
		// Readers cannot write.
		if _, err := tx.Exec("INSERT INTO rows (body) VALUES (x'00')"); err == nil {
			t.Error("write through ReadTx succeeded")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n := countRows(t, db, ""); n != 2 {
		t.Fatalf("after: %d rows, want 2", n)
	}
	size, err := db.Size()
	if err != nil || size <= 0 {
		t.Fatalf("Size = %d, %v", size, err)
	}
}

// TestDriverErrorHasNoKey makes sure a driver error message never carries the
// DSN (which holds the key).
func TestDriverErrorHasNoKey(t *testing.T) {
	key := newKey(t)
	dir := filepath.Join(t.TempDir(), "missing-dir")
	c := &connector{drv: &sqlite3.SQLiteDriver{}, path: filepath.Join(dir, "x", "qpcd.db"), key: &key, role: roleCheck}
	_, err := c.Connect(context.Background())
	if err == nil {
		t.Fatal("connect to a missing directory succeeded")
	}
	if strings.Contains(strings.ToLower(err.Error()), key.Hex()) {
		t.Fatalf("error reveals the key: %v", err)
	}
}

// copyFiles copies the database and whichever of -wal/-shm exist to dir,
// which is what a crash (kill -9, power loss after fsync) leaves behind.
func copyFiles(t *testing.T, path, dir string) string {
	t.Helper()
	dst := filepath.Join(dir, filepath.Base(path))
	for _, suffix := range []string{"", "-wal", "-shm"} {
		data, err := os.ReadFile(path + suffix)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dst+suffix, data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dst
}

// TestCrashLeftovers: a database with a live WAL (the process died without
// Close) is refused with a wrong key without changing the database file or
// the WAL, and opens with the right key with every acknowledged write.
func TestCrashLeftovers(t *testing.T) {
	ctx := context.Background()
	key := newKey(t)
	db := openTest(t, filepath.Join(t.TempDir(), "qpcd.db"), key)
	for i := 0; i < 10; i++ {
		if err := db.WriteTx(ctx, insert("acked")); err != nil {
			t.Fatal(err)
		}
	}
	crashed := copyFiles(t, db.Path(), t.TempDir())
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(crashed + "-wal"); err != nil {
		t.Fatalf("no WAL in the crash copy: %v", err)
	}
	mainAndWAL := func() string {
		s := strings.Split(snapshot(t, crashed), "\n")
		return s[0] + "\n" + s[1]
	}
	before := mainAndWAL()
	if _, err := Open(ctx, Options{Path: crashed, Key: newKey(t), Migrations: testMigrations}); !errors.Is(err, ErrWrongKey) {
		t.Fatalf("wrong key on crashed db: %v", err)
	}
	if after := mainAndWAL(); after != before {
		t.Fatalf("wrong-key open changed the files:\n%s\n%s", before, after)
	}
	db = openTest(t, crashed, key)
	defer db.Close()
	if n := countRows(t, db, ""); n != 10 {
		t.Fatalf("after crash: %d rows, want 10", n)
	}
}

func TestAdoptsEmptyFileAndOddPath(t *testing.T) {
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "odd dir #1 ?x %41")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "q?p#c%d.db")
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	key := newKey(t)
	db := openTest(t, path, key)
	if err := db.WriteTx(ctx, insert("x")); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 || entries[0].Name() != "q?p#c%d.db" {
		t.Fatalf("files in dir: %v", entries)
	}
	db = openTest(t, path, key)
	defer db.Close()
	if n := countRows(t, db, ""); n != 1 {
		t.Fatalf("rows = %d", n)
	}
}
