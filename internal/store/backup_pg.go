package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/quicprochat/quicprochat/internal/secret"
)

// Backups of a PostgreSQL deployment (qpcctl backup create/verify/restore
// with store.backend: postgres). DumpPostgres reads every table of the
// copy plan inside one REPEATABLE READ READ ONLY transaction, which sees
// one snapshot while the qpcd nodes keep writing, and writes the dump
// stream (pgdump.go); RestorePostgres writes a dump into an empty database
// in one transaction with the same copy, verification and sequence setting
// as the SQLCipher-to-PostgreSQL migration.
//
// Why in-process over pgx rather than pg_dump: no client binary of a
// matching major version has to be installed next to qpcctl, the rows pass
// through the same canonical encoding and checksum as the migration (so
// verify needs no database and restore compares what PostgreSQL holds with
// what was dumped, table by table, before it commits), and only qpcd's own
// tables and columns are taken (a table the plan does not know stops the
// backup instead of being silently left out).

var (
	// ErrNodesRunning: a qpcd node heartbeated recently on the target of
	// a restore.
	ErrNodesRunning = errors.New("store: qpcd nodes are running on the target database")
	// ErrBackupMismatch: a dump does not fit the database it is restored
	// into (tables or columns differ at the same schema version).
	ErrBackupMismatch = errors.New("store: backup does not fit the target's schema")
)

// openPGConn opens one connection for a backup tool: no statement timeout
// (a dump or restore is one long transaction) and an application_name
// that tells the tool apart in pg_stat_activity.
func openPGConn(ctx context.Context, dsn secret.Bytes, app string) (*sql.DB, *sql.Conn, string, error) {
	if dsn.IsZero() {
		return nil, nil, "", fmt.Errorf("%w: no connection string; set postgres.dsn_file (or pass --dsn-file)", ErrPostgresConfig)
	}
	cfg, err := pgx.ParseConfig(string(dsn.Reveal()))
	if err != nil {
		return nil, nil, "", fmt.Errorf("%w: connection string: %v", ErrPostgresConfig, err)
	}
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = 10 * time.Second
	}
	if cfg.RuntimeParams == nil {
		cfg.RuntimeParams = map[string]string{}
	}
	cfg.RuntimeParams["application_name"] = app
	cfg.RuntimeParams["statement_timeout"] = "0"
	target := pgTarget(cfg)
	pool := sql.OpenDB(pgConnector{inner: stdlib.GetConnector(*cfg)})
	pool.SetMaxOpenConns(1)
	conn, err := pool.Conn(ctx)
	if err != nil {
		pool.Close()
		return nil, nil, target, explainPG(err, target)
	}
	return pool, conn, target, nil
}

// DumpOptions configures DumpPostgres.
type DumpOptions struct {
	DSN      secret.Bytes // the deployment's database (never logged)
	Progress func(CopyProgress)
	Logger   *slog.Logger
}

// DumpReport describes a dump.
type DumpReport struct {
	Source          string      `json:"source"` // host:port/database, no credentials
	SchemaVersion   int         `json:"schema_version"`
	PostgresVersion string      `json:"postgres_version"`
	SnapshotAt      time.Time   `json:"snapshot_at"` // the database's clock when the snapshot was taken
	Tables          []DumpTable `json:"tables"`
	Rows            int64       `json:"rows"`
}

// DumpPostgres writes a dump of the PostgreSQL deployment at o.DSN to w.
// Every write committed before its snapshot is in the dump and nothing
// committed after; the nodes are not held up (the transaction only reads).
func DumpPostgres(ctx context.Context, o DumpOptions, w io.Writer) (rep DumpReport, err error) {
	progress := o.Progress
	if progress == nil {
		progress = func(CopyProgress) {}
	}
	pool, conn, target, err := openPGConn(ctx, o.DSN, "qpcctl-backup")
	rep.Source = target
	if err != nil {
		return rep, err
	}
	defer pool.Close()
	defer conn.Close()
	tx, err := conn.BeginTx(ctx, &sql.TxOptions{Isolation: sql.LevelRepeatableRead, ReadOnly: true})
	if err != nil {
		return rep, fmt.Errorf("store: %s: begin the snapshot transaction: %w", target, err)
	}
	defer func() { _ = tx.Rollback() }()
	// The first statement fixes the snapshot; everything below reads it.
	if err := tx.QueryRowContext(ctx, "SELECT statement_timestamp(), current_setting('server_version')").Scan(&rep.SnapshotAt, &rep.PostgresVersion); err != nil {
		return rep, fmt.Errorf("store: %s: take the snapshot: %w", target, err)
	}
	rep.SnapshotAt = rep.SnapshotAt.UTC()
	st, err := inspectPG(ctx, tx, target)
	if err != nil {
		return rep, err
	}
	if st.empty {
		return rep, fmt.Errorf("%w: %s has no tables; point postgres.dsn at the deployment's database", ErrNotDatabase, target)
	}
	known, err := loadPGMigrations(nil)
	if err != nil {
		return rep, err
	}
	if err := checkApplied(st, known, target); err != nil {
		return rep, fmt.Errorf("%w (back it up with the qpcctl of the release its qpcd nodes run)", err)
	}
	rep.SchemaVersion = st.version()
	// A deployment at an older schema than this qpcctl's has fewer tables.
	plan, err := planPG(ctx, tx, target, rep.SchemaVersion < len(known))
	if err != nil {
		return rep, err
	}
	dw := newDumpWriter(w, rep.SchemaVersion)
	for _, t := range plan {
		if t.mode == copySkip {
			continue
		}
		dt, err := dumpTableRows(ctx, tx, dw, t, progress)
		if err != nil {
			return rep, err
		}
		rep.Tables = append(rep.Tables, dt)
		rep.Rows += dt.Rows
	}
	if err := dw.finish(); err != nil {
		return rep, fmt.Errorf("store: write the dump: %w", err)
	}
	if o.Logger != nil {
		o.Logger.Info("store: dumped PostgreSQL", "source", target, "schema_version", rep.SchemaVersion, "rows", rep.Rows)
	}
	return rep, nil
}

// dumpTableRows writes one table of the snapshot.
func dumpTableRows(ctx context.Context, tx *sql.Tx, dw *dumpWriter, t planned, progress func(CopyProgress)) (DumpTable, error) {
	total, next, done, err := sqlSource{tx}.table(ctx, t)
	if err != nil {
		return DumpTable{}, err
	}
	defer done()
	dw.table(t)
	var d tableDigest
	for {
		raw, err := next()
		if err != nil {
			return DumpTable{}, fmt.Errorf("store: read %s: %w", t.name, err)
		}
		if raw == nil {
			break
		}
		vals := make([]any, len(raw))
		for i, v := range raw {
			if vals[i], err = canonical(v, t.kinds[i]); err != nil {
				return DumpTable{}, fmt.Errorf("store: read %s.%s: %w", t.name, t.cols[i], err)
			}
		}
		d.add(t.cols, vals)
		dw.row(vals)
		if dw.err != nil {
			return DumpTable{}, fmt.Errorf("store: write the dump: %w", dw.err)
		}
		if d.rows%progressEvery == 0 {
			progress(CopyProgress{Phase: "dump", Table: t.name, Rows: d.rows, Total: total})
		}
	}
	dw.end(d)
	progress(CopyProgress{Phase: "dump", Table: t.name, Rows: d.rows, Total: total})
	return DumpTable{Table: t.name, Rows: d.rows, Checksum: d.hex()}, nil
}

// RestoreOptions configures RestorePostgres.
type RestoreOptions struct {
	DSN secret.Bytes // the target: an empty database
	// AllowLiveNodes skips the node registry check (a node that
	// heartbeated within three of its heartbeat intervals refuses the
	// restore otherwise).
	AllowLiveNodes bool
	// Expect, when set, is checked against the dump before the commit
	// (the manifest's per-table counts and checksums).
	Expect     map[string]DumpTable
	Migrations fs.FS            // added to the embedded migrations (tests)
	Now        func() time.Time // nil = time.Now (the node registry check)
	Progress   func(CopyProgress)
	Logger     *slog.Logger
}

// RestoreReport is what RestorePostgres did.
type RestoreReport struct {
	CopyReport
	KeyPackagesInvalidated int64 `json:"keypackages_invalidated"`
}

// RestorePostgres writes the dump read from r into the empty PostgreSQL
// database of o.DSN: one transaction (with the migration lock held) that
// migrates an empty target to the dump's schema version, copies every
// table, compares each table's count and checksum with the dump, sets the
// identity sequences past the copied ids, deletes every unclaimed
// KeyPackage (one handed out after the backup must never be handed out
// again; clients upload new ones) and only then commits. A target with
// data, one at another schema version, a dump from a newer schema, or a
// node that heartbeated recently is refused before anything is written.
func RestorePostgres(ctx context.Context, o RestoreOptions, r io.Reader) (rep RestoreReport, err error) {
	start := time.Now()
	now := o.Now
	if now == nil {
		now = time.Now
	}
	progress := o.Progress
	if progress == nil {
		progress = func(CopyProgress) {}
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	dr, err := newDumpReader(r)
	if err != nil {
		return rep, err
	}
	rep.SchemaVersion = dr.schemaVersion
	known, err := loadPGMigrations(o.Migrations)
	if err != nil {
		return rep, err
	}
	if dr.schemaVersion > len(known) {
		return rep, fmt.Errorf("%w: the backup is at schema version %d, this qpcctl knows up to %d; restore it with the qpcctl of the release that took it (or newer)", ErrSchemaTooNew, dr.schemaVersion, len(known))
	}
	pool, conn, target, err := openPGConn(ctx, o.DSN, "qpcctl-restore")
	rep.Target = target
	if err != nil {
		return rep, err
	}
	defer pool.Close()
	defer conn.Close()
	if _, err := conn.ExecContext(ctx, "SELECT pg_advisory_lock(?)", int64(migrateLockKey)); err != nil {
		return rep, fmt.Errorf("store: %s: take the migration lock: %w", target, err)
	}
	defer func() {
		_, _ = conn.ExecContext(context.WithoutCancel(ctx), "SELECT pg_advisory_unlock(?)", int64(migrateLockKey))
	}()
	st, err := inspectPG(ctx, conn, target)
	if err != nil {
		return rep, err
	}
	if !st.empty && !o.AllowLiveNodes {
		if err := checkNodesStopped(ctx, conn, target, now()); err != nil {
			return rep, err
		}
	}
	if st.empty {
		for _, m := range known[:dr.schemaVersion] {
			if err := applyStep(ctx, conn, m, time.Now, nil); err != nil {
				return rep, fmt.Errorf("store: migration %04d_%s on %s: %w", m.version, m.name, target, err)
			}
		}
		rep.TargetMigrated = true
	} else {
		if err := checkApplied(st, known, target); err != nil {
			return rep, err
		}
		if v := st.version(); v != dr.schemaVersion {
			return rep, fmt.Errorf("%w: %s is at schema version %d, the backup at %d; restore into a new, empty database (createdb -O USER NAME)", ErrSchemaMismatch, target, v, dr.schemaVersion)
		}
	}
	// The target is at the backup's schema version, which may be older
	// than this qpcctl's (the nodes migrate it further when they start).
	plan, err := planPG(ctx, conn, target, dr.schemaVersion < len(known))
	if err != nil {
		return rep, err
	}
	if err := checkTargetEmpty(ctx, conn, plan, target); err != nil {
		return rep, err
	}
	src := &dumpSource{r: dr, expect: o.Expect}
	err = conn.Raw(func(dc any) error {
		pc, err := rawPGX(dc)
		if err != nil {
			return err
		}
		tables, rows, err := copyAll(ctx, src, pc, plan, progress, func(ctx context.Context, tx pgx.Tx) error {
			// The dump must be read to its end ('Z' and nothing after)
			// and match the manifest before anything is committed.
			if t, err := dr.nextTable(); err != nil || t != nil {
				if err == nil {
					err = corrupt("table %s follows the tables of this schema", t.name)
				}
				return err
			}
			if err := checkExpected(dr.tables, o.Expect); err != nil {
				return err
			}
			tag, err := tx.Exec(ctx, "DELETE FROM keypackages")
			if err != nil {
				return fmt.Errorf("store: invalidate KeyPackages: %w", err)
			}
			rep.KeyPackagesInvalidated = tag.RowsAffected()
			// A new incarnation: clients that saw the store past this
			// snapshot learn it was rolled back (store/incarnation.go).
			inc, err := NewIncarnation()
			if err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, "INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value", MetaIncarnation, inc); err != nil {
				return fmt.Errorf("store: write a new incarnation id: %w", err)
			}
			return nil
		})
		rep.Tables, rep.Rows = tables, rows
		return err
	})
	rep.TookSeconds = time.Since(start).Seconds()
	if err != nil {
		return rep, err
	}
	log.Info("store: restored a PostgreSQL backup", "target", target, "schema_version", rep.SchemaVersion, "rows", rep.Rows)
	return rep, nil
}

// dumpSource feeds copyAll from a dump stream, checking that its tables and
// columns are the target's.
type dumpSource struct {
	r      *dumpReader
	expect map[string]DumpTable // for progress totals
}

func (s *dumpSource) table(_ context.Context, t planned) (int64, func() ([]any, error), func(), error) {
	dt, err := s.r.nextTable()
	if err != nil {
		return 0, nil, nil, err
	}
	if dt == nil || dt.name != t.name {
		got := "the end of the backup"
		if dt != nil {
			got = "table " + dt.name
		}
		return 0, nil, nil, fmt.Errorf("%w: the target has table %s where the backup has %s", ErrBackupMismatch, t.name, got)
	}
	if strings.Join(dt.cols, ",") != strings.Join(t.cols, ",") || string(kindsString(dt.kinds)) != string(kindsString(t.kinds)) {
		return 0, nil, nil, fmt.Errorf("%w: table %s has columns %v in the backup and %v in the target", ErrBackupMismatch, t.name, dt.cols, t.cols)
	}
	return s.expect[t.name].Rows, s.r.nextRow, func() {}, nil
}

func kindsString(k []valueKind) []byte {
	out := make([]byte, len(k))
	for i, v := range k {
		out[i] = byte(v)
	}
	return out
}

// checkExpected compares a dump's tables with what its manifest says.
func checkExpected(got []DumpTable, want map[string]DumpTable) error {
	if want == nil {
		return nil
	}
	if len(got) != len(want) {
		return fmt.Errorf("%w: the payload holds %d tables, the manifest names %d", ErrDumpCorrupt, len(got), len(want))
	}
	for _, g := range got {
		w, ok := want[g.Table]
		if !ok || w.Rows != g.Rows || w.Checksum != g.Checksum {
			return fmt.Errorf("%w: table %s holds %d rows (checksum %s), the manifest says %d (checksum %s)", ErrDumpCorrupt, g.Table, g.Rows, g.Checksum, w.Rows, w.Checksum)
		}
	}
	return nil
}

// checkNodesStopped refuses when a qpcd node's last heartbeat is within
// three of its heartbeat intervals (the rule qpcctl status uses for
// "running") and it has not recorded a clean stop.
func checkNodesStopped(ctx context.Context, q querier, target string, now time.Time) error {
	var has bool
	if err := q.QueryRowContext(ctx, "SELECT EXISTS (SELECT 1 FROM information_schema.tables WHERE table_schema = current_schema() AND table_name = 'nodes')").Scan(&has); err != nil || !has {
		return err
	}
	rows, err := q.QueryContext(ctx, "SELECT id, address, last_seen_at FROM nodes WHERE stopped_at = 0 AND last_seen_at > ? - 3 * heartbeat_ms ORDER BY id", now.UnixMilli())
	if err != nil {
		return fmt.Errorf("store: %s: read the node registry: %w", target, err)
	}
	defer rows.Close()
	var live []string
	for rows.Next() {
		var id, addr string
		var seen int64
		if err := rows.Scan(&id, &addr, &seen); err != nil {
			return err
		}
		live = append(live, fmt.Sprintf("%s (%s, last seen %s ago)", id, addr, now.Sub(time.UnixMilli(seen)).Round(time.Second)))
	}
	if err := rows.Err(); err != nil {
		return err
	}
	if len(live) > 0 {
		return fmt.Errorf("%w: %s: %s; stop every qpcd node of the deployment before restoring (or pass --allow-running-nodes if they are gone without a clean stop)", ErrNodesRunning, target, strings.Join(live, ", "))
	}
	return nil
}

// SetMetaPostgres writes one meta row of the PostgreSQL deployment at dsn
// (qpcctl records a backup there; the nodes read it on their heartbeat).
func SetMetaPostgres(ctx context.Context, dsn secret.Bytes, key, value string) error {
	pool, conn, target, err := openPGConn(ctx, dsn, "qpcctl")
	if err != nil {
		return err
	}
	defer pool.Close()
	defer conn.Close()
	if _, err := conn.ExecContext(ctx, "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value", key, value); err != nil {
		return fmt.Errorf("store: %s: write meta %s: %w", target, key, err)
	}
	return nil
}
