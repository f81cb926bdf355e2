package store

import (
	"context"
	"database/sql/driver"
	"fmt"
	"strconv"
	"strings"
	"sync"
)

// The services write their SQL once, in the dialect both engines accept:
// `?` placeholders, ON CONFLICT upserts, integer flags and Unix-millisecond
// times. PostgreSQL numbers its placeholders ($1, $2, ...), so every query
// that reaches the pgx driver passes through rewritePlaceholders first. The
// rewrite happens in a thin wrapper around pgx's database/sql connection
// (pgConn below) so that the services keep using *sql.Tx unchanged.

// placeholderCache holds rewritten queries: the services use a few hundred
// distinct query strings, so the cache stays small.
var placeholderCache sync.Map // string -> string

// rewritePlaceholders returns query with each `?` outside string literals,
// quoted identifiers and comments replaced by $1, $2, ... in order.
func rewritePlaceholders(query string) string {
	if !strings.Contains(query, "?") {
		return query
	}
	if q, ok := placeholderCache.Load(query); ok {
		return q.(string)
	}
	var b strings.Builder
	b.Grow(len(query) + 16)
	n := 0
	for i := 0; i < len(query); i++ {
		c := query[i]
		switch {
		case c == '\'' || c == '"':
			// Copy the literal or identifier through its closing quote; a
			// doubled quote inside is an escaped one and is copied too.
			j := i + 1
			for j < len(query) {
				if query[j] == c {
					if j+1 < len(query) && query[j+1] == c {
						j += 2
						continue
					}
					break
				}
				j++
			}
			end := min(j+1, len(query))
			b.WriteString(query[i:end])
			i = end - 1
		case c == '-' && i+1 < len(query) && query[i+1] == '-':
			j := strings.IndexByte(query[i:], '\n')
			if j < 0 {
				j = len(query) - i
			}
			b.WriteString(query[i : i+j])
			i += j - 1
		case c == '/' && i+1 < len(query) && query[i+1] == '*':
			j := strings.Index(query[i+2:], "*/")
			end := len(query)
			if j >= 0 {
				end = i + 2 + j + 2
			}
			b.WriteString(query[i:end])
			i = end - 1
		case c == '?':
			n++
			b.WriteByte('$')
			b.WriteString(strconv.Itoa(n))
		default:
			b.WriteByte(c)
		}
	}
	out := b.String()
	placeholderCache.Store(query, out)
	return out
}

// pgConnector wraps pgx's database/sql connector so that every connection
// rewrites placeholders.
type pgConnector struct {
	inner driver.Connector
}

func (c pgConnector) Connect(ctx context.Context) (driver.Conn, error) {
	conn, err := c.inner.Connect(ctx)
	if err != nil {
		return nil, err
	}
	in, ok := conn.(pgInner)
	if !ok {
		_ = conn.Close()
		return nil, fmt.Errorf("store: pgx connection %T lacks a database/sql interface qpcd uses", conn)
	}
	return &pgConn{inner: in}, nil
}

func (c pgConnector) Driver() driver.Driver { return c.inner.Driver() }

// pgInner is what pgx's stdlib connection implements and pgConn forwards.
type pgInner interface {
	driver.Conn
	driver.ConnPrepareContext
	driver.ConnBeginTx
	driver.ExecerContext
	driver.QueryerContext
	driver.Pinger
	driver.NamedValueChecker
	driver.SessionResetter
}

// pgConn is a pgx stdlib connection whose queries are rewritten from `?`
// placeholders to PostgreSQL's numbered ones.
type pgConn struct {
	inner pgInner
}

// Unwrap returns pgx's connection (for sql.Conn.Raw users).
func (c *pgConn) Unwrap() driver.Conn { return c.inner }

func (c *pgConn) Prepare(query string) (driver.Stmt, error) {
	return c.inner.Prepare(rewritePlaceholders(query))
}

func (c *pgConn) PrepareContext(ctx context.Context, query string) (driver.Stmt, error) {
	return c.inner.PrepareContext(ctx, rewritePlaceholders(query))
}

func (c *pgConn) Close() error { return c.inner.Close() }

func (c *pgConn) Begin() (driver.Tx, error) {
	return c.inner.BeginTx(context.Background(), driver.TxOptions{})
}

func (c *pgConn) BeginTx(ctx context.Context, opts driver.TxOptions) (driver.Tx, error) {
	return c.inner.BeginTx(ctx, opts)
}

func (c *pgConn) ExecContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Result, error) {
	return c.inner.ExecContext(ctx, rewritePlaceholders(query), args)
}

func (c *pgConn) QueryContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Rows, error) {
	return c.inner.QueryContext(ctx, rewritePlaceholders(query), args)
}

func (c *pgConn) Ping(ctx context.Context) error { return c.inner.Ping(ctx) }

func (c *pgConn) CheckNamedValue(v *driver.NamedValue) error { return c.inner.CheckNamedValue(v) }

func (c *pgConn) ResetSession(ctx context.Context) error { return c.inner.ResetSession(ctx) }
