package store

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
)

// MetaIncarnation is the meta key of the store's incarnation id: a random
// value created with the database and replaced by every restore (qpcctl
// restore, qpcctl backup restore), kept by qpcctl migrate to-postgres
// (the same data, moved). Clients compare it between fetches: a new value
// means the deployment was rolled back to a snapshot and sequence numbers
// past the snapshot's heads were handed out again (docs/protocol.md,
// "Store incarnation").
const MetaIncarnation = "store_incarnation"

// NewIncarnation returns a fresh random incarnation id (32 hex digits).
func NewIncarnation() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("store: incarnation id: %w", err)
	}
	return hex.EncodeToString(b[:]), nil
}

// Incarnation returns the store's incarnation id, creating it when the
// database has none yet (a new database, or one from before incarnations).
// Several nodes starting at once on one PostgreSQL database agree: the
// first insert wins and every node reads the winner.
func (db *DB) Incarnation(ctx context.Context) (string, error) {
	fresh, err := NewIncarnation()
	if err != nil {
		return "", err
	}
	var v sql.NullString
	err = db.WriteTx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING", MetaIncarnation, fresh); err != nil {
			return err
		}
		err := tx.QueryRowContext(ctx, "SELECT value FROM meta WHERE key = ?", MetaIncarnation).Scan(&v)
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("the row just written is missing")
		}
		return err
	})
	if err != nil {
		return "", fmt.Errorf("store: read the incarnation id: %w", err)
	}
	if v.String == "" {
		return "", fmt.Errorf("store: the incarnation id in meta is empty")
	}
	return v.String, nil
}

// NewIncarnationTx replaces the incarnation id inside tx (a restore's
// transaction) and returns the new value.
func NewIncarnationTx(ctx context.Context, tx *sql.Tx) (string, error) {
	inc, err := NewIncarnation()
	if err != nil {
		return "", err
	}
	if _, err := tx.ExecContext(ctx, "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value", MetaIncarnation, inc); err != nil {
		return "", fmt.Errorf("store: write a new incarnation id: %w", err)
	}
	return inc, nil
}
