package admin

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// FuzzOpenBackup: whatever a backup file holds, OpenBackup refuses it with
// one of the typed backup errors (or accepts a well-formed one) and never
// panics or allocates what a length field claims.
func FuzzOpenBackup(f *testing.F) {
	dir := f.TempDir()
	db := filepath.Join(dir, "db")
	if err := os.WriteFile(db, bytes.Repeat([]byte("encrypted-page"), 300), 0o600); err != nil {
		f.Fatal(err)
	}
	sum, n, err := FileSHA256(db)
	if err != nil {
		f.Fatal(err)
	}
	var good bytes.Buffer
	m := Manifest{Format: BackupFormat, QPCDVersion: "1.0.0", SchemaVersion: 4,
		CreatedAt: time.Unix(1764000000, 0).UTC(), DBBytes: n, DBSHA256: sum, KeyID: "k", Tables: map[string]int64{"messages": 3}}
	if err := WriteBackup(&good, m, db); err != nil {
		f.Fatal(err)
	}
	f.Add(good.Bytes())
	f.Add(good.Bytes()[:len(good.Bytes())/2])
	f.Add([]byte{})
	f.Add([]byte("SQLite format 3\x00"))
	f.Fuzz(func(t *testing.T, in []byte) {
		p := filepath.Join(t.TempDir(), "b.qpcbak")
		if err := os.WriteFile(p, in, 0o600); err != nil {
			t.Fatal(err)
		}
		b, err := OpenBackup(p)
		if err == nil {
			if checkFormat(b.Manifest) != nil || b.Size != int64(len(in)) {
				t.Fatalf("accepted an inconsistent backup: %+v", b)
			}
			return
		}
		if !errors.Is(err, ErrBackupFormat) && !errors.Is(err, ErrBackupTruncated) && !errors.Is(err, ErrBackupCorrupt) {
			t.Fatalf("untyped error: %v", err)
		}
	})
}

// FuzzBackupManifest reaches past the manifest checksum, which FuzzOpenBackup
// can rarely forge: it frames fuzzed manifest bytes with a correct length and
// SHA-256, so the JSON decoding, format, size and database-hash checks get
// exercised.
func FuzzBackupManifest(f *testing.F) {
	db := bytes.Repeat([]byte("page"), 64)
	sum := sha256.Sum256(db)
	good, _ := json.Marshal(Manifest{Format: BackupFormat, DBBytes: int64(len(db)), DBSHA256: hex.EncodeToString(sum[:])})
	f.Add(good, db)
	f.Add([]byte(`{"format":1,"db_bytes":-5}`), db)
	f.Add([]byte(`{"format":99}`), []byte{})
	pg, _ := json.Marshal(Manifest{Format: BackupFormatPostgres, Backend: "postgres", Cipher: payloadCipher, Salt: hex.EncodeToString(make([]byte, payloadSaltSize)),
		Tables: map[string]int64{"accounts": 1}, Checksums: map[string]string{"accounts": hex.EncodeToString(sum[:])}, DBBytes: int64(len(db)), DBSHA256: hex.EncodeToString(sum[:])})
	f.Add(pg, db)
	f.Add([]byte(`{"format":2,"backend":"postgres","cipher":"x"}`), db)
	f.Add([]byte(`{"db_bytes":9223372036854775807}`), db)
	f.Fuzz(func(t *testing.T, manifest, dbBytes []byte) {
		if len(manifest) == 0 || len(manifest) > maxManifestLen {
			return
		}
		var file bytes.Buffer
		file.WriteString(backupMagic)
		file.Write(binary.BigEndian.AppendUint32(nil, uint32(len(manifest))))
		file.Write(manifest)
		ms := sha256.Sum256(manifest)
		file.Write(ms[:])
		file.Write(dbBytes)
		p := filepath.Join(t.TempDir(), "b.qpcbak")
		if err := os.WriteFile(p, file.Bytes(), 0o600); err != nil {
			t.Fatal(err)
		}
		b, err := OpenBackup(p)
		if err == nil {
			if b.Manifest.DBBytes != int64(len(dbBytes)) {
				t.Fatalf("accepted a backup whose size disagrees with its manifest: %+v", b.Manifest)
			}
			return
		}
		if !errors.Is(err, ErrBackupFormat) && !errors.Is(err, ErrBackupTruncated) && !errors.Is(err, ErrBackupCorrupt) {
			t.Fatalf("untyped error: %v", err)
		}
	})
}
