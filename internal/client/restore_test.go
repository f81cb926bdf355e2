package client

import (
	"database/sql"
	"testing"

	"github.com/quicprochat/quicprochat/internal/server/servertest"
)

func clientMeta(t *testing.T, c *Client, key string) string {
	t.Helper()
	var v sql.NullString
	err := c.db.ReadTx(ctxT(t), func(tx *sql.Tx) error {
		err := tx.QueryRow(`SELECT value FROM meta WHERE key = ?`, key).Scan(&v)
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

// TestIncarnationNoticed: the first fetch records the server's store
// incarnation without reconciling anything; an answer without one (a
// server older than the field) changes nothing; a different one is a
// restore, reconciled and reported once.
func TestIncarnationNoticed(t *testing.T) {
	srv := servertest.Start(t, servertest.Config(t))
	c := registered(t, srv, "alice")
	rep, err := c.Sync(ctxT(t), 0)
	if err != nil || rep.ServerRestored != nil {
		t.Fatalf("first sync: %+v, %v", rep, err)
	}
	inc := clientMeta(t, c, metaIncarnation)
	if len(inc) != 32 {
		t.Fatalf("recorded incarnation %q", inc)
	}
	if r, err := c.noteIncarnation(ctxT(t), ""); err != nil || r != nil || clientMeta(t, c, metaIncarnation) != inc {
		t.Fatalf("an answer without an incarnation: %+v, %v", r, err)
	}
	if rep, err := c.Sync(ctxT(t), 0); err != nil || rep.ServerRestored != nil {
		t.Fatalf("second sync: %+v, %v", rep, err)
	}
	// As if the server had been restored since.
	if err := c.db.WriteTx(ctxT(t), func(tx *sql.Tx) error { return setMeta(ctxT(t), tx, metaIncarnation, "an earlier incarnation") }); err != nil {
		t.Fatal(err)
	}
	rep, err = c.Sync(ctxT(t), 0)
	if err != nil || rep.ServerRestored == nil || len(rep.ServerRestored.Channels) != 0 {
		t.Fatalf("sync after the incarnation changed: %+v, %v", rep.ServerRestored, err)
	}
	if got := clientMeta(t, c, metaIncarnation); got != inc {
		t.Fatalf("incarnation %q after reconciling, want the server's %q", got, inc)
	}
	if n, err := c.RestoreNotice(ctxT(t)); err != nil || n == nil {
		t.Fatalf("restore notice: %+v, %v", n, err)
	}
	if n, err := c.RestoreNotice(ctxT(t)); err != nil || n != nil {
		t.Fatalf("restore notice a second time: %+v, %v", n, err)
	}
}
