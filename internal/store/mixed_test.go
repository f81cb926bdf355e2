package store

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/quicprochat/quicprochat/internal/secret"
	"github.com/quicprochat/quicprochat/internal/store/pgtest"
)

// union merges migration sets.
func union(sets ...fstest.MapFS) fstest.MapFS {
	out := fstest.MapFS{}
	for _, set := range sets {
		for k, v := range set {
			out[k] = v
		}
	}
	return out
}

// The mixed-version rule (docs/release.md): a qpcd opens a database that a
// newer qpcd migrated further when every step it does not know is
// expand-only (NNNN_expand_name.sql), runs on it and writes to it, and
// refuses it once a step it does not know is anything else.
func TestNewerExpandOnlySchemaOpens(t *testing.T) {
	ctx := context.Background()
	newer := fstest.MapFS{
		mig(2, ExpandPrefix+"add_note"):  {Data: []byte("ALTER TABLE rows ADD COLUMN note TEXT;")},
		mig(3, ExpandPrefix+"new_table"): {Data: []byte("CREATE TABLE later (x INTEGER);")},
	}
	contract := fstest.MapFS{mig(4, "drop_later"): {Data: []byte("DROP TABLE later;")}}
	pgBase := fstest.MapFS{mig(1, "test_rows"): {Data: []byte("CREATE TABLE rows (id BIGSERIAL PRIMARY KEY, body BYTEA NOT NULL);")}}

	t.Run("sqlcipher", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "qpcd.db")
		key := newKey(t)
		open := func(m fstest.MapFS) (*DB, error) {
			return Open(ctx, Options{Path: path, Key: key, Migrations: m})
		}
		db, err := open(union(testMigrations, newer)) // the newer qpcd
		if err != nil {
			t.Fatal(err)
		}
		if err := db.WriteTx(ctx, insert("from the newer qpcd")); err != nil {
			t.Fatal(err)
		}
		db.Close()

		db, err = open(testMigrations) // this qpcd, two expand-only steps behind
		if err != nil {
			t.Fatalf("open a database two expand-only steps ahead: %v", err)
		}
		if v, err := db.SchemaVersion(ctx); err != nil || v != embeddedCount+3 {
			t.Fatalf("SchemaVersion = %d, %v; want %d (the database's)", v, err, embeddedCount+3)
		}
		if err := db.WriteTx(ctx, insert("from the older qpcd")); err != nil {
			t.Fatalf("write through the older qpcd: %v", err)
		}
		if n := countRows(t, db, ""); n != 2 {
			t.Fatalf("%d rows, want 2", n)
		}
		db.Close()

		db, err = open(union(testMigrations, newer, contract)) // the newer qpcd again, now with a contract step
		if err != nil {
			t.Fatal(err)
		}
		db.Close()
		_, err = open(testMigrations)
		if !errors.Is(err, ErrSchemaTooNew) || !strings.Contains(err.Error(), "drop_later is not expand-only") {
			t.Fatalf("open past a contract step: %v, want ErrSchemaTooNew naming the step", err)
		}
	})

	t.Run("postgres", func(t *testing.T) {
		dsn := pgtest.NewDatabase(t)
		open := func(m fstest.MapFS) (*DB, error) {
			return OpenPostgres(ctx, PostgresOptions{DSN: secret.New([]byte(dsn)), Migrations: m})
		}
		db, err := open(union(pgBase, newer))
		if err != nil {
			t.Fatal(err)
		}
		if err := db.WriteTx(ctx, insert("from the newer qpcd")); err != nil {
			t.Fatal(err)
		}
		// The older node opens while the newer one still runs (a cluster).
		older, err := open(pgBase)
		if err != nil {
			t.Fatalf("open a database two expand-only steps ahead: %v", err)
		}
		if err := older.WriteTx(ctx, insert("from the older qpcd")); err != nil {
			t.Fatalf("write through the older qpcd: %v", err)
		}
		if n := countRows(t, db, ""); n != 2 {
			t.Fatalf("%d rows seen by the newer qpcd, want 2", n)
		}
		older.Close()
		db.Close()

		db, err = open(union(pgBase, newer, contract))
		if err != nil {
			t.Fatal(err)
		}
		db.Close()
		_, err = open(pgBase)
		if !errors.Is(err, ErrSchemaTooNew) || !strings.Contains(err.Error(), "drop_later is not expand-only") {
			t.Fatalf("open past a contract step: %v, want ErrSchemaTooNew naming the step", err)
		}
	})
}

// TestExpandOnlyMigrationsAreExpandOnly: every embedded expand_ migration
// (SQLCipher and PostgreSQL) passes the contract check, and the check
// catches what would break the release before.
func TestExpandOnlyMigrationsAreExpandOnly(t *testing.T) {
	sqlite, err := loadMigrations(nil)
	if err != nil {
		t.Fatal(err)
	}
	pg, err := loadPGMigrations(nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range append(sqlite, pg...) {
		if strings.HasPrefix(m.name, ExpandPrefix) {
			if err := checkExpandOnly(m); err != nil {
				t.Error(err)
			}
		}
	}
	for _, c := range []struct {
		sql string
		ok  bool
	}{
		{"CREATE TABLE later (x INTEGER);", true},
		{"ALTER TABLE rows ADD COLUMN note TEXT;", true},
		{"ALTER TABLE rows ADD COLUMN n INTEGER NOT NULL DEFAULT 0;", true},
		{"CREATE INDEX rows_body ON rows (body);", true},
		{"INSERT INTO meta (key, value) VALUES ('x', 'y');", true},
		{"DROP TABLE login_challenges;", false},
		{"DROP INDEX keypackages_one_last_resort;", false},
		{"ALTER TABLE rows DROP COLUMN body;", false},
		{"ALTER TABLE rows RENAME COLUMN body TO payload;", false},
		{"ALTER TABLE rows ALTER COLUMN body SET NOT NULL;", false},
		{"ALTER TABLE rows ALTER COLUMN body TYPE TEXT;", false},
		{"ALTER TABLE rows ADD COLUMN n INTEGER NOT NULL;", false},
		{"alter table rows add n integer not null;", false},
		{"DELETE FROM rows;", false},
	} {
		err := checkExpandOnly(migration{version: 11, name: ExpandPrefix + "x", sql: c.sql})
		if (err == nil) != c.ok {
			t.Errorf("checkExpandOnly(%q) = %v, want ok=%v", c.sql, err, c.ok)
		}
	}
}
