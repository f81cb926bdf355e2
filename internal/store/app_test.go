package store

import (
	"context"
	"database/sql"
	"errors"
	"path/filepath"
	"testing"
	"testing/fstest"
)

// otherApp is a second application's database: its own identity and only
// its own migrations.
var otherApp = App{ID: 0x51504343, Marker: "other", Migrations: fstest.MapFS{
	"0001_init.sql": {Data: []byte(`
CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT);
INSERT INTO meta (key, value) VALUES ('app', 'other');
PRAGMA application_id = 1364214595;
`)},
	"0002_notes.sql": {Data: []byte(`CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL);`)},
}}

func TestAppOwnMigrationsAndIdentity(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	key := newKey(t)
	path := filepath.Join(dir, "other.db")
	app := otherApp
	db, err := Open(ctx, Options{Path: path, Key: key, App: &app})
	if err != nil {
		t.Fatalf("Open other app: %v", err)
	}
	if v, err := db.SchemaVersion(ctx); err != nil || v != 2 {
		t.Fatalf("schema version = %d, %v; want 2 (only the app's migrations)", v, err)
	}
	if err := db.WriteTx(ctx, func(tx *sql.Tx) error {
		_, err := tx.Exec("INSERT INTO notes (body) VALUES ('x')")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if err := db.ReadTx(ctx, func(tx *sql.Tx) error {
		var n int
		return tx.QueryRow("SELECT count(*) FROM sqlite_master WHERE name = 'accounts'").Scan(&n)
	}); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	// Reopens as itself, is refused as qpcd's database.
	db, err = Open(ctx, Options{Path: path, Key: key, App: &app})
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	_ = db.Close()
	if _, err := Open(ctx, Options{Path: path, Key: key}); !errors.Is(err, ErrNotDatabase) {
		t.Fatalf("open the app's file as qpcd: %v, want ErrNotDatabase", err)
	}
	// A qpcd database is refused as the app's.
	qp := filepath.Join(dir, "qpcd.db")
	qdb, err := Open(ctx, Options{Path: qp, Key: key})
	if err != nil {
		t.Fatal(err)
	}
	_ = qdb.Close()
	if _, err := Open(ctx, Options{Path: qp, Key: key, App: &app}); !errors.Is(err, ErrNotDatabase) {
		t.Fatalf("open qpcd's file as the app: %v, want ErrNotDatabase", err)
	}
	if _, err := Open(ctx, Options{Path: filepath.Join(dir, "x.db"), Key: key, App: &App{Marker: "x"}}); !errors.Is(err, ErrMigrations) {
		t.Fatalf("incomplete App: %v, want ErrMigrations", err)
	}
}
