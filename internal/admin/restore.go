package admin

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
	"github.com/quicprochat/quicprochat/internal/store"
)

// RestoreOptions configures Restore.
type RestoreOptions struct {
	Backup  string       // backup file
	DataDir string       // qpcd's data directory (locked while restoring)
	DBPath  string       // live database; "" = <DataDir>/qpcd.db
	Key     secret.Bytes // the configured database key: the restored file is encrypted under it
	// BackupKey opens the backup when it was taken under an older key
	// (before a `rotate db-key`); zero = Key. The restored database is
	// re-encrypted under Key.
	BackupKey secret.Bytes
	DryRun    bool             // restore into a temporary directory, report, delete it
	TmpDir    string           // for the dry run and verification; "" = system default
	Now       func() time.Time // nil = time.Now
	Step      func(string)     // progress: called at each step (may be nil)
}

// RestoreReport says what Restore did (or, for a dry run, would do).
type RestoreReport struct {
	DryRun                 bool             `json:"dry_run"`
	Backup                 VerifyReport     `json:"backup"`
	Database               string           `json:"database"`
	PreRestore             string           `json:"pre_restore_file,omitempty"` // the replaced database, kept
	ReEncrypted            bool             `json:"re_encrypted"`
	SchemaVersion          int              `json:"schema_version"` // after migrations
	Tables                 map[string]int64 `json:"tables"`
	KeyPackagesInvalidated int64            `json:"keypackages_invalidated"`
	TookSeconds            float64          `json:"took_seconds"`
}

// Restore replaces qpcd's database with the one in a backup file. It refuses
// while qpcd runs on DataDir (the data-directory lock), verifies the backup
// completely first, prepares the new database beside the live one
// (re-encrypted under Key if the backup used another key; migrated to this
// build's schema; every unclaimed KeyPackage deleted), verifies the result,
// then keeps the live database as qpcd.db.pre-restore-<UTC time> (a hard
// link, with its WAL if any) and renames the new file over qpcd.db.
//
// KeyPackages: a KeyPackage in the backup may have been handed out (and so
// consumed) after the backup was taken; serving it again would let two
// groups be built on one KeyPackage (its init key reused). So restore
// deletes every KeyPackage, pool and last resort; clients notice their
// stock is empty and upload new ones.
func Restore(ctx context.Context, o RestoreOptions) (rep RestoreReport, err error) {
	start := time.Now()
	now := o.Now
	if now == nil {
		now = time.Now
	}
	step := o.Step
	if step == nil {
		step = func(string) {}
	}
	live := o.DBPath
	if live == "" {
		live = filepath.Join(o.DataDir, "qpcd.db")
	}
	backupKey := o.BackupKey
	if backupKey.IsZero() {
		backupKey = o.Key
	}
	rep.DryRun = o.DryRun

	var lock *DirLock
	if !o.DryRun {
		lock, err = LockDataDir(o.DataDir, "qpcctl restore")
		if err != nil {
			if errors.Is(err, ErrLocked) {
				return rep, fmt.Errorf("%w; qpcd must be stopped to restore (systemctl stop qpcd), then run restore again", err)
			}
			return rep, err
		}
		defer lock.Unlock()
	}

	step("verifying the backup")
	if b, err := OpenBackup(o.Backup); err == nil && b.Manifest.IsPostgres() {
		return rep, fmt.Errorf("%w: %s is a backup of a PostgreSQL deployment; restore it into an empty PostgreSQL database (store.backend: postgres with postgres.dsn_file, or --dsn-file); restoring it into SQLCipher is not supported", ErrBackupBackend, o.Backup)
	}
	vr, err := VerifyBackup(ctx, o.Backup, backupKey, o.TmpDir)
	rep.Backup = vr
	if err != nil {
		return rep, err
	}

	workDir := filepath.Dir(live)
	if o.DryRun {
		workDir, err = os.MkdirTemp(o.TmpDir, "qpcctl-restore-dry-run-")
		if err != nil {
			return rep, fmt.Errorf("admin: temporary directory: %w (pass --tmp-dir with free space)", err)
		}
		defer os.RemoveAll(workDir)
	}
	tmp := filepath.Join(workDir, filepath.Base(live)+".restore-tmp")
	removeFiles(tmp)
	defer func() {
		if err != nil || o.DryRun {
			removeFiles(tmp)
		}
	}()

	b, err := OpenBackup(o.Backup)
	if err != nil {
		return rep, err
	}
	step("extracting the database")
	if backupKey.Equal(o.Key) {
		if err := b.ExtractDB(tmp); err != nil {
			return rep, err
		}
	} else {
		raw := tmp + ".old-key"
		removeFiles(raw)
		defer removeFiles(raw)
		if err := b.ExtractDB(raw); err != nil {
			return rep, err
		}
		step("re-encrypting under the current database key")
		if _, err := store.ExportFile(ctx, raw, backupKey, tmp, o.Key); err != nil {
			return rep, fmt.Errorf("admin: re-encrypt the backup under the current key: %w", err)
		}
		rep.ReEncrypted = true
	}

	step("migrating and invalidating unclaimed KeyPackages")
	n, err := prepareRestored(ctx, tmp, o.Key)
	if err != nil {
		return rep, err
	}
	rep.KeyPackagesInvalidated = n
	fr, err := store.VerifyFile(ctx, tmp, o.Key)
	if err != nil {
		return rep, fmt.Errorf("admin: the prepared database failed verification, the live database is untouched: %w", err)
	}
	rep.SchemaVersion, rep.Tables = fr.SchemaVersion, fr.Tables
	rep.Database = live
	// The read-only verification leaves an empty -wal and -shm beside the
	// (WAL-mode) file; they must not outlive the rename.
	if err := dropEmptyCompanions(tmp); err != nil {
		return rep, err
	}
	if o.DryRun {
		rep.TookSeconds = time.Since(start).Seconds()
		return rep, nil
	}

	step("swapping the database")
	pre, err := swapLive(tmp, live, now())
	if err != nil {
		return rep, err
	}
	rep.PreRestore = pre
	rep.TookSeconds = time.Since(start).Seconds()
	return rep, nil
}

// prepareRestored opens the restored file with the store (which applies
// pending migrations), gives it a new incarnation id, deletes every
// KeyPackage and closes it cleanly.
func prepareRestored(ctx context.Context, path string, key secret.Bytes) (int64, error) {
	db, err := store.Open(ctx, store.Options{Path: path, Key: key})
	if err != nil {
		return 0, fmt.Errorf("admin: open the restored database: %w", err)
	}
	var n int64
	err = db.WriteTx(ctx, func(tx *sql.Tx) error {
		var exists int
		if err := tx.QueryRowContext(ctx, "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'keypackages'").Scan(&exists); err != nil {
			return err
		}
		// A new incarnation: clients that saw the store past this
		// snapshot learn it was rolled back (store/incarnation.go).
		if _, err := store.NewIncarnationTx(ctx, tx); err != nil {
			return err
		}
		if exists == 0 {
			return nil
		}
		res, err := tx.ExecContext(ctx, "DELETE FROM keypackages")
		if err != nil {
			return err
		}
		n, err = res.RowsAffected()
		return err
	})
	if cerr := db.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return 0, fmt.Errorf("admin: invalidate KeyPackages in the restored database: %w", err)
	}
	return n, nil
}

// swapLive keeps the live database (and its WAL) under a dated name and
// renames tmp over it. Returns the kept file's path ("" if there was none).
func swapLive(tmp, live string, now time.Time) (string, error) {
	dir := filepath.Dir(live)
	pre := ""
	if _, err := os.Stat(live); err == nil {
		pre = live + ".pre-restore-" + now.UTC().Format("20060102T150405Z")
		if err := os.Link(live, pre); err != nil {
			return "", fmt.Errorf("admin: keep the current database as %s: %w (nothing was changed)", pre, err)
		}
		// A WAL left by an unclean stop belongs to the old file: keep it
		// with the copy, never let it be replayed into the restored one.
		if st, err := os.Stat(live + "-wal"); err == nil && st.Size() > 0 {
			if err := os.Rename(live+"-wal", pre+"-wal"); err != nil {
				return "", fmt.Errorf("admin: move %s-wal aside: %w (nothing was changed)", live, err)
			}
		}
		for _, c := range []string{live + "-wal", live + "-shm", live + "-journal"} {
			if err := os.Remove(c); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return "", fmt.Errorf("admin: remove %s: %w", c, err)
			}
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("admin: stat %s: %w", live, err)
	}
	if err := os.Rename(tmp, live); err != nil {
		return "", fmt.Errorf("admin: rename %s over %s: %w", tmp, live, err)
	}
	if err := store.SyncDir(dir); err != nil {
		return pre, err
	}
	return pre, nil
}

// dropEmptyCompanions removes path's -wal (which must be empty: the file
// was closed cleanly) and -shm.
func dropEmptyCompanions(path string) error {
	if st, err := os.Stat(path + "-wal"); err == nil && st.Size() > 0 {
		return fmt.Errorf("admin: %s-wal holds %d bytes after a clean close; nothing was changed, retry the restore", path, st.Size())
	}
	for _, c := range []string{path + "-wal", path + "-shm"} {
		if err := os.Remove(c); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("admin: remove %s: %w", c, err)
		}
	}
	return nil
}

func removeFiles(path string) {
	for _, p := range []string{path, path + "-wal", path + "-shm", path + "-journal"} {
		_ = os.Remove(p)
	}
}
