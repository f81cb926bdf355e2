package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// loadWriters runs n goroutines inserting rows until stop is closed and
// records every acknowledged row id.
type loadWriters struct {
	wg    sync.WaitGroup
	stop  chan struct{}
	mu    sync.Mutex
	acked []int64
	errs  atomic.Int64
}

func startLoad(t *testing.T, db *DB, n int) *loadWriters {
	t.Helper()
	l := &loadWriters{stop: make(chan struct{})}
	var next atomic.Int64
	for range n {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for {
				select {
				case <-l.stop:
					return
				default:
				}
				id := next.Add(1)
				err := db.WriteTx(context.Background(), func(tx *sql.Tx) error {
					_, err := tx.Exec("INSERT INTO rows (id, body) VALUES (?, ?)", id, []byte(fmt.Sprint("row ", id)))
					return err
				})
				if err != nil {
					l.errs.Add(1)
					continue
				}
				l.mu.Lock()
				l.acked = append(l.acked, id)
				l.mu.Unlock()
			}
		}()
	}
	return l
}

func (l *loadWriters) ackedNow() []int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]int64(nil), l.acked...)
}

func (l *loadWriters) finish() []int64 {
	close(l.stop)
	l.wg.Wait()
	return l.ackedNow()
}

func waitAcked(t *testing.T, l *loadWriters, n int) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for len(l.ackedNow()) < n {
		if time.Now().After(deadline) {
			t.Fatalf("only %d writes acknowledged", len(l.ackedNow()))
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func idsIn(t *testing.T, db *DB) map[int64]bool {
	t.Helper()
	out := map[int64]bool{}
	err := db.ReadTx(context.Background(), func(tx *sql.Tx) error {
		rows, err := tx.Query("SELECT id FROM rows")
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var id int64
			if err := rows.Scan(&id); err != nil {
				return err
			}
			out[id] = true
		}
		return rows.Err()
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestSnapshotUnderConcurrentWrites(t *testing.T) {
	dir := t.TempDir()
	key := newKey(t)
	db := openTest(t, filepath.Join(dir, "qpcd.db"), key)
	defer db.Close()
	load := startLoad(t, db, 4)
	waitAcked(t, load, 200)

	before := load.ackedNow()
	snap := filepath.Join(dir, "snap.db")
	rep, err := db.Snapshot(context.Background(), snap)
	if err != nil {
		t.Fatalf("Snapshot: %v", err)
	}
	waitAcked(t, load, len(before)+50) // writes go on after (and during) the snapshot
	all := load.finish()
	if load.errs.Load() != 0 {
		t.Fatalf("%d writes failed", load.errs.Load())
	}
	if st, err := os.Stat(snap); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("snapshot file: %v %v", st.Mode(), err)
	}
	if rep.Tables["rows"] < int64(len(before)) {
		t.Fatalf("report counts %d rows, %d were acknowledged before", rep.Tables["rows"], len(before))
	}

	// The snapshot opens under the same key and holds every write
	// acknowledged before it started.
	if _, err := VerifyFile(context.Background(), snap, key); err != nil {
		t.Fatalf("VerifyFile: %v", err)
	}
	s := openTest(t, snap, key)
	defer s.Close()
	got := idsIn(t, s)
	for _, id := range before {
		if !got[id] {
			t.Fatalf("row %d acknowledged before the snapshot is missing", id)
		}
	}
	if int64(len(got)) != rep.Tables["rows"] {
		t.Fatalf("snapshot has %d rows, report says %d", len(got), rep.Tables["rows"])
	}
	if len(all) <= len(got) {
		t.Fatalf("no writes after the snapshot (%d <= %d)", len(all), len(got))
	}
	// The schema version and identity survived the export.
	if v, err := s.SchemaVersion(context.Background()); err != nil || v != rep.SchemaVersion || v != embeddedCount+1 {
		t.Fatalf("schema version %d (%v), report %d", v, err, rep.SchemaVersion)
	}
	// A snapshot never overwrites a file.
	if _, err := db.Snapshot(context.Background(), snap); !errors.Is(err, ErrExists) && !errors.Is(err, ErrClosed) {
		t.Fatalf("second snapshot to the same path: %v", err)
	}
}

func TestVerifyFileRejects(t *testing.T) {
	dir := t.TempDir()
	key := newKey(t)
	db := openTest(t, filepath.Join(dir, "qpcd.db"), key)
	for i := range 500 {
		if err := db.WriteTx(context.Background(), insert(fmt.Sprintf("row %d with some padding to fill pages", i))); err != nil {
			t.Fatal(err)
		}
	}
	snap := filepath.Join(dir, "snap.db")
	if _, err := db.Snapshot(context.Background(), snap); err != nil {
		t.Fatal(err)
	}
	db.Close()

	if _, err := VerifyFile(context.Background(), snap, newKey(t)); !errors.Is(err, ErrWrongKey) {
		t.Fatalf("wrong key: %v", err)
	}
	b, err := os.ReadFile(snap)
	if err != nil {
		t.Fatal(err)
	}
	// Flip one bit in a page other than the first.
	b[len(b)-100] ^= 0x01
	flipped := filepath.Join(dir, "flipped.db")
	if err := os.WriteFile(flipped, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := VerifyFile(context.Background(), flipped, key); !errors.Is(err, ErrIntegrity) {
		t.Fatalf("bit flip: %v", err)
	}
}

func TestRekeyUnderLoadLosesNothing(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "qpcd.db")
	oldKey := newKey(t)
	db := openTest(t, path, oldKey)
	defer db.Close()
	load := startLoad(t, db, 4)
	waitAcked(t, load, 200)

	// Readers keep reading through the swap.
	stopReads := make(chan struct{})
	var readErrs atomic.Int64
	var rwg sync.WaitGroup
	for range 2 {
		rwg.Add(1)
		go func() {
			defer rwg.Done()
			for {
				select {
				case <-stopReads:
					return
				default:
				}
				if err := db.ReadTx(context.Background(), func(tx *sql.Tx) error {
					var n int
					return tx.QueryRow("SELECT count(*) FROM rows").Scan(&n)
				}); err != nil {
					readErrs.Add(1)
				}
			}
		}()
	}

	newK := newKey(t)
	var prepared, committed bool
	rep, err := db.Rekey(context.Background(), RekeyOptions{
		NewKey:  newK,
		Prepare: func() error { prepared = true; return nil },
		Commit:  func() error { committed = true; return nil },
	})
	if err != nil {
		t.Fatalf("Rekey: %v", err)
	}
	if !prepared || !committed {
		t.Fatal("hooks not called")
	}
	if rep.NewKeyID != KeyID(newK) || rep.OldKeyID != KeyID(oldKey) || db.KeyID() != rep.NewKeyID {
		t.Fatalf("key ids: %+v", rep)
	}
	n := len(load.ackedNow())
	waitAcked(t, load, n+100) // writes carry on under the new key
	acked := load.finish()
	close(stopReads)
	rwg.Wait()
	if load.errs.Load() != 0 || readErrs.Load() != 0 {
		t.Fatalf("%d writes and %d reads failed", load.errs.Load(), readErrs.Load())
	}
	got := idsIn(t, db)
	for _, id := range acked {
		if !got[id] {
			t.Fatalf("acknowledged row %d lost", id)
		}
	}
	t.Logf("rekey: %d rows, export+verify+swap paused writes for %s", rep.Tables["rows"], rep.Paused)
	if _, err := os.Stat(path + ".pre-rekey"); !os.IsNotExist(err) {
		t.Fatalf("pre-rekey file left: %v", err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	// The file now opens only under the new key.
	if _, err := Open(context.Background(), Options{Path: path, Key: oldKey, Migrations: testMigrations}); !errors.Is(err, ErrWrongKey) {
		t.Fatalf("old key: %v", err)
	}
	re := openTest(t, path, newK)
	defer re.Close()
	if len(idsIn(t, re)) != len(got) {
		t.Fatal("rows differ after reopen")
	}
}

func TestRekeyPrepareFailureChangesNothing(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "qpcd.db")
	key := newKey(t)
	db := openTest(t, path, key)
	defer db.Close()
	if err := db.WriteTx(context.Background(), insert("x")); err != nil {
		t.Fatal(err)
	}
	boom := errors.New("disk full")
	_, err := db.Rekey(context.Background(), RekeyOptions{NewKey: newKey(t), Prepare: func() error { return boom }})
	if !errors.Is(err, boom) || !errors.Is(err, ErrRekey) {
		t.Fatalf("err = %v", err)
	}
	if db.KeyID() != KeyID(key) || countRows(t, db, "") != 1 {
		t.Fatal("database changed")
	}
	if _, err := os.Stat(path + ".rekey-tmp"); !os.IsNotExist(err) {
		t.Fatalf("temp file left: %v", err)
	}
	if err := db.WriteTx(context.Background(), insert("y")); err != nil {
		t.Fatal(err)
	}
}

func TestExportFileChangesKey(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src.db")
	k1, k2 := newKey(t), newKey(t)
	db := openTest(t, src, k1)
	if err := db.WriteTx(context.Background(), insert("x")); err != nil {
		t.Fatal(err)
	}
	db.Close()
	dst := filepath.Join(dir, "dst.db")
	rep, err := ExportFile(context.Background(), src, k1, dst, k2)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Tables["rows"] != 1 {
		t.Fatalf("%+v", rep)
	}
	if _, err := VerifyFile(context.Background(), dst, k1); !errors.Is(err, ErrWrongKey) {
		t.Fatalf("old key on export: %v", err)
	}
	if _, err := ExportFile(context.Background(), src, k2, filepath.Join(dir, "x.db"), k1); !errors.Is(err, ErrWrongKey) {
		t.Fatalf("wrong source key: %v", err)
	}
}
