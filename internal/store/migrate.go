package store

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"path"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"
)

// embeddedMigrations are qpcd's schema, one forward-only step per file.
//
//go:embed migrations/*.sql
var embeddedMigrations embed.FS

// appID is PRAGMA application_id of every qpcd database: "QPCD".
const appID = 0x51504344

// appMarker is meta.value for key 'app' in every qpcd database.
const appMarker = "qpcd"

// App names the application a database belongs to, for a program other
// than qpcd (the qpc client) that keeps its own SQLCipher file with the same
// keying, migrations and transactions. Its Migrations replace qpcd's embedded
// ones entirely; its 0001 step must create schema_migrations (version, name,
// applied_at) and meta (key, value), insert meta.app = Marker and set
// PRAGMA application_id = ID, exactly as qpcd's 0001_init.sql does.
// Snapshot, VerifyFile and Rekey know only qpcd's identity.
type App struct {
	ID         int64  // PRAGMA application_id, non-zero
	Marker     string // meta.app, non-empty
	Migrations fs.FS  // NNNN_name.sql files at its root
}

// qpcdApp is qpcd's own identity (migrations: the embedded ones).
var qpcdApp = App{ID: appID, Marker: appMarker}

// migrationFile matches NNNN_name.sql.
var migrationFile = regexp.MustCompile(`^([0-9]{4})_([a-z0-9][a-z0-9_]*)\.sql$`)

type migration struct {
	version int
	name    string
	sql     string
}

// readMigrations reads the NNNN_name.sql files at the root of fsys. Other
// files are ignored; a .sql file with another name is an error, so a typo
// cannot silently drop a step.
func readMigrations(fsys fs.FS) (map[int]migration, error) {
	entries, err := fs.ReadDir(fsys, ".")
	if err != nil {
		return nil, fmt.Errorf("%w: read directory: %v", ErrMigrations, err)
	}
	out := make(map[int]migration, len(entries))
	for _, e := range entries {
		if e.IsDir() || path.Ext(e.Name()) != ".sql" {
			continue
		}
		m := migrationFile.FindStringSubmatch(e.Name())
		if m == nil {
			return nil, fmt.Errorf("%w: %q is not named NNNN_name.sql (lower-case name)", ErrMigrations, e.Name())
		}
		v, err := strconv.Atoi(m[1])
		if err != nil || v < 1 {
			return nil, fmt.Errorf("%w: %q: version must be 0001 or above", ErrMigrations, e.Name())
		}
		if prev, dup := out[v]; dup {
			return nil, fmt.Errorf("%w: version %d appears twice (%s, %s)", ErrMigrations, v, prev.name, m[2])
		}
		body, err := fs.ReadFile(fsys, e.Name())
		if err != nil {
			return nil, fmt.Errorf("%w: read %s: %v", ErrMigrations, e.Name(), err)
		}
		out[v] = migration{version: v, name: m[2], sql: string(body)}
	}
	return out, nil
}

// loadMigrations returns the embedded migrations overlaid with extra (a file
// in extra replaces the embedded file of the same version), in order, and
// checks that the versions run 1..N without a gap.
func loadMigrations(extra fs.FS) ([]migration, error) {
	sub, err := fs.Sub(embeddedMigrations, "migrations")
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMigrations, err)
	}
	return loadMigrationsFrom(sub, extra)
}

// loadMigrationsFrom is loadMigrations with base instead of the embedded set.
func loadMigrationsFrom(base, extra fs.FS) ([]migration, error) {
	all, err := readMigrations(base)
	if err != nil {
		return nil, err
	}
	if extra != nil {
		more, err := readMigrations(extra)
		if err != nil {
			return nil, err
		}
		for v, m := range more {
			all[v] = m
		}
	}
	list := make([]migration, 0, len(all))
	for _, m := range all {
		list = append(list, m)
	}
	sort.Slice(list, func(i, j int) bool { return list[i].version < list[j].version })
	for i, m := range list {
		if m.version != i+1 {
			return nil, fmt.Errorf("%w: gap: expected version %04d, found %04d_%s", ErrMigrations, i+1, m.version, m.name)
		}
	}
	return list, nil
}

// querier is what inspect needs: *sql.DB, *sql.Conn and *sql.Tx all fit.
type querier interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// applied is one row of schema_migrations.
type applied struct {
	version int
	name    string
}

// dbState is what an opened (keyed) database says about itself.
type dbState struct {
	empty   bool      // no schema at all: a new database
	applied []applied // schema_migrations, by version
}

func (s dbState) version() int {
	if len(s.applied) == 0 {
		return 0
	}
	return s.applied[len(s.applied)-1].version
}

// inspect reads the identity marker and the applied migrations. Its first
// statement is the first read of the file, so a wrong key surfaces here as
// SQLITE_NOTADB (the caller explains it).
func inspect(ctx context.Context, q querier, path string) (dbState, error) {
	return inspectApp(ctx, q, path, qpcdApp)
}

// inspectApp is inspect for the database of app.
func inspectApp(ctx context.Context, q querier, path string, app App) (dbState, error) {
	var objects int
	if err := q.QueryRowContext(ctx, "SELECT count(*) FROM sqlite_master").Scan(&objects); err != nil {
		return dbState{}, err
	}
	var id int64
	if err := q.QueryRowContext(ctx, "PRAGMA application_id").Scan(&id); err != nil {
		return dbState{}, fmt.Errorf("store: read application_id of %s: %w", path, err)
	}
	if objects == 0 && id == 0 {
		return dbState{empty: true}, nil
	}
	if id != app.ID {
		return dbState{}, fmt.Errorf("%w: %s opens with the key but has application_id %#x, not %s's %#x; point the storage path at %s's database file", ErrNotDatabase, path, id, app.Marker, app.ID, app.Marker)
	}
	var marker string
	err := q.QueryRowContext(ctx, "SELECT value FROM meta WHERE key = 'app'").Scan(&marker)
	if err != nil || marker != app.Marker {
		return dbState{}, fmt.Errorf("%w: %s has %s's application_id but no meta.app = %q marker (read: %v); the file is damaged or not %s's", ErrNotDatabase, path, app.Marker, app.Marker, err, app.Marker)
	}
	rows, err := q.QueryContext(ctx, "SELECT version, name FROM schema_migrations ORDER BY version")
	if err != nil {
		return dbState{}, fmt.Errorf("store: read schema_migrations of %s: %w", path, err)
	}
	defer rows.Close()
	var st dbState
	for rows.Next() {
		var a applied
		if err := rows.Scan(&a.version, &a.name); err != nil {
			return dbState{}, fmt.Errorf("store: read schema_migrations of %s: %w", path, err)
		}
		st.applied = append(st.applied, a)
	}
	if err := rows.Err(); err != nil {
		return dbState{}, fmt.Errorf("store: read schema_migrations of %s: %w", path, err)
	}
	return st, nil
}

// ExpandPrefix starts the name of an expand-only migration
// (NNNN_expand_name.sql): one that only adds (tables, nullable columns or
// columns with a default, indexes, rows) so that a qpcd one release older
// can keep using the database it produced. A qpcd that finds steps it does
// not know opens the database only if every one of them is expand-only
// (docs/release.md, "Mixed versions on one database"); any other step
// (a contract: dropping, renaming, tightening) refuses it with
// ErrSchemaTooNew.
const ExpandPrefix = "expand_"

// checkApplied compares what the database has applied with the migrations
// this binary knows: gaps and renamed steps are errors, and so is a newer
// schema unless every step beyond this binary's is expand-only.
func checkApplied(st dbState, known []migration, path string) error {
	if st.empty {
		return nil
	}
	if v := st.version(); v > len(known) {
		for _, a := range st.applied[min(len(known), len(st.applied)):] {
			if !strings.HasPrefix(a.name, ExpandPrefix) {
				return fmt.Errorf("%w: %s is at schema version %d, this qpcd knows up to %d, and step %04d_%s is not expand-only; run the newer qpcd (or restore the pre-upgrade backup)",
					ErrSchemaTooNew, path, v, len(known), a.version, a.name)
			}
		}
	}
	for i, a := range st.applied {
		if a.version != i+1 {
			return fmt.Errorf("%w: %s: applied versions have a gap before %d", ErrMigrations, path, a.version)
		}
		if i >= len(known) {
			continue // expand-only steps of a newer qpcd, checked above
		}
		if k := known[i]; k.name != a.name {
			return fmt.Errorf("%w: %s: version %d was applied as %q but this qpcd names it %q; migrations must never be renamed or replaced once released", ErrMigrations, path, a.version, a.name, k.name)
		}
	}
	return nil
}

// pending is what of known is not applied yet at version (none when a newer
// qpcd's expand-only steps put the database ahead), logging the latter.
func pending(known []migration, version int, target string, log *slog.Logger) []migration {
	if version > len(known) {
		log.Warn("store: the database schema is newer than this qpcd; its extra steps are expand-only, so this qpcd runs on it (mixed versions: upgrade this node soon)",
			"target", target, "schema_version", version, "known_version", len(known))
		return nil
	}
	return known[version:]
}

// migrate applies every pending migration, each in its own transaction that
// also records it in schema_migrations and sets PRAGMA user_version.
func migrate(ctx context.Context, db *sql.DB, known []migration, path string, app App, now func() time.Time, log *slog.Logger) (int, error) {
	st, err := inspectApp(ctx, db, path, app)
	if err != nil {
		if isNotADB(err) {
			return 0, explainNotADB(path)
		}
		return 0, fmt.Errorf("store: inspect %s: %w", path, err)
	}
	if err := checkApplied(st, known, path); err != nil {
		return 0, err
	}
	version := st.version()
	for _, m := range pending(known, version, path, log) {
		if err := applyOne(ctx, db, m, now); err != nil {
			return version, fmt.Errorf("store: migration %04d_%s on %s: %w", m.version, m.name, path, err)
		}
		version = m.version
		log.Info("store: applied migration", "version", m.version, "name", m.name)
	}
	return version, nil
}

func applyOne(ctx context.Context, db *sql.DB, m migration, now func() time.Time) error {
	return applyStep(ctx, db, m, now, func(tx *sql.Tx) error {
		// user_version mirrors the schema version for tools that only read the header.
		_, err := tx.ExecContext(ctx, fmt.Sprintf("PRAGMA user_version = %d", m.version))
		return err
	})
}

// txBeginner is *sql.DB or *sql.Conn.
type txBeginner interface {
	BeginTx(ctx context.Context, opts *sql.TxOptions) (*sql.Tx, error)
}

// applyStep runs one migration and records it in schema_migrations in one
// transaction, with the engine's extra bookkeeping (nil: none).
func applyStep(ctx context.Context, db txBeginner, m migration, now func() time.Time, extra func(tx *sql.Tx) error) (err error) {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, ignoreDone(tx.Rollback()))
		}
	}()
	if _, err := tx.ExecContext(ctx, m.sql); err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx,
		"INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
		m.version, m.name, now().UTC().Format(time.RFC3339Nano)); err != nil {
		return err
	}
	if extra != nil {
		if err := extra(tx); err != nil {
			return err
		}
	}
	return tx.Commit()
}

// ignoreDone drops sql.ErrTxDone, which only says the transaction had already ended.
func ignoreDone(err error) error {
	if errors.Is(err, sql.ErrTxDone) {
		return nil
	}
	return err
}

// contractSQL matches statements an expand-only migration must not hold:
// removing or renaming anything, changing a column's type or making it
// NOT NULL, and new NOT NULL columns without a default (an older qpcd's
// inserts would fail), checked case-insensitively on the migration's text.
var contractSQL = []*regexp.Regexp{
	regexp.MustCompile(`(?i)\bDROP\s+(TABLE|COLUMN|INDEX|VIEW|TRIGGER|CONSTRAINT|DEFAULT|NOT\s+NULL)\b`),
	regexp.MustCompile(`(?i)\bRENAME\b`),
	regexp.MustCompile(`(?i)\bALTER\s+(TABLE\s+\S+\s+ALTER\s+)?COLUMN\s+\S+\s+(SET\s+DATA\s+)?TYPE\b`),
	regexp.MustCompile(`(?i)\bSET\s+NOT\s+NULL\b`),
	regexp.MustCompile(`(?i)\bADD\s+(COLUMN\s+)?\S+\s+[^,;]*\bNOT\s+NULL\b(?:[^,;]*\bDEFAULT\b)?`),
	regexp.MustCompile(`(?i)\bDELETE\s+FROM\b|\bTRUNCATE\b`),
}

// checkExpandOnly reports the first statement of an expand_ migration that
// would break the release before it.
func checkExpandOnly(m migration) error {
	for _, re := range contractSQL {
		if loc := re.FindStringIndex(m.sql); loc != nil {
			hit := m.sql[loc[0]:loc[1]]
			if re == contractSQL[4] && regexp.MustCompile(`(?i)\bDEFAULT\b`).MatchString(hit) {
				continue // a NOT NULL column with a default is fine
			}
			return fmt.Errorf("%w: %04d_%s is named expand-only but contains %q, which a qpcd one release older cannot run with (docs/release.md, \"Mixed versions on one database\"): name it without the %s prefix and ship it in a later release than the code that stops needing the old shape",
				ErrMigrations, m.version, m.name, strings.Join(strings.Fields(hit), " "), ExpandPrefix)
		}
	}
	return nil
}
