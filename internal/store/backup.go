package store

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	sqlite3 "github.com/mutecomm/go-sqlcipher/v4"

	"github.com/quicprochat/quicprochat/internal/secret"
)

// roleMaint is a plain keyed read-write connection (no query_only, no
// journal-mode change) used for exports: it reads the source in one
// transaction and writes only to the attached target file.
const roleMaint connRole = 100

// exportSchema is the name the target file is attached under.
const exportSchema = "qpc_export"

var (
	// ErrIntegrity: a database file failed PRAGMA cipher_integrity_check
	// (a page's HMAC does not match: the bytes were changed) or
	// PRAGMA integrity_check (the B-trees are inconsistent).
	ErrIntegrity = errors.New("store: database file failed its integrity check")
	// ErrExists: the target of a snapshot or export already exists.
	ErrExists = errors.New("store: target file already exists")
)

// KeyID is a short public fingerprint of a database key: the first 8 bytes
// of HMAC-SHA-256(key, "qpcd db key id"), in hex. It tells keys apart in
// manifests and messages without revealing anything about the key.
func KeyID(key secret.Bytes) string {
	m := hmac.New(sha256.New, key.Reveal())
	m.Write([]byte("qpcd db key id"))
	return hex.EncodeToString(m.Sum(nil)[:8])
}

// KeyID is the fingerprint of the key the database is encrypted under now.
func (db *DB) KeyID() string {
	if db.pg != nil {
		return ""
	}
	db.swap.RLock()
	defer db.swap.RUnlock()
	return KeyID(db.key)
}

// FileReport describes a database file checked by VerifyFile or written by
// Snapshot or an export.
type FileReport struct {
	Path          string           `json:"path"`
	Bytes         int64            `json:"bytes"`
	SchemaVersion int              `json:"schema_version"`
	Tables        map[string]int64 `json:"tables"` // row count per table
	Took          time.Duration    `json:"took_ns"`
}

// Snapshot writes a consistent copy of the live database to dst (which must
// not exist), encrypted under the database's current key, and verifies it.
//
// The copy is taken in one read transaction on a connection of its own
// (sqlcipher_export into an attached file): in WAL mode that sees one
// snapshot while the writer carries on, so writes are not held up. Every
// write acknowledged before Snapshot started is in the copy; writes that
// commit while it runs are not. dst is written with mode 0600 and synced;
// on error it is removed.
func (db *DB) Snapshot(ctx context.Context, dst string) (FileReport, error) {
	if db.pg != nil {
		return FileReport{}, fmt.Errorf("%w: qpcd snapshots SQLCipher files; on PostgreSQL qpcctl backup create reads the database itself: run it with qpcd's configuration (store.backend: postgres) or --dsn-file (docs/operations.md, \"Backups on PostgreSQL\")", ErrNotSupported)
	}
	db.maint.Lock()
	defer db.maint.Unlock()
	// Count as a running read, so Close waits for the copy to finish.
	db.mu.RLock()
	if db.closed {
		db.mu.RUnlock()
		return FileReport{}, ErrClosed
	}
	db.reads.Add(1)
	db.mu.RUnlock()
	defer db.reads.Done()
	db.swap.RLock()
	key := db.key.Clone()
	db.swap.RUnlock()
	defer key.Wipe()
	return exportFile(ctx, db.path, &key, dst, &key)
}

// ExportFile copies the qpcd database at src (opened with srcKey) into a new
// file dst encrypted under dstKey, then verifies dst with dstKey. It is for
// files no qpcd has open (restore, tests); a live database uses Snapshot
// or Rekey.
func ExportFile(ctx context.Context, src string, srcKey secret.Bytes, dst string, dstKey secret.Bytes) (FileReport, error) {
	if srcKey.Len() != KeySize || dstKey.Len() != KeySize {
		return FileReport{}, fmt.Errorf("store: database keys must be %d bytes; check the key files", KeySize)
	}
	return exportFile(ctx, src, &srcKey, dst, &dstKey)
}

// exportFile runs the export from src into dst and verifies the result.
func exportFile(ctx context.Context, src string, srcKey *secret.Bytes, dst string, dstKey *secret.Bytes) (rep FileReport, err error) {
	start := time.Now()
	// The copy is what needs the space: a full disk names dst's directory.
	defer func() { err = asDiskFull(err, filepath.Dir(dst)) }()
	if _, err := os.Lstat(dst); err == nil {
		return FileReport{}, fmt.Errorf("%w: %s; remove it or choose another name", ErrExists, dst)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return FileReport{}, fmt.Errorf("store: export target %s: %w", dst, err)
	}
	// Create the file 0600 first so SQLite never creates it with the umask's mode.
	f, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return FileReport{}, fmt.Errorf("store: create %s: %w", dst, err)
	}
	if err := f.Close(); err != nil {
		return FileReport{}, fmt.Errorf("store: create %s: %w", dst, err)
	}
	defer func() {
		if err != nil {
			removeDB(dst)
		}
	}()

	pool := openPool(src, srcKey, roleMaint, 1)
	defer pool.Close()
	conn, err := pool.Conn(ctx)
	if err != nil {
		return FileReport{}, explainOpen(src, err)
	}
	defer conn.Close()

	counts, version, err := exportInTx(ctx, conn, src, dst, dstKey)
	if err != nil {
		return FileReport{}, err
	}
	if err := syncFile(dst); err != nil {
		return FileReport{}, err
	}
	rep, err = VerifyFile(ctx, dst, *dstKey)
	if err != nil {
		return FileReport{}, fmt.Errorf("store: the exported copy %s failed verification: %w", dst, err)
	}
	if rep.SchemaVersion != version {
		return FileReport{}, fmt.Errorf("%w: export %s has schema version %d, source %d", ErrIntegrity, dst, rep.SchemaVersion, version)
	}
	for t, n := range counts {
		if rep.Tables[t] != n {
			return FileReport{}, fmt.Errorf("%w: export %s has %d rows in %s, the source snapshot %d", ErrIntegrity, dst, rep.Tables[t], t, n)
		}
	}
	rep.Took = time.Since(start)
	return rep, nil
}

// exportInTx attaches dst under dstKey and copies main into it inside one
// transaction, so the source is read from a single snapshot. It returns the
// source's row counts and schema version as of that snapshot.
func exportInTx(ctx context.Context, conn *sql.Conn, src, dst string, dstKey *secret.Bytes) (map[string]int64, int, error) {
	// The key travels as a bound parameter in SQLCipher's raw-key syntax, so
	// it is never part of the SQL text (and so never of an error message).
	if _, err := conn.ExecContext(ctx, "ATTACH DATABASE ? AS "+exportSchema+" KEY ?", dst, "x'"+dstKey.Hex()+"'"); err != nil {
		return nil, 0, fmt.Errorf("store: attach export target %s: %w", dst, scrubKey(err, dstKey))
	}
	defer func() { _, _ = conn.ExecContext(context.Background(), "DETACH DATABASE "+exportSchema) }()

	if _, err := conn.ExecContext(ctx, "BEGIN"); err != nil {
		return nil, 0, fmt.Errorf("store: begin export: %w", err)
	}
	committed := false
	defer func() {
		if !committed {
			_, _ = conn.ExecContext(context.Background(), "ROLLBACK")
		}
	}()
	// The first read fixes the snapshot; everything below sees it.
	st, err := inspect(ctx, conn, src)
	if err != nil {
		if isNotADB(err) {
			return nil, 0, explainNotADB(src)
		}
		return nil, 0, err
	}
	var userVersion, appID int64
	if err := conn.QueryRowContext(ctx, "PRAGMA main.user_version").Scan(&userVersion); err != nil {
		return nil, 0, fmt.Errorf("store: export: read user_version: %w", err)
	}
	if err := conn.QueryRowContext(ctx, "PRAGMA main.application_id").Scan(&appID); err != nil {
		return nil, 0, fmt.Errorf("store: export: read application_id: %w", err)
	}
	counts, err := rowCounts(ctx, conn, "main")
	if err != nil {
		return nil, 0, err
	}
	var ignored sql.NullString
	if err := conn.QueryRowContext(ctx, "SELECT sqlcipher_export(?)", exportSchema).Scan(&ignored); err != nil {
		return nil, 0, fmt.Errorf("store: sqlcipher_export to %s: %w (is there enough disk space?)", dst, err)
	}
	// sqlcipher_export copies schema and rows but not the header fields.
	for _, q := range []string{
		fmt.Sprintf("PRAGMA %s.user_version = %d", exportSchema, userVersion),
		fmt.Sprintf("PRAGMA %s.application_id = %d", exportSchema, appID),
	} {
		if _, err := conn.ExecContext(ctx, q); err != nil {
			return nil, 0, fmt.Errorf("store: export: %s: %w", q, err)
		}
	}
	if _, err := conn.ExecContext(ctx, "COMMIT"); err != nil {
		return nil, 0, fmt.Errorf("store: commit export to %s: %w (is there enough disk space?)", dst, err)
	}
	committed = true
	return counts, st.version(), nil
}

// rowCounts counts the rows of every table of schema.
func rowCounts(ctx context.Context, q querier, schema string) (map[string]int64, error) {
	rows, err := q.QueryContext(ctx, "SELECT name FROM "+schema+".sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")
	if err != nil {
		return nil, fmt.Errorf("store: list tables: %w", err)
	}
	var names []string
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			rows.Close()
			return nil, fmt.Errorf("store: list tables: %w", err)
		}
		names = append(names, n)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("store: list tables: %w", err)
	}
	out := make(map[string]int64, len(names))
	for _, n := range names {
		var c int64
		if err := q.QueryRowContext(ctx, "SELECT count(*) FROM "+schema+"."+quoteIdent(n)).Scan(&c); err != nil {
			return nil, fmt.Errorf("store: count rows of %s: %w", n, err)
		}
		out[n] = c
	}
	return out, nil
}

func quoteIdent(s string) string { return `"` + strings.ReplaceAll(s, `"`, `""`) + `"` }

// VerifyFile checks a database file that no qpcd has open: that key opens
// it, that it is a qpcd database, PRAGMA cipher_integrity_check (every
// page's HMAC) and PRAGMA integrity_check, and reads its schema version and
// row counts. It opens the file read-only and cannot change it.
//
// Errors: ErrWrongKey (or ErrNotDatabase) when the file does not open as a
// qpcd database under key, ErrIntegrity when a check fails.
func VerifyFile(ctx context.Context, path string, key secret.Bytes) (FileReport, error) {
	start := time.Now()
	st, err := os.Stat(path)
	if err != nil {
		return FileReport{}, fmt.Errorf("store: verify %s: %w", path, err)
	}
	pool := openPool(path, &key, roleCheck, 1)
	defer pool.Close()
	conn, err := pool.Conn(ctx)
	if err != nil {
		return FileReport{}, explainOpen(path, err)
	}
	defer conn.Close()
	ds, err := inspect(ctx, conn, path)
	switch {
	case err == nil:
	case isNotADB(err):
		return FileReport{}, explainNotADB(path)
	default:
		return FileReport{}, err
	}
	if ds.empty {
		return FileReport{}, fmt.Errorf("%w: %s is an empty database; it holds no qpcd data", ErrNotDatabase, path)
	}
	if bad, err := pragmaRows(ctx, conn, "PRAGMA cipher_integrity_check"); err != nil {
		return FileReport{}, fmt.Errorf("%w: %s: cipher_integrity_check: %v", ErrIntegrity, path, err)
	} else if len(bad) > 0 {
		return FileReport{}, fmt.Errorf("%w: %s: cipher_integrity_check: %s; the file was modified or damaged, use another copy", ErrIntegrity, path, summarise(bad))
	}
	if res, err := pragmaRows(ctx, conn, "PRAGMA integrity_check"); err != nil {
		return FileReport{}, fmt.Errorf("%w: %s: integrity_check: %v", ErrIntegrity, path, err)
	} else if len(res) != 1 || res[0] != "ok" {
		return FileReport{}, fmt.Errorf("%w: %s: integrity_check: %s; the file is damaged, use another copy", ErrIntegrity, path, summarise(res))
	}
	counts, err := rowCounts(ctx, conn, "main")
	if err != nil {
		return FileReport{}, err
	}
	return FileReport{Path: path, Bytes: st.Size(), SchemaVersion: ds.version(), Tables: counts, Took: time.Since(start)}, nil
}

// KnownSchemaVersion is the highest migration this binary carries.
func KnownSchemaVersion() int {
	known, err := loadMigrations(nil)
	if err != nil || len(known) == 0 {
		return 0
	}
	return known[len(known)-1].version
}

func pragmaRows(ctx context.Context, q querier, pragma string) ([]string, error) {
	rows, err := q.QueryContext(ctx, pragma)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var s sql.NullString
		if err := rows.Scan(&s); err != nil {
			return nil, err
		}
		out = append(out, s.String)
	}
	return out, rows.Err()
}

func summarise(lines []string) string {
	if len(lines) > 3 {
		return strings.Join(lines[:3], "; ") + fmt.Sprintf(" (and %d more)", len(lines)-3)
	}
	return strings.Join(lines, "; ")
}

// explainOpen maps a failure to open a connection.
func explainOpen(path string, err error) error {
	if isNotADB(err) {
		return explainNotADB(path)
	}
	var se sqlite3.Error
	if errors.As(err, &se) && se.Code == sqlite3.ErrCantOpen {
		return fmt.Errorf("store: cannot open %s: %w (check the path and its permissions)", path, err)
	}
	return fmt.Errorf("store: open %s: %w", path, err)
}

// scrubKey drops an error's text if it could contain the key.
func scrubKey(err error, key *secret.Bytes) error {
	if err == nil {
		return nil
	}
	if strings.Contains(strings.ToLower(err.Error()), strings.ToLower(key.Hex())) {
		return errors.New("sqlite error (message withheld: it named the key)")
	}
	return err
}

// syncFile fsyncs path.
func syncFile(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("store: sync %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("store: sync %s: %w", path, err)
	}
	return f.Close()
}

// SyncDir fsyncs a directory so renames and creations in it are durable.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("store: sync directory %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("store: sync directory %s: %w", dir, err)
	}
	return nil
}

// removeDB removes a database file and any companions SQLite left.
func removeDB(path string) {
	for _, p := range []string{path, path + "-journal", path + "-wal", path + "-shm"} {
		_ = os.Remove(p)
	}
}

// SortedTables lists a report's tables in name order (for printing).
func (r FileReport) SortedTables() []string {
	out := make([]string, 0, len(r.Tables))
	for t := range r.Tables {
		out = append(out, t)
	}
	sort.Strings(out)
	return out
}

// companions lists the SQLite side files of a database path.
func companions(path string) []string {
	return []string{path + "-wal", path + "-shm", path + "-journal"}
}
