package main

import (
	"fmt"
	"io"
	"path/filepath"
	"sort"

	"github.com/spf13/cobra"

	"github.com/quicprochat/quicprochat/internal/admin"
	"github.com/quicprochat/quicprochat/internal/config"
	"github.com/quicprochat/quicprochat/internal/secret"
)

func newRestoreCommand(g *globals) *cobra.Command {
	var dryRun, allowRunning bool
	var backupKeyFile, tmpDir, dsn, dsnFile string
	cmd := &cobra.Command{
		Use:   "restore FILE",
		Short: "Replace qpcd's database with a backup (qpcd must be stopped); --dry-run restores into a temporary directory",
		Long: "Verifies the backup completely first, refuses while qpcd runs on the data directory, keeps the replaced\n" +
			"database as qpcd.db.pre-restore-<UTC time>, and swaps the new file in atomically. Every unclaimed\n" +
			"KeyPackage is deleted from the restored database (clients upload new ones): a KeyPackage handed out\n" +
			"after the backup was taken must never be handed out again.\n" +
			"If the backup was taken under an older database key, pass it with --backup-key-file: the restored\n" +
			"database is re-encrypted under the current key.\n" +
			"A PostgreSQL backup is restored into a new, empty PostgreSQL database (--dsn-file, else postgres.dsn_file)\n" +
			"in one transaction, every table's row count and checksum compared with the manifest before the commit;\n" +
			"a database with data, a backup of a newer schema, or a node that heartbeated recently is refused\n" +
			"(--allow-running-nodes overrides the last). The key is --backup-key-file, else the configured key file.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := g.loadConfig()
			if err != nil {
				return err
			}
			// Which backend the backup is of decides the path; a file that
			// does not open is reported by the path of the configured
			// backend, in that path's order of checks.
			b, openErr := admin.OpenBackup(args[0])
			pgTarget := dsn != "" || dsnFile != "" || cfg.Store.Backend == config.BackendPostgres
			switch {
			case openErr != nil && pgTarget:
				return failed(openErr)
			case openErr != nil:
			case b.Manifest.IsPostgres() && !pgTarget:
				return failed(fmt.Errorf("%w: %s is a backup of a PostgreSQL deployment and this deployment is SQLCipher; restore it into a new, empty PostgreSQL database (--dsn-file FILE, or store.backend: postgres with postgres.dsn_file); restoring it into SQLCipher is not supported", admin.ErrBackupBackend, args[0]))
			case b.Manifest.IsPostgres():
				if dryRun {
					return usageError{fmt.Errorf("--dry-run is for SQLCipher backups; check a PostgreSQL backup with qpcctl backup verify, or restore it into a scratch database")}
				}
				return g.restorePostgres(cmd, cfg, args[0], backupKeyFile, dsn, dsnFile, allowRunning)
			case pgTarget:
				return failed(fmt.Errorf("%w: %s is a backup of a SQLCipher deployment and the target is PostgreSQL; restore it with store.backend: sqlcipher, then move it with qpcctl migrate to-postgres", admin.ErrBackupBackend, args[0]))
			}
			if err := needDataDir(cfg, "restore"); err != nil {
				return err
			}
			key, err := g.dbKey(cfg)
			if err != nil {
				return failed(err)
			}
			defer key.Wipe()
			var bkey secret.Bytes
			if backupKeyFile != "" {
				if bkey, err = readKey(backupKeyFile, "--backup-key-file"); err != nil {
					return usageError{err}
				}
				defer bkey.Wipe()
			}
			ctx, cancel := g.longCtx(cmd.Context())
			defer cancel()
			p := g.newProgress()
			rep, err := admin.Restore(ctx, admin.RestoreOptions{
				Backup: args[0], DataDir: cfg.DataDir, DBPath: filepath.Join(cfg.DataDir, "qpcd.db"),
				Key: key, BackupKey: bkey, DryRun: dryRun, TmpDir: tmpDir, Step: p.step,
			})
			p.done()
			if err != nil {
				return failed(err)
			}
			return g.emit(rep, func(w io.Writer) {
				if rep.DryRun {
					fmt.Fprintf(w, "dry run: %s restores cleanly (nothing was changed)\n", args[0])
				} else {
					fmt.Fprintf(w, "restored %s into %s\n", args[0], rep.Database)
					if rep.PreRestore != "" {
						fmt.Fprintf(w, "previous database kept as %s\n", rep.PreRestore)
					}
				}
				fmt.Fprintf(w, "backup taken:   %s by qpcd %s\n", fmtTime(rep.Backup.Manifest.CreatedAt), rep.Backup.Manifest.QPCDVersion)
				fmt.Fprintf(w, "schema version: %d (backup %d)\n", rep.SchemaVersion, rep.Backup.Manifest.SchemaVersion)
				if rep.ReEncrypted {
					fmt.Fprintln(w, "re-encrypted:   under the current database key")
				}
				fmt.Fprintf(w, "keypackages invalidated: %d (clients upload new ones)\n", rep.KeyPackagesInvalidated)
				printTables(w, rep.Tables)
				if !rep.DryRun {
					fmt.Fprintln(w, "start qpcd to serve the restored data")
				}
			})
		},
	}
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "restore into a temporary directory, report, and change nothing")
	cmd.Flags().StringVar(&backupKeyFile, "backup-key-file", "", "key file the backup was encrypted under, if not the current database key")
	cmd.Flags().StringVar(&tmpDir, "tmp-dir", "", "directory for temporary files of checks and --dry-run (default: system temp)")
	cmd.Flags().StringVar(&dsn, "dsn", "", "PostgreSQL: the new, empty target database (visible in the process list: prefer --dsn-file)")
	cmd.Flags().StringVar(&dsnFile, "dsn-file", "", "PostgreSQL: file holding the target's connection string (default: postgres.dsn_file)")
	cmd.Flags().BoolVar(&allowRunning, "allow-running-nodes", false, "PostgreSQL: restore even if a node heartbeated on the target recently (nodes gone without a clean stop)")
	return cmd
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
