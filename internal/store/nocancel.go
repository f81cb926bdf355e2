package store

import (
	"context"
	"database/sql/driver"

	sqlite3 "github.com/mutecomm/go-sqlcipher/v4"
)

// The SQLite driver honours a cancellable context by running every statement
// step on a goroutine of its own and waiting on both (sqlite3.go's exec and
// Rows.Next): one goroutine, two channel operations and a hand-off between
// threads per row read and per statement executed. In a long-poll fetch of
// 16 messages that is 17 goroutines; in the half-load benchmark it was a
// large part of qpcd's CPU outside the writer (docs/benchmarks.md, "SQLite
// statements without a goroutine each").
//
// noCancelConn hands the driver a context that cannot be cancelled, so it
// steps on the caller's goroutine. What is given up is interrupting a
// statement already running on SQLite; nothing else changes:
//   - database/sql still checks the context before each statement, before a
//     transaction begins and while waiting for a pooled connection, so a
//     cancelled request starts no further statement;
//   - every statement here is bounded (by index and LIMIT), and the long jobs
//     (backup, retention, integrity checks) run with contexts that are never
//     cancelled anyway;
//   - in the writer it removes a hazard: SQLite rolls back the whole
//     transaction when a write statement inside it is interrupted, so one
//     caller giving up could undo a group commit's other writes (which the
//     writer then re-ran one by one).
type noCancelConn struct {
	*sqlite3.SQLiteConn
}

var (
	_ driver.ConnPrepareContext = noCancelConn{}
	_ driver.ExecerContext      = noCancelConn{}
	_ driver.QueryerContext     = noCancelConn{}
	_ driver.ConnBeginTx        = noCancelConn{}
	_ driver.Pinger             = noCancelConn{}
)

func (c noCancelConn) PrepareContext(ctx context.Context, query string) (driver.Stmt, error) {
	s, err := c.SQLiteConn.PrepareContext(context.WithoutCancel(ctx), query)
	if err != nil {
		return nil, err
	}
	if ss, ok := s.(*sqlite3.SQLiteStmt); ok {
		return noCancelStmt{ss}, nil
	}
	return s, nil
}

func (c noCancelConn) ExecContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Result, error) {
	return c.SQLiteConn.ExecContext(context.WithoutCancel(ctx), query, args)
}

func (c noCancelConn) QueryContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Rows, error) {
	return c.SQLiteConn.QueryContext(context.WithoutCancel(ctx), query, args)
}

func (c noCancelConn) BeginTx(ctx context.Context, opts driver.TxOptions) (driver.Tx, error) {
	return c.SQLiteConn.BeginTx(context.WithoutCancel(ctx), opts)
}

// noCancelStmt is a prepared statement of a noCancelConn.
type noCancelStmt struct {
	*sqlite3.SQLiteStmt
}

var (
	_ driver.StmtExecContext  = noCancelStmt{}
	_ driver.StmtQueryContext = noCancelStmt{}
)

func (s noCancelStmt) ExecContext(ctx context.Context, args []driver.NamedValue) (driver.Result, error) {
	return s.SQLiteStmt.ExecContext(context.WithoutCancel(ctx), args)
}

func (s noCancelStmt) QueryContext(ctx context.Context, args []driver.NamedValue) (driver.Rows, error) {
	return s.SQLiteStmt.QueryContext(context.WithoutCancel(ctx), args)
}
