package store

import (
	"context"
	"database/sql"
	"path/filepath"
	"testing"
)

// Statements bound with WriteStmt/ReadStmt are prepared on the pool once and
// reused by later transactions, and keep working after Rekey has replaced
// the pools (whose closing finalised the old preparations).
func TestStatementsPreparedOncePerPool(t *testing.T) {
	ctx := context.Background()
	db := openTest(t, filepath.Join(t.TempDir(), "qpcd.db"), newKey(t))
	defer db.Close()
	const ins = "INSERT INTO rows (body) VALUES (?)"
	const cnt = "SELECT count(*) FROM rows"
	write := func() {
		t.Helper()
		if err := db.WriteTx(ctx, func(tx *sql.Tx) error {
			st, err := db.WriteStmt(ctx, tx, ins)
			if err != nil {
				return err
			}
			_, err = st.ExecContext(ctx, []byte("x"))
			return err
		}); err != nil {
			t.Fatalf("write: %v", err)
		}
	}
	count := func() int {
		t.Helper()
		var n int
		if err := db.ReadTx(ctx, func(tx *sql.Tx) error {
			st, err := db.ReadStmt(ctx, tx, cnt)
			if err != nil {
				return err
			}
			return st.QueryRowContext(ctx).Scan(&n)
		}); err != nil {
			t.Fatalf("read: %v", err)
		}
		return n
	}
	cached := func(c *stmtCache, q string) *sql.Stmt {
		c.mu.Lock()
		defer c.mu.Unlock()
		return c.stmts[q]
	}

	write() // prepared on its transaction only, and wanted
	if cached(&db.wstmts, ins) != nil {
		t.Fatal("prepared on the pool inside a transaction (that would wait for the writer's only connection)")
	}
	write() // the batch start prepared it on the pool
	first := cached(&db.wstmts, ins)
	if first == nil {
		t.Fatal("write statement not prepared on the writer pool after its first use")
	}
	write()
	if cached(&db.wstmts, ins) != first {
		t.Fatal("write statement prepared again")
	}
	if count() != 3 || count() != 3 || cached(&db.rstmts, cnt) == nil {
		t.Fatal("read statement not counted right or not prepared on the reader pool")
	}

	if _, err := db.Rekey(ctx, RekeyOptions{NewKey: newKey(t)}); err != nil {
		t.Fatalf("Rekey: %v", err)
	}
	write()
	write()
	if got := count(); got != 5 {
		t.Fatalf("after Rekey: %d rows, want 5", got)
	}
	if now := cached(&db.wstmts, ins); now == nil || now == first {
		t.Fatal("write statement not prepared afresh on the new writer pool")
	}
}
