package store

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"slices"
	"sort"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/quicprochat/quicprochat/internal/secret"
)

// Moving a deployment from SQLCipher to PostgreSQL (qpcctl migrate
// to-postgres). The copy reads one consistent snapshot of the SQLCipher
// database and writes every table into an empty PostgreSQL database in one
// transaction, verifies each table (row count and an order-independent
// checksum over a canonical encoding of every row, computed from what each
// side returns) and only then commits: a failed or interrupted copy leaves
// the target as empty as it was. The tables are named in copyPlan; a table
// that one side has and the plan does not name stops the copy, so a future
// migration cannot be skipped silently.

var (
	// ErrTargetNotEmpty: the PostgreSQL database already holds data.
	ErrTargetNotEmpty = errors.New("store: the PostgreSQL database is not empty")
	// ErrSchemaMismatch: source and target are at different schema
	// versions, or their tables or columns differ.
	ErrSchemaMismatch = errors.New("store: source and target schemas differ")
	// ErrUnknownTable: a table the copy does not know how to move.
	ErrUnknownTable = errors.New("store: table unknown to the SQLCipher-to-PostgreSQL copy")
	// ErrCopyVerify: what PostgreSQL holds after the copy differs from the
	// source; the transaction was rolled back.
	ErrCopyVerify = errors.New("store: copy verification failed")
)

// copyMode says how one table moves.
type copyMode int

const (
	copyRows    copyMode = iota // the target must hold no row; every row is copied
	copyReplace                 // the target's rows (meta's app marker) are replaced by the source's
	copyCompare                 // not copied: the migration history, which the target has of its own; its versions and names must match
	copySkip                    // not copied: state of the running nodes, which the new nodes rebuild (the node registry)
)

// copyTable is one table of the plan.
type copyTable struct {
	name string
	mode copyMode
	// cols restricts what is compared (copyCompare); nil: every column.
	cols []string
}

// copyPlan names every table of qpcd's schema, parents before children
// (foreign keys are checked row by row during the copy). A new migration
// that adds a table must add it here; TestCopyPlanCoversSchema fails until
// it does, and a copy run by a binary that lacks it refuses to start.
var copyPlan = []copyTable{
	{name: "schema_migrations", mode: copyCompare, cols: []string{"version", "name"}},
	{name: "meta", mode: copyReplace},
	{name: "accounts"},
	{name: "devices"},
	{name: "refresh_tokens"},
	{name: "invites"},
	{name: "token_keys"},
	{name: "used_challenges"},
	{name: "keypackages"},
	{name: "channels"},
	{name: "channel_group_info"},
	{name: "channel_members"},
	{name: "messages"},
	{name: "cursors"},
	{name: "inbox"},
	{name: "inbox_heads"},
	{name: "account_usage"},
	{name: "invitations"},
	{name: "invitation_welcomes"},
	{name: "blocks"},
	{name: "link_requests"},
	{name: "keylog_keys"},
	{name: "keylog_entries"},
	{name: "keylog_heads"},
	// The SQLCipher node's registry row would list a node that no longer
	// exists; the PostgreSQL nodes register themselves.
	{name: "nodes", mode: copySkip},
}

// CopyOptions configures CopyToPostgres.
type CopyOptions struct {
	// DSN is the target's connection string (a secret: never logged).
	DSN secret.Bytes
	// Migrations adds to the embedded PostgreSQL migrations (tests).
	Migrations fs.FS
	// Progress, when set, is called as rows are copied and verified (at
	// most every progressEvery rows of a table, and once at its end).
	Progress func(CopyProgress)
	// Logger; nil -> discard.
	Logger *slog.Logger
}

// CopyProgress reports where a copy is.
type CopyProgress struct {
	Phase string // "copy" or "verify"
	Table string
	Rows  int64 // rows of Table done so far
	Total int64 // rows of Table in the source
}

// CopiedTable is the outcome for one table.
type CopiedTable struct {
	Table    string `json:"table"`
	Rows     int64  `json:"rows"`
	Checksum string `json:"checksum"`          // SHA-256-based, order-independent; equal on both sides
	Copied   bool   `json:"copied"`            // false: compared only (schema_migrations) or skipped
	Skipped  bool   `json:"skipped,omitempty"` // not copied: the node registry, which the new nodes fill
	NextID   int64  `json:"next_id,omitempty"` // identity columns: the value PostgreSQL hands out next
}

// CopyReport is what CopyToPostgres did.
type CopyReport struct {
	Target         string        `json:"target"` // host:port/database, no credentials
	SchemaVersion  int           `json:"schema_version"`
	TargetMigrated bool          `json:"target_migrated"` // the target had no tables and was migrated first
	Tables         []CopiedTable `json:"tables"`
	Rows           int64         `json:"rows"` // rows copied, all tables
	TookSeconds    float64       `json:"took_seconds"`
}

const progressEvery = 1000

// CopyToPostgres copies this SQLCipher database into the PostgreSQL
// database of o.DSN. The target must be empty: no tables at all (it is
// then migrated to this database's schema version first) or qpcd's
// schema at the same version with no data. The whole copy holds
// PostgreSQL's migration lock, so a qpcd node started against the target
// meanwhile waits for it. Sequences of identity columns are set past the
// copied ids. The source is only read.
func (db *DB) CopyToPostgres(ctx context.Context, o CopyOptions) (rep CopyReport, err error) {
	start := time.Now()
	if db.pg != nil {
		return rep, fmt.Errorf("%w: the source of a copy to PostgreSQL is a SQLCipher database", ErrNotSupported)
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	progress := o.Progress
	if progress == nil {
		progress = func(CopyProgress) {}
	}
	if o.DSN.IsZero() {
		return rep, fmt.Errorf("%w: no connection string for the target; pass --dsn or --dsn-file", ErrPostgresConfig)
	}
	cfg, err := pgx.ParseConfig(string(o.DSN.Reveal()))
	if err != nil {
		return rep, fmt.Errorf("%w: target connection string: %v", ErrPostgresConfig, err)
	}
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = 10 * time.Second
	}
	if cfg.RuntimeParams == nil {
		cfg.RuntimeParams = map[string]string{}
	}
	cfg.RuntimeParams["application_name"] = "qpcctl-migrate"
	// The copy is one long transaction: no statement timeout of the DSN's
	// may cut it short.
	cfg.RuntimeParams["statement_timeout"] = "0"
	rep.Target = pgTarget(cfg)

	srcVersion, err := db.SchemaVersion(ctx)
	if err != nil {
		return rep, err
	}
	rep.SchemaVersion = srcVersion

	pool := sql.OpenDB(pgConnector{inner: stdlib.GetConnector(*cfg)})
	defer pool.Close()
	pool.SetMaxOpenConns(1)
	conn, err := pool.Conn(ctx)
	if err != nil {
		return rep, explainPG(err, rep.Target)
	}
	defer conn.Close()
	if _, err := conn.ExecContext(ctx, "SELECT pg_advisory_lock(?)", int64(migrateLockKey)); err != nil {
		return rep, fmt.Errorf("store: %s: take the migration lock: %w", rep.Target, err)
	}
	defer func() {
		_, _ = conn.ExecContext(context.WithoutCancel(ctx), "SELECT pg_advisory_unlock(?)", int64(migrateLockKey))
	}()

	if rep.TargetMigrated, err = prepareTarget(ctx, db, conn, srcVersion, o.Migrations, rep.Target, log); err != nil {
		return rep, err
	}
	err = db.ReadTx(ctx, func(src *sql.Tx) error {
		plan, err := matchSchemas(ctx, src, conn, rep.Target)
		if err != nil {
			return err
		}
		if err := checkTargetEmpty(ctx, conn, plan, rep.Target); err != nil {
			return err
		}
		return conn.Raw(func(dc any) error {
			pc, err := rawPGX(dc)
			if err != nil {
				return err
			}
			tables, rows, err := copyAll(ctx, sqlSource{src}, pc, plan, progress, nil)
			rep.Tables, rep.Rows = tables, rows
			return err
		})
	})
	rep.TookSeconds = time.Since(start).Seconds()
	if err != nil {
		return rep, err
	}
	log.Info("store: copied to PostgreSQL", "target", rep.Target, "schema_version", srcVersion, "rows", rep.Rows, "tables", len(rep.Tables))
	return rep, nil
}

// rawPGX finds pgx's connection under database/sql's driver connection.
func rawPGX(dc any) (*pgx.Conn, error) {
	if w, ok := dc.(*pgConn); ok {
		dc = w.inner
	}
	sc, ok := dc.(*stdlib.Conn)
	if !ok {
		return nil, fmt.Errorf("store: unexpected driver connection %T", dc)
	}
	return sc.Conn(), nil
}

// prepareTarget migrates an empty target to version, or checks that a
// qpcd target is at version with the same migrations as the source.
func prepareTarget(ctx context.Context, db *DB, conn *sql.Conn, version int, extra fs.FS, target string, log *slog.Logger) (migrated bool, err error) {
	known, err := loadPGMigrations(extra)
	if err != nil {
		return false, err
	}
	if version > len(known) {
		return false, fmt.Errorf("%w: the SQLCipher database is at schema version %d, this build's PostgreSQL schema goes to %d; use the qpcctl of the qpcd that runs the deployment", ErrSchemaMismatch, version, len(known))
	}
	var srcApplied []applied
	err = db.ReadTx(ctx, func(tx *sql.Tx) error {
		st, err := inspect(ctx, tx, db.path)
		srcApplied = st.applied
		return err
	})
	if err != nil {
		return false, err
	}
	for i, a := range srcApplied {
		if a.version != i+1 || known[i].name != a.name {
			return false, fmt.Errorf("%w: the SQLCipher database applied %04d_%s where this build's PostgreSQL schema has %04d_%s", ErrSchemaMismatch, a.version, a.name, known[i].version, known[i].name)
		}
	}
	st, err := inspectPG(ctx, conn, target)
	if err != nil {
		return false, err
	}
	if st.empty {
		for _, m := range known[:version] {
			if err := applyStep(ctx, conn, m, time.Now, nil); err != nil {
				return false, fmt.Errorf("store: migration %04d_%s on %s: %w", m.version, m.name, target, err)
			}
			log.Info("store: applied migration", "backend", BackendPostgres, "version", m.version, "name", m.name)
		}
		return true, nil
	}
	if err := checkApplied(st, known, target); err != nil {
		return false, err
	}
	if v := st.version(); v != version {
		return false, fmt.Errorf("%w: %s is at schema version %d, the SQLCipher database at %d; point --dsn at an empty database (createdb) or drop and recreate this one", ErrSchemaMismatch, target, v, version)
	}
	return false, nil
}

// planned is a table of the plan with its columns, as both sides have them.
type planned struct {
	copyTable
	cols     []string    // sorted
	kinds    []valueKind // per col, from the target's types
	identity []string    // identity columns of the target
}

// matchSchemas checks that both sides have exactly the plan's tables with
// the same columns, and returns the plan with the columns filled in.
func matchSchemas(ctx context.Context, src *sql.Tx, dst querier, target string) ([]planned, error) {
	srcTables, err := stringList(ctx, src, "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")
	if err != nil {
		return nil, fmt.Errorf("store: list the SQLCipher tables: %w", err)
	}
	if err := checkKnownTables("the SQLCipher database", srcTables); err != nil {
		return nil, err
	}
	plan, err := planPG(ctx, dst, target, false)
	if err != nil {
		return nil, err
	}
	for _, p := range plan {
		if !slices.Contains(srcTables, p.name) {
			return nil, fmt.Errorf("%w: table %q is in %s but not in the SQLCipher database", ErrSchemaMismatch, p.name, target)
		}
		if p.copyTable.cols != nil {
			continue
		}
		srcCols, err := stringList(ctx, src, "SELECT name FROM pragma_table_info(?)", p.name)
		if err != nil {
			return nil, fmt.Errorf("store: columns of %s in the SQLCipher database: %w", p.name, err)
		}
		sort.Strings(srcCols)
		if !slices.Equal(srcCols, p.cols) {
			return nil, fmt.Errorf("%w: table %s has columns %v in the SQLCipher database and %v in %s", ErrSchemaMismatch, p.name, srcCols, p.cols, target)
		}
	}
	return plan, nil
}

// checkKnownTables refuses a table the plan does not name.
func checkKnownTables(where string, tables []string) error {
	for _, t := range tables {
		if !slices.ContainsFunc(copyPlan, func(c copyTable) bool { return c.name == t }) {
			return fmt.Errorf("%w: %s has table %q, which this qpcctl does not know how to copy; use the qpcctl of the same release as the qpcd that migrated it (a developer adding a table adds it to copyPlan in internal/store/migrate_pg.go)", ErrUnknownTable, where, t)
		}
	}
	return nil
}

// planPG reads the plan's tables from a PostgreSQL database of qpcd's:
// every table of the plan must be there (unless olderSchema: a database at
// an older schema version lacks the tables of later migrations) and no
// other; columns come sorted, with their kinds and the identity columns.
func planPG(ctx context.Context, q querier, target string, olderSchema bool) ([]planned, error) {
	tables, err := stringList(ctx, q, "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'")
	if err != nil {
		return nil, fmt.Errorf("store: list the tables of %s: %w", target, err)
	}
	if err := checkKnownTables(target, tables); err != nil {
		return nil, err
	}
	var plan []planned
	for _, t := range copyPlan {
		if !slices.Contains(tables, t.name) {
			if olderSchema {
				continue
			}
			return nil, fmt.Errorf("%w: table %q is missing in %s", ErrSchemaMismatch, t.name, target)
		}
		types, identity, err := pgColumns(ctx, q, t.name)
		if err != nil {
			return nil, fmt.Errorf("store: columns of %s on %s: %w", t.name, target, err)
		}
		cols := t.cols
		if cols == nil {
			for c := range types {
				cols = append(cols, c)
			}
			sort.Strings(cols)
		}
		p := planned{copyTable: t, cols: cols, identity: identity}
		for _, c := range cols {
			k, err := kindOf(types[c])
			if err != nil {
				return nil, fmt.Errorf("%w: column %s.%s: %v", ErrSchemaMismatch, t.name, c, err)
			}
			p.kinds = append(p.kinds, k)
		}
		plan = append(plan, p)
	}
	return plan, nil
}

// pgColumns reads a PostgreSQL table's columns (name -> data_type) and its
// identity columns.
func pgColumns(ctx context.Context, q querier, table string) (map[string]string, []string, error) {
	rows, err := q.QueryContext(ctx, `SELECT column_name, data_type, is_identity FROM information_schema.columns
		WHERE table_schema = current_schema() AND table_name = ?`, table)
	if err != nil {
		return nil, nil, err
	}
	defer rows.Close()
	types := map[string]string{}
	var identity []string
	for rows.Next() {
		var name, typ, ident string
		if err := rows.Scan(&name, &typ, &ident); err != nil {
			return nil, nil, err
		}
		types[name] = typ
		if ident == "YES" {
			identity = append(identity, name)
		}
	}
	return types, identity, rows.Err()
}

// checkTargetEmpty refuses a target with any data beyond what migrations
// put there.
func checkTargetEmpty(ctx context.Context, dst *sql.Conn, plan []planned, target string) error {
	var full []string
	for _, t := range plan {
		q := "SELECT EXISTS (SELECT 1 FROM " + quoteIdent(t.name) + ")"
		switch t.mode {
		case copyCompare, copySkip:
			continue
		case copyReplace:
			q = "SELECT EXISTS (SELECT 1 FROM meta WHERE NOT (key = 'app' AND value = '" + appMarker + "'))"
		}
		var has bool
		if err := dst.QueryRowContext(ctx, q).Scan(&has); err != nil {
			return fmt.Errorf("store: check that %s is empty: %w", target, err)
		}
		if has {
			full = append(full, t.name)
		}
	}
	if len(full) > 0 {
		return fmt.Errorf("%w: %s has rows in %s; copy into a new, empty database (createdb -O USER NAME) — a qpcd that ever started on it has written its token keys there", ErrTargetNotEmpty, target, strings.Join(full, ", "))
	}
	return nil
}

// rowSource hands copyAll the rows of each table of the plan, in plan
// order: the SQLCipher database of a migration or the payload of a
// PostgreSQL backup.
type rowSource interface {
	// table starts t: its row count (for progress) and an iterator that
	// returns nil at the end; done releases what the iterator holds.
	table(ctx context.Context, t planned) (total int64, next func() ([]any, error), done func(), err error)
}

// sqlSource reads tables from a database/sql read transaction (SQLCipher
// for a migration, the PostgreSQL snapshot for a backup).
type sqlSource struct{ tx *sql.Tx }

func (s sqlSource) table(ctx context.Context, t planned) (int64, func() ([]any, error), func(), error) {
	var n int64
	if err := s.tx.QueryRowContext(ctx, "SELECT count(*) FROM "+quoteIdent(t.name)).Scan(&n); err != nil {
		return 0, nil, nil, fmt.Errorf("store: count %s: %w", t.name, err)
	}
	rows, err := s.tx.QueryContext(ctx, selectCols(t))
	if err != nil {
		return 0, nil, nil, fmt.Errorf("store: read %s: %w", t.name, err)
	}
	raw := make([]any, len(t.cols))
	ptrs := make([]any, len(t.cols))
	for i := range raw {
		ptrs[i] = &raw[i]
	}
	next := func() ([]any, error) {
		if !rows.Next() {
			return nil, rows.Err()
		}
		if err := rows.Scan(ptrs...); err != nil {
			return nil, err
		}
		return raw, nil
	}
	return n, next, func() { rows.Close() }, nil
}

// selectCols is the query that reads a table's planned columns.
func selectCols(t planned) string {
	quoted := make([]string, len(t.cols))
	for i, c := range t.cols {
		quoted[i] = quoteIdent(c)
	}
	return "SELECT " + strings.Join(quoted, ", ") + " FROM " + quoteIdent(t.name)
}

// copyAll copies and verifies every table in one transaction on dst and
// commits it only if every table matches. finish, when set, runs in the
// transaction after the verification and before the commit.
func copyAll(ctx context.Context, src rowSource, dst *pgx.Conn, plan []planned, progress func(CopyProgress), finish func(context.Context, pgx.Tx) error) (out []CopiedTable, total int64, err error) {
	tx, err := dst.Begin(ctx)
	if err != nil {
		return nil, 0, fmt.Errorf("store: begin the copy transaction: %w", err)
	}
	defer func() {
		if err != nil {
			_ = tx.Rollback(context.WithoutCancel(ctx))
		}
	}()
	if _, err := tx.Exec(ctx, "DELETE FROM meta"); err != nil {
		return nil, 0, fmt.Errorf("store: clear meta: %w", err)
	}
	sums := make([]tableDigest, len(plan))
	for i, t := range plan {
		if t.mode == copySkip {
			continue
		}
		n, next, done, err := src.table(ctx, t)
		if err != nil {
			return nil, 0, err
		}
		sums[i], err = copyTableRows(ctx, next, tx, t, n, progress)
		done()
		if err != nil {
			return nil, 0, err
		}
		if t.mode == copyRows || t.mode == copyReplace {
			total += sums[i].rows
		}
	}
	for i, t := range plan {
		if t.mode == copySkip {
			out = append(out, CopiedTable{Table: t.name, Skipped: true})
			continue
		}
		got, err := digestTarget(ctx, tx, t, sums[i].rows, progress)
		if err != nil {
			return nil, 0, err
		}
		if got.rows != sums[i].rows || got.sum != sums[i].sum {
			return nil, 0, fmt.Errorf("%w: table %s: the source has %d rows (checksum %s), PostgreSQL %d (checksum %s); nothing was committed",
				ErrCopyVerify, t.name, sums[i].rows, sums[i].hex(), got.rows, got.hex())
		}
		ct := CopiedTable{Table: t.name, Rows: got.rows, Checksum: got.hex(), Copied: t.mode == copyRows || t.mode == copyReplace}
		for _, col := range t.identity {
			// The next id is past every copied one, as SQLite would hand out.
			q := fmt.Sprintf("SELECT setval(pg_get_serial_sequence(%s, %s), COALESCE(MAX(%s), 0) + 1, false) FROM %s",
				quoteLiteral(t.name), quoteLiteral(col), quoteIdent(col), quoteIdent(t.name))
			if err := tx.QueryRow(ctx, q).Scan(&ct.NextID); err != nil {
				return nil, 0, fmt.Errorf("store: set the sequence of %s.%s: %w", t.name, col, err)
			}
		}
		out = append(out, ct)
	}
	if finish != nil {
		if err := finish(ctx, tx); err != nil {
			return nil, 0, err
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return nil, 0, fmt.Errorf("store: commit the copy: %w", err)
	}
	return out, total, nil
}

// copyTableRows streams one table from src into dst with COPY and returns
// the digest of what it read.
func copyTableRows(ctx context.Context, read func() ([]any, error), dst pgx.Tx, t planned, total int64, progress func(CopyProgress)) (d tableDigest, err error) {
	next := func() ([]any, error) {
		raw, err := read()
		if raw == nil || err != nil {
			return nil, err
		}
		if len(raw) != len(t.cols) {
			return nil, fmt.Errorf("%s: a row of %d values for %d columns", t.name, len(raw), len(t.cols))
		}
		vals := make([]any, len(raw))
		for i, v := range raw {
			cv, err := canonical(v, t.kinds[i])
			if err != nil {
				return nil, fmt.Errorf("%s.%s: %w", t.name, t.cols[i], err)
			}
			vals[i] = cv
		}
		d.add(t.cols, vals)
		if d.rows%progressEvery == 0 {
			progress(CopyProgress{Phase: "copy", Table: t.name, Rows: d.rows, Total: total})
		}
		return vals, nil
	}
	if t.mode == copyCompare {
		for {
			r, err := next()
			if err != nil {
				return d, fmt.Errorf("store: read %s: %w", t.name, err)
			}
			if r == nil {
				break
			}
		}
	} else {
		var readErr error
		src := pgx.CopyFromFunc(func() ([]any, error) {
			r, err := next()
			if err != nil {
				readErr = err
			}
			return r, err
		})
		n, err := dst.CopyFrom(ctx, pgx.Identifier{t.name}, t.cols, src)
		if readErr != nil {
			return d, fmt.Errorf("store: read %s from the source: %w", t.name, readErr)
		}
		if err != nil {
			return d, fmt.Errorf("store: copy %s into PostgreSQL: %w", t.name, err)
		}
		if n != d.rows {
			return d, fmt.Errorf("%w: table %s: read %d rows, PostgreSQL took %d", ErrCopyVerify, t.name, d.rows, n)
		}
	}
	progress(CopyProgress{Phase: "copy", Table: t.name, Rows: d.rows, Total: total})
	return d, nil
}

// digestTarget reads a table back from the copy transaction.
func digestTarget(ctx context.Context, tx pgx.Tx, t planned, total int64, progress func(CopyProgress)) (d tableDigest, err error) {
	quoted := make([]string, len(t.cols))
	for i, c := range t.cols {
		quoted[i] = quoteIdent(c)
	}
	rows, err := tx.Query(ctx, "SELECT "+strings.Join(quoted, ", ")+" FROM "+quoteIdent(t.name))
	if err != nil {
		return d, fmt.Errorf("store: read back %s: %w", t.name, err)
	}
	defer rows.Close()
	for rows.Next() {
		raw, err := rows.Values()
		if err != nil {
			return d, fmt.Errorf("store: read back %s: %w", t.name, err)
		}
		vals := make([]any, len(raw))
		for i, v := range raw {
			if vals[i], err = canonical(v, t.kinds[i]); err != nil {
				return d, fmt.Errorf("store: read back %s.%s: %w", t.name, t.cols[i], err)
			}
		}
		d.add(t.cols, vals)
		if d.rows%progressEvery == 0 {
			progress(CopyProgress{Phase: "verify", Table: t.name, Rows: d.rows, Total: total})
		}
	}
	if err := rows.Err(); err != nil {
		return d, fmt.Errorf("store: read back %s: %w", t.name, err)
	}
	progress(CopyProgress{Phase: "verify", Table: t.name, Rows: d.rows, Total: total})
	return d, nil
}

// valueKind is a column's type as the copy sees it.
type valueKind byte

const (
	kindInt   valueKind = 'i'
	kindText  valueKind = 't'
	kindBytes valueKind = 'b'
)

// kindOf maps a PostgreSQL data_type to a kind; a type the copy does not
// know is an error, not a guess.
func kindOf(pgType string) (valueKind, error) {
	switch pgType {
	case "bigint", "integer", "smallint":
		return kindInt, nil
	case "text", "character varying":
		return kindText, nil
	case "bytea":
		return kindBytes, nil
	}
	return 0, fmt.Errorf("type %q is not one the copy knows (bigint, integer, smallint, text, bytea)", pgType)
}

// canonical turns a value read from either engine into the one Go value
// the copy writes and hashes for kind k: int64, string, []byte or nil.
func canonical(v any, k valueKind) (any, error) {
	if v == nil {
		return nil, nil
	}
	switch k {
	case kindInt:
		switch x := v.(type) {
		case int64:
			return x, nil
		case int32:
			return int64(x), nil
		case int16:
			return int64(x), nil
		case int:
			return int64(x), nil
		case bool:
			if x {
				return int64(1), nil
			}
			return int64(0), nil
		}
	case kindText:
		var s string
		switch x := v.(type) {
		case string:
			s = x
		case []byte:
			s = string(x)
		default:
			return nil, fmt.Errorf("a %T where text is expected", v)
		}
		if !utf8.ValidString(s) || strings.IndexByte(s, 0) >= 0 {
			return nil, errors.New("text that is not UTF-8 or holds a NUL byte, which PostgreSQL's text cannot store")
		}
		return s, nil
	case kindBytes:
		switch x := v.(type) {
		case []byte:
			return slices.Clone(x), nil
		case string:
			return []byte(x), nil
		}
	}
	return nil, fmt.Errorf("a %T where %s is expected", v, kindName(k))
}

func kindName(k valueKind) string {
	switch k {
	case kindInt:
		return "an integer"
	case kindText:
		return "text"
	}
	return "bytes"
}

// tableDigest is a multiset hash of a table: the sum, modulo 2^256, of the
// SHA-256 of every row's canonical encoding. Order does not matter; a
// missing, extra, duplicated or changed row does.
type tableDigest struct {
	rows int64
	sum  [32]byte
}

func (d *tableDigest) add(cols []string, vals []any) {
	h := sha256.New()
	var n [8]byte
	put := func(b []byte) {
		binary.BigEndian.PutUint64(n[:], uint64(len(b)))
		h.Write(n[:])
		h.Write(b)
	}
	for i, v := range vals {
		put([]byte(cols[i]))
		switch x := v.(type) {
		case nil:
			h.Write([]byte{'n'})
		case int64:
			h.Write([]byte{'i'})
			binary.BigEndian.PutUint64(n[:], uint64(x))
			h.Write(n[:])
		case string:
			h.Write([]byte{'t'})
			put([]byte(x))
		case []byte:
			h.Write([]byte{'b'})
			put(x)
		}
	}
	var row [32]byte
	h.Sum(row[:0])
	carry := 0
	for i := 31; i >= 0; i-- {
		s := int(d.sum[i]) + int(row[i]) + carry
		d.sum[i] = byte(s)
		carry = s >> 8
	}
	d.rows++
}

func (d tableDigest) hex() string { return hex.EncodeToString(d.sum[:]) }

// stringList runs a query returning one text column.
func stringList(ctx context.Context, q querier, query string, args ...any) ([]string, error) {
	rows, err := q.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, rows.Err()
}

// quoteLiteral quotes s as an SQL string literal.
func quoteLiteral(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }
