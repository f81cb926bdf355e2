package delivery

import (
	"context"
	"database/sql"
	"sync"
)

// stmtCache keeps prepared statements for the write transaction that is
// currently open. The store runs a batch of WriteTx functions in one
// transaction on its single writer, so the hot path (enqueue) prepares
// each statement once per batch instead of once per call: SQLite's parse
// and plan step was the largest single cost of an enqueue. Statements
// prepared on a transaction are closed by database/sql when it ends.
type stmtCache struct {
	mu    sync.Mutex
	tx    *sql.Tx
	stmts map[string]*sql.Stmt
}

func (c *stmtCache) get(ctx context.Context, tx *sql.Tx, query string) (*sql.Stmt, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.tx != tx {
		c.tx, c.stmts = tx, map[string]*sql.Stmt{}
	}
	if st, ok := c.stmts[query]; ok {
		return st, nil
	}
	st, err := tx.PrepareContext(ctx, query)
	if err != nil {
		return nil, err
	}
	c.stmts[query] = st
	return st, nil
}
