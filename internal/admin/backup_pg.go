package admin

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/quicprochat/quicprochat/internal/secret"
	"github.com/quicprochat/quicprochat/internal/store"
	"github.com/quicprochat/quicprochat/internal/version"
)

// Backups of a PostgreSQL deployment: qpcctl connects to the database
// itself (no qpcd node is involved, so a backup works with every node
// running or none), dumps one REPEATABLE READ snapshot (store.DumpPostgres)
// into the backup container, encrypted under the backup key, with the
// per-table row counts and checksums in the manifest.

// checkFormat accepts the manifests this build reads: format 1 (SQLCipher)
// and format 2 (PostgreSQL, with its cipher, salt and checksums).
func checkFormat(m Manifest) error {
	switch {
	case m.Format == BackupFormat && (m.Backend == "" || m.Backend == store.BackendSQLCipher):
		return nil
	case m.Format == BackupFormatPostgres && m.IsPostgres():
		if m.Cipher != payloadCipher {
			return fmt.Errorf("is encrypted with %q, this qpcctl knows %q; use the qpcctl that wrote it", m.Cipher, payloadCipher)
		}
		if salt, err := hex.DecodeString(m.Salt); err != nil || len(salt) != payloadSaltSize {
			return errors.New("has no valid salt in its manifest; use another copy")
		}
		if len(m.Checksums) != len(m.Tables) {
			return errors.New("has row counts and checksums for different tables; use another copy")
		}
		for t := range m.Tables {
			if len(m.Checksums[t]) != 64 {
				return fmt.Errorf("has no checksum for table %s; use another copy", t)
			}
		}
		return nil
	}
	return fmt.Errorf("is backup format %d (backend %q); this qpcctl reads format %d (SQLCipher) and %d (PostgreSQL): use the qpcctl that matches the qpcd which wrote it", m.Format, m.Backend, BackupFormat, BackupFormatPostgres)
}

// PostgresBackupOptions configures CreatePostgresBackup.
type PostgresBackupOptions struct {
	DSN   secret.Bytes // the deployment's database
	Key   secret.Bytes // the backup key (32 bytes, like a database key)
	Out   string       // the backup file
	Force bool         // replace Out if it exists
	// Progress, when set, is called as tables are dumped.
	Progress func(store.CopyProgress)
	Logger   *slog.Logger
}

// CreatePostgresBackup writes a backup of the PostgreSQL deployment at
// o.DSN to o.Out: the encrypted dump is written to a temporary file beside
// Out first, then the manifest and the dump go into a second temporary
// file, which is synced, checked (OpenBackup: layout and SHA-256) and
// renamed over Out. Nothing is written to the database.
func CreatePostgresBackup(ctx context.Context, o PostgresBackupOptions) (res BackupResult, err error) {
	start := time.Now()
	if o.Key.Len() != store.KeySize {
		return res, fmt.Errorf("%w: the backup key must be %d bytes", ErrInvalid, store.KeySize)
	}
	abs, err := filepath.Abs(o.Out)
	if err != nil {
		return res, err
	}
	if _, err := os.Lstat(abs); err == nil && !o.Force {
		return res, fmt.Errorf("%w: %s exists; choose another --out or pass --force to replace it", ErrInvalid, abs)
	}
	dir := filepath.Dir(abs)
	noSpace := func(err error) error {
		if store.IsDiskFull(err) {
			return fmt.Errorf("%w: no space left in %s for the backup: %v; the partial files were removed and the database is untouched: free space there or choose another --out", ErrNoSpace, dir, err)
		}
		return err
	}
	payload, err := os.CreateTemp(dir, "."+filepath.Base(abs)+".payload-*")
	if err != nil {
		return res, fmt.Errorf("admin: create a temporary file in %s: %w (check that the directory exists and is writable)", dir, noSpace(err))
	}
	defer func() {
		payload.Close()
		os.Remove(payload.Name())
	}()
	salt := make([]byte, payloadSaltSize)
	if _, err := rand.Read(salt); err != nil {
		return res, err
	}
	hw := &hashingWriter{w: payload, h: sha256.New()}
	bw := bufio.NewWriterSize(hw, 1<<20)
	sw, err := newSealWriter(bw, o.Key, salt)
	if err != nil {
		return res, err
	}
	rep, err := store.DumpPostgres(ctx, store.DumpOptions{DSN: o.DSN, Progress: o.Progress, Logger: o.Logger}, sw)
	if err != nil {
		return res, noSpace(err)
	}
	if err := sw.Close(); err != nil {
		return res, noSpace(err)
	}
	if err := bw.Flush(); err != nil {
		return res, noSpace(err)
	}
	m := Manifest{
		Format:          BackupFormatPostgres,
		QPCDVersion:     version.Version,
		SchemaVersion:   rep.SchemaVersion,
		CreatedAt:       rep.SnapshotAt,
		DBBytes:         hw.n,
		DBSHA256:        hex.EncodeToString(hw.h.Sum(nil)),
		KeyID:           store.KeyID(o.Key),
		Tables:          map[string]int64{},
		Backend:         store.BackendPostgres,
		PostgresVersion: rep.PostgresVersion,
		Cipher:          payloadCipher,
		Salt:            hex.EncodeToString(salt),
		Checksums:       map[string]string{},
	}
	for _, t := range rep.Tables {
		m.Tables[t.Table] = t.Rows
		m.Checksums[t.Table] = t.Checksum
	}
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(abs)+".tmp-*")
	if err != nil {
		return res, fmt.Errorf("admin: create a temporary file in %s: %w", dir, noSpace(err))
	}
	tmpName := tmp.Name()
	done := false
	defer func() {
		if !done {
			tmp.Close()
			os.Remove(tmpName)
		}
	}()
	if err := tmp.Chmod(0o600); err != nil {
		return res, err
	}
	if err := WriteBackup(tmp, m, payload.Name()); err != nil {
		return res, fmt.Errorf("admin: write %s: %w", tmpName, noSpace(err))
	}
	if err := tmp.Sync(); err != nil {
		return res, fmt.Errorf("admin: fsync %s: %w (check the disk)", tmpName, noSpace(err))
	}
	if err := tmp.Close(); err != nil {
		return res, fmt.Errorf("admin: close %s: %w (check the disk)", tmpName, noSpace(err))
	}
	b, err := OpenBackup(tmpName)
	if err != nil {
		return res, fmt.Errorf("admin: the written backup failed its checks, nothing was written to %s: %w", abs, err)
	}
	if err := os.Rename(tmpName, abs); err != nil {
		return res, fmt.Errorf("admin: rename into %s: %w", abs, err)
	}
	done = true
	_ = store.SyncDir(dir)
	res = BackupResult{File: abs, Bytes: b.Size, Manifest: b.Manifest, TookSeconds: time.Since(start).Seconds()}
	// Record it where every node reads it (status, the backup-age alert).
	rec, err := json.Marshal(BackupRecord{At: m.CreatedAt, Bytes: b.Size, DBSHA256: m.DBSHA256, File: abs})
	if err == nil {
		err = store.SetMetaPostgres(ctx, o.DSN, MetaLastBackup, string(rec))
	}
	res.Recorded = err == nil
	if err != nil && o.Logger != nil {
		o.Logger.Warn("admin: the backup was written but not recorded in the database", "err", err)
	}
	return res, nil
}

// payloadReader opens the backup's payload for reading, decrypted under
// key; the SHA-256 is checked again when the stream is read to its end
// (the caller reads it to its end; a mismatch surfaces as ErrBackupCorrupt).
func (b *BackupFile) payloadReader(key secret.Bytes) (io.Reader, func() error, error) {
	salt, err := hex.DecodeString(b.Manifest.Salt)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: manifest salt", ErrBackupCorrupt)
	}
	f, err := os.Open(b.Path)
	if err != nil {
		return nil, nil, fmt.Errorf("admin: open backup: %w", err)
	}
	h := sha256.New()
	raw := io.TeeReader(io.NewSectionReader(f, b.dbOffset, b.Manifest.DBBytes), h)
	or, err := newOpenReader(raw, key, salt)
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	finish := func() error {
		defer f.Close()
		if hex.EncodeToString(h.Sum(nil)) != b.Manifest.DBSHA256 {
			return fmt.Errorf("%w: %s changed while being read; use another copy", ErrBackupCorrupt, b.Path)
		}
		return nil
	}
	return or, finish, nil
}

// explainPayload maps what reading a payload found to the backup errors.
func explainPayload(path string, err error) error {
	switch {
	case errors.Is(err, ErrPayloadAuth):
		return fmt.Errorf("%w: %s: %v: the key matches the manifest's key id, so the file was modified in storage or transfer; use another copy", ErrBackupCorrupt, path, err)
	case errors.Is(err, store.ErrDumpCorrupt):
		return fmt.Errorf("%w: %s: %v; use another copy", ErrBackupCorrupt, path, err)
	case errors.Is(err, ErrBackupTruncated), errors.Is(err, ErrBackupCorrupt):
		return fmt.Errorf("%s: %w; use another copy", path, err)
	}
	return err
}

// checkKeyID refuses a key that is not the one the manifest names.
func checkKeyID(path string, m Manifest, key secret.Bytes) error {
	if id := store.KeyID(key); m.KeyID != "" && id != m.KeyID {
		what := "the database key that was in use when the backup was taken (backup verify --key-file, restore --backup-key-file)"
		if m.IsPostgres() {
			what = "the backup key it was created with (--key-file)"
		}
		return fmt.Errorf("%w: %s was encrypted under the key with id %s, the key given has id %s; give %s", ErrBackupWrongKey, path, m.KeyID, id, what)
	}
	return nil
}

// verifyPostgresBackup is VerifyBackup for format 2: with the key, every
// chunk authenticates, the dump decodes, every table's count and checksum
// match its end record and the manifest, and the schema version is one
// this build knows.
func verifyPostgresBackup(b *BackupFile, key secret.Bytes, rep VerifyReport) (VerifyReport, error) {
	path := b.Path
	if err := checkKeyID(path, b.Manifest, key); err != nil {
		return rep, err
	}
	r, finish, err := b.payloadReader(key)
	if err != nil {
		return rep, err
	}
	sum, err := store.ReadDump(r)
	if ferr := finish(); err == nil {
		err = ferr
	}
	if err != nil {
		return rep, explainPayload(path, err)
	}
	rep.Checks = append(rep.Checks, "decrypts with the key", "dump layout", "table checksums")
	rep.Tables = map[string]int64{}
	for _, t := range sum.Tables {
		rep.Tables[t.Table] = t.Rows
	}
	if sum.SchemaVersion != b.Manifest.SchemaVersion {
		return rep, fmt.Errorf("%w: %s: dump schema version %d, manifest %d; use another copy", ErrBackupCorrupt, path, sum.SchemaVersion, b.Manifest.SchemaVersion)
	}
	if known := store.KnownPostgresSchemaVersion(); sum.SchemaVersion > known {
		return rep, fmt.Errorf("%w: %s is at schema version %d, this build knows up to %d; use the qpcd/qpcctl version that wrote it (%s) or newer", ErrBackupSchema, path, sum.SchemaVersion, known, b.Manifest.QPCDVersion)
	}
	rep.Checks = append(rep.Checks, "schema version")
	if len(sum.Tables) != len(b.Manifest.Tables) {
		return rep, fmt.Errorf("%w: %s: the dump holds %d tables, the manifest names %d; use another copy", ErrBackupCorrupt, path, len(sum.Tables), len(b.Manifest.Tables))
	}
	for _, t := range sum.Tables {
		n, ok := b.Manifest.Tables[t.Table]
		if !ok || n != t.Rows || b.Manifest.Checksums[t.Table] != t.Checksum {
			return rep, fmt.Errorf("%w: %s: table %s has %d rows (checksum %s), the manifest says %d (checksum %s); use another copy", ErrBackupCorrupt, path, t.Table, t.Rows, t.Checksum, n, b.Manifest.Checksums[t.Table])
		}
	}
	rep.Checks = append(rep.Checks, "row counts", "manifest checksums")
	return rep, nil
}

// PostgresRestoreOptions configures RestorePostgres.
type PostgresRestoreOptions struct {
	Backup string       // backup file
	Key    secret.Bytes // the backup key
	DSN    secret.Bytes // the target: a new, empty PostgreSQL database
	// AllowRunningNodes skips the node registry check.
	AllowRunningNodes bool
	Now               func() time.Time // nil = time.Now
	Step              func(string)     // progress: called at each step (may be nil)
	Progress          func(store.CopyProgress)
	Logger            *slog.Logger
	PGMigrations      fs.FS // added to the embedded migrations (tests)
}

// PostgresRestoreReport is what RestorePostgres did.
type PostgresRestoreReport struct {
	Backup VerifyReport `json:"backup"`
	store.RestoreReport
}

// RestorePostgres restores a PostgreSQL backup into an empty PostgreSQL
// database: it verifies the whole backup first (VerifyBackup), then reads
// it again into store.RestorePostgres, which copies and checks every table
// in one transaction against the manifest's counts and checksums before it
// commits.
func RestorePostgres(ctx context.Context, o PostgresRestoreOptions) (rep PostgresRestoreReport, err error) {
	step := o.Step
	if step == nil {
		step = func(string) {}
	}
	step("verifying the backup")
	b, err := OpenBackup(o.Backup)
	if err != nil {
		return rep, err
	}
	if !b.Manifest.IsPostgres() {
		return rep, fmt.Errorf("%w: %s is a backup of a SQLCipher deployment; restore it with store.backend sqlcipher (qpcctl restore), then move it with qpcctl migrate to-postgres", ErrBackupBackend, o.Backup)
	}
	rep.Backup, err = VerifyBackup(ctx, o.Backup, o.Key, "")
	if err != nil {
		return rep, err
	}
	r, finish, err := b.payloadReader(o.Key)
	if err != nil {
		return rep, err
	}
	expect := map[string]store.DumpTable{}
	for t, n := range b.Manifest.Tables {
		expect[t] = store.DumpTable{Table: t, Rows: n, Checksum: b.Manifest.Checksums[t]}
	}
	step("restoring into PostgreSQL")
	rr, err := store.RestorePostgres(ctx, store.RestoreOptions{
		DSN: o.DSN, AllowLiveNodes: o.AllowRunningNodes, Expect: expect, Now: o.Now,
		Progress: o.Progress, Logger: o.Logger, Migrations: o.PGMigrations,
	}, r)
	// Read to its end (store.RestorePostgres reads the dump's end and the
	// decryption what follows it), so finish rechecks the SHA-256; the
	// commit came only after every table matched the manifest.
	ferr := finish()
	rep.RestoreReport = rr
	if err != nil {
		if errors.Is(err, store.ErrSchemaTooNew) {
			return rep, fmt.Errorf("%w: %w", ErrBackupSchema, err)
		}
		return rep, explainPayload(o.Backup, err)
	}
	if ferr != nil {
		o.logger().Warn("admin: the backup file changed while it was restored; the restore matched its manifest", "file", o.Backup, "err", ferr)
	}
	return rep, nil
}

func (o PostgresRestoreOptions) logger() *slog.Logger {
	if o.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return o.Logger
}
