package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	sqlite3 "github.com/mutecomm/go-sqlcipher/v4"

	"github.com/quicprochat/quicprochat/internal/testutil"
)

func TestIsDiskFullClassifies(t *testing.T) {
	full := []error{
		sqlite3.Error{Code: sqlite3.ErrFull},
		sqlite3.Error{Code: sqlite3.ErrIoErr, SystemErrno: syscall.ENOSPC}, // growing -shm on a full disk
		sqlite3.Error{Code: sqlite3.ErrCantOpen, SystemErrno: syscall.EDQUOT},
		fmt.Errorf("store: commit: %w", sqlite3.Error{Code: sqlite3.ErrFull}),
		&fs.PathError{Op: "write", Path: "/x", Err: syscall.ENOSPC},
		syscall.EDQUOT,
		&pgconn.PgError{Code: "53100", Message: "could not extend file: No space left on device"},
		fmt.Errorf("auth: challenge: %w", &pgconn.PgError{Code: "53100"}),
		&DiskFullError{Where: "/data", Err: errors.New("x")},
	}
	for _, err := range full {
		if !IsDiskFull(err) {
			t.Errorf("IsDiskFull(%#v) = false", err)
		}
		w := asDiskFull(err, "/data")
		var dfe *DiskFullError
		if !errors.Is(w, ErrDiskFull) || !errors.As(w, &dfe) || dfe.Where == "" {
			t.Errorf("asDiskFull(%v) = %v: not a *DiskFullError matching ErrDiskFull", err, w)
		}
		if !errors.Is(w, err) && !errors.As(w, new(sqlite3.Error)) {
			t.Errorf("asDiskFull(%v) lost the cause", err)
		}
	}
	notFull := []error{
		nil,
		errors.New("database or disk is full"), // text alone decides nothing
		sqlite3.Error{Code: sqlite3.ErrBusy},
		sqlite3.Error{Code: sqlite3.ErrError}, // "SQL logic error"; a relayed "database or disk is full" is covered by the Snapshot test
		sqlite3.Error{Code: sqlite3.ErrIoErr, SystemErrno: syscall.EIO},
		&pgconn.PgError{Code: "53300"}, // too many connections
		&pgconn.PgError{Code: "53200"}, // out of memory
		syscall.EIO,
		ErrClosed,
	}
	for _, err := range notFull {
		if IsDiskFull(err) {
			t.Errorf("IsDiskFull(%v) = true", err)
		}
		if w := asDiskFull(err, "/data"); w != err {
			t.Errorf("asDiskFull(%v) changed it to %v", err, w)
		}
	}
}

// diskLoad runs writers that insert rows with unique ids (some large, so a
// transaction can spill to the WAL before COMMIT) and records which were
// acknowledged and every error.
type diskLoad struct {
	wg    sync.WaitGroup
	stop  chan struct{}
	mu    sync.Mutex
	acked map[int64]bool
	errs  []error
	next  atomic.Int64
	// gate pauses the writers (Lock) while the disk is being filled, so the
	// filler takes all the free space, not a share of it that depends on
	// how fast the writers race it (on a loaded machine it got so little
	// that freeing it left no room to resume).
	gate sync.RWMutex
}

func startDiskLoad(db *DB, writers int) *diskLoad {
	l := &diskLoad{stop: make(chan struct{}), acked: map[int64]bool{}}
	small, big := make([]byte, 2<<10), make([]byte, 256<<10)
	for g := range writers {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for {
				select {
				case <-l.stop:
					return
				default:
				}
				id := l.next.Add(1)
				body := small
				if g == 0 && id%8 == 0 {
					body = big
				}
				l.gate.RLock()
				err := db.WriteTx(context.Background(), func(tx *sql.Tx) error {
					_, err := tx.Exec("INSERT INTO rows (id, body) VALUES (?, ?)", id, body)
					return err
				})
				l.gate.RUnlock()
				l.mu.Lock()
				if err != nil {
					l.errs = append(l.errs, err)
				} else {
					l.acked[id] = true
				}
				l.mu.Unlock()
			}
		}()
	}
	return l
}

func (l *diskLoad) counts() (acked, errs int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.acked), len(l.errs)
}

func (l *diskLoad) finish() (map[int64]bool, []error) {
	close(l.stop)
	l.wg.Wait()
	return l.acked, l.errs
}

// On a filesystem that fills up under concurrent writes, every refused
// write gets a *DiskFullError naming the directory (never INTERNAL-grade
// noise), reads go on, the writer does not wedge: once the space is freed
// writes succeed again by themselves, and the database holds exactly the
// acknowledged writes.
func TestDiskFullWritesFailTypedAndResume(t *testing.T) {
	// 16 MiB: the WAL alone reaches 4 MiB before its checkpoint, and the
	// database file as much again by the time the disk is filled, so on 8
	// MiB the filler got about 1 MiB and freeing it was not room enough for
	// the WAL's next checkpoint (seen once in 30-60 runs).
	dir := testutil.SmallFS(t, 16<<20)
	path := filepath.Join(dir, "qpcd.db")
	key := newKey(t)
	db := openTest(t, path, key)
	var observed atomic.Int64
	db.SetDiskFullObserver(func(err error) {
		if errors.Is(err, ErrDiskFull) {
			observed.Add(1)
		}
	})

	l := startDiskLoad(db, 6)
	testutil.WaitFor(t, time.Minute, 2*time.Millisecond, "writes before the disk fills", func() bool { a, _ := l.counts(); return a >= 200 })
	if _, e := l.counts(); e > 0 {
		_, errs := l.finish()
		t.Fatalf("writes failed before the disk was filled: %v", errs[0])
	}
	l.gate.Lock()
	filler := testutil.Fill(t, dir, "filler")
	l.gate.Unlock()
	testutil.WaitFor(t, time.Minute, 2*time.Millisecond, "writes refused on the full disk", func() bool { _, e := l.counts(); return e >= 50 })

	// Reads need no space.
	if n := countRows(t, db, ""); n < 200 {
		t.Fatalf("read while full: %d rows", n)
	}
	filler.Remove(t)
	a0, _ := l.counts()
	resumed := false
	for end := time.Now().Add(time.Minute); time.Now().Before(end); time.Sleep(2 * time.Millisecond) {
		if a, _ := l.counts(); a >= a0+200 {
			resumed = true
			break
		}
	}
	if !resumed {
		var st syscall.Statfs_t
		_ = syscall.Statfs(dir, &st)
		sizes := ""
		ents, _ := os.ReadDir(dir)
		for _, e := range ents {
			if fi, err := e.Info(); err == nil {
				sizes += fmt.Sprintf(" %s=%d", e.Name(), fi.Size())
			}
		}
		a, e := l.counts()
		l.mu.Lock()
		last := l.errs[len(l.errs)-1]
		l.mu.Unlock()
		t.Fatalf("writes did not resume within a minute after the filler (%d bytes) was freed: acked %d -> %d, errors %d, last %v; free %d bytes; files:%s",
			filler.Bytes, a0, a, e, last, int64(st.Bavail)*st.Bsize, sizes)
	}
	acked, errs := l.finish()

	for _, err := range errs {
		var dfe *DiskFullError
		if !errors.Is(err, ErrDiskFull) || !errors.As(err, &dfe) {
			t.Fatalf("a refused write's error is not ErrDiskFull: %v", err)
		}
		if dfe.Where != dir {
			t.Fatalf("DiskFullError.Where = %q, want the data directory %q", dfe.Where, dir)
		}
	}
	if observed.Load() != int64(len(errs)) {
		t.Errorf("disk-full observer saw %d failures, WriteTx returned %d", observed.Load(), len(errs))
	}
	got := idsIn(t, db)
	for id := range acked {
		if !got[id] {
			t.Fatalf("acknowledged row %d lost", id)
		}
	}
	for id := range got {
		if !acked[id] {
			t.Fatalf("row %d is in the database but its write was refused", id)
		}
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := VerifyFile(context.Background(), path, key); err != nil {
		t.Fatal(err)
	}
	t.Logf("acknowledged %d, refused %d (all ErrDiskFull), database exact", len(acked), len(errs))
}

// Closing on a full disk: the final checkpoint cannot grow the main file,
// which loses nothing (the WAL holds every commit), so Close succeeds and
// leaves the WAL; the database reopens with every row, also while still
// full, and passes its integrity checks once space is back.
func TestCloseOnFullDiskKeepsWALAndReopens(t *testing.T) {
	dir := testutil.SmallFS(t, 8<<20)
	path := filepath.Join(dir, "qpcd.db")
	key := newKey(t)
	db := openTest(t, path, key)
	for range 100 {
		if err := db.WriteTx(context.Background(), insert(string(make([]byte, 4<<10)))); err != nil {
			t.Fatal(err)
		}
	}
	filler := testutil.Fill(t, dir, "filler")
	if err := db.Close(); err != nil {
		t.Fatalf("Close on a full disk: %v", err)
	}
	if st, err := os.Stat(path + "-wal"); err != nil || st.Size() == 0 {
		t.Fatalf("expected the WAL to be kept (the checkpoint had no room): %v", err)
	}

	db = openTest(t, path, key)
	if n := countRows(t, db, ""); n != 100 {
		t.Fatalf("reopened while full: %d rows, want 100", n)
	}
	if err := db.WriteTx(context.Background(), insert("x")); !errors.Is(err, ErrDiskFull) {
		t.Fatalf("write on the still-full disk: %v, want ErrDiskFull", err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	filler.Remove(t)
	rep, err := VerifyFile(context.Background(), path, key)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Tables["rows"] != 100 {
		t.Fatalf("integrity-checked file holds %d rows, want 100", rep.Tables["rows"])
	}
}

// A batch whose large function spills pages to the WAL before COMMIT hits
// the full disk inside the function: SQLite may roll the whole transaction
// back there. Every function of the batch gets ErrDiskFull (none is
// acknowledged, none is in the database), and the same batch commits once
// space is back.
func TestDiskFullInsideABatch(t *testing.T) {
	dir := testutil.SmallFS(t, 16<<20)
	path := filepath.Join(dir, "qpcd.db")
	db := openTest(t, path, newKey(t))
	defer db.Close()
	ctx := context.Background()
	batch := func(tag string) []func(*sql.Tx) error {
		row := func(n int) func(*sql.Tx) error {
			return func(tx *sql.Tx) error {
				_, err := tx.Exec("INSERT INTO rows (body) VALUES (?)", append([]byte(tag), make([]byte, n)...))
				return err
			}
		}
		// The page cache holds about 2 MiB: 6 MiB in one function spills.
		return []func(*sql.Tx) error{row(100), row(100), row(6 << 20), row(100)}
	}

	filler := testutil.Fill(t, dir, "filler")
	release := holdWriter(t, db)
	res := submitInOrder(t, ctx, db, batch("full"))
	release()
	for i, err := range collect(t, res, 4) {
		if !errors.Is(err, ErrDiskFull) {
			t.Errorf("function %d of the batch on a full disk: %v, want ErrDiskFull", i, err)
		}
	}
	if n := countRows(t, db, "WHERE substr(body, 1, 4) = CAST('full' AS BLOB)"); n != 0 {
		t.Fatalf("%d rows of the refused batch are in the database", n)
	}

	filler.Remove(t)
	release = holdWriter(t, db)
	res = submitInOrder(t, ctx, db, batch("free"))
	release()
	for i, err := range collect(t, res, 4) {
		if err != nil {
			t.Errorf("function %d after space was freed: %v", i, err)
		}
	}
	if n := countRows(t, db, "WHERE substr(body, 1, 4) = CAST('free' AS BLOB)"); n != 4 {
		t.Fatalf("%d rows of the batch after freeing space, want 4", n)
	}
}

// A backup snapshot or a key rotation on a full disk fails with
// ErrDiskFull naming the directory, removes its partial output and leaves
// the live database as it was (same bytes, same key, still writable once
// space is back).
func TestSnapshotAndRekeyOnFullDiskLeaveLiveDatabase(t *testing.T) {
	dir := testutil.SmallFS(t, 8<<20)
	path := filepath.Join(dir, "qpcd.db")
	key := newKey(t)
	db := openTest(t, path, key)
	defer db.Close()
	ctx := context.Background()
	for range 200 {
		if err := db.WriteTx(ctx, insert(string(make([]byte, 4<<10)))); err != nil {
			t.Fatal(err)
		}
	}
	filler := testutil.Fill(t, dir, "filler")
	// The -shm wal-index changes whenever a connection reads; the data
	// lives in the main file and the WAL.
	data := func() string { return sha256File(t, path) + " " + sha256File(t, path+"-wal") }
	before := data()
	keyID := db.KeyID()

	dst := filepath.Join(dir, "backup.tmp")
	_, err := db.Snapshot(ctx, dst)
	var dfe *DiskFullError
	if !errors.Is(err, ErrDiskFull) || !errors.As(err, &dfe) || dfe.Where != dir {
		t.Fatalf("Snapshot on a full disk: %v; want a DiskFullError naming %s", err, dir)
	}
	_, err = db.Rekey(ctx, RekeyOptions{NewKey: newKey(t)})
	if !errors.Is(err, ErrRekey) || !errors.Is(err, ErrDiskFull) || !errors.As(err, &dfe) || dfe.Where != dir {
		t.Fatalf("Rekey on a full disk: %v; want ErrRekey and a DiskFullError naming %s", err, dir)
	}
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		switch e.Name() {
		case "qpcd.db", "qpcd.db-wal", "qpcd.db-shm", "filler":
		default:
			t.Errorf("partial output left behind: %s", e.Name())
		}
	}
	if after := data(); after != before {
		t.Fatalf("the live database files changed:\n%s\n%s", before, after)
	}
	if db.KeyID() != keyID {
		t.Fatal("the database key changed")
	}
	if n := countRows(t, db, ""); n != 200 {
		t.Fatalf("%d rows after the failed operations, want 200", n)
	}

	filler.Remove(t)
	if err := db.WriteTx(ctx, insert("after")); err != nil {
		t.Fatalf("write after space was freed: %v", err)
	}
	rep, err := db.Snapshot(ctx, dst)
	if err != nil || rep.Tables["rows"] != 201 {
		t.Fatalf("Snapshot after space was freed: %v %v", rep.Tables, err)
	}
}

func sha256File(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return sha256Hex(b)
}

// Opening a cleanly closed database on a full disk fails with ErrDiskFull
// naming the directory (it needs room for the WAL's index), changes nothing,
// and works once space is back.
func TestOpenOnFullDiskSaysSo(t *testing.T) {
	dir := testutil.SmallFS(t, 8<<20)
	path := filepath.Join(dir, "qpcd.db")
	key := newKey(t)
	db := openTest(t, path, key)
	if err := db.WriteTx(context.Background(), insert("x")); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	filler := testutil.Fill(t, dir, "filler")
	before := sha256File(t, path)
	_, err := Open(context.Background(), Options{Path: path, Key: key, Migrations: testMigrations})
	var dfe *DiskFullError
	if !errors.Is(err, ErrDiskFull) || !errors.As(err, &dfe) || dfe.Where != dir {
		t.Fatalf("Open on a full disk: %v; want a DiskFullError naming %s", err, dir)
	}
	if sha256File(t, path) != before {
		t.Fatal("the refused Open changed the database file")
	}
	filler.Remove(t)
	db = openTest(t, path, key)
	defer db.Close()
	if n := countRows(t, db, ""); n != 1 {
		t.Fatalf("%d rows, want 1", n)
	}
}
