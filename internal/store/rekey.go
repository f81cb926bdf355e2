package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/quicprochat/quicprochat/internal/secret"
)

// ErrRekey wraps every Rekey failure.
var ErrRekey = errors.New("store: rekey failed")

// DefaultSwapTimeout bounds how long Rekey waits for running reads to end
// before it gives up (leaving the database as it was).
const DefaultSwapTimeout = 30 * time.Second

// RekeyOptions configures Rekey.
type RekeyOptions struct {
	NewKey secret.Bytes // 32 bytes; Rekey keeps its own copy
	// Prepare runs once the new file is written and verified, before it
	// replaces the live file: persist the new key where a restart can find
	// it (for example db.key.new). An error aborts with nothing changed.
	Prepare func() error
	// Commit runs after the swap, once the pools are open on the new file:
	// make the new key the configured one (rename db.key.new over db.key).
	// If it fails the database stays under the new key, the old file is
	// kept as <path>.pre-rekey and Rekey's error says what to do.
	Commit func() error
	// SwapTimeout bounds the wait for running reads; 0 means 30s.
	SwapTimeout time.Duration
}

// RekeyReport describes a finished Rekey.
type RekeyReport struct {
	FileReport
	OldKeyID string        `json:"old_key_id"`
	NewKeyID string        `json:"new_key_id"`
	Paused   time.Duration `json:"writes_paused_ns"` // how long writes waited
}

// Rekey re-encrypts the live database under a new key without losing a
// write: SQLCipher's PRAGMA rekey does not work in WAL mode, so it exports
// the database into a new file under the new key (sqlcipher_export), verifies
// that file (integrity checks, same schema version and row counts), then
// swaps it in atomically (rename) and reopens the writer and every pooled
// reader connection under the new key.
//
// It runs as exclusive work on the writer: writes queue (they are not
// refused) from the start of the export until the pools are reopened;
// reads go on until the swap itself, which waits for running reads.
func (db *DB) Rekey(ctx context.Context, o RekeyOptions) (RekeyReport, error) {
	if db.pg != nil {
		return RekeyReport{}, fmt.Errorf("%w: the database key is SQLCipher's; on PostgreSQL rotate the database password (docs/operations.md)", ErrNotSupported)
	}
	if o.NewKey.Len() != KeySize {
		return RekeyReport{}, fmt.Errorf("%w: new key is %d bytes, want %d", ErrRekey, o.NewKey.Len(), KeySize)
	}
	newKey := o.NewKey.Clone()
	defer newKey.Wipe()
	timeout := o.SwapTimeout
	if timeout <= 0 {
		timeout = DefaultSwapTimeout
	}
	db.maint.Lock()
	defer db.maint.Unlock()

	var rep RekeyReport
	err := db.exclusive(ctx, func(ctx context.Context, _ *sql.DB) error {
		paused := time.Now()
		defer func() { rep.Paused = time.Since(paused) }()
		db.swap.RLock()
		oldKey := db.key.Clone()
		db.swap.RUnlock()
		defer oldKey.Wipe()
		if oldKey.Equal(newKey) {
			return fmt.Errorf("%w: the new key equals the current key", ErrRekey)
		}
		rep.OldKeyID, rep.NewKeyID = KeyID(oldKey), KeyID(newKey)

		tmp := db.path + ".rekey-tmp"
		removeDB(tmp) // a leftover of an interrupted rekey holds nothing we need
		fr, err := exportFile(ctx, db.path, &oldKey, tmp, &newKey)
		if err != nil {
			return fmt.Errorf("%w: export under the new key: %w", ErrRekey, err)
		}
		rep.FileReport = fr
		if o.Prepare != nil {
			if err := o.Prepare(); err != nil {
				removeDB(tmp)
				return fmt.Errorf("%w: %w", ErrRekey, err)
			}
		}
		if err := db.swapIn(tmp, newKey, timeout); err != nil {
			removeDB(tmp)
			return err
		}
		rep.FileReport.Path = db.path
		pre := db.path + ".pre-rekey"
		if o.Commit != nil {
			if err := o.Commit(); err != nil {
				return fmt.Errorf("%w: the database is now encrypted under the new key (id %s) but saving that key failed: %w; fix that before restarting qpcd (the old database is kept as %s)", ErrRekey, rep.NewKeyID, err, pre)
			}
		}
		removeDB(pre)
		return SyncDir(filepath.Dir(db.path))
	})
	if err != nil {
		return RekeyReport{}, err
	}
	return rep, nil
}

// swapIn replaces the live file with tmp (already encrypted under newKey)
// and reopens the pools. It runs on the writer goroutine, so no write is in
// progress; it waits (up to timeout) for running reads and holds new ones.
// On failure the live file and pools are as before.
func (db *DB) swapIn(tmp string, newKey secret.Bytes, timeout time.Duration) error {
	unlock, err := db.lockSwap(timeout)
	if err != nil {
		return err
	}
	defer unlock()

	readers := db.rdb.Stats().MaxOpenConnections
	if err := db.closePools(); err != nil {
		return db.reopenAfterFailure(fmt.Errorf("%w: close the pools: %w", ErrRekey, err), readers)
	}
	for _, c := range companions(db.path) {
		st, err := os.Stat(c)
		switch {
		case errors.Is(err, fs.ErrNotExist):
		case err != nil:
			return db.reopenAfterFailure(fmt.Errorf("%w: %w", ErrRekey, err), readers)
		case c == db.path+"-wal" && st.Size() > 0:
			return db.reopenAfterFailure(fmt.Errorf("%w: %s still holds %d bytes after the checkpoint; another process may have the database open", ErrRekey, c, st.Size()), readers)
		default:
			if err := os.Remove(c); err != nil {
				return db.reopenAfterFailure(fmt.Errorf("%w: %w", ErrRekey, err), readers)
			}
		}
	}
	pre := db.path + ".pre-rekey"
	removeDB(pre)
	if err := os.Link(db.path, pre); err != nil {
		return db.reopenAfterFailure(fmt.Errorf("%w: keep the old file as %s: %w", ErrRekey, pre, err), readers)
	}
	if err := os.Rename(tmp, db.path); err != nil {
		removeDB(pre)
		return db.reopenAfterFailure(fmt.Errorf("%w: rename %s over %s: %w", ErrRekey, tmp, db.path, err), readers)
	}
	if err := SyncDir(filepath.Dir(db.path)); err != nil {
		db.log.Warn("store: rekey: directory sync failed", "err", err)
	}
	old := db.key
	db.key = newKey.Clone()
	if err := db.openPools(readers); err != nil {
		// Put the old file and key back.
		db.key.Wipe()
		db.key = old
		if rerr := os.Rename(pre, db.path); rerr != nil {
			return fmt.Errorf("%w: reopen under the new key: %w; and putting back the old file failed: %v (the old database is %s, under the old key)", ErrRekey, err, rerr, pre)
		}
		return db.reopenAfterFailure(fmt.Errorf("%w: reopen under the new key: %w", ErrRekey, err), readers)
	}
	old.Wipe()
	db.log.Info("store: rekeyed", "path", db.path, "key_id", KeyID(db.key))
	return nil
}

// lockSwap takes db.swap exclusively, waiting at most timeout for running
// reads. On timeout the pending lock is released as soon as it is granted.
func (db *DB) lockSwap(timeout time.Duration) (func(), error) {
	got := make(chan struct{})
	giveUp := make(chan struct{})
	go func() {
		db.swap.Lock()
		select {
		case got <- struct{}{}:
		case <-giveUp:
			db.swap.Unlock()
		}
	}()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-got:
		return db.swap.Unlock, nil
	case <-t.C:
		close(giveUp)
		return nil, fmt.Errorf("%w: reads did not finish within %s; retry when the load is lower", ErrRekey, timeout)
	}
}

// closePools checkpoints the WAL into the main file and closes every
// connection (writer and readers). Callers hold db.swap and run on the writer.
func (db *DB) closePools() error {
	var errs []error
	if err := db.rdb.Close(); err != nil {
		errs = append(errs, err)
	}
	if _, err := db.wdb.ExecContext(context.Background(), "PRAGMA wal_checkpoint(TRUNCATE)"); err != nil {
		errs = append(errs, err)
	}
	if err := db.wdb.Close(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// openPools opens the writer and the reader pool on db.path with db.key.
func (db *DB) openPools(readers int) error {
	if readers <= 0 {
		readers = DefaultReaders
	}
	w := openPool(db.path, &db.key, roleWriter, 1)
	if err := w.PingContext(context.Background()); err != nil {
		_ = w.Close()
		return err
	}
	r := openPool(db.path, &db.key, roleReader, readers)
	if err := r.PingContext(context.Background()); err != nil {
		_ = r.Close()
		_ = w.Close()
		return err
	}
	db.wdb, db.rdb = w, r
	return nil
}

// reopenAfterFailure reopens the pools on the unchanged live file and key.
func (db *DB) reopenAfterFailure(cause error, readers int) error {
	if err := db.openPools(readers); err != nil {
		return fmt.Errorf("%w; reopening the database also failed: %v (restart qpcd)", cause, err)
	}
	return cause
}
