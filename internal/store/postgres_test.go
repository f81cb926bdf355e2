package store

import (
	"context"
	"database/sql"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/fstest"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // the "pgx" database/sql driver, for raw connections

	"github.com/quicprochat/quicprochat/internal/secret"
	"github.com/quicprochat/quicprochat/internal/store/pgtest"
)

// The PostgreSQL engine against a real server (pgtest's throwaway cluster).

func openPG(t *testing.T, dsn string, o PostgresOptions) *DB {
	t.Helper()
	o.DSN = secret.New([]byte(dsn))
	db, err := OpenPostgres(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	return db
}

func TestRewritePlaceholders(t *testing.T) {
	for in, want := range map[string]string{
		"SELECT 1":                           "SELECT 1",
		"SELECT ? , ?":                       "SELECT $1 , $2",
		"SELECT '?', ? -- what?\n, ?":        "SELECT '?', $1 -- what?\n, $2",
		`SELECT "a?b", 'it''s ?', /* ? */ ?`: `SELECT "a?b", 'it''s ?', /* ? */ $1`,
		"INSERT INTO t VALUES (?, ?) ON CONFLICT DO NOTHING": "INSERT INTO t VALUES ($1, $2) ON CONFLICT DO NOTHING",
		"SELECT 'unterminated ?":                             "SELECT 'unterminated ?",
	} {
		if got := rewritePlaceholders(in); got != want {
			t.Errorf("rewrite %q = %q, want %q", in, got, want)
		}
	}
}

func FuzzRewritePlaceholders(f *testing.F) {
	for _, s := range []string{"SELECT ?", "'?'", `"?"`, "--?\n?", "/*?*/?", "/*", "'", "?''?"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, q string) {
		out := rewritePlaceholders(q)
		if strings.Count(out, "?") > strings.Count(q, "?") {
			t.Fatalf("rewrite added a ?: %q -> %q", q, out)
		}
	})
}

func TestPostgresOpenMigratesAndReopens(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	db := openPG(t, dsn, PostgresOptions{})
	v, err := db.SchemaVersion(context.Background())
	if err != nil || v != KnownPostgresSchemaVersion() || v != KnownSchemaVersion() {
		t.Fatalf("schema version %d (%v); PostgreSQL knows %d, SQLite %d", v, err, KnownPostgresSchemaVersion(), KnownSchemaVersion())
	}
	if db.Backend() != BackendPostgres {
		t.Fatal(db.Backend())
	}
	_ = db.Close()
	// Two nodes starting at once on the migrated database.
	var wg sync.WaitGroup
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d, err := OpenPostgres(context.Background(), PostgresOptions{DSN: secret.New([]byte(dsn))})
			if err != nil {
				t.Error(err)
				return
			}
			_ = d.Close()
		}()
	}
	wg.Wait()
}

func TestPostgresRefusesNewerSchemaAndForeignDatabase(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	// A qpcd one version ahead migrated it.
	extra := fstest.MapFS{mig(1, "future"): {Data: []byte("CREATE TABLE future (x INTEGER);")}}
	db := openPG(t, dsn, PostgresOptions{Migrations: extra})
	_ = db.Close()
	_, err := OpenPostgres(context.Background(), PostgresOptions{DSN: secret.New([]byte(dsn))})
	if !errors.Is(err, ErrSchemaTooNew) {
		t.Fatalf("newer schema: %v", err)
	}
	other := pgtest.NewDatabase(t)
	raw := openRawPG(t, other)
	if _, err := raw.Exec("CREATE TABLE unrelated (x INTEGER)"); err != nil {
		t.Fatal(err)
	}
	_, err = OpenPostgres(context.Background(), PostgresOptions{DSN: secret.New([]byte(other))})
	if !errors.Is(err, ErrNotDatabase) {
		t.Fatalf("foreign database: %v", err)
	}
}

// openRawPG connects without qpcd's store (no migrations).
func openRawPG(t *testing.T, dsn string) *sql.DB {
	t.Helper()
	db, err := sql.Open("pgx", dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	return db
}

func TestPostgresStartupErrors(t *testing.T) {
	c := pgtest.Shared(t)
	ctx := context.Background()
	// Wrong password.
	bad := strings.Replace(c.DSN("postgres"), ":"+c.Password+"@", ":wrong@", 1)
	_, err := OpenPostgres(ctx, PostgresOptions{DSN: secret.New([]byte(bad))})
	if !errors.Is(err, ErrPostgresAuth) || strings.Contains(err.Error(), c.Password) || !strings.Contains(err.Error(), "postgres.dsn") {
		t.Fatalf("wrong password: %v", err)
	}
	// Nothing listening.
	_, err = OpenPostgres(ctx, PostgresOptions{DSN: secret.New([]byte("postgres://qpc:x@127.0.0.1:1/qpc?sslmode=disable")), ConnectTimeout: 2 * time.Second})
	if !errors.Is(err, ErrPostgresUnreachable) || !IsUnavailable(err) {
		t.Fatalf("unreachable: %v", err)
	}
	// Missing database.
	_, err = OpenPostgres(ctx, PostgresOptions{DSN: secret.New([]byte(c.DSN("no_such_db")))})
	if !errors.Is(err, ErrPostgresConfig) || !strings.Contains(err.Error(), "createdb") {
		t.Fatalf("missing database: %v", err)
	}
	// Unparseable DSN.
	_, err = OpenPostgres(ctx, PostgresOptions{DSN: secret.New([]byte("postgres://qpc:s3cret@[::1"))})
	if !errors.Is(err, ErrPostgresConfig) || strings.Contains(err.Error(), "s3cret") {
		t.Fatalf("bad DSN: %v", err)
	}
}

// Concurrent read-modify-write under WriteTx (SERIALIZABLE) loses no
// update: serialization failures are retried.
func TestPostgresWriteTxRetriesSerializationFailures(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	db := openPG(t, dsn, PostgresOptions{})
	ctx := context.Background()
	if err := db.WriteTx(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, "INSERT INTO meta (key, value) VALUES ('counter', '0')")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var runs atomic.Int64
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 10 {
				err := db.WriteTx(ctx, func(tx *sql.Tx) error {
					runs.Add(1)
					var v string
					if err := tx.QueryRowContext(ctx, "SELECT value FROM meta WHERE key = 'counter'").Scan(&v); err != nil {
						return err
					}
					n := len(v) // the counter is a string of that many x's
					_, err := tx.ExecContext(ctx, "UPDATE meta SET value = ? WHERE key = 'counter'", strings.Repeat("x", n+1))
					return err
				})
				if err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	var v string
	if err := db.ReadTx(ctx, func(tx *sql.Tx) error {
		return tx.QueryRowContext(ctx, "SELECT value FROM meta WHERE key = 'counter'").Scan(&v)
	}); err != nil {
		t.Fatal(err)
	}
	if len(v) != 81 { // "0" plus 80 increments
		t.Fatalf("counter %d after 80 increments", len(v)-1)
	}
	st, _ := db.PostgresStats()
	t.Logf("80 increments from 8 writers: %d runs, %d retries", runs.Load(), st.TxRetries)
}

// A write that keeps losing serialization conflicts through all its
// retries ends in ErrContended, which is transient (IsUnavailable: the RPC
// layer answers UNAVAILABLE and the client retries), not an unexplained
// internal error. Each attempt is made to conflict: after the transaction
// read the row, another connection commits a change to it.
func TestPostgresExhaustedRetriesAreContended(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	db := openPG(t, dsn, PostgresOptions{MaxRetries: 2})
	ctx := context.Background()
	if err := db.WriteTx(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, "INSERT INTO meta (key, value) VALUES ('counter', '0')")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	other, err := sql.Open("pgx", dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	attempts := 0
	err = db.WriteTx(ctx, func(tx *sql.Tx) error {
		attempts++
		var v string
		if err := tx.QueryRowContext(ctx, "SELECT value FROM meta WHERE key = 'counter'").Scan(&v); err != nil {
			return err
		}
		if _, err := other.ExecContext(ctx, "UPDATE meta SET value = value || 'y' WHERE key = 'counter'"); err != nil {
			return err
		}
		_, err := tx.ExecContext(ctx, "UPDATE meta SET value = ? WHERE key = 'counter'", v+"x")
		return err
	})
	if !errors.Is(err, ErrContended) || !IsUnavailable(err) {
		t.Fatalf("after every attempt conflicted: %v, want ErrContended (and IsUnavailable)", err)
	}
	if attempts != 3 {
		t.Fatalf("%d attempts, want 1 + MaxRetries (2)", attempts)
	}
	var v string
	if err := db.ReadTx(ctx, func(tx *sql.Tx) error {
		return tx.QueryRowContext(ctx, "SELECT value FROM meta WHERE key = 'counter'").Scan(&v)
	}); err != nil {
		t.Fatal(err)
	}
	if v != "0yyy" {
		t.Fatalf("counter %q: only the other writer's three updates may have committed", v)
	}
}

// Broadcasts reach the other node (not the sender), and a lost LISTEN
// connection ends in a resync.
func TestPostgresBroadcast(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	a := openPG(t, dsn, PostgresOptions{NodeID: "a"})
	b := openPG(t, dsn, PostgresOptions{NodeID: "b"})
	got := make(chan string, 16)
	b.Subscribe("topic", func(p string, resync bool) {
		if resync {
			got <- "resync"
			return
		}
		got <- p
	})
	self := make(chan string, 16)
	a.Subscribe("topic", func(p string, _ bool) { self <- p })
	waitUntil(t, "b's LISTEN connection", func() bool { st, _ := b.PostgresStats(); return st.ListenUp })
	start := time.Now()
	a.Broadcast("topic", "hello")
	select {
	case p := <-got:
		if p != "hello" {
			t.Fatalf("got %q", p)
		}
		t.Logf("broadcast delivered in %s", time.Since(start))
	case <-time.After(10 * time.Second):
		t.Fatal("broadcast not delivered")
	}
	// Kill b's LISTEN backend: it reconnects and resyncs.
	var pid int
	raw := a.pg.pool
	if err := raw.QueryRow("SELECT pid FROM pg_stat_activity WHERE application_name = 'qpcd-listen' AND datname = current_database() ORDER BY backend_start LIMIT 1").Scan(&pid); err != nil {
		t.Fatal(err)
	}
	// a's own listener is also 'qpcd-listen'; kill both, each must recover.
	if _, err := raw.Exec("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'qpcd-listen' AND datname = current_database()"); err != nil {
		t.Fatal(err)
	}
	select {
	case p := <-got:
		if p != "resync" {
			t.Fatalf("after reconnect got %q, want resync", p)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("no resync after the LISTEN connection was killed")
	}
	select {
	case p := <-self:
		if p != "" {
			t.Fatalf("a received its own broadcast %q", p)
		}
	default:
	}
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// After Close every kind of call answers ErrClosed, WriteTxLocked too.
func TestPostgresClosed(t *testing.T) {
	db := openPG(t, pgtest.NewDatabase(t), PostgresOptions{})
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	noop := func(*sql.Tx) error { return nil }
	for name, err := range map[string]error{
		"WriteTx":       db.WriteTx(ctx, noop),
		"WriteTxLocked": db.WriteTxLocked(ctx, noop),
		"ReadTx":        db.ReadTx(ctx, noop),
		"Ping":          db.Ping(ctx),
	} {
		if !errors.Is(err, ErrClosed) {
			t.Errorf("%s after Close: %v", name, err)
		}
	}
}
