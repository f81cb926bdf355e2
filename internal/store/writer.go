package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"runtime"
	"runtime/debug"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/quicprochat/quicprochat/internal/tracing"
)

// batchMarkerTable is a per-connection TEMP table the writer stamps with the
// batch number inside every batch transaction. If a function ends the shared
// transaction itself, reading the stamp tells whether that ended in a commit.
const batchMarkerTable = "temp.qpc_batch"

// fnSavepoint wraps each function of a batch.
const fnSavepoint = "qpc_store_fn"

// Request states: the writer takes a request (queued -> taken) right before
// running it; a caller whose context ends first cancels it (queued ->
// cancelled) and it is never run. Exactly one of the two wins.
const (
	stateQueued int32 = iota
	stateTaken
	stateCancelled
)

type request struct {
	ctx   context.Context
	fn    func(tx *sql.Tx) error                     // a WriteTx function, or
	job   func(ctx context.Context, w *sql.DB) error // exclusive writer work
	state atomic.Int32
	done  chan error // buffered 1; receives exactly one result

	// queued and taken time the wait for the writer
	// (qpcd_db_write_wait_seconds) and, when the caller's span records,
	// its db.write.wait span; for a traced request the writer also notes
	// when the batch's COMMIT (with its fsync) ran. The caller turns them
	// into spans after the result arrived (writes happen before done is
	// sent, so no lock is needed).
	traced                 bool
	queued, taken          time.Time
	commitStart, commitEnd time.Time
	batch                  int
}

// take reports whether the writer may run r (now or again).
func (r *request) take() bool {
	return r.state.CompareAndSwap(stateQueued, stateTaken) || r.state.Load() == stateTaken
}

func (r *request) finish(err error) { r.done <- err }

// wait returns r's result. If the caller's context ends while r is still
// queued, r is cancelled and never runs; once the writer has taken r, wait
// returns its real outcome (within one batch), so an error from WriteTx
// always means the function's writes are not in the database.
func (r *request) wait() error {
	select {
	case err := <-r.done:
		return err
	case <-r.ctx.Done():
		if r.state.CompareAndSwap(stateQueued, stateCancelled) {
			return fmt.Errorf("store: write not started: %w", r.ctx.Err())
		}
		return <-r.done
	}
}

// WriteTx runs fn inside the database's single write transaction stream and
// returns once fn's writes are durable (committed with synchronous=FULL) or
// with fn's error (or another error) when they are not in the database.
//
// Calls are group-committed: the writer goroutine runs the functions queued
// at that moment (up to 256, or ~5 ms of work) in one SQL transaction, each
// inside its own SAVEPOINT, then commits once. A function that returns an
// error is rolled back to its savepoint and gets its error once the batch
// has ended (so whatever its error rests on is committed by then, or was
// rolled back with the batch); the others still commit. Functions of one batch run one after another, so a function sees
// the successful writes of earlier functions in its batch, never the partial
// writes of a failed one.
//
// Rules for fn:
//   - use only tx, and do not call tx.Commit or tx.Rollback (ErrTxMisuse);
//   - do not call WriteTx (deadlock: fn runs on the writer goroutine);
//   - keep it short: it delays every function queued behind it;
//   - fn may run more than once: if the shared transaction has to be
//     abandoned before commit because of another function (or SQLite rolls
//     it back), the functions that had succeeded are re-run, each in a
//     transaction of its own. Do not rely on side effects outside tx.
//
// If ctx ends while fn is still queued, fn never runs and WriteTx returns
// ctx's error; once fn has started, WriteTx waits for the real outcome.
func (db *DB) WriteTx(ctx context.Context, fn func(tx *sql.Tx) error) error {
	return db.QueueWriteTx(ctx, fn)()
}

// QueueWriteTx queues fn as WriteTx does but returns at once; the returned
// wait gives fn's outcome exactly as WriteTx would have, and must be
// called. Functions one goroutine queues one after another run in that
// order (each sees the writes of the earlier ones that succeeded), so a
// caller with several independent writes queues them all, then waits for
// each: they share the writer's group commits instead of paying for one
// commit each. On PostgreSQL fn runs at once, in its own transaction,
// before QueueWriteTx returns.
func (db *DB) QueueWriteTx(ctx context.Context, fn func(tx *sql.Tx) error) (wait func() error) {
	if fn == nil {
		return func() error { return errors.New("store: WriteTx with nil function") }
	}
	if db.pg != nil {
		err := db.classify(db.pgWrite(ctx, sql.LevelSerializable, fn))
		return func() error { return err }
	}
	r := &request{ctx: ctx, fn: fn, done: make(chan error, 1), queued: time.Now()}
	ctx, span := tracing.Start(ctx, "db.write")
	r.traced = span.IsRecording()
	if err := db.enqueue(ctx, db.queue, r); err != nil {
		tracing.Fail(span, "not_queued")
		span.End()
		return func() error { return err }
	}
	return func() error {
		err := db.classify(r.wait())
		if r.traced {
			traceWrite(ctx, span, r, err)
			span.End()
		}
		return err
	}
}

// traceWrite records a traced write's phases as children of its db.write
// span: the wait for the single writer (the write-batch wait) and the
// batch's commit with its fsync.
func traceWrite(ctx context.Context, span trace.Span, r *request, err error) {
	tracing.Set(span, attribute.String(tracing.KeyDBSystem, "sqlite"))
	if err != nil {
		tracing.Fail(span, "write_failed")
	}
	tracer := span.TracerProvider().Tracer(tracing.InstrumentationName)
	if !r.taken.IsZero() {
		_, w := tracer.Start(ctx, "db.write.wait", trace.WithTimestamp(r.queued))
		w.End(trace.WithTimestamp(r.taken))
	}
	if !r.commitStart.IsZero() {
		_, c := tracer.Start(ctx, "db.commit", trace.WithTimestamp(r.commitStart))
		tracing.Set(c, attribute.Int(tracing.KeyBatchSize, r.batch))
		c.End(trace.WithTimestamp(r.commitEnd))
	}
}

// exclusive runs job on the writer goroutine between batches: no write
// transaction is open while it runs and none starts until it returns. It is
// the hook for maintenance that needs the writer to itself (checkpoint,
// backup via sqlcipher_export or the backup API, rekey).
func (db *DB) exclusive(ctx context.Context, job func(ctx context.Context, w *sql.DB) error) error {
	if db.pg != nil {
		return ErrNotSupported
	}
	r := &request{ctx: ctx, job: job, done: make(chan error, 1)}
	if err := db.enqueue(ctx, db.jobs, r); err != nil {
		return err
	}
	return r.wait()
}

func (db *DB) enqueue(ctx context.Context, ch chan<- *request, r *request) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("store: write not started: %w", err)
	}
	db.mu.RLock()
	defer db.mu.RUnlock()
	if db.closed {
		return ErrClosed
	}
	select {
	case ch <- r:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("store: write not started: %w", ctx.Err())
	}
}

// runWriter is the writer goroutine. It exits when Close has closed the queue
// and every queued request has been run.
func (db *DB) runWriter() {
	defer close(db.writerDone)
	var carry []*request // taken-over from a batch that hit its time limit
	for {
		batch := carry
		carry = nil
		if len(batch) == 0 {
			select {
			case r, ok := <-db.queue:
				if !ok {
					return
				}
				batch = append(batch, r)
			case j := <-db.jobs:
				db.runJob(j)
				continue
			}
		}
		// Group commit: take whatever else is already queued, without waiting.
	collect:
		for len(batch) < db.maxBatchFns {
			select {
			case r, ok := <-db.queue:
				if !ok {
					break collect
				}
				batch = append(batch, r)
			default:
				break collect
			}
		}
		carry = db.runBatch(batch)
	}
}

func (db *DB) runJob(j *request) {
	if !j.take() {
		return
	}
	j.finish(j.job(j.ctx, db.wdb))
}

// runBatch runs batch and returns the requests it had no time for. Functions
// whose batch had to be abandoned are re-run one per transaction.
func (db *DB) runBatch(batch []*request) (leftover []*request) {
	retry, leftover := db.attempt(batch, true)
	for _, r := range retry {
		// A single-function attempt never asks for a retry.
		_, _ = db.attempt([]*request{r}, false)
	}
	return leftover
}

// attempt runs reqs in one transaction, each in a savepoint, and commits.
// It delivers every result it can; it returns the requests that succeeded
// but must be re-run because the transaction was lost (only when len(reqs) >
// 1) and, when budget is set, those not started before the time limit.
func (db *DB) attempt(reqs []*request, budget bool) (retry, leftover []*request) {
	start := time.Now()
	// A function's own error reaches its caller when the batch has ended,
	// not at once: the error may rest on the writes of functions before it
	// in the batch (an enqueue refused as stale because an earlier one
	// moved the epoch), and a caller that reads after it must find them
	// committed, as any read after a WriteTx finds its writes.
	var refused []*request
	var refusals []error
	defer func() {
		for i, r := range refused {
			r.finish(refusals[i])
		}
	}()
	failAll := func(err error) {
		for _, r := range reqs {
			if r.take() {
				r.finish(err)
			}
		}
	}
	ctx := context.Background()
	db.wstmts.prepareWanted(ctx, db.wdb)
	tx, err := db.wdb.BeginTx(ctx, nil)
	if err != nil {
		failAll(fmt.Errorf("store: begin write transaction: %w", err))
		return nil, nil
	}
	db.batchSeq++
	seq := db.batchSeq
	marker, err := db.WriteStmt(ctx, tx, "INSERT OR REPLACE INTO "+batchMarkerTable+" (k, n) VALUES (0, ?)")
	if err == nil {
		_, err = marker.Exec(seq)
	}
	if err != nil {
		db.abandon(tx)
		failAll(fmt.Errorf("store: begin write transaction: %w", err))
		return nil, nil
	}

	// The savepoint statements are prepared once on the writer connection,
	// not per function: re-preparing them was a large share of a small
	// write's cost.
	sp, err := db.savepoints(ctx, tx)
	if err != nil {
		db.abandon(tx)
		failAll(fmt.Errorf("store: begin write transaction: %w", err))
		return nil, nil
	}

	var ok []*request
	for i, r := range reqs {
		if budget && len(ok) > 0 && time.Since(start) > db.maxBatchWork {
			leftover = reqs[i:]
			break
		}
		if !r.take() {
			continue // the caller gave up before it started
		}
		if r.taken.IsZero() {
			r.taken = time.Now()
			if f := db.onWait.Load(); f != nil {
				(*f)(r.taken.Sub(r.queued))
			}
		}
		if _, err := sp.begin.Exec(); err != nil {
			// The transaction is unusable before r ran: r fails without
			// having run, the rest start over.
			r.finish(fmt.Errorf("store: savepoint: %w", err))
			db.abandon(tx)
			return ok, reqs[i+1:]
		}
		fnErr := db.call(r.fn, tx)
		var spErr error
		if fnErr == nil {
			_, spErr = sp.release.Exec()
		} else if _, spErr = sp.rollback.Exec(); spErr == nil {
			_, spErr = sp.release.Exec()
		}
		switch {
		case spErr == nil && fnErr != nil:
			refused, refusals = append(refused, r), append(refusals, fnErr)
			continue
		case spErr == nil:
			ok = append(ok, r)
			continue
		case txDone(tx):
			// r called tx.Commit or tx.Rollback.
			committed, mErr := db.batchCommitted(seq)
			db.log.Error("store: write function ended the shared transaction; fix the caller", "committed", committed, "batch", len(reqs))
			db.abandon(nil)
			switch {
			case mErr != nil:
				unknown := fmt.Errorf("%w: outcome unknown after another function's misuse: %v", ErrTxAborted, mErr)
				r.finish(fmt.Errorf("%w; outcome unknown", ErrTxMisuse))
				for _, o := range ok {
					o.finish(unknown)
				}
				return nil, reqs[i+1:]
			case committed:
				r.finish(fmt.Errorf("%w; its writes and those before it in the batch were committed", ErrTxMisuse))
				for _, o := range ok {
					o.finish(nil)
				}
				return nil, reqs[i+1:]
			default:
				r.finish(fmt.Errorf("%w; its writes were rolled back", ErrTxMisuse))
				return ok, reqs[i+1:]
			}
		case IsDiskFull(fnErr) || IsDiskFull(spErr):
			// The disk filled while r ran and SQLite rolled the transaction
			// back: the disk, not a function, is at fault. r and the
			// functions before it fail (none of their writes is in the
			// database) instead of each being re-run alone against a full
			// disk; those not started yet go to the next batch.
			if !IsDiskFull(fnErr) {
				fnErr = fmt.Errorf("%w: %w", ErrTxAborted, spErr)
			}
			db.abandon(tx)
			r.finish(fnErr)
			for _, o := range ok {
				o.finish(fnErr)
			}
			return nil, reqs[i+1:]
		default:
			// SQLite rolled the transaction back while r ran (or r broke its
			// savepoint). r gets the blame; the others are re-run.
			if fnErr == nil {
				fnErr = fmt.Errorf("%w: %v", ErrTxAborted, spErr)
			}
			r.finish(fnErr)
			db.abandon(tx)
			return ok, reqs[i+1:]
		}
	}

	if len(ok) == 0 {
		db.abandon(tx)
		return nil, leftover
	}
	commitStart := time.Now()
	if err := tx.Commit(); err != nil {
		db.abandon(nil)
		if IsDiskFull(err) {
			// A full disk fails the COMMIT whichever functions the batch
			// holds: all of them get the error (the batch was rolled back,
			// none of their writes is in the database) rather than being
			// re-run one by one against a full disk. The writer carries on
			// with the next batch, which succeeds once space is freed.
			err = fmt.Errorf("store: commit: %w", err)
			for _, r := range ok {
				r.finish(err)
			}
			return nil, leftover
		}
		if len(ok) > 1 {
			// Which function caused it (a deferred constraint, say) is
			// unknown: run each alone so only the culprit fails.
			return ok, leftover
		}
		ok[0].finish(fmt.Errorf("store: commit: %w", err))
		return nil, leftover
	}
	if f := db.onCommit.Load(); f != nil {
		(*f)(len(ok), time.Since(commitStart))
	}
	var commitEnd time.Time
	for _, r := range ok {
		if r.traced {
			if commitEnd.IsZero() {
				commitEnd = time.Now()
			}
			r.commitStart, r.commitEnd, r.batch = commitStart, commitEnd, len(ok)
		}
	}
	db.commits.Add(1)
	db.committed.Add(int64(len(ok)))
	for _, r := range ok {
		r.finish(nil)
	}
	// Let the callers just woken run before the next batch. Waking them
	// puts them on this goroutine's P, where they would otherwise wait
	// until the next batch's COMMIT blocks in its fsync and the runtime
	// hands the P over; their replies and their senders' next writes
	// waited with them. Yielding sends them on now (docs/benchmarks.md,
	// "The writer yields after each batch").
	runtime.Gosched()
	return nil, leftover
}

// call runs fn, turning a panic into ErrPanicked so one bad function cannot
// take down the writer (and with it every other caller).
func (db *DB) call(fn func(*sql.Tx) error, tx *sql.Tx) (err error) {
	defer func() {
		if p := recover(); p != nil {
			db.log.Error("store: write function panicked; its writes were rolled back", "stack", string(debug.Stack()))
			err = fmt.Errorf("%w: %v", ErrPanicked, p)
		}
	}()
	return fn(tx)
}

// abandon rolls tx back (if not nil) and makes sure the writer connection is
// not left inside a transaction (a failed COMMIT can leave one open).
func (db *DB) abandon(tx *sql.Tx) {
	if tx != nil {
		_ = tx.Rollback()
	}
	// Fails harmlessly with "no transaction is active" in the normal case.
	_, _ = db.wdb.Exec("ROLLBACK")
}

// batchCommitted reads the batch marker after a function ended the shared
// transaction itself: seq is there only if that ended in a commit.
func (db *DB) batchCommitted(seq int64) (bool, error) {
	var n int64
	err := db.wdb.QueryRow("SELECT n FROM " + batchMarkerTable + " WHERE k = 0").Scan(&n)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return false, nil
	case err != nil:
		return false, err
	}
	return n == seq, nil
}

// txDone reports whether tx has been ended (by a function calling Commit or
// Rollback on it). Statements prepared for tx then fail with "statement is
// closed" rather than sql.ErrTxDone, so ask tx itself rather than trust
// the error of the statement that failed.
func txDone(tx *sql.Tx) bool {
	var one int
	return errors.Is(tx.QueryRow("SELECT 1").Scan(&one), sql.ErrTxDone)
}

// savepoints are one batch's SAVEPOINT, RELEASE and ROLLBACK TO, bound to
// its transaction (which closes them).
type savepoints struct {
	begin, release, rollback *sql.Stmt
}

func (db *DB) savepoints(ctx context.Context, tx *sql.Tx) (*savepoints, error) {
	var sp savepoints
	for _, p := range []struct {
		stmt **sql.Stmt
		sql  string
	}{
		{&sp.begin, "SAVEPOINT " + fnSavepoint},
		{&sp.release, "RELEASE " + fnSavepoint},
		{&sp.rollback, "ROLLBACK TO " + fnSavepoint},
	} {
		st, err := db.WriteStmt(ctx, tx, p.sql)
		if err != nil {
			return nil, err
		}
		*p.stmt = st
	}
	return &sp, nil
}
