package store

import (
	"bytes"
	"context"
	"database/sql"
	"regexp"
	"testing"

	"github.com/quicprochat/quicprochat/internal/secret"
	"github.com/quicprochat/quicprochat/internal/store/pgtest"
)

var incarnationForm = regexp.MustCompile(`^[0-9a-f]{32}$`)

func metaValue(t *testing.T, db *DB, key string) string {
	t.Helper()
	var v sql.NullString
	err := db.ReadTx(context.Background(), func(tx *sql.Tx) error {
		err := tx.QueryRow("SELECT value FROM meta WHERE key = ?", key).Scan(&v)
		if err == sql.ErrNoRows {
			return nil
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return v.String
}

// TestIncarnation: a database gets its incarnation id on first use and
// keeps it; qpcctl migrate to-postgres keeps it (the same data, moved); a
// PostgreSQL backup restore replaces it (a rollback clients must notice).
func TestIncarnation(t *testing.T) {
	ctx := context.Background()
	src := openSource(t, nil)
	fillSource(t, src, 10)
	if v := metaValue(t, src, MetaIncarnation); v != "" {
		t.Fatalf("a database has an incarnation before first use: %q", v)
	}
	inc, err := src.Incarnation(ctx)
	if err != nil || !incarnationForm.MatchString(inc) {
		t.Fatalf("incarnation %q, %v", inc, err)
	}
	if again, err := src.Incarnation(ctx); err != nil || again != inc {
		t.Fatalf("second read %q (%v), first %q", again, err, inc)
	}

	dsn := pgtest.NewDatabase(t)
	if _, err := copyTo(t, src, dsn, CopyOptions{}); err != nil {
		t.Fatal(err)
	}
	pg := openPG(t, dsn, PostgresOptions{})
	if got, err := pg.Incarnation(ctx); err != nil || got != inc {
		t.Fatalf("after migrate to-postgres: %q (%v), want the source's %q", got, err, inc)
	}

	var buf bytes.Buffer
	if _, err := DumpPostgres(ctx, DumpOptions{DSN: secret.New([]byte(dsn))}, &buf); err != nil {
		t.Fatal(err)
	}
	dsn2 := pgtest.NewDatabase(t)
	if _, err := RestorePostgres(ctx, RestoreOptions{DSN: secret.New([]byte(dsn2))}, &buf); err != nil {
		t.Fatal(err)
	}
	restored := openPG(t, dsn2, PostgresOptions{})
	got, err := restored.Incarnation(ctx)
	if err != nil || !incarnationForm.MatchString(got) || got == inc {
		t.Fatalf("after backup restore: %q (%v); want a new id, not %q", got, err, inc)
	}
}

// TestIncarnationRestoreTx: NewIncarnationTx replaces the id in a
// SQLCipher database (qpcctl restore's preparation of the restored file).
func TestIncarnationRestoreTx(t *testing.T) {
	ctx := context.Background()
	db := openSource(t, nil)
	inc, err := db.Incarnation(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var fresh string
	if err := db.WriteTx(ctx, func(tx *sql.Tx) error {
		fresh, err = NewIncarnationTx(ctx, tx)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if got, err := db.Incarnation(ctx); err != nil || got != fresh || got == inc {
		t.Fatalf("after NewIncarnationTx: %q (%v), want %q (not %q)", got, err, fresh, inc)
	}
}
