// Package store opens qpcd's SQLCipher database: keying, migrations, a single group-committing writer and a reader pool.
//
// Open verifies the key and the file's identity on a read-only connection
// (mode=ro) before anything can write to the file, so a wrong key, a
// plaintext SQLite file or random bytes leave it byte-for-byte untouched, and
// no -wal or -shm appears. Once the key is proven right, reading a WAL-mode
// database makes SQLite create an empty -wal and a -shm (the wal-index) even
// on a read-only connection; so a refused open after the key check
// (ErrSchemaTooNew, ErrMigrations) leaves the database file's bytes unchanged
// but may leave those two companions beside it, as any reader would. Writes go through WriteTx, which queues
// the function to the one writer goroutine; the writer runs a batch of queued
// functions in one SQL transaction (each inside its own SAVEPOINT) and commits
// once with synchronous=FULL, so many concurrent writers share one fsync.
// Reads go through ReadTx on a pool of query-only connections; in WAL mode
// they never block the writer and each sees one consistent snapshot.
package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"

	"github.com/quicprochat/quicprochat/internal/secret"
	"github.com/quicprochat/quicprochat/internal/tracing"
)

// KeySize is the length of the raw database key in bytes.
const KeySize = 32

// DefaultReaders is the reader pool size when Options.Readers is 0.
const DefaultReaders = 4

// Options configures Open.
type Options struct {
	Path    string       // database file, e.g. data/qpcd.db; created 0600 (parent 0700) if missing
	Key     secret.Bytes // 32-byte raw SQLCipher key; Open keeps its own copy, wiped by Close
	Readers int          // reader pool size; default 4 (DefaultReaders)
	Logger  *slog.Logger // nil -> discard
	// Migrations adds to or overrides the embedded migrations: NNNN_name.sql
	// files at its root; a file replaces the embedded file of the same
	// version. nil -> the embedded migrations only.
	Migrations fs.FS
	// App, when set, opens another application's database (the client's):
	// its identity and only its migrations (see App). nil -> qpcd's.
	App *App
}

var (
	// ErrWrongKey: the file exists and the key does not open it. SQLCipher
	// cannot tell a wrong key from a file of random bytes, so this also
	// covers "not an encrypted database" when nothing else gives it away.
	ErrWrongKey = errors.New("store: wrong database key or not an encrypted database")
	// ErrNotDatabase: the file is recognisably not qpcd's database: a
	// plaintext SQLite file, a file that is not a whole number of pages, or
	// an encrypted database without qpcd's identity marker.
	ErrNotDatabase = errors.New("store: not a qpcd database")
	// ErrSchemaTooNew: the database was migrated by a newer qpcd.
	ErrSchemaTooNew = errors.New("store: database schema is newer than this qpcd")
	// ErrClosed: the DB is closed (or closing).
	ErrClosed = errors.New("store: database closed")
	// ErrMigrations: the migration files or the applied history are invalid
	// (bad name, duplicate or missing version, renamed applied step).
	ErrMigrations = errors.New("store: invalid migrations")
	// ErrTxMisuse: a WriteTx function called Commit or Rollback on the shared
	// transaction. That is a bug in the caller.
	ErrTxMisuse = errors.New("store: write function ended the shared transaction (Commit/Rollback are the store's job)")
	// ErrTxAborted: SQLite rolled back the write transaction while this
	// function ran (for example ON CONFLICT ROLLBACK, RAISE(ROLLBACK), an
	// interrupted statement, disk full) although the function returned nil.
	ErrTxAborted = errors.New("store: write transaction was rolled back by SQLite")
	// ErrPanicked: a WriteTx function panicked; its work was rolled back.
	ErrPanicked = errors.New("store: write function panicked")
)

// Group-commit limits: a batch holds at most maxBatchFns functions and stops
// taking more once it has run for maxBatchWork, so latency stays bounded.
const (
	defaultMaxBatchFns  = 256
	defaultMaxBatchWork = 5 * time.Millisecond
	queueDepth          = 1024
)

// DB is an open qpcd database. It is safe for concurrent use.
type DB struct {
	path string
	log  *slog.Logger
	key  secret.Bytes // shared by the connectors; wiped by Close

	wdb *sql.DB // exactly one connection, used only by the writer goroutine
	rdb *sql.DB // query-only reader pool

	mu     sync.RWMutex // guards closed and sends on queue/jobs
	closed bool
	reads  sync.WaitGroup // running ReadTx calls

	// swap is held shared by every ReadTx and exclusively while Rekey
	// replaces the file and reopens the pools (rekey.go).
	swap sync.RWMutex
	// maint serialises Snapshot and Rekey (backup.go, rekey.go).
	maint sync.Mutex

	queue      chan *request // WriteTx functions, in arrival order
	jobs       chan *request // exclusive work run between batches
	writerDone chan struct{}

	maxBatchFns  int
	maxBatchWork time.Duration
	batchSeq     int64 // writer goroutine only

	wstmts stmtCache // statements prepared on wdb (writer goroutine)
	rstmts stmtCache // statements prepared on rdb

	onCommit   atomic.Pointer[func(writes int, took time.Duration)] // SetCommitObserver
	onDiskFull atomic.Pointer[func(err error)]                      // SetDiskFullObserver
	onWait     atomic.Pointer[func(waited time.Duration)]           // SetWaitObserver

	// pg is set when the database is PostgreSQL (OpenPostgres); the
	// SQLite fields above are then unused.
	pg *pgEngine

	commits   atomic.Int64 // SQL COMMITs of write batches
	committed atomic.Int64 // WriteTx functions committed
}

// Open opens (creating if missing) the database at opts.Path, verifies the
// key and that the file is a qpcd database, switches to WAL, applies pending
// migrations (one transaction each) and starts the writer.
//
// Nothing is written to an existing file before the key and the file's
// identity and schema version have been checked on a read-only connection.
func Open(ctx context.Context, opts Options) (*DB, error) {
	if opts.Path == "" {
		return nil, errors.New("store: Options.Path is empty; set the storage path (e.g. data/qpcd.db)")
	}
	if opts.Key.Len() != KeySize {
		return nil, fmt.Errorf("store: database key is %d bytes, want %d; check data/db.key or QPC_DB_KEY", opts.Key.Len(), KeySize)
	}
	readers := opts.Readers
	if readers == 0 {
		readers = DefaultReaders
	}
	if readers < 0 {
		return nil, fmt.Errorf("store: Options.Readers is %d; use 0 for the default (%d) or a positive pool size", readers, DefaultReaders)
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	app := qpcdApp
	var known []migration
	var err error
	if opts.App != nil {
		app = *opts.App
		if app.ID == 0 || app.Marker == "" || app.Migrations == nil {
			return nil, fmt.Errorf("%w: Options.App needs a non-zero ID, a Marker and Migrations", ErrMigrations)
		}
		known, err = loadMigrationsFrom(app.Migrations, opts.Migrations)
	} else {
		known, err = loadMigrations(opts.Migrations)
	}
	if err != nil {
		return nil, err
	}

	db := &DB{
		wstmts:       stmtCache{memoTx: true},
		path:         opts.Path,
		log:          log,
		key:          opts.Key.Clone(),
		queue:        make(chan *request, queueDepth),
		jobs:         make(chan *request),
		writerDone:   make(chan struct{}),
		maxBatchFns:  defaultMaxBatchFns,
		maxBatchWork: defaultMaxBatchWork,
	}
	fail := func(err error) (*DB, error) {
		if db.rdb != nil {
			_ = db.rdb.Close()
		}
		if db.wdb != nil {
			_ = db.wdb.Close()
		}
		db.key.Wipe()
		// Opening needs a little space (the WAL's index, -shm): on a full
		// disk say so rather than "disk I/O error".
		return nil, asDiskFull(err, filepath.Dir(opts.Path))
	}

	created, err := prepareFile(opts.Path, log)
	if err != nil {
		return fail(err)
	}
	if !created {
		if err := verify(ctx, opts.Path, &db.key, known, app); err != nil {
			return fail(err)
		}
	}

	db.wdb = openPool(opts.Path, &db.key, roleWriter, 1)
	if err := db.wdb.PingContext(ctx); err != nil {
		return fail(fmt.Errorf("store: open writer on %s: %w", opts.Path, err))
	}
	version, err := migrate(ctx, db.wdb, known, opts.Path, app, time.Now, log)
	if err != nil {
		return fail(err)
	}
	db.rdb = openPool(opts.Path, &db.key, roleReader, readers)
	if err := db.rdb.PingContext(ctx); err != nil {
		return fail(fmt.Errorf("store: open readers on %s: %w", opts.Path, err))
	}

	go db.runWriter()
	log.Info("store: opened", "path", opts.Path, "schema_version", version, "created", created, "readers", readers,
		"page_crypto", currentProvider())
	return db, nil
}

// prepareFile creates the parent directory (0700) and the file (0600) if
// missing, and reports whether it created the file.
func prepareFile(path string, log *slog.Logger) (created bool, err error) {
	dir := filepath.Dir(path)
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return false, fmt.Errorf("store: create directory %s: %w", dir, err)
		}
	}
	st, err := os.Stat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return false, fmt.Errorf("store: create %s: %w", path, err)
		}
		if err := f.Close(); err != nil {
			return false, fmt.Errorf("store: create %s: %w", path, err)
		}
		return true, nil
	case err != nil:
		return false, fmt.Errorf("store: stat %s: %w", path, err)
	case !st.Mode().IsRegular():
		return false, fmt.Errorf("%w: %s is not a regular file; point the storage path at qpcd's database file", ErrNotDatabase, path)
	}
	if perm := st.Mode().Perm(); perm&0o077 != 0 {
		log.Warn("store: database file is accessible to group or others; chmod 600 it", "path", path, "mode", perm.String())
	}
	return false, nil
}

// verify checks, on a read-only connection, that key opens the existing file
// at path, that it is a qpcd database and that its schema is not newer than
// known. It cannot modify the file.
func verify(ctx context.Context, path string, key *secret.Bytes, known []migration, app App) error {
	c := openPool(path, key, roleCheck, 1)
	defer c.Close()
	st, err := inspectApp(ctx, c, path, app)
	switch {
	case err == nil:
	case isNotADB(err):
		return explainNotADB(path)
	case errors.Is(err, ErrNotDatabase):
		return err
	default:
		return fmt.Errorf("store: open %s: %w", path, err)
	}
	return checkApplied(st, known, path)
}

// ReadTx runs fn in a read-only transaction on the reader pool. All reads in
// fn see one snapshot: the database as of fn's first read. The transaction is
// rolled back afterwards; fn must not keep tx.
func (db *DB) ReadTx(ctx context.Context, fn func(tx *sql.Tx) error) (err error) {
	if fn == nil {
		return errors.New("store: ReadTx with nil function")
	}
	db.mu.RLock()
	if db.closed {
		db.mu.RUnlock()
		return ErrClosed
	}
	db.reads.Add(1)
	db.mu.RUnlock()
	defer db.reads.Done()
	if ctx2, span := tracing.Start(ctx, "db.read"); span.IsRecording() {
		ctx = ctx2
		defer func() {
			sys := "sqlite"
			if db.pg != nil {
				sys = "postgresql"
			}
			tracing.Set(span, attribute.String(tracing.KeyDBSystem, sys))
			if err != nil {
				tracing.Fail(span, "read_failed")
			}
			span.End()
		}()
	}
	if db.pg != nil {
		return asDiskFull(db.pg.readTx(ctx, fn), db.diskFullWhere())
	}
	db.swap.RLock()
	defer db.swap.RUnlock()

	db.rstmts.prepareWanted(ctx, db.rdb)
	tx, err := db.rdb.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return asDiskFull(fmt.Errorf("store: begin read transaction: %w", err), db.diskFullWhere())
	}
	defer func() {
		// A read can need space too (a temporary file for a large sort).
		err = asDiskFull(errors.Join(err, ignoreDone(tx.Rollback())), db.diskFullWhere())
	}()
	return fn(tx)
}

// SetCommitObserver sets a function called on the writer after every
// committed batch with the number of WriteTx functions it held and how long
// its COMMIT took (writing and flushing the WAL: the disk's share of a
// write). It must return quickly. nil removes it.
func (db *DB) SetCommitObserver(f func(writes int, took time.Duration)) {
	if f == nil {
		db.onCommit.Store(nil)
		return
	}
	db.onCommit.Store(&f)
}

// SetWaitObserver sets a function called on the writer as it starts each
// WriteTx function, with how long that function waited for it since it
// was queued (SQLite only: on PostgreSQL every write runs at once on its
// own connection, and the pool's wait is counted apart). It must return
// quickly. nil removes it.
func (db *DB) SetWaitObserver(f func(waited time.Duration)) {
	if f == nil {
		db.onWait.Store(nil)
		return
	}
	db.onWait.Store(&f)
}

// QueueLen is the number of WriteTx calls waiting for the writer.
// On PostgreSQL it is the number of callers waiting for a pooled connection.
func (db *DB) QueueLen() int {
	if db.pg != nil {
		return int(db.pg.waiting())
	}
	return len(db.queue)
}

// SchemaVersion returns the highest applied migration version.
func (db *DB) SchemaVersion(ctx context.Context) (int, error) {
	if db.pg != nil {
		v, err := db.pg.schemaVersion(ctx)
		if err != nil {
			return 0, fmt.Errorf("store: read schema version: %w", err)
		}
		return v, nil
	}
	var v int
	err := db.ReadTx(ctx, func(tx *sql.Tx) error {
		return tx.QueryRowContext(ctx, "SELECT COALESCE(MAX(version), 0) FROM schema_migrations").Scan(&v)
	})
	if err != nil {
		return 0, fmt.Errorf("store: read schema version: %w", err)
	}
	return v, nil
}

// Size returns the bytes on disk of the database file plus its WAL; on
// PostgreSQL, the database's size on the server.
func (db *DB) Size() (int64, error) {
	if db.pg != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		n, err := db.pg.size(ctx)
		if err != nil {
			return 0, fmt.Errorf("store: size: %w", err)
		}
		return n, nil
	}
	st, err := os.Stat(db.path)
	if err != nil {
		return 0, fmt.Errorf("store: size: %w", err)
	}
	n := st.Size()
	wal, err := os.Stat(db.path + "-wal")
	switch {
	case err == nil:
		n += wal.Size()
	case !errors.Is(err, fs.ErrNotExist):
		return 0, fmt.Errorf("store: size: %w", err)
	}
	return n, nil
}

// Path returns the database file's path as given in Options; on
// PostgreSQL, host:port/database.
func (db *DB) Path() string { return db.path }

// Close stops accepting writes, runs every write already queued, waits for
// running ReadTx calls, checkpoints the WAL into the database file and
// closes all connections. A second Close returns ErrClosed.
func (db *DB) Close() error {
	db.mu.Lock()
	if db.closed {
		db.mu.Unlock()
		return ErrClosed
	}
	db.closed = true
	if db.pg != nil {
		db.mu.Unlock()
		db.reads.Wait()
		err := db.pg.close()
		db.log.Info("store: closed", "backend", BackendPostgres, "target", db.path)
		return err
	}
	close(db.queue)
	db.mu.Unlock()

	<-db.writerDone
	db.reads.Wait()

	var errs []error
	if err := db.rdb.Close(); err != nil {
		errs = append(errs, fmt.Errorf("store: close readers: %w", err))
	}
	// TRUNCATE leaves the data in the main file and an empty WAL; closing the
	// last connection then removes -wal and -shm. On a full disk the main
	// file cannot grow to take the WAL's pages: that loses nothing (every
	// committed write is in the WAL, which the next Open replays), so it is
	// a warning, not a failed close.
	if _, err := db.wdb.ExecContext(context.Background(), "PRAGMA wal_checkpoint(TRUNCATE)"); err != nil {
		if IsDiskFull(err) {
			db.log.Warn("store: checkpoint at close failed: disk full; the WAL is kept and replayed at the next start (nothing is lost); free space in the data directory",
				"path", db.path, "dir", db.diskFullWhere(), "err", err)
		} else {
			errs = append(errs, fmt.Errorf("store: checkpoint: %w", err))
		}
	}
	if err := db.wdb.Close(); err != nil {
		errs = append(errs, fmt.Errorf("store: close writer: %w", err))
	}
	db.key.Wipe()
	db.log.Info("store: closed", "path", db.path, "commits", db.commits.Load(), "writes", db.committed.Load())
	return errors.Join(errs...)
}
