package store

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"embed"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"math/rand/v2"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/stdlib"
	"go.opentelemetry.io/otel/attribute"

	"github.com/quicprochat/quicprochat/internal/secret"
	"github.com/quicprochat/quicprochat/internal/tracing"
)

// The PostgreSQL backend. Several stateless qpcd nodes share one database:
// every write is a transaction of its own on a pooled connection, and the
// rules the services rely on (contiguous sequence numbers, first commit
// wins, single-use KeyPackages, refresh-token reuse) hold across nodes
// because WriteTx runs at SERIALIZABLE and is retried on a serialization
// failure, exactly as WriteTx's contract already allows ("fn may run more
// than once"). Hot paths that would conflict too often under SERIALIZABLE
// use WriteTxLocked, which runs at READ COMMITTED and leaves it to the
// function to lock the rows its decision rests on (ForUpdate).
// docs/storage.md explains the choice.

// embeddedPGMigrations are the PostgreSQL schema, one step per SQLite step.
//
//go:embed migrations_pg/*.sql
var embeddedPGMigrations embed.FS

// Backend names, as in the store.backend option.
const (
	BackendSQLCipher = "sqlcipher"
	BackendPostgres  = "postgres"
)

var (
	// ErrPostgresUnreachable: no connection to the PostgreSQL server.
	ErrPostgresUnreachable = errors.New("store: PostgreSQL unreachable")
	// ErrPostgresAuth: the server refused the login.
	ErrPostgresAuth = errors.New("store: PostgreSQL refused the login")
	// ErrPostgresConfig: the connection string or an option is wrong.
	ErrPostgresConfig = errors.New("store: invalid PostgreSQL connection settings")
	// ErrNotSupported: the operation exists for the other backend only.
	ErrNotSupported = errors.New("store: not supported on this storage backend")
	// ErrCommitUnknown: the connection broke while COMMIT was in flight, so
	// the transaction may or may not have committed. Callers whose writes
	// are idempotent (message ids) retry; the others report it.
	ErrCommitUnknown = errors.New("store: commit outcome unknown (connection lost during COMMIT)")
	// ErrContended: a write kept failing on serialization conflicts or
	// deadlocks through all its retries (MaxRetries). Nothing was
	// committed; it is transient, so it is answered as UNAVAILABLE (the
	// client retries), never as an internal error.
	ErrContended = errors.New("store: write kept conflicting with concurrent writes")
)

// PostgresOptions configures OpenPostgres. Each field documents its default.
type PostgresOptions struct {
	// DSN is the connection string (URL or key=value form); it may carry a
	// password, so it is a secret and never logged.
	DSN secret.Bytes
	// MaxConns is the pool size of this node; default 10.
	MaxConns int
	// MinConns connections are opened at start, so the first requests do
	// not each wait for a connection set-up; default 2. Idle connections
	// stay open (up to MaxConns) until they are an hour old.
	MinConns int
	// StatementTimeout bounds every statement on the server; default 30s.
	StatementTimeout time.Duration
	// ConnectTimeout bounds establishing a connection; default 10s.
	ConnectTimeout time.Duration
	// MaxRetries bounds the re-runs of a write function after
	// serialization failures or deadlocks; default 20.
	MaxRetries int
	// Logger; nil -> discard.
	Logger *slog.Logger
	// Migrations adds to or overrides the embedded PostgreSQL migrations
	// (NNNN_name.sql at its root), for tests; nil -> embedded only.
	Migrations fs.FS
	// NodeID names this node in broadcasts so that it ignores its own;
	// default: random.
	NodeID string
}

// pgEngine is the PostgreSQL side of DB.
type pgEngine struct {
	pool *sql.DB
	// connCfg is the connection settings in use: the pool's new
	// connections and the dedicated LISTEN and NOTIFY connections take
	// them when they connect; SetPostgresDSN replaces them.
	connCfg    atomic.Pointer[pgx.ConnConfig]
	opts       PostgresOptions // as opened, without the DSN
	target     string          // host:port/database, safe to log
	stmts      stmtCache
	maxRetries int
	maxConns   int // pool size
	log        *slog.Logger
	events     *pgEvents
	// txTimeout bounds one transaction attempt on this side: statement_timeout
	// is enforced by the server, so across a partition (nothing answers,
	// nothing resets) a query on a pooled connection would wait for TCP to
	// give up; with the deadline it fails, the connection is dropped, and
	// the request is answered UNAVAILABLE. Twice the statement timeout plus
	// the connect timeout.
	txTimeout time.Duration

	retries atomic.Int64 // write functions re-run after a serialization failure or deadlock
	queued  atomic.Int64 // transactions waiting for a connection

	onTx atomic.Pointer[func(kind string, took time.Duration)] // SetTxObserver
}

// OpenPostgres connects to the PostgreSQL database of opts.DSN, checks that
// it is empty or qpcd's and not migrated by a newer qpcd, applies pending
// migrations (one node at a time, under an advisory lock) and starts the
// notification connections.
func OpenPostgres(ctx context.Context, opts PostgresOptions) (*DB, error) {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if opts.DSN.IsZero() {
		return nil, fmt.Errorf("%w: no connection string; set postgres.dsn (QPC_POSTGRES_DSN) or postgres.dsn_file", ErrPostgresConfig)
	}
	cfg, stmtTimeout, err := pgConnConfig(opts)
	if err != nil {
		return nil, err
	}
	maxConns := opts.MaxConns
	if maxConns == 0 {
		maxConns = 10
	}
	minConns := opts.MinConns
	if minConns == 0 {
		minConns = min(2, maxConns)
	}
	if maxConns < 1 || minConns < 0 || minConns > maxConns {
		return nil, fmt.Errorf("%w: pool size %d (min %d); set postgres.max_conns >= postgres.min_conns >= 0", ErrPostgresConfig, maxConns, minConns)
	}
	retries := opts.MaxRetries
	if retries == 0 {
		retries = 20
	}
	nodeID := opts.NodeID
	if nodeID == "" {
		nodeID = strconv.FormatUint(rand.Uint64(), 36)
	}
	e := &pgEngine{
		opts:       opts,
		target:     pgTarget(cfg),
		maxRetries: retries,
		maxConns:   maxConns,
		log:        log,
		txTimeout:  2*stmtTimeout + cfg.ConnectTimeout,
	}
	e.opts.DSN = secret.Bytes{} // the engine keeps the parsed config, not the string
	e.connCfg.Store(cfg)
	// Every new pooled connection uses the current settings, so that a
	// password changed by SetPostgresDSN applies without a restart.
	e.pool = sql.OpenDB(pgConnector{inner: stdlib.GetConnector(*cfg, stdlib.OptionBeforeConnect(e.beforeConnect))})
	e.pool.SetMaxOpenConns(maxConns)
	e.pool.SetMaxIdleConns(maxConns)
	e.pool.SetConnMaxLifetime(time.Hour)

	fail := func(err error) (*DB, error) {
		_ = e.pool.Close()
		return nil, err
	}
	if err := e.pool.PingContext(ctx); err != nil {
		return fail(explainPG(err, e.target))
	}
	known, err := loadPGMigrations(opts.Migrations)
	if err != nil {
		return fail(err)
	}
	version, err := migratePG(ctx, e.pool, known, e.target, log)
	if err != nil {
		return fail(err)
	}
	// Warm the pool to MinConns so the first requests do not each pay a
	// connection set-up.
	warm := make([]*sql.Conn, 0, minConns)
	for range minConns {
		c, err := e.pool.Conn(ctx)
		if err != nil {
			break
		}
		warm = append(warm, c)
	}
	for _, c := range warm {
		_ = c.Close()
	}
	e.events = startPGEvents(e.currentConfig, nodeID, log)
	lctx, lcancel := context.WithTimeout(ctx, cfg.ConnectTimeout+time.Second)
	err = e.events.waitListening(lctx)
	lcancel()
	if err != nil {
		e.events.stop()
		return fail(fmt.Errorf("%w: %s: the LISTEN connection for cross-node wake-ups did not come up within postgres.connect_timeout: %v", ErrPostgresUnreachable, e.target, err))
	}

	db := &DB{path: e.target, log: log, pg: e}
	log.Info("store: opened", "backend", BackendPostgres, "target", e.target, "schema_version", version,
		"max_conns", maxConns, "statement_timeout", stmtTimeout, "node", nodeID)
	return db, nil
}

// pgTarget names the servers and the database without credentials:
// host:port/db, or h1:p1,h2:p2/db for a DSN naming several (failover).
func pgTarget(cfg *pgx.ConnConfig) string {
	hosts := []string{net.JoinHostPort(cfg.Host, strconv.Itoa(int(cfg.Port)))}
	for _, fb := range cfg.Fallbacks {
		// sslmode=prefer and allow list each host twice (TLS, then plain).
		if h := net.JoinHostPort(fb.Host, strconv.Itoa(int(fb.Port))); !slices.Contains(hosts, h) {
			hosts = append(hosts, h)
		}
	}
	return strings.Join(hosts, ",") + "/" + cfg.Database
}

// pgConnConfig parses opts.DSN and applies the options that override it
// (connect and statement timeouts, application_name).
func pgConnConfig(opts PostgresOptions) (*pgx.ConnConfig, time.Duration, error) {
	if opts.DSN.IsZero() {
		return nil, 0, fmt.Errorf("%w: no connection string; set postgres.dsn (QPC_POSTGRES_DSN) or postgres.dsn_file", ErrPostgresConfig)
	}
	cfg, err := pgx.ParseConfig(string(opts.DSN.Reveal()))
	if err != nil {
		// pgconn's parse errors redact the password.
		return nil, 0, fmt.Errorf("%w: postgres.dsn: %v", ErrPostgresConfig, err)
	}
	stmtTimeout := opts.StatementTimeout
	if stmtTimeout == 0 {
		stmtTimeout = 30 * time.Second
	}
	if opts.ConnectTimeout > 0 {
		cfg.ConnectTimeout = opts.ConnectTimeout
	} else if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = 10 * time.Second
	}
	if cfg.RuntimeParams == nil {
		cfg.RuntimeParams = map[string]string{}
	}
	cfg.RuntimeParams["statement_timeout"] = strconv.FormatInt(stmtTimeout.Milliseconds(), 10)
	if cfg.RuntimeParams["application_name"] == "" {
		cfg.RuntimeParams["application_name"] = "qpcd"
	}
	return cfg, stmtTimeout, nil
}

// currentConfig is a copy of the connection settings in use.
func (e *pgEngine) currentConfig() *pgx.ConnConfig { return e.connCfg.Load().Copy() }

// beforeConnect gives a new pooled connection the current settings.
func (e *pgEngine) beforeConnect(_ context.Context, cc *pgx.ConnConfig) error {
	*cc = *e.currentConfig()
	return nil
}

// ErrDSNRefused: a new connection string was not taken; the old one stays
// in use.
var ErrDSNRefused = errors.New("store: new PostgreSQL connection string refused; the old one stays in use")

// SetPostgresDSN replaces the connection settings (typically the password,
// after ALTER ROLE ... PASSWORD) without a restart: connections already
// open, and the work on them, carry on; every connection opened from now
// on (pool, and the LISTEN and NOTIFY connections when they reconnect)
// uses the new settings. The new settings must name the same database and
// must log in: a connection is made with them first, and on any failure
// the old settings stay in use and the error (ErrDSNRefused, with the
// reason; never the password) says why.
func (db *DB) SetPostgresDSN(ctx context.Context, dsn secret.Bytes) error {
	if db.pg == nil {
		return fmt.Errorf("%w: the database is SQLCipher", ErrNotSupported)
	}
	e := db.pg
	o := e.opts
	o.DSN = dsn
	cfg, _, err := pgConnConfig(o)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrDSNRefused, err)
	}
	old := e.connCfg.Load()
	if cfg.Database != old.Database {
		return fmt.Errorf("%w: it names database %q, the nodes run on %q; moving to another database needs a restart", ErrDSNRefused, cfg.Database, old.Database)
	}
	probe := cfg.Copy()
	cctx, cancel := context.WithTimeout(ctx, probe.ConnectTimeout+time.Second)
	defer cancel()
	conn, err := pgx.ConnectConfig(cctx, probe)
	if err != nil {
		return fmt.Errorf("%w: a test connection with it failed: %w", ErrDSNRefused, explainPG(err, pgTarget(cfg)))
	}
	_ = conn.Close(context.WithoutCancel(ctx))
	e.connCfg.Store(cfg)
	e.log.Info("store: PostgreSQL connection settings replaced; new connections use them", "target", pgTarget(cfg), "user", cfg.User)
	return nil
}

// explainPG turns a connection failure into one error that names the
// option to fix.
func explainPG(err error, target string) error {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch pgErr.Code {
		case "28P01", "28000":
			return fmt.Errorf("%w: %s: %s; check the user and password in postgres.dsn (QPC_POSTGRES_DSN) or postgres.dsn_file, and pg_hba.conf on the server", ErrPostgresAuth, target, pgErr.Message)
		case "3D000":
			return fmt.Errorf("%w: %s: %s; create it (createdb -O USER NAME) or fix the database name in postgres.dsn", ErrPostgresConfig, target, pgErr.Message)
		case "53300":
			return fmt.Errorf("%w: %s: %s; lower postgres.max_conns on the qpcd nodes or raise max_connections on the server", ErrPostgresUnreachable, target, pgErr.Message)
		}
		return fmt.Errorf("store: PostgreSQL at %s: %w", target, err)
	}
	if errors.Is(err, context.Canceled) {
		return err
	}
	return fmt.Errorf("%w: %s: %v; check the host and port in postgres.dsn, that the server runs and accepts connections from this host (postgres.connect_timeout bounds the wait)", ErrPostgresUnreachable, target, err)
}

// loadPGMigrations is loadMigrations for the PostgreSQL schema.
func loadPGMigrations(extra fs.FS) ([]migration, error) {
	sub, err := fs.Sub(embeddedPGMigrations, "migrations_pg")
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMigrations, err)
	}
	return loadMigrationsFrom(sub, extra)
}

// KnownPostgresSchemaVersion is the highest PostgreSQL migration this
// binary carries; it equals KnownSchemaVersion (a test keeps them equal).
func KnownPostgresSchemaVersion() int {
	ms, err := loadPGMigrations(nil)
	if err != nil {
		return 0
	}
	return len(ms)
}

// migrateLockKey is the advisory lock that serialises migrations of nodes
// starting together ("QPCMIGR" in ASCII).
const migrateLockKey = 0x5150434d49475200

// migratePG applies pending migrations under a session advisory lock, each
// in its own transaction with its schema_migrations row.
func migratePG(ctx context.Context, pool *sql.DB, known []migration, target string, log *slog.Logger) (int, error) {
	conn, err := pool.Conn(ctx)
	if err != nil {
		return 0, explainPG(err, target)
	}
	defer conn.Close()
	if _, err := conn.ExecContext(ctx, "SELECT pg_advisory_lock(?)", int64(migrateLockKey)); err != nil {
		return 0, fmt.Errorf("store: %s: take the migration lock: %w", target, err)
	}
	defer func() {
		_, _ = conn.ExecContext(context.WithoutCancel(ctx), "SELECT pg_advisory_unlock(?)", int64(migrateLockKey))
	}()
	st, err := inspectPG(ctx, conn, target)
	if err != nil {
		return 0, err
	}
	if err := checkApplied(st, known, target); err != nil {
		return 0, err
	}
	version := st.version()
	for _, m := range pending(known, version, target, log) {
		if err := applyStep(ctx, conn, m, time.Now, nil); err != nil {
			return version, fmt.Errorf("store: migration %04d_%s on %s: %w", m.version, m.name, target, err)
		}
		version = m.version
		log.Info("store: applied migration", "backend", BackendPostgres, "version", m.version, "name", m.name)
	}
	return version, nil
}

// inspectPG reads what the database says about itself: empty (no tables in
// the current schema), qpcd's (meta.app and schema_migrations) or
// something else, which is refused.
func inspectPG(ctx context.Context, q querier, target string) (dbState, error) {
	var tables int
	if err := q.QueryRowContext(ctx,
		"SELECT count(*) FROM information_schema.tables WHERE table_schema = current_schema()").Scan(&tables); err != nil {
		return dbState{}, fmt.Errorf("store: %s: list tables: %w", target, err)
	}
	if tables == 0 {
		return dbState{empty: true}, nil
	}
	var marker string
	err := q.QueryRowContext(ctx, "SELECT value FROM meta WHERE key = 'app'").Scan(&marker)
	if err != nil || marker != appMarker {
		return dbState{}, fmt.Errorf("%w: database %s has %d tables but no meta.app = %q marker; point postgres.dsn at an empty database or at qpcd's", ErrNotDatabase, target, tables, appMarker)
	}
	rows, err := q.QueryContext(ctx, "SELECT version, name FROM schema_migrations ORDER BY version")
	if err != nil {
		return dbState{}, fmt.Errorf("store: %s: read schema_migrations: %w", target, err)
	}
	defer rows.Close()
	var st dbState
	for rows.Next() {
		var a applied
		if err := rows.Scan(&a.version, &a.name); err != nil {
			return dbState{}, fmt.Errorf("store: %s: read schema_migrations: %w", target, err)
		}
		st.applied = append(st.applied, a)
	}
	return st, rows.Err()
}

// isRetryable reports whether err is a serialization failure or a deadlock:
// the transaction was rolled back and running it again may succeed.
func isRetryable(err error) bool {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code == "40001" || pgErr.Code == "40P01"
	}
	return false
}

// isConnLost reports whether err says the connection itself failed (as
// opposed to the server refusing a statement).
func isConnLost(err error) bool {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return false
	}
	var netErr net.Error
	return errors.As(err, &netErr) || errors.Is(err, sql.ErrConnDone) || errors.Is(err, pgconn.ErrConnClosed) || pgconn.Timeout(err) ||
		errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF)
}

// writeTx runs fn in a transaction at iso and commits, re-running it after
// serialization failures and deadlocks.
func (e *pgEngine) writeTx(ctx context.Context, iso sql.IsolationLevel, fn func(tx *sql.Tx) error, onCommit func(time.Duration)) error {
	defer e.observe("write", time.Now())
	for attempt := 0; ; attempt++ {
		err := e.runTx(ctx, iso, fn, onCommit)
		if err == nil || !isRetryable(err) {
			return err
		}
		if attempt >= e.maxRetries {
			return fmt.Errorf("%w: %d attempts: %w", ErrContended, attempt+1, err)
		}
		e.retries.Add(1)
		// Jittered backoff keeps conflicting writers from colliding again.
		backoff := time.Duration(rand.Int64N(int64(time.Millisecond) << min(attempt, 5)))
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("store: write retried %d times: %w (last: %w)", attempt+1, ctx.Err(), err)
		case <-t.C:
		}
	}
}

func (e *pgEngine) runTx(ctx context.Context, iso sql.IsolationLevel, fn func(tx *sql.Tx) error, onCommit func(time.Duration)) (err error) {
	ctx, cancel := context.WithTimeout(ctx, e.txTimeout)
	defer cancel()
	e.stmts.prepareWanted(ctx, e.pool)
	// The wait for a pooled connection is PostgreSQL's write-queue wait.
	_, wspan := tracing.Start(ctx, "db.write.wait")
	tx, err := e.begin(ctx, &sql.TxOptions{Isolation: iso})
	wspan.End()
	if err != nil {
		return fmt.Errorf("store: begin write transaction: %w", err)
	}
	committed := false
	defer func() {
		if !committed {
			_ = ignoreDone(tx.Rollback())
		}
	}()
	if err := e.call(fn, tx); err != nil {
		return err
	}
	start := time.Now()
	_, cspan := tracing.Start(ctx, "db.commit")
	tracing.Set(cspan, attribute.String(tracing.KeyDBSystem, "postgresql"))
	err = tx.Commit()
	committed = true
	if err != nil {
		tracing.Fail(cspan, "commit_failed")
	}
	cspan.End()
	if err != nil {
		if pgconn.SafeToRetry(err) {
			// The connection was gone before COMMIT was sent (a failover
			// cut it): nothing committed, the request may be retried.
			return fmt.Errorf("%w: %s: connection lost before COMMIT: %w", ErrPostgresUnreachable, e.target, err)
		}
		if isConnLost(err) {
			return fmt.Errorf("%w: %w", ErrCommitUnknown, err)
		}
		return fmt.Errorf("store: commit: %w", err)
	}
	if onCommit != nil {
		onCommit(time.Since(start))
	}
	return nil
}

// call runs fn and turns a panic into ErrPanicked (the transaction is then
// rolled back by runTx).
func (e *pgEngine) call(fn func(*sql.Tx) error, tx *sql.Tx) (err error) {
	defer func() {
		if p := recover(); p != nil {
			e.log.Error("store: write function panicked", "panic", fmt.Sprint(p))
			err = ErrPanicked
		}
	}()
	return fn(tx)
}

// readTx runs fn in a read-only REPEATABLE READ transaction: one snapshot,
// as on SQLite.
func (e *pgEngine) readTx(ctx context.Context, fn func(tx *sql.Tx) error) (err error) {
	defer e.observe("read", time.Now())
	ctx, cancel := context.WithTimeout(ctx, e.txTimeout)
	defer cancel()
	e.stmts.prepareWanted(ctx, e.pool)
	tx, err := e.begin(ctx, &sql.TxOptions{ReadOnly: true, Isolation: sql.LevelRepeatableRead})
	if err != nil {
		return fmt.Errorf("store: begin read transaction: %w", err)
	}
	defer func() {
		err = errors.Join(err, ignoreDone(tx.Rollback()))
	}()
	return fn(tx)
}

// Backend returns BackendSQLCipher or BackendPostgres.
func (db *DB) Backend() string {
	if db.pg != nil {
		return BackendPostgres
	}
	return BackendSQLCipher
}

// WriteTxLocked is WriteTx for functions that take the row locks their
// decision rests on (SELECT ... FOR UPDATE, see ForUpdate): on PostgreSQL
// it runs at READ COMMITTED, where a locked row is re-read at its newest
// committed version, so concurrent writers of one row queue instead of
// failing and retrying. On SQLite, where one writer runs at a time, it is
// WriteTx. Every statement after the lock sees rows committed before it, so
// a check made after the lock is current.
func (db *DB) WriteTxLocked(ctx context.Context, fn func(tx *sql.Tx) error) error {
	if db.pg != nil {
		return db.classify(db.pgWrite(ctx, sql.LevelReadCommitted, fn))
	}
	return db.WriteTx(ctx, fn)
}

// pgWrite runs a write on PostgreSQL as a call Close waits for.
func (db *DB) pgWrite(ctx context.Context, iso sql.IsolationLevel, fn func(tx *sql.Tx) error) error {
	if fn == nil {
		return errors.New("store: WriteTx with nil function")
	}
	if err := db.beginPG(); err != nil {
		return err
	}
	defer db.reads.Done()
	ctx, span := tracing.Start(ctx, "db.write")
	err := db.pg.writeTx(ctx, iso, fn, db.pgCommitObserver())
	if span.IsRecording() {
		tracing.Set(span, attribute.String(tracing.KeyDBSystem, "postgresql"))
		if err != nil {
			tracing.Fail(span, "write_failed")
		}
		span.End()
	}
	return err
}

// ForUpdate is the row-locking suffix for a SELECT inside WriteTxLocked:
// " FOR UPDATE" on PostgreSQL, "" on SQLite (its single writer already
// excludes every other writer).
func (db *DB) ForUpdate() string {
	if db.pg != nil {
		return " FOR UPDATE"
	}
	return ""
}

// ForUpdateSkipLocked is ForUpdate for queue-like tables: rows locked by
// another transaction are skipped rather than waited for.
func (db *DB) ForUpdateSkipLocked() string {
	if db.pg != nil {
		return " FOR UPDATE SKIP LOCKED"
	}
	return ""
}

// TryJobLock takes, inside tx, a lock named name that only one node of the
// deployment holds at a time, until tx ends; it reports false when another
// node holds it (the caller skips its run). On SQLite it always succeeds.
// Periodic jobs (retention and KeyPackage sweeps) use it so that several
// nodes do not repeat each other's work.
func (db *DB) TryJobLock(ctx context.Context, tx *sql.Tx, name string) (bool, error) {
	if db.pg == nil {
		return true, nil
	}
	var ok bool
	if err := tx.QueryRowContext(ctx, "SELECT pg_try_advisory_xact_lock(hashtext(?))", "qpc:"+name).Scan(&ok); err != nil {
		return false, fmt.Errorf("store: job lock %s: %w", name, err)
	}
	return ok, nil
}

// Ping checks that the database answers (readiness). On SQLite it checks
// that the store is open.
func (db *DB) Ping(ctx context.Context) error {
	db.mu.RLock()
	closed := db.closed
	db.mu.RUnlock()
	if closed {
		return ErrClosed
	}
	if db.pg == nil {
		return nil
	}
	if err := db.pg.pool.PingContext(ctx); err != nil {
		return fmt.Errorf("%w: %s: %v", ErrPostgresUnreachable, db.pg.target, err)
	}
	return nil
}

// PostgresStats is what the PostgreSQL backend reports for metrics.
type PostgresStats struct {
	Pool             sql.DBStats
	TxRetries        int64 // write functions re-run after serialization failures or deadlocks
	ListenReconnects int64 // times the LISTEN connection was re-established
	ListenUp         bool  // the LISTEN connection is established now
	Notifications    int64 // notifications received from other nodes
}

// PostgresStats returns the backend's counters; ok is false on SQLite.
func (db *DB) PostgresStats() (st PostgresStats, ok bool) {
	if db.pg == nil {
		return PostgresStats{}, false
	}
	st.Pool = db.pg.pool.Stats()
	st.TxRetries = db.pg.retries.Load()
	st.ListenReconnects, st.ListenUp, st.Notifications = db.pg.events.stats()
	return st, true
}

func (db *DB) pgCommitObserver() func(time.Duration) {
	f := db.onCommit.Load()
	if f == nil {
		return nil
	}
	return func(took time.Duration) { (*f)(1, took) }
}

func (e *pgEngine) schemaVersion(ctx context.Context) (int, error) {
	var v int
	err := e.readTx(ctx, func(tx *sql.Tx) error {
		return tx.QueryRowContext(ctx, "SELECT COALESCE(MAX(version), 0) FROM schema_migrations").Scan(&v)
	})
	return v, err
}

// size is the database's size on the server.
func (e *pgEngine) size(ctx context.Context) (int64, error) {
	var n int64
	err := e.pool.QueryRowContext(ctx, "SELECT pg_database_size(current_database())").Scan(&n)
	return n, err
}

func (e *pgEngine) close() error {
	e.events.stop()
	return e.pool.Close()
}

// waiting is how many transactions wait for a pooled connection now.
func (e *pgEngine) waiting() int64 { return e.queued.Load() }

// begin starts a transaction, counting the caller as queued while it
// waits for a connection.
//
// A pooled connection whose server went away (a failover, a restart) is
// only found out when used; BEGIN changes nothing, so it is tried again on
// another connection, up to once per pooled connection, instead of failing
// the request. A failure to connect is not retried here: that is the
// database being unreachable, and the caller hears so at once.
func (e *pgEngine) begin(ctx context.Context, opts *sql.TxOptions) (*sql.Tx, error) {
	e.queued.Add(1)
	defer e.queued.Add(-1)
	for attempt := 0; ; attempt++ {
		tx, err := e.pool.BeginTx(ctx, opts)
		var connectErr *pgconn.ConnectError
		if err == nil || attempt >= e.maxConns || ctx.Err() != nil || errors.As(err, &connectErr) || !IsUnavailable(err) {
			return tx, err
		}
	}
}

// beginPG registers a running call so that Close waits for it.
func (db *DB) beginPG() error {
	db.mu.RLock()
	defer db.mu.RUnlock()
	if db.closed {
		return ErrClosed
	}
	db.reads.Add(1)
	return nil
}

// IsUnavailable reports whether err means the database could not be
// reached or the outcome of a write is unknown because the connection
// broke: the request may be retried (on any node) and the client should be
// told UNAVAILABLE, not INTERNAL.
func IsUnavailable(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, ErrPostgresUnreachable) || errors.Is(err, ErrCommitUnknown) || errors.Is(err, ErrContended) || errors.Is(err, driver.ErrBadConn) {
		return true
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		// Class 08: connection exception; 53300 too many connections;
		// 57P01..57P03: the server is shutting down or starting; 25006:
		// the server is read-only, as a standby is (a DNS name or virtual
		// IP may point at one for a moment during a failover) or a
		// database set default_transaction_read_only for maintenance.
		return strings.HasPrefix(pgErr.Code, "08") || pgErr.Code == "53300" ||
			pgErr.Code == "57P01" || pgErr.Code == "57P02" || pgErr.Code == "57P03" || pgErr.Code == "25006"
	}
	var connErr *pgconn.ConnectError
	if errors.As(err, &connErr) {
		return true
	}
	return isConnLost(err)
}

func (e *pgEngine) observe(kind string, start time.Time) {
	if f := e.onTx.Load(); f != nil {
		(*f)(kind, time.Since(start))
	}
}

// SetTxObserver sets a function called after every read or write
// transaction on PostgreSQL with its kind ("read", "write") and how long it
// took from asking for a connection to the end (retries included): the
// database's share of a request's latency. nil removes it; on SQLite it is
// never called (SetCommitObserver covers the writer there).
func (db *DB) SetTxObserver(f func(kind string, took time.Duration)) {
	if db.pg == nil {
		return
	}
	if f == nil {
		db.pg.onTx.Store(nil)
		return
	}
	db.pg.onTx.Store(&f)
}

// ReadStatementPG runs one query on PostgreSQL outside any explicit
// transaction and hands its rows to scan (which must not keep them). One
// statement reads one snapshot (a STABLE function's queries read the
// calling statement's), so a read made of one statement is as consistent
// as ReadTx's REPEATABLE READ transaction, without the BEGIN and ROLLBACK
// round trips; docs/storage.md, "Fetch on PostgreSQL". It answers
// ErrNotSupported on SQLite, whose reads cost no round trip.
func (db *DB) ReadStatementPG(ctx context.Context, scan func(rows *sql.Rows) error, query string, args ...any) (err error) {
	if db.pg == nil {
		return ErrNotSupported
	}
	if err := db.beginPG(); err != nil {
		return err
	}
	defer db.reads.Done()
	if ctx2, span := tracing.Start(ctx, "db.read"); span.IsRecording() {
		ctx = ctx2
		defer func() {
			tracing.Set(span, attribute.String(tracing.KeyDBSystem, "postgresql"))
			if err != nil {
				tracing.Fail(span, "read_failed")
			}
			span.End()
		}()
	}
	return asDiskFull(db.pg.readStatement(ctx, scan, query, args), db.diskFullWhere())
}

func (e *pgEngine) readStatement(ctx context.Context, scan func(rows *sql.Rows) error, query string, args []any) error {
	defer e.observe("read", time.Now())
	ctx, cancel := context.WithTimeout(ctx, e.txTimeout)
	defer cancel()
	// The pool retries a pooled connection found broken (database/sql's
	// ErrBadConn) on another, as begin does for transactions.
	rows, err := e.pool.QueryContext(ctx, query, args...)
	if err != nil {
		return fmt.Errorf("store: read: %w", err)
	}
	if err := scan(rows); err != nil {
		rows.Close()
		return err
	}
	if err := rows.Close(); err != nil {
		return fmt.Errorf("store: read: %w", err)
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("store: read: %w", err)
	}
	return nil
}
