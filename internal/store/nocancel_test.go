package store

import (
	"context"
	"database/sql"
	"errors"
	"testing"
)

// Every SQLite connection the store opens, the writer's and the readers',
// steps statements on the caller's goroutine (nocancel.go).
func TestConnectionsStepWithoutAGoroutine(t *testing.T) {
	db := benchDB(t)
	for name, pool := range map[string]*sql.DB{"writer": db.wdb, "reader": db.rdb} {
		conn, err := pool.Conn(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		err = conn.Raw(func(dc any) error {
			if _, ok := dc.(noCancelConn); !ok {
				t.Errorf("%s connection is %T, not noCancelConn", name, dc)
			}
			return nil
		})
		_ = conn.Close()
		if err != nil {
			t.Fatal(err)
		}
	}
}

// A context cancelled during a read still stops the next statement: the
// connection only ignores cancellation inside a statement already running.
func TestCancelledReadStartsNoFurtherStatement(t *testing.T) {
	db := benchDB(t)
	if err := db.WriteTx(context.Background(), func(tx *sql.Tx) error {
		_, err := tx.Exec("INSERT INTO rows (body) VALUES (x'01'), (x'02')")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var first int64
	err := db.ReadTx(ctx, func(tx *sql.Tx) error {
		if err := tx.QueryRowContext(ctx, "SELECT count(*) FROM rows").Scan(&first); err != nil {
			return err
		}
		cancel()
		var n int64
		return tx.QueryRowContext(ctx, "SELECT count(*) FROM rows").Scan(&n)
	})
	if first != 2 {
		t.Fatalf("first read counted %d rows, want 2", first)
	}
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("read after cancel: got %v, want context.Canceled", err)
	}
}
