package admin

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/quicprochat/quicprochat/internal/secret"
	"github.com/quicprochat/quicprochat/internal/store"
)

// MigrateOptions configures MigrateToPostgres.
type MigrateOptions struct {
	DataDir string       // qpcd's data directory (locked while copying)
	DBPath  string       // the SQLCipher database; "" = <DataDir>/qpcd.db
	Key     secret.Bytes // its key
	DSN     secret.Bytes // the target PostgreSQL database (empty, or migrated and empty)
	// Socket is qpcd's admin socket: a qpcd answering there is running
	// (perhaps on another data directory lock) and the copy is refused.
	Socket   string
	Progress func(store.CopyProgress) // may be nil
	Logger   *slog.Logger             // may be nil
	// PGMigrations adds to the embedded PostgreSQL migrations (tests).
	PGMigrations fs.FS
}

// ErrRunning: qpcd runs on the deployment; an offline command refuses.
var ErrRunning = errors.New("admin: qpcd is running")

// MigrateToPostgres copies a stopped deployment's SQLCipher database into
// an empty PostgreSQL database (store.DB.CopyToPostgres): it refuses while
// qpcd runs (its admin socket answers, or it holds the data-directory
// lock), holds that lock while it works so qpcd cannot start on the old
// database meanwhile, and opens the database as qpcd would (pending
// SQLCipher migrations are applied first, so both sides are at this
// build's schema version). The SQLCipher database is otherwise left as it
// was: it stays the way back until the PostgreSQL deployment is trusted.
func MigrateToPostgres(ctx context.Context, o MigrateOptions) (store.CopyReport, error) {
	if o.Socket != "" {
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		_, err := NewClient(o.Socket).Status(pctx)
		cancel()
		if err == nil {
			return store.CopyReport{}, fmt.Errorf("%w: its admin socket %s answers; stop qpcd (systemctl stop qpcd, or qpcctl drain) before migrating, so that no write is left behind", ErrRunning, o.Socket)
		}
	}
	lock, err := LockDataDir(o.DataDir, "qpcctl migrate")
	if err != nil {
		if errors.Is(err, ErrLocked) {
			return store.CopyReport{}, fmt.Errorf("%w: %w; stop qpcd (systemctl stop qpcd) before migrating, so that no write is left behind", ErrRunning, err)
		}
		return store.CopyReport{}, err
	}
	defer lock.Unlock()
	path := o.DBPath
	if path == "" {
		path = filepath.Join(o.DataDir, "qpcd.db")
	}
	// store.Open would create a missing file: a wrong --data-dir must not
	// copy an empty new database.
	if st, err := os.Stat(path); err != nil || !st.Mode().IsRegular() {
		return store.CopyReport{}, fmt.Errorf("admin: no SQLCipher database at %s (%v); run qpcctl from the deployment's directory or pass --data-dir / --config", path, err)
	}
	db, err := store.Open(ctx, store.Options{Path: path, Key: o.Key, Logger: o.Logger})
	if err != nil {
		return store.CopyReport{}, err
	}
	defer db.Close()
	return db.CopyToPostgres(ctx, store.CopyOptions{DSN: o.DSN, Migrations: o.PGMigrations, Progress: o.Progress, Logger: o.Logger})
}
