package store

import (
	"bytes"
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"

	sqlite3 "github.com/mutecomm/go-sqlcipher/v4"

	"github.com/quicprochat/quicprochat/internal/secret"
)

// connRole selects the pragmas a connection is opened with.
type connRole int

const (
	// roleCheck is the read-only connection used to verify the key and the
	// database's identity before anything may write to the file.
	roleCheck connRole = iota
	// roleWriter is the single connection that writes (WAL, synchronous=FULL).
	roleWriter
	// roleReader is a pooled query-only connection.
	roleReader
)

// memorySecurity is SQLCipher's process-wide cipher_memory_security: when
// on, SQLCipher mlocks every allocation and zeroes it when freed, so decrypted
// pages do not linger in freed heap memory. It costs syscalls on every
// allocation: group-committed 1 KiB writes ran 2-3x faster with it off here,
// and it halved the CPU of a durable enqueue (docs/benchmarks.md). It is off
// by default, as in SQLCipher 4.5 and later: an attacker who can read this
// process's memory can read the key and the live pages anyway
// (docs/threat-model.md). Operators may turn it on with db.memory_security.
var memorySecurity atomic.Bool

// SetMemorySecurity sets cipher_memory_security for connections opened
// afterwards. The setting is process-wide inside SQLCipher, so it is a
// package setting rather than a per-DB option.
func SetMemorySecurity(on bool) { memorySecurity.Store(on) }

func onOff(b bool) string {
	if b {
		return "ON"
	}
	return "OFF"
}

// busyTimeoutMS is how long a connection waits on a lock held by another
// connection (a checkpoint, or a qpcctl process) before SQLITE_BUSY.
const busyTimeoutMS = 5000

// connector opens keyed SQLCipher connections without database/sql ever
// holding the DSN: the DSN carries the key, so it is built per connection from
// the secret and never stored, logged or put into an error.
type connector struct {
	drv  *sqlite3.SQLiteDriver
	path string
	key  *secret.Bytes // owned by DB; wiped on Close
	role connRole
}

var _ driver.Connector = (*connector)(nil)

// uriPath escapes the characters that are special in an SQLite URI filename.
func uriPath(p string) string {
	return strings.NewReplacer("%", "%25", "?", "%3f", "#", "%23").Replace(filepath.Clean(p))
}

// dsn builds the driver DSN for c. The result contains the key: keep it local.
func (c *connector) dsn() string {
	v := url.Values{}
	// Raw 32-byte key: SQLCipher uses it as the encryption key directly (no KDF).
	v.Set("_pragma_key", "x'"+c.key.Hex()+"'")
	v.Set("_busy_timeout", fmt.Sprint(busyTimeoutMS))
	v.Set("_foreign_keys", "1")
	switch c.role {
	case roleCheck:
		// mode=ro: SQLite cannot write to, create or convert the file.
		v.Set("mode", "ro")
		v.Set("_query_only", "1")
	case roleWriter:
		v.Set("_journal_mode", "WAL")
		v.Set("_synchronous", "FULL")
		v.Set("_txlock", "immediate")
	case roleReader:
		v.Set("_query_only", "1")
	}
	return "file:" + uriPath(c.path) + "?" + v.Encode()
}

// Connect implements driver.Connector.
func (c *connector) Connect(ctx context.Context) (driver.Conn, error) {
	if c.key.IsZero() {
		return nil, ErrClosed
	}
	if err := useProvider(c.drv); err != nil {
		return nil, err
	}
	conn, err := c.drv.Open(c.dsn())
	if err != nil {
		return nil, c.scrub(err)
	}
	if sc, ok := conn.(*sqlite3.SQLiteConn); ok {
		conn = noCancelConn{sc} // nocancel.go: no goroutine per statement step
	}
	if c.role == roleWriter {
		// The batch marker lets the writer tell, after a transaction function
		// misused the shared *sql.Tx, whether the batch was committed.
		ex, ok := conn.(driver.ExecerContext)
		if !ok {
			_ = conn.Close()
			return nil, errors.New("store: driver connection cannot execute statements")
		}
		for _, q := range []string{
			"PRAGMA temp_store = MEMORY",
			"PRAGMA cipher_memory_security = " + onOff(memorySecurity.Load()),
			"CREATE TEMP TABLE IF NOT EXISTS " + batchMarkerTable + " (k INTEGER PRIMARY KEY, n INTEGER NOT NULL)",
		} {
			if _, err := ex.ExecContext(ctx, q, nil); err != nil {
				_ = conn.Close()
				return nil, c.scrub(err)
			}
		}
	}
	return conn, nil
}

// Driver implements driver.Connector.
func (c *connector) Driver() driver.Driver { return c.drv }

// scrub returns err unless its text could contain the key (SQLite never puts
// the filename into its messages, but the filename here is a URI carrying the
// key, so check rather than trust).
func (c *connector) scrub(err error) error {
	msg := strings.ToLower(err.Error())
	if strings.Contains(msg, strings.ToLower(c.key.Hex())) || strings.Contains(msg, "_pragma_key") {
		var se sqlite3.Error
		if errors.As(err, &se) {
			return fmt.Errorf("store: sqlite error code %d (message withheld: it named the connection string)", se.Code)
		}
		return errors.New("store: driver error (message withheld: it named the connection string)")
	}
	return err
}

// openPool opens a database/sql pool of role connections.
func openPool(path string, key *secret.Bytes, role connRole, maxConns int) *sql.DB {
	db := sql.OpenDB(&connector{drv: &sqlite3.SQLiteDriver{}, path: path, key: key, role: role})
	db.SetMaxOpenConns(maxConns)
	db.SetMaxIdleConns(maxConns)
	db.SetConnMaxLifetime(0)
	db.SetConnMaxIdleTime(0)
	return db
}

// sqliteHeader starts every plaintext SQLite 3 database file.
var sqliteHeader = []byte("SQLite format 3\x00")

// minPageSize is the smallest SQLite/SQLCipher page size: the main file of
// any database, encrypted or not, is a whole number of pages.
const minPageSize = 512

// explainNotADB turns SQLITE_NOTADB on the first read into ErrNotDatabase or
// ErrWrongKey. SQLCipher authenticates each page with an HMAC under the key,
// so a wrong key and a file of random bytes fail the same check: those two
// cannot be told apart. What can be told apart without the key: a plaintext
// SQLite file (it starts with the SQLite header) and a file whose size is not
// a whole number of pages.
func explainNotADB(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("%w: %s: %v", ErrWrongKey, path, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return fmt.Errorf("%w: %s: %v", ErrWrongKey, path, err)
	}
	head := make([]byte, len(sqliteHeader))
	n, _ := io.ReadFull(f, head)
	switch {
	case n == len(head) && bytes.Equal(head, sqliteHeader):
		return fmt.Errorf("%w: %s is a plaintext SQLite database (another program's?), not qpcd's encrypted database; point the storage path at qpcd's database file", ErrNotDatabase, path)
	case st.Size()%minPageSize != 0:
		return fmt.Errorf("%w: %s is %d bytes, not a whole number of database pages; it is not a database file; point the storage path at qpcd's database file", ErrNotDatabase, path, st.Size())
	}
	return fmt.Errorf("%w: %s does not open with the configured key (SQLCipher cannot tell a wrong key from a file that is not an encrypted database); check data/db.key or QPC_DB_KEY, and that the path names qpcd's database", ErrWrongKey, path)
}

// isNotADB reports whether err is SQLite's "file is not a database".
func isNotADB(err error) bool {
	var se sqlite3.Error
	return errors.As(err, &se) && se.Code == sqlite3.ErrNotADB
}
