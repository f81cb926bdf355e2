package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"
)

// waitFor polls cond until it holds; the test's own timeout bounds it.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		runtime.Gosched()
		time.Sleep(time.Millisecond)
	}
}

// holdWriter parks the writer goroutine in an exclusive job until the
// returned release function is called, so tests can line up a batch.
func holdWriter(t *testing.T, db *DB) (release func()) {
	t.Helper()
	started := make(chan struct{})
	gate := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- db.exclusive(context.Background(), func(context.Context, *sql.DB) error {
			close(started)
			<-gate
			return nil
		})
	}()
	<-started
	var once sync.Once
	return func() {
		once.Do(func() {
			close(gate)
			if err := <-done; err != nil {
				t.Errorf("exclusive job: %v", err)
			}
		})
	}
}

// queued returns the number of WriteTx functions waiting for the writer.
func queued(db *DB) int { return len(db.queue) }

type result struct {
	i   int
	err error
}

// submit starts one WriteTx per fn and returns a channel of their results.
func submit(ctx context.Context, db *DB, fns []func(*sql.Tx) error) <-chan result {
	out := make(chan result, len(fns))
	for i, fn := range fns {
		go func() { out <- result{i, db.WriteTx(ctx, fn)} }()
	}
	return out
}

func collect(t *testing.T, ch <-chan result, n int) []error {
	t.Helper()
	errs := make([]error, n)
	for range n {
		r := <-ch
		errs[r.i] = r.err
	}
	return errs
}

// submitInOrder queues fns one at a time so the batch runs them in order.
func submitInOrder(t *testing.T, ctx context.Context, db *DB, fns []func(*sql.Tx) error) <-chan result {
	t.Helper()
	out := make(chan result, len(fns))
	for i, fn := range fns {
		go func() { out <- result{i, db.WriteTx(ctx, fn)} }()
		waitFor(t, fmt.Sprintf("write %d queued", i), func() bool { return queued(db) == i+1 })
	}
	return out
}

func TestGroupCommitConcurrent(t *testing.T) {
	ctx := context.Background()
	db := openTest(t, filepath.Join(t.TempDir(), "qpcd.db"), newKey(t))
	defer db.Close()
	const goroutines, each = 64, 10
	var wg sync.WaitGroup
	errs := make(chan error, goroutines*each)
	for g := range goroutines {
		wg.Go(func() {
			for i := range each {
				errs <- db.WriteTx(ctx, insert(fmt.Sprintf("g%d-%d", g, i)))
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if n := countRows(t, db, ""); n != goroutines*each {
		t.Fatalf("rows = %d, want %d", n, goroutines*each)
	}
	if got := db.committed.Load(); got != goroutines*each {
		t.Fatalf("committed = %d, want %d", got, goroutines*each)
	}
	t.Logf("%d writes in %d commits", db.committed.Load(), db.commits.Load())
}

// TestBatchIsolation lines up one batch in which some functions fail in
// different ways; only they are rolled back, the rest commit together.
func TestBatchIsolation(t *testing.T) {
	ctx := context.Background()
	db := openTest(t, filepath.Join(t.TempDir(), "qpcd.db"), newKey(t))
	defer db.Close()
	if err := db.WriteTx(ctx, func(tx *sql.Tx) error {
		_, err := tx.Exec("INSERT INTO rows (id, body) VALUES (1, 'seed')")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	errBoom := errors.New("boom")
	var sawFailed []int
	var mu sync.Mutex
	fns := []func(*sql.Tx) error{
		insert("ok-0"),
		func(tx *sql.Tx) error { // writes, then fails: its row must vanish
			if err := insert("bad-1")(tx); err != nil {
				return err
			}
			return errBoom
		},
		func(tx *sql.Tx) error { // must not see bad-1
			var n int
			if err := tx.QueryRow("SELECT count(*) FROM rows WHERE body LIKE 'bad-%'").Scan(&n); err != nil {
				return err
			}
			mu.Lock()
			sawFailed = append(sawFailed, n)
			mu.Unlock()
			return insert("ok-2")(tx)
		},
		func(tx *sql.Tx) error { // writes, then a constraint error it returns
			if err := insert("bad-3")(tx); err != nil {
				return err
			}
			_, err := tx.Exec("INSERT INTO rows (id, body) VALUES (1, 'dup')")
			return err
		},
		insert("ok-4"),
		func(tx *sql.Tx) error { // writes, then panics
			if err := insert("bad-5")(tx); err != nil {
				return err
			}
			var m map[string]int
			m["x"] = 1 // nil map write: runtime panic
			return nil
		},
		insert("ok-6"),
	}
	release := holdWriter(t, db)
	res := submitInOrder(t, ctx, db, fns)
	commits := db.commits.Load()
	release()
	errs := collect(t, res, len(fns))

	for i, err := range errs {
		switch i {
		case 1:
			if !errors.Is(err, errBoom) {
				t.Errorf("fn 1: %v, want boom", err)
			}
		case 3:
			if err == nil {
				t.Error("fn 3: constraint error lost")
			}
		case 5:
			if !errors.Is(err, ErrPanicked) {
				t.Errorf("fn 5: %v, want ErrPanicked", err)
			}
		default:
			if err != nil {
				t.Errorf("fn %d: %v", i, err)
			}
		}
	}
	if got := db.commits.Load() - commits; got != 1 {
		t.Errorf("batch took %d commits, want 1", got)
	}
	if n := countRows(t, db, "WHERE body LIKE 'ok-%'"); n != 4 {
		t.Errorf("ok rows = %d, want 4", n)
	}
	if n := countRows(t, db, "WHERE body LIKE 'bad-%' OR body = 'dup'"); n != 0 {
		t.Errorf("rows of failed functions = %d, want 0", n)
	}
	if len(sawFailed) != 1 || sawFailed[0] != 0 {
		t.Errorf("fn 2 saw failed rows: %v", sawFailed)
	}
}

// TestRefusalWaitsForItsBatch: a function's own error reaches its caller
// once its batch has committed, not while the batch is still open, so a
// caller that reads after a refusal finds the earlier writes of the batch
// the refusal rested on (the delivery service refuses a commit as stale
// because an earlier one in the batch moved the epoch; the client then
// fetches that earlier commit).
func TestRefusalWaitsForItsBatch(t *testing.T) {
	ctx := context.Background()
	db := openTest(t, filepath.Join(t.TempDir(), "qpcd.db"), newKey(t))
	defer db.Close()
	errRefused := errors.New("refused: an earlier write of the batch is there")
	running, gate := make(chan struct{}), make(chan struct{})
	fns := []func(*sql.Tx) error{
		insert("first"),
		func(tx *sql.Tx) error {
			var n int
			if err := tx.QueryRow("SELECT count(*) FROM rows WHERE body = ?", []byte("first")).Scan(&n); err != nil {
				return err
			}
			if n == 1 {
				return errRefused
			}
			return nil
		},
		func(tx *sql.Tx) error { // holds the batch open
			close(running)
			<-gate
			return insert("third")(tx)
		},
	}
	var openGate sync.Once
	defer openGate.Do(func() { close(gate) }) // before db.Close, should the test fail
	release := holdWriter(t, db)
	reqs := make([]*request, len(fns))
	for i, fn := range fns {
		reqs[i] = &request{ctx: ctx, fn: fn, done: make(chan error, 1)}
		if err := db.enqueue(ctx, db.queue, reqs[i]); err != nil {
			t.Fatal(err)
		}
	}
	release()
	<-running
	if len(reqs[1].done) != 0 {
		t.Fatal("the refusal was delivered while its batch was still open")
	}
	openGate.Do(func() { close(gate) })
	if err := reqs[1].wait(); !errors.Is(err, errRefused) {
		t.Fatalf("refused function: %v", err)
	}
	if n := countRows(t, db, "WHERE body = X'6669727374'"); n != 1 { // 'first'
		t.Fatalf("after the refusal a read finds %d rows of the write it rested on, want 1", n)
	}
	for _, i := range []int{0, 2} {
		if err := reqs[i].wait(); err != nil {
			t.Fatalf("function %d: %v", i, err)
		}
	}
}

// TestBatchAbortedBySQLite: a function whose statement makes SQLite roll back
// the whole transaction fails alone; the functions before and after it in the
// batch still commit, each exactly once.
func TestBatchAbortedBySQLite(t *testing.T) {
	ctx := context.Background()
	db := openTest(t, filepath.Join(t.TempDir(), "qpcd.db"), newKey(t))
	defer db.Close()
	if err := db.WriteTx(ctx, func(tx *sql.Tx) error {
		_, err := tx.Exec("INSERT INTO rows (id, body) VALUES (1, 'seed')")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	rollbackDup := "INSERT OR ROLLBACK INTO rows (id, body) VALUES (1, 'dup')"
	fns := []func(*sql.Tx) error{
		insert("ok-0"),
		insert("ok-1"),
		func(tx *sql.Tx) error { // returns the error
			_, err := tx.Exec(rollbackDup)
			return err
		},
		insert("ok-3"),
		func(tx *sql.Tx) error { // swallows the error: still reported
			_, _ = tx.Exec(rollbackDup)
			return nil
		},
		insert("ok-5"),
	}
	release := holdWriter(t, db)
	res := submitInOrder(t, ctx, db, fns)
	release()
	errs := collect(t, res, len(fns))
	for i, err := range errs {
		switch i {
		case 2:
			if err == nil {
				t.Error("fn 2: error lost")
			}
		case 4:
			if !errors.Is(err, ErrTxAborted) {
				t.Errorf("fn 4: %v, want ErrTxAborted", err)
			}
		default:
			if err != nil {
				t.Errorf("fn %d: %v", i, err)
			}
		}
	}
	for _, body := range []string{"ok-0", "ok-1", "ok-3", "ok-5"} {
		if n := countRows(t, db, "WHERE CAST(body AS TEXT) = '"+body+"'"); n != 1 {
			t.Errorf("%s: %d rows, want exactly 1", body, n)
		}
	}
	if n := countRows(t, db, "WHERE CAST(body AS TEXT) = 'dup'"); n != 0 {
		t.Errorf("dup rows = %d", n)
	}
}

// TestCommitFailureIsolates: a deferred foreign-key violation only shows at
// COMMIT, where the culprit is unknown; the writer re-runs each function
// alone so only the culprit fails.
func TestCommitFailureIsolates(t *testing.T) {
	ctx := context.Background()
	db := openTest(t, filepath.Join(t.TempDir(), "qpcd.db"), newKey(t))
	defer db.Close()
	fns := []func(*sql.Tx) error{
		insert("ok-0"),
		func(tx *sql.Tx) error {
			_, err := tx.Exec("INSERT INTO child (pid) VALUES (42)") // no parent 42
			return err
		},
		insert("ok-2"),
	}
	release := holdWriter(t, db)
	res := submitInOrder(t, ctx, db, fns)
	release()
	errs := collect(t, res, len(fns))
	if errs[0] != nil || errs[2] != nil {
		t.Fatalf("innocent functions failed: %v, %v", errs[0], errs[2])
	}
	if errs[1] == nil {
		t.Fatal("deferred FK violation committed")
	}
	if n := countRows(t, db, "WHERE body LIKE 'ok-%'"); n != 2 {
		t.Errorf("ok rows = %d, want 2", n)
	}
	// The writer is healthy afterwards.
	if err := db.WriteTx(ctx, insert("after")); err != nil {
		t.Fatal(err)
	}
}

func TestTxMisuse(t *testing.T) {
	ctx := context.Background()
	for _, end := range []string{"commit", "rollback"} {
		t.Run(end, func(t *testing.T) {
			db := openTest(t, filepath.Join(t.TempDir(), "qpcd.db"), newKey(t))
			defer db.Close()
			fns := []func(*sql.Tx) error{
				insert("ok-0"),
				func(tx *sql.Tx) error {
					if err := insert("misuse")(tx); err != nil {
						return err
					}
					if end == "commit" {
						return tx.Commit()
					}
					return tx.Rollback()
				},
				insert("ok-2"),
			}
			release := holdWriter(t, db)
			res := submitInOrder(t, ctx, db, fns)
			release()
			errs := collect(t, res, len(fns))
			if !errors.Is(errs[1], ErrTxMisuse) {
				t.Errorf("misusing fn: %v, want ErrTxMisuse", errs[1])
			}
			if errs[0] != nil || errs[2] != nil {
				t.Errorf("innocent functions failed: %v, %v", errs[0], errs[2])
			}
			for _, body := range []string{"ok-0", "ok-2"} {
				if n := countRows(t, db, "WHERE CAST(body AS TEXT) = '"+body+"'"); n != 1 {
					t.Errorf("%s: %d rows, want exactly 1", body, n)
				}
			}
			if err := db.WriteTx(ctx, insert("after")); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestBatchLimits(t *testing.T) {
	ctx := context.Background()
	db := openTest(t, filepath.Join(t.TempDir(), "qpcd.db"), newKey(t))
	defer db.Close()
	run := func(n int) int64 {
		t.Helper()
		fns := make([]func(*sql.Tx) error, n)
		for i := range fns {
			fns[i] = insert(fmt.Sprint(i))
		}
		release := holdWriter(t, db)
		res := submit(ctx, db, fns)
		waitFor(t, "writes queued", func() bool { return queued(db) == n })
		before := db.commits.Load()
		release()
		for i, err := range collect(t, res, n) {
			if err != nil {
				t.Fatalf("fn %d: %v", i, err)
			}
		}
		return db.commits.Load() - before
	}
	// Counting commits needs the time budget out of the way (the race
	// detector makes functions slow).
	db.maxBatchWork = time.Hour
	db.maxBatchFns = 4
	if got := run(10); got != 3 {
		t.Errorf("10 writes with a cap of 4: %d commits, want 3", got)
	}
	db.maxBatchFns = defaultMaxBatchFns
	if got := run(10); got != 1 {
		t.Errorf("10 writes: %d commits, want 1", got)
	}
	// A batch stops taking functions once its time budget is spent.
	db.maxBatchWork = 0
	if got := run(5); got != 5 {
		t.Errorf("5 writes with no time budget: %d commits, want 5", got)
	}
}

func TestQueuedWriteCancelled(t *testing.T) {
	db := openTest(t, filepath.Join(t.TempDir(), "qpcd.db"), newKey(t))
	defer db.Close()
	release := holdWriter(t, db)
	defer release()
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan struct{}, 1)
	errc := make(chan error, 1)
	go func() {
		errc <- db.WriteTx(ctx, func(tx *sql.Tx) error {
			ran <- struct{}{}
			return insert("cancelled")(tx)
		})
	}()
	waitFor(t, "write queued", func() bool { return queued(db) == 1 })
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("WriteTx = %v, want context.Canceled", err)
	}
	release()
	// A later write goes through the same queue, after the cancelled one.
	if err := db.WriteTx(context.Background(), insert("later")); err != nil {
		t.Fatal(err)
	}
	select {
	case <-ran:
		t.Fatal("cancelled function ran")
	default:
	}
	if n := countRows(t, db, "WHERE CAST(body AS TEXT) = 'cancelled'"); n != 0 {
		t.Fatalf("cancelled write committed %d rows", n)
	}
	// An already-cancelled context never queues.
	if err := db.WriteTx(ctx, insert("x")); !errors.Is(err, context.Canceled) {
		t.Fatalf("WriteTx with dead ctx = %v", err)
	}
}

func TestCloseDrainsQueue(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "qpcd.db")
	key := newKey(t)
	db := openTest(t, path, key)
	const n = 20
	fns := make([]func(*sql.Tx) error, n)
	for i := range fns {
		fns[i] = insert(fmt.Sprint("queued-", i))
	}
	release := holdWriter(t, db)
	res := submit(ctx, db, fns)
	waitFor(t, "writes queued", func() bool { return queued(db) == n })
	closed := make(chan error, 1)
	go func() { closed <- db.Close() }()
	waitFor(t, "Close to start", func() bool {
		db.mu.RLock()
		defer db.mu.RUnlock()
		return db.closed
	})
	if err := db.WriteTx(ctx, insert("too late")); !errors.Is(err, ErrClosed) {
		t.Fatalf("WriteTx during Close = %v, want ErrClosed", err)
	}
	if err := db.ReadTx(ctx, func(*sql.Tx) error { return nil }); !errors.Is(err, ErrClosed) {
		t.Fatalf("ReadTx during Close = %v, want ErrClosed", err)
	}
	release()
	if err := <-closed; err != nil {
		t.Fatalf("Close: %v", err)
	}
	for i, err := range collect(t, res, n) {
		if err != nil {
			t.Fatalf("queued write %d: %v", i, err)
		}
	}
	db = openTest(t, path, key)
	defer db.Close()
	if got := countRows(t, db, "WHERE body LIKE 'queued-%'"); got != n {
		t.Fatalf("after reopen: %d rows, want %d", got, n)
	}
	if got := countRows(t, db, "WHERE CAST(body AS TEXT) = 'too late'"); got != 0 {
		t.Fatalf("write after Close committed")
	}
}

// TestCancelAfterStart: once the writer has started a function, cancelling
// the caller's context does not detach the caller from the real outcome.
func TestCancelAfterStart(t *testing.T) {
	db := openTest(t, filepath.Join(t.TempDir(), "qpcd.db"), newKey(t))
	defer db.Close()
	ctx, cancel := context.WithCancel(context.Background())
	started := make(chan struct{})
	proceed := make(chan struct{})
	errc := make(chan error, 1)
	go func() {
		errc <- db.WriteTx(ctx, func(tx *sql.Tx) error {
			close(started)
			<-proceed
			return insert("started")(tx)
		})
	}()
	<-started
	cancel()
	close(proceed)
	if err := <-errc; err != nil {
		t.Fatalf("WriteTx = %v, want nil (the function had started and committed)", err)
	}
	if n := countRows(t, db, "WHERE CAST(body AS TEXT) = 'started'"); n != 1 {
		t.Fatalf("rows = %d, want 1", n)
	}
}

// TestConnectionSettings checks the pragmas the writer and readers run with.
func TestConnectionSettings(t *testing.T) {
	ctx := context.Background()
	db := openTest(t, filepath.Join(t.TempDir(), "qpcd.db"), newKey(t))
	defer db.Close()
	type pragmas struct {
		journal        string
		sync, fk, busy int
		queryOnly      int
	}
	read := func(q querier) (p pragmas, err error) {
		for _, x := range []struct {
			q   string
			dst any
		}{
			{"PRAGMA journal_mode", &p.journal},
			{"PRAGMA synchronous", &p.sync},
			{"PRAGMA foreign_keys", &p.fk},
			{"PRAGMA busy_timeout", &p.busy},
			{"PRAGMA query_only", &p.queryOnly},
		} {
			if err := q.QueryRowContext(ctx, x.q).Scan(x.dst); err != nil {
				return p, fmt.Errorf("%s: %w", x.q, err)
			}
		}
		return p, nil
	}
	var w pragmas
	err := db.exclusive(ctx, func(ctx context.Context, wdb *sql.DB) error {
		var err error
		w, err = read(wdb)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if w.journal != "wal" || w.sync != 2 || w.fk != 1 || w.busy != busyTimeoutMS || w.queryOnly != 0 {
		t.Errorf("writer pragmas = %+v, want wal, synchronous=FULL(2), foreign_keys, busy_timeout, writable", w)
	}
	var r pragmas
	err = db.ReadTx(ctx, func(tx *sql.Tx) error {
		var err error
		r, err = read(tx)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if r.journal != "wal" || r.fk != 1 || r.busy != busyTimeoutMS || r.queryOnly != 1 {
		t.Errorf("reader pragmas = %+v, want wal, foreign_keys, busy_timeout, query_only", r)
	}
}

// TestLeakedRows: a function that forgets to close a result set neither
// hangs the writer nor hurts its batch.
func TestLeakedRows(t *testing.T) {
	ctx := context.Background()
	db := openTest(t, filepath.Join(t.TempDir(), "qpcd.db"), newKey(t))
	defer db.Close()
	for i := 0; i < 3; i++ {
		if err := db.WriteTx(ctx, insert("seed")); err != nil {
			t.Fatal(err)
		}
	}
	fns := []func(*sql.Tx) error{
		insert("ok-0"),
		func(tx *sql.Tx) error {
			rows, err := tx.Query("SELECT body FROM rows")
			if err != nil {
				return err
			}
			_ = rows.Next() // and never Close
			return insert("leaky")(tx)
		},
		insert("ok-2"),
	}
	release := holdWriter(t, db)
	res := submitInOrder(t, ctx, db, fns)
	release()
	for i, err := range collect(t, res, len(fns)) {
		if err != nil {
			t.Errorf("fn %d: %v", i, err)
		}
	}
	if n := countRows(t, db, "WHERE CAST(body AS TEXT) IN ('ok-0', 'leaky', 'ok-2')"); n != 3 {
		t.Fatalf("rows = %d, want 3", n)
	}
}

// The commit observer sees every committed batch with its size; QueueLen
// counts the calls waiting for the writer.
func TestCommitObserver(t *testing.T) {
	db := openTest(t, filepath.Join(t.TempDir(), "qpcd.db"), newKey(t))
	defer db.Close()
	var mu sync.Mutex
	var batches, writes int
	db.SetCommitObserver(func(n int, took time.Duration) {
		mu.Lock()
		defer mu.Unlock()
		batches++
		writes += n
		if took <= 0 {
			t.Errorf("commit took %v", took)
		}
	})
	ctx := context.Background()
	release := holdWriter(t, db) // calls queue up behind it
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := db.WriteTx(ctx, insert(fmt.Sprint(i))); err != nil {
				t.Error(err)
			}
		}()
	}
	waitFor(t, "20 queued writes", func() bool { return db.QueueLen() == 20 })
	release()
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	if writes != 20 || batches < 1 || batches > 20 {
		t.Fatalf("observer saw %d writes in %d batches, want 20 writes", writes, batches)
	}
	if db.QueueLen() != 0 {
		t.Fatalf("queue %d after the writes", db.QueueLen())
	}
}

// TestWaitObserver: each write reports its wait for the writer once, from
// being queued to the start of its batch, so a write held behind an
// exclusive job reports at least the time the test kept it queued.
func TestWaitObserver(t *testing.T) {
	db := openTest(t, filepath.Join(t.TempDir(), "qpcd.db"), newKey(t))
	defer db.Close()
	var mu sync.Mutex
	var waits []time.Duration
	db.SetWaitObserver(func(waited time.Duration) {
		mu.Lock()
		defer mu.Unlock()
		waits = append(waits, waited)
	})
	ctx := context.Background()
	release := holdWriter(t, db)
	done := submit(ctx, db, []func(*sql.Tx) error{insert("held")})
	waitFor(t, "the write queued", func() bool { return db.QueueLen() == 1 })
	seenQueued := time.Now()
	// The write stays queued at least until the writer is released.
	waitFor(t, "a measurable hold", func() bool { return time.Since(seenQueued) >= 5*time.Millisecond })
	held := time.Since(seenQueued)
	release()
	if errs := collect(t, done, 1); errs[0] != nil {
		t.Fatal(errs[0])
	}
	if err := db.WriteTx(ctx, insert("free")); err != nil {
		t.Fatal(err)
	}
	seen := func() []time.Duration {
		mu.Lock()
		defer mu.Unlock()
		return append([]time.Duration(nil), waits...)
	}
	got := seen()
	if len(got) != 2 {
		t.Fatalf("observer saw %d waits, want one per write (2)", len(got))
	}
	if got[0] < held {
		t.Fatalf("held write reported a wait of %v, less than the %v it was seen queued", got[0], held)
	}
	if got[1] < 0 || got[1] >= got[0] {
		t.Fatalf("write to an idle writer reported %v (the held one %v)", got[1], got[0])
	}
	db.SetWaitObserver(nil)
	if err := db.WriteTx(ctx, insert("unobserved")); err != nil {
		t.Fatal(err)
	}
	if n := len(seen()); n != 2 {
		t.Fatalf("observer called after removal (%d waits)", n)
	}
}
