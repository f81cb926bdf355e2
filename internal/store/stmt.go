package store

import (
	"context"
	"database/sql"
	"sync"
	"sync/atomic"
)

// stmtCache keeps statements prepared once on a pool and reused by every
// transaction on it: SQLite's parse-and-plan step costs more than running a
// small statement, and database/sql otherwise prepares every query of a
// transaction afresh. The first use of a query prepares it on that
// transaction only and marks it wanted; prepareWanted then prepares it on
// the pool at a moment no connection of the pool is held by the caller (a
// pool's PrepareContext waits for a free connection, which inside a
// transaction on the single writer connection would never come).
//
// Statements belong to one pool: when Rekey replaces the pools, closing the
// old ones finalises their statements and the cache starts over.
type stmtCache struct {
	mu        sync.Mutex
	pool      *sql.DB
	stmts     map[string]*sql.Stmt
	wanted    map[string]bool
	hasWanted atomic.Bool

	// The writer runs one transaction at a time and many functions use the
	// same statements in it: memoTx keeps the transaction's bindings too
	// (database/sql allocates a new one per StmtContext call).
	memoTx  bool
	tx      *sql.Tx
	txStmts map[string]*sql.Stmt
}

// bind returns query as a statement of tx, which must be a transaction of pool.
func (c *stmtCache) bind(ctx context.Context, pool *sql.DB, tx *sql.Tx, query string) (*sql.Stmt, error) {
	c.mu.Lock()
	c.resetLocked(pool)
	if c.memoTx {
		if c.tx != tx {
			c.tx, c.txStmts = tx, map[string]*sql.Stmt{}
		}
		if st := c.txStmts[query]; st != nil {
			c.mu.Unlock()
			return st, nil
		}
	}
	shared := c.stmts[query]
	if shared == nil {
		if c.wanted == nil {
			c.wanted = map[string]bool{}
		}
		c.wanted[query] = true
		c.hasWanted.Store(true)
	}
	c.mu.Unlock()

	var bound *sql.Stmt
	if shared != nil {
		bound = tx.StmtContext(ctx, shared)
	} else {
		var err error
		if bound, err = tx.PrepareContext(ctx, query); err != nil {
			return nil, err
		}
	}
	if c.memoTx {
		c.mu.Lock()
		if c.tx == tx {
			c.txStmts[query] = bound
		}
		c.mu.Unlock()
	}
	return bound, nil
}

// prepareWanted prepares on pool the queries bind has met since the last
// call. The caller must hold no connection of pool. A query that fails to
// prepare here stays per-transaction; bind's own preparation reports the
// error to whoever uses it.
func (c *stmtCache) prepareWanted(ctx context.Context, pool *sql.DB) {
	if !c.hasWanted.Load() {
		return
	}
	c.mu.Lock()
	c.resetLocked(pool)
	wanted := c.wanted
	c.wanted = nil
	c.hasWanted.Store(false)
	c.mu.Unlock()
	for q := range wanted {
		st, err := pool.PrepareContext(ctx, q)
		if err != nil {
			continue
		}
		c.mu.Lock()
		if c.pool == pool && c.stmts[q] == nil {
			c.stmts[q] = st
			st = nil
		}
		c.mu.Unlock()
		if st != nil {
			_ = st.Close()
		}
	}
}

func (c *stmtCache) resetLocked(pool *sql.DB) {
	if c.pool != pool {
		// The old pool's statements were finalised when it was closed.
		c.pool, c.stmts = pool, map[string]*sql.Stmt{}
		c.tx, c.txStmts = nil, nil
	}
}

// WriteStmt returns query prepared for tx, the transaction a WriteTx
// function was given. The statement is prepared once on the writer
// connection and reused by later batches; it is closed with tx (the shared
// preparation stays).
func (db *DB) WriteStmt(ctx context.Context, tx *sql.Tx, query string) (*sql.Stmt, error) {
	if db.pg != nil {
		return db.pg.stmts.bind(ctx, db.pg.pool, tx, query)
	}
	return db.wstmts.bind(ctx, db.wdb, tx, query)
}

// ReadStmt is WriteStmt for the transaction a ReadTx function was given:
// the statement is prepared once per reader connection.
func (db *DB) ReadStmt(ctx context.Context, tx *sql.Tx, query string) (*sql.Stmt, error) {
	if db.pg != nil {
		return db.pg.stmts.bind(ctx, db.pg.pool, tx, query)
	}
	return db.rstmts.bind(ctx, db.rdb, tx, query)
}
