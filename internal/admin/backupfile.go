package admin

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/quicprochat/quicprochat/internal/secret"
	"github.com/quicprochat/quicprochat/internal/store"
)

// Backup file layout (formats 1 and 2), all of it written by WriteBackup:
//
//	magic        8 bytes  "QPCDBAK\n"
//	manifest_len 4 bytes  big-endian length of the manifest
//	manifest     JSON     Manifest
//	manifest_sum 32 bytes SHA-256 of the manifest bytes
//	database     manifest.db_bytes bytes: format 1, the SQLCipher database
//	             file, encrypted under the database key; format 2
//	             (manifest.backend "postgres"), the PostgreSQL dump stream
//	             encrypted under the backup key (backupcrypt.go).
//	             manifest.key_id names the key either way.
//
// Nothing may follow the database. The manifest's own checksum and the
// database's SHA-256 (manifest.db_sha256) tell a damaged file from a
// truncated one and from a file in another format.
const (
	backupMagic  = "QPCDBAK\n"
	BackupFormat = 1 // SQLCipher backups: the format this build writes and reads
	// BackupFormatPostgres is the format of PostgreSQL backups; a qpcctl
	// that only knows format 1 refuses them by their number instead of
	// trying to open a dump as a SQLCipher file.
	BackupFormatPostgres = 2
	maxManifestLen       = 1 << 20
	backupHeaderFixed    = len(backupMagic) + 4
)

// Distinct backup errors; each message names the fix.
var (
	ErrBackupFormat    = errors.New("admin: not a qpcd backup file (or a format this qpcctl does not read)")
	ErrBackupTruncated = errors.New("admin: backup file is truncated")
	ErrBackupCorrupt   = errors.New("admin: backup file is damaged (checksum mismatch)")
	ErrBackupWrongKey  = errors.New("admin: backup does not open with this database key")
	ErrBackupIntegrity = errors.New("admin: backup database failed its integrity check")
	ErrBackupSchema    = errors.New("admin: backup schema is newer than this qpcd")
	// ErrBackupBackend: the backup is of one storage backend and the
	// restore target is the other.
	ErrBackupBackend = errors.New("admin: backup is of another storage backend")
)

// Manifest describes a backup.
type Manifest struct {
	Format        int              `json:"format"`
	QPCDVersion   string           `json:"qpcd_version"`
	SchemaVersion int              `json:"schema_version"`
	CreatedAt     time.Time        `json:"created_at"`
	DBBytes       int64            `json:"db_bytes"`
	DBSHA256      string           `json:"db_sha256"`
	KeyID         string           `json:"key_id"` // store.KeyID of the database key (format 2: of the backup key)
	Tables        map[string]int64 `json:"tables"` // row counts at the snapshot

	// Format 2 (PostgreSQL) only.
	Backend         string            `json:"backend,omitempty"`          // "postgres"; absent: SQLCipher
	PostgresVersion string            `json:"postgres_version,omitempty"` // server_version of the source
	Cipher          string            `json:"cipher,omitempty"`           // payload encryption (payloadCipher)
	Salt            string            `json:"salt,omitempty"`             // hex; HKDF salt of the payload key
	Checksums       map[string]string `json:"checksums,omitempty"`        // per table, order-independent SHA-256 (as migrate to-postgres)
}

// IsPostgres reports whether the backup is of a PostgreSQL deployment.
func (m Manifest) IsPostgres() bool { return m.Backend == store.BackendPostgres }

// FileSHA256 hashes a file.
func FileSHA256(path string) (string, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return "", 0, err
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}

// BackupHeader returns the bytes that precede the database in a backup file.
func BackupHeader(m Manifest) ([]byte, error) {
	js, err := json.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("admin: encode manifest: %w", err)
	}
	sum := sha256.Sum256(js)
	var b bytes.Buffer
	b.WriteString(backupMagic)
	var l [4]byte
	binary.BigEndian.PutUint32(l[:], uint32(len(js)))
	b.Write(l[:])
	b.Write(js)
	b.Write(sum[:])
	return b.Bytes(), nil
}

// WriteBackup writes header then the database file at dbPath to w.
func WriteBackup(w io.Writer, m Manifest, dbPath string) error {
	hdr, err := BackupHeader(m)
	if err != nil {
		return err
	}
	if _, err := w.Write(hdr); err != nil {
		return err
	}
	f, err := os.Open(dbPath)
	if err != nil {
		return err
	}
	defer f.Close()
	n, err := io.Copy(w, f)
	if err != nil {
		return err
	}
	if n != m.DBBytes {
		return fmt.Errorf("admin: database snapshot changed size while being sent (%d of %d bytes)", n, m.DBBytes)
	}
	return nil
}

// BackupFile is an opened backup whose layout and checksums are verified.
type BackupFile struct {
	Path     string
	Manifest Manifest
	Size     int64
	dbOffset int64
}

// OpenBackup reads path and checks its layout, the manifest checksum, the
// size and the database's SHA-256. It does not need the key.
func OpenBackup(path string) (*BackupFile, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("admin: open backup: %w (check the path)", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("admin: open backup: %w", err)
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%w: %s is not a regular file", ErrBackupFormat, path)
	}
	size := st.Size()
	fixed := make([]byte, backupHeaderFixed)
	n, _ := io.ReadFull(f, fixed)
	magicLen := min(n, len(backupMagic))
	if string(fixed[:magicLen]) != backupMagic[:magicLen] || n == 0 {
		if n == 0 {
			return nil, fmt.Errorf("%w: %s is empty; copy the backup again from where it was made", ErrBackupTruncated, path)
		}
		return nil, fmt.Errorf("%w: %s does not start with the qpcd backup magic; point at a file written by `qpcctl backup create`", ErrBackupFormat, path)
	}
	if n < backupHeaderFixed {
		return nil, fmt.Errorf("%w: %s ends inside the header (%d bytes); copy the backup again from where it was made", ErrBackupTruncated, path, size)
	}
	mlen := int64(binary.BigEndian.Uint32(fixed[len(backupMagic):]))
	if mlen == 0 || mlen > maxManifestLen {
		return nil, fmt.Errorf("%w: %s: manifest length %d is impossible; use another copy of the backup", ErrBackupCorrupt, path, mlen)
	}
	if size < int64(backupHeaderFixed)+mlen+sha256.Size {
		return nil, fmt.Errorf("%w: %s ends inside the manifest (%d bytes); copy the backup again from where it was made", ErrBackupTruncated, path, size)
	}
	mb := make([]byte, mlen+sha256.Size)
	if _, err := io.ReadFull(f, mb); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrBackupTruncated, path, err)
	}
	js, sum := mb[:mlen], mb[mlen:]
	if got := sha256.Sum256(js); !bytes.Equal(got[:], sum) {
		return nil, fmt.Errorf("%w: %s: the manifest's checksum does not match; the file was modified in storage or transfer, use another copy", ErrBackupCorrupt, path)
	}
	var m Manifest
	dec := json.NewDecoder(bytes.NewReader(js))
	if err := dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("%w: %s: manifest: %v; use another copy", ErrBackupCorrupt, path, err)
	}
	if err := checkFormat(m); err != nil {
		return nil, fmt.Errorf("%w: %s %s", ErrBackupFormat, path, err)
	}
	off := int64(backupHeaderFixed) + mlen + sha256.Size
	switch want := off + m.DBBytes; {
	case size < want:
		return nil, fmt.Errorf("%w: %s is %d bytes, the manifest says %d; copy the backup again from where it was made", ErrBackupTruncated, path, size, want)
	case size > want:
		return nil, fmt.Errorf("%w: %s has %d bytes after the database; use another copy", ErrBackupCorrupt, path, size-want)
	}
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return nil, fmt.Errorf("admin: read backup %s: %w", path, err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != m.DBSHA256 {
		return nil, fmt.Errorf("%w: %s: database SHA-256 is %s, the manifest says %s; the file was modified in storage or transfer, use another copy", ErrBackupCorrupt, path, got, m.DBSHA256)
	}
	return &BackupFile{Path: path, Manifest: m, Size: size, dbOffset: off}, nil
}

// ExtractDB copies the database out of the backup into a new file dst
// (0600, synced) and checks its SHA-256 again on the way.
func (b *BackupFile) ExtractDB(dst string) error {
	f, err := os.Open(b.Path)
	if err != nil {
		return fmt.Errorf("admin: open backup: %w", err)
	}
	defer f.Close()
	if _, err := f.Seek(b.dbOffset, io.SeekStart); err != nil {
		return err
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("admin: extract database: %w", err)
	}
	h := sha256.New()
	_, err = io.Copy(io.MultiWriter(out, h), io.LimitReader(f, b.Manifest.DBBytes))
	if err == nil {
		err = out.Sync()
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		_ = os.Remove(dst)
		return fmt.Errorf("admin: extract database to %s: %w", dst, err)
	}
	if hex.EncodeToString(h.Sum(nil)) != b.Manifest.DBSHA256 {
		_ = os.Remove(dst)
		return fmt.Errorf("%w: %s changed while being read; use another copy", ErrBackupCorrupt, b.Path)
	}
	return nil
}

// VerifyReport is what VerifyBackup found.
type VerifyReport struct {
	Path     string           `json:"path"`
	Bytes    int64            `json:"bytes"`
	Manifest Manifest         `json:"manifest"`
	Tables   map[string]int64 `json:"tables"`
	Checks   []string         `json:"checks"`
}

// VerifyBackup runs every check on a backup file: layout, manifest checksum,
// size and SHA-256 (OpenBackup), then, with key, that the database opens,
// PRAGMA cipher_integrity_check and integrity_check, the schema version and
// the row counts against the manifest. tmpDir holds the extracted database
// while it is checked ("" = the system temporary directory).
func VerifyBackup(ctx context.Context, path string, key secret.Bytes, tmpDir string) (VerifyReport, error) {
	b, err := OpenBackup(path)
	if err != nil {
		return VerifyReport{}, err
	}
	return b.Verify(ctx, key, tmpDir)
}

// StructuralChecks are what OpenBackup checked, without the key.
var StructuralChecks = []string{"layout", "manifest checksum", "size", "sha256"}

// Verify runs the checks of an opened backup that need the key: that the
// database opens with it, its integrity, schema version and row counts.
func (b *BackupFile) Verify(ctx context.Context, key secret.Bytes, tmpDir string) (VerifyReport, error) {
	path := b.Path
	rep := VerifyReport{Path: path, Bytes: b.Size, Manifest: b.Manifest,
		Checks: append([]string(nil), StructuralChecks...)}
	if b.Manifest.IsPostgres() {
		return verifyPostgresBackup(b, key, rep)
	}
	if err := checkKeyID(path, b.Manifest, key); err != nil {
		return rep, err
	}
	dir, err := os.MkdirTemp(tmpDir, "qpcctl-verify-")
	if err != nil {
		return rep, fmt.Errorf("admin: temporary directory: %w (pass --tmp-dir with free space)", err)
	}
	defer os.RemoveAll(dir)
	db := filepath.Join(dir, "qpcd.db")
	if err := b.ExtractDB(db); err != nil {
		return rep, err
	}
	fr, err := store.VerifyFile(ctx, db, key)
	switch {
	case errors.Is(err, store.ErrWrongKey) || errors.Is(err, store.ErrNotDatabase):
		return rep, fmt.Errorf("%w: %s: %v; give the database key that was in use when the backup was taken (backup verify --key-file, restore --backup-key-file)", ErrBackupWrongKey, path, err)
	case errors.Is(err, store.ErrIntegrity):
		return rep, fmt.Errorf("%w: %s: %v", ErrBackupIntegrity, path, err)
	case err != nil:
		return rep, fmt.Errorf("admin: verify %s: %w", path, err)
	}
	rep.Checks = append(rep.Checks, "opens with the key", "cipher_integrity_check", "integrity_check")
	rep.Tables = fr.Tables
	if fr.SchemaVersion != b.Manifest.SchemaVersion {
		return rep, fmt.Errorf("%w: %s: database schema version %d, manifest %d; use another copy", ErrBackupCorrupt, path, fr.SchemaVersion, b.Manifest.SchemaVersion)
	}
	if known := store.KnownSchemaVersion(); fr.SchemaVersion > known {
		return rep, fmt.Errorf("%w: %s is at schema version %d, this build knows up to %d; use the qpcd/qpcctl version that wrote it (%s) or newer", ErrBackupSchema, path, fr.SchemaVersion, known, b.Manifest.QPCDVersion)
	}
	rep.Checks = append(rep.Checks, "schema version")
	for t, n := range b.Manifest.Tables {
		if fr.Tables[t] != n {
			return rep, fmt.Errorf("%w: %s: table %s has %d rows, the manifest says %d; use another copy", ErrBackupCorrupt, path, t, fr.Tables[t], n)
		}
	}
	rep.Checks = append(rep.Checks, "row counts")
	return rep, nil
}

// hashingWriter counts and hashes what passes through.
type hashingWriter struct {
	w io.Writer
	h hash.Hash
	n int64
}

func (hw *hashingWriter) Write(p []byte) (int, error) {
	n, err := hw.w.Write(p)
	hw.h.Write(p[:n])
	hw.n += int64(n)
	return n, err
}
