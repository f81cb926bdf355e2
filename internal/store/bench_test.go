package store

import (
	"context"
	"crypto/rand"
	"database/sql"
	"path/filepath"
	"testing"

	"github.com/quicprochat/quicprochat/internal/testutil"
)

// Benchmarks for durable write throughput (synchronous=FULL, one fsync per
// COMMIT). Each WriteTx inserts one 1 KiB blob. Reported:
//
//	writes/s   WriteTx calls acknowledged per second
//	commits/s  SQL COMMITs (fsyncs) per second
//	writes/commit  average group-commit batch size
//
// Run: go test -run '^$' -bench WriteTx -benchtime 5s ./internal/store/

func benchDB(b testing.TB) *DB {
	b.Helper()
	db, err := Open(context.Background(), Options{
		Path:       filepath.Join(b.TempDir(), "qpcd.db"),
		Key:        newKey(b),
		Migrations: testMigrations,
	})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = db.Close() })
	return db
}

func blob1K(b testing.TB) []byte {
	b.Helper()
	p := make([]byte, 1024)
	if _, err := rand.Read(p); err != nil {
		b.Fatal(err)
	}
	return p
}

func report(b *testing.B, db *DB, commits0, writes0 int64) {
	secs := b.Elapsed().Seconds()
	commits := db.commits.Load() - commits0
	writes := db.committed.Load() - writes0
	if secs > 0 {
		b.ReportMetric(float64(writes)/secs, "writes/s")
		b.ReportMetric(float64(commits)/secs, "commits/s")
	}
	if commits > 0 {
		b.ReportMetric(float64(writes)/float64(commits), "writes/commit")
	}
}

// BenchmarkWriteTxSerial: one caller, so every write is its own commit.
func BenchmarkWriteTxSerial(b *testing.B) {
	db := benchDB(b)
	p := blob1K(b)
	ctx := context.Background()
	fn := func(tx *sql.Tx) error {
		_, err := tx.Exec("INSERT INTO rows (body) VALUES (?)", p)
		return err
	}
	c0, w0 := db.commits.Load(), db.committed.Load()
	b.ResetTimer()
	for b.Loop() {
		if err := db.WriteTx(ctx, fn); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	report(b, db, c0, w0)
}

// BenchmarkWriteTxParallel: many concurrent callers (64 per GOMAXPROCS), so
// the writer group-commits them.
func BenchmarkWriteTxParallel(b *testing.B) {
	db := benchDB(b)
	p := blob1K(b)
	ctx := context.Background()
	fn := func(tx *sql.Tx) error {
		_, err := tx.Exec("INSERT INTO rows (body) VALUES (?)", p)
		return err
	}
	c0, w0 := db.commits.Load(), db.committed.Load()
	b.SetParallelism(64)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := db.WriteTx(ctx, fn); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.StopTimer()
	report(b, db, c0, w0)
}

// BenchmarkReadTxRows: one read transaction fetching 16 rows of 1 KiB under
// a cancellable context, as a request's is (a long-poll fetch's shape).
// Reports CPU time per read beside wall time.
func BenchmarkReadTxRows(b *testing.B) {
	db := benchDB(b)
	p := blob1K(b)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := db.WriteTx(ctx, func(tx *sql.Tx) error {
		for range 64 {
			if _, err := tx.Exec("INSERT INTO rows (body) VALUES (?)", p); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		b.Fatal(err)
	}
	read := func(tx *sql.Tx) error {
		rows, err := tx.QueryContext(ctx, "SELECT id, body FROM rows WHERE id > ? ORDER BY id LIMIT 16", 8)
		if err != nil {
			return err
		}
		defer rows.Close()
		var (
			id   int64
			body []byte
		)
		for rows.Next() {
			if err := rows.Scan(&id, &body); err != nil {
				return err
			}
		}
		return rows.Err()
	}
	cpu0 := testutil.ProcessCPU()
	b.ResetTimer()
	for b.Loop() {
		if err := db.ReadTx(ctx, read); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64((testutil.ProcessCPU()-cpu0).Microseconds())/float64(b.N), "cpu-µs/op")
}
