package store

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// bigDB creates a database of about mib MiB (1 KiB rows).
func bigDB(b *testing.B, mib int) (*DB, string) {
	b.Helper()
	dir := b.TempDir()
	db := openTest(b, filepath.Join(dir, "qpcd.db"), newKey(b))
	body := make([]byte, 1024)
	for i := 0; i < mib; i++ {
		err := db.WriteTx(context.Background(), func(tx *sql.Tx) error {
			for j := 0; j < 1024; j++ {
				if _, err := tx.Exec("INSERT INTO rows (body) VALUES (?)", body); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
	}
	b.Cleanup(func() { db.Close() })
	return db, dir
}

// BenchmarkSnapshot20MiB: online backup snapshot (export + verify) of a 20 MiB database.
func BenchmarkSnapshot20MiB(b *testing.B) {
	db, dir := bigDB(b, 20)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		p := filepath.Join(dir, fmt.Sprintf("snap%d.db", i))
		rep, err := db.Snapshot(context.Background(), p)
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(rep.Bytes)/(1<<20), "MiB")
		os.Remove(p)
	}
}

// BenchmarkRekey20MiB: database key rotation (export, verify, swap, reopen) of a 20 MiB database.
func BenchmarkRekey20MiB(b *testing.B) {
	db, _ := bigDB(b, 20)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		rep, err := db.Rekey(context.Background(), RekeyOptions{NewKey: newKey(b)})
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(rep.Paused.Seconds()*1000, "ms-writes-paused")
	}
}
