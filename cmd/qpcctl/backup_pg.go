package main

import (
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/quicprochat/quicprochat/internal/admin"
	"github.com/quicprochat/quicprochat/internal/config"
	"github.com/quicprochat/quicprochat/internal/secret"
	"github.com/quicprochat/quicprochat/internal/store"
)

// postgresDeployment reports whether a backup command works on PostgreSQL:
// a connection string was given, or qpcd's configuration says
// store.backend: postgres. Without --socket a configuration that does not
// load is reported by the SQLCipher path, as before.
func (g *globals) postgresDeployment(dsn, dsnFile string) (bool, config.Config) {
	cfg, err := g.loadConfig()
	if dsn != "" || dsnFile != "" {
		return true, cfg
	}
	return err == nil && cfg.Store.Backend == config.BackendPostgres, cfg
}

// pgBackupKey is the key a PostgreSQL backup is encrypted under: keyFile,
// else the configured database key file, with the fix named when neither
// exists (PostgreSQL nodes do not create one).
func (g *globals) pgBackupKey(cfg config.Config, keyFile, flag string) (secret.Bytes, error) {
	if keyFile != "" {
		k, err := readKey(keyFile, flag)
		if err != nil {
			return secret.Bytes{}, usageError{err}
		}
		return k, nil
	}
	k, err := g.dbKey(cfg)
	if err != nil {
		return secret.Bytes{}, usageError{fmt.Errorf("a PostgreSQL backup is encrypted under a backup key: pass %s FILE (64 hex characters, 0600; create one with: umask 077; openssl rand -hex 32 > FILE) or set db.key_file; keep it apart from the backups: %w", flag, err)}
	}
	return k, nil
}

// pgBackupTarget is what backup create and restore on PostgreSQL both
// need first: the database (hint says how to name it) and the backup key
// (keyFile, given as keyFlag). The caller wipes both.
func (g *globals) pgBackupTarget(cfg config.Config, dsn, dsnFile, hint, keyFile, keyFlag string) (config.PostgresConn, secret.Bytes, error) {
	pc, err := postgresTarget(cfg, dsn, dsnFile, hint)
	if err != nil {
		return config.PostgresConn{}, secret.Bytes{}, err
	}
	key, err := g.pgBackupKey(cfg, keyFile, keyFlag)
	if err != nil {
		pc.DSN.Wipe()
		return config.PostgresConn{}, secret.Bytes{}, err
	}
	return pc, key, nil
}

func copyProgress(p *progress) func(store.CopyProgress) {
	return func(cp store.CopyProgress) {
		if cp.Total > 0 {
			p.show("%s %s: %d/%d rows (%d%%)", cp.Phase, cp.Table, cp.Rows, cp.Total, cp.Rows*100/cp.Total)
		} else {
			p.show("%s %s: %d rows", cp.Phase, cp.Table, cp.Rows)
		}
	}
}

// createPostgresBackup is backup create on PostgreSQL: qpcctl reads the
// database itself, so it works with any number of nodes running.
func (g *globals) createPostgresBackup(cmd *cobra.Command, cfg config.Config, out string, force bool, keyFile, dsn, dsnFile string) error {
	pc, key, err := g.pgBackupTarget(cfg, dsn, dsnFile, "qpcctl backup create on PostgreSQL: set postgres.dsn_file in qpcd's configuration or pass --dsn-file FILE", keyFile, "--key-file")
	if err != nil {
		return err
	}
	defer pc.DSN.Wipe()
	defer key.Wipe()
	ctx, cancel := g.ctx(cmd.Context())
	defer cancel()
	p := g.newProgress()
	p.step("taking a snapshot")
	res, err := admin.CreatePostgresBackup(ctx, admin.PostgresBackupOptions{DSN: pc.DSN, Key: key, Out: out, Force: force, Progress: copyProgress(p)})
	p.done()
	if err != nil {
		return failed(fmt.Errorf("%w (database %s)", err, config.RedactDSN(string(pc.DSN.Reveal()))))
	}
	return g.emit(res, func(w io.Writer) {
		fmt.Fprintf(w, "backup written: %s\n", res.File)
		fmt.Fprintf(w, "size:           %s (%d bytes)\n", humanBytes(res.Bytes), res.Bytes)
		printManifest(w, res.Manifest)
		fmt.Fprintf(w, "took:           %.2fs\n", res.TookSeconds)
		printTables(w, res.Manifest.Tables)
		if !res.Recorded {
			fmt.Fprintln(w, "note: the backup could not be recorded in the database (meta admin.last_backup); QpcdBackupTooOld does not see it")
		}
	})
}

// restorePostgres is restore for a PostgreSQL backup: into the empty
// database of --dsn-file / --dsn / postgres.dsn.
func (g *globals) restorePostgres(cmd *cobra.Command, cfg config.Config, file, keyFile, dsn, dsnFile string, allowRunning bool) error {
	pc, key, err := g.pgBackupTarget(cfg, dsn, dsnFile, "qpcctl restore of a PostgreSQL backup: give the new, empty database with --dsn-file FILE or postgres.dsn_file", keyFile, "--backup-key-file")
	if err != nil {
		return err
	}
	defer pc.DSN.Wipe()
	defer key.Wipe()
	ctx, cancel := g.ctx(cmd.Context())
	defer cancel()
	p := g.newProgress()
	rep, err := admin.RestorePostgres(ctx, admin.PostgresRestoreOptions{
		Backup: file, Key: key, DSN: pc.DSN, AllowRunningNodes: allowRunning, Step: p.step, Progress: copyProgress(p),
	})
	p.done()
	if err != nil {
		return failed(fmt.Errorf("%w (target %s)", err, config.RedactDSN(string(pc.DSN.Reveal()))))
	}
	return g.emit(rep, func(w io.Writer) {
		fmt.Fprintf(w, "restored %s into %s: %d rows, schema version %d, verified, in %.1fs\n", file, rep.Target, rep.Rows, rep.SchemaVersion, rep.TookSeconds)
		fmt.Fprintf(w, "backup taken:   %s by qpcd %s\n", fmtTime(rep.Backup.Manifest.CreatedAt), rep.Backup.Manifest.QPCDVersion)
		printCopyTables(w, rep.CopyReport)
		fmt.Fprintf(w, "keypackages invalidated: %d (clients upload new ones)\n", rep.KeyPackagesInvalidated)
		fmt.Fprintln(w, "start the qpcd nodes on this database (postgres.dsn_file) to serve the restored data")
	})
}
