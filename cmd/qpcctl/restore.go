package main

import (
	"fmt"
	"io"
	"path/filepath"
	"sort"

	"github.com/spf13/cobra"

	"github.com/quicprochat/quicprochat/internal/admin"
	"github.com/quicprochat/quicprochat/internal/secret"
)

func newRestoreCommand(g *globals) *cobra.Command {
	var dryRun bool
	var backupKeyFile, tmpDir string
	cmd := &cobra.Command{
		Use:   "restore FILE",
		Short: "Replace qpcd's database with a backup (qpcd must be stopped); --dry-run restores into a temporary directory",
		Long: "Verifies the backup completely first, refuses while qpcd runs on the data directory, keeps the replaced\n" +
			"database as qpcd.db.pre-restore-<UTC time>, and swaps the new file in atomically. Every unclaimed\n" +
			"KeyPackage is deleted from the restored database (clients upload new ones): a KeyPackage handed out\n" +
			"after the backup was taken must never be handed out again.\n" +
			"If the backup was taken under an older database key, pass it with --backup-key-file: the restored\n" +
			"database is re-encrypted under the current key.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := g.loadConfig()
			if err != nil {
				return err
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
