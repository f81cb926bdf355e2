package store

import (
	"errors"
	"fmt"
	"path/filepath"
	"syscall"

	"github.com/jackc/pgx/v5/pgconn"
	sqlite3 "github.com/mutecomm/go-sqlcipher/v4"
)

// ErrDiskFull: a write failed because the filesystem holding the database
// has no space left (SQLITE_FULL, ENOSPC, EDQUOT, or PostgreSQL's disk_full
// SQLSTATE 53100). Nothing of the failed write is in the database; once
// space is freed, writes succeed again without a restart. Errors carrying it
// are *DiskFullError, which says where.
var ErrDiskFull = errors.New("store: disk full")

// pgDiskFull is PostgreSQL's SQLSTATE disk_full (class 53, insufficient
// resources).
const pgDiskFull = "53100"

// DiskFullError is a write refused for lack of disk space. It matches
// ErrDiskFull with errors.Is and unwraps to the engine's error too.
type DiskFullError struct {
	// Where the space ran out: the directory holding the database file (or
	// the target of a backup or export), or "PostgreSQL server <target>".
	Where string
	Err   error
}

func (e *DiskFullError) Error() string {
	return fmt.Sprintf("store: disk full: no space left in %s: %v", e.Where, e.Err)
}

// Unwrap makes errors.Is(err, ErrDiskFull) true and keeps the cause reachable.
func (e *DiskFullError) Unwrap() []error { return []error{ErrDiskFull, e.Err} }

// IsDiskFull reports whether err means the disk (or PostgreSQL's disk) is
// full: an error from this package carrying ErrDiskFull, or a raw engine or
// system error that says so.
func IsDiskFull(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, ErrDiskFull) || errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return true
	}
	var se sqlite3.Error
	if errors.As(err, &se) {
		// SQLITE_FULL is SQLite's own verdict; an I/O error (growing the
		// -shm wal-index, opening the WAL) carries the OS errno instead. A
		// SQL function that failed (sqlcipher_export) reports SQLITE_ERROR
		// with the inner error's text only: SQLite's fixed text for
		// SQLITE_FULL is then the one sign left.
		return se.Code == sqlite3.ErrFull || se.SystemErrno == syscall.ENOSPC || se.SystemErrno == syscall.EDQUOT ||
			(se.Code == sqlite3.ErrError && se.Error() == sqlite3.ErrFull.Error())
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code == pgDiskFull
	}
	return false
}

// asDiskFull returns err as a *DiskFullError naming where if it means a
// full disk (and is not one already), else err unchanged.
func asDiskFull(err error, where string) error {
	if err == nil || errors.Is(err, ErrDiskFull) || !IsDiskFull(err) {
		return err
	}
	return &DiskFullError{Where: where, Err: err}
}

// diskFullWhere names where this database's space lives.
func (db *DB) diskFullWhere() string {
	if db.pg != nil {
		return "PostgreSQL server " + db.pg.target
	}
	return filepath.Dir(db.path)
}

// classify turns a write's error into a *DiskFullError when the disk is full
// and tells the disk-full observer.
func (db *DB) classify(err error) error {
	err = asDiskFull(err, db.diskFullWhere())
	if err != nil && errors.Is(err, ErrDiskFull) {
		if f := db.onDiskFull.Load(); f != nil {
			(*f)(err)
		}
	}
	return err
}

// SetDiskFullObserver sets a function called (on the failing caller's
// goroutine) each time a write fails because the disk is full; with
// SetCommitObserver, which reports every successful commit, it lets the
// server follow the condition without polling. It must return quickly.
// nil removes it.
func (db *DB) SetDiskFullObserver(f func(err error)) {
	if f == nil {
		db.onDiskFull.Store(nil)
		return
	}
	db.onDiskFull.Store(&f)
}
