package main

import (
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"github.com/quicprochat/quicprochat/internal/admin"
	"github.com/quicprochat/quicprochat/internal/secret"
)

func newBackupCommand(g *globals) *cobra.Command {
	b := &cobra.Command{Use: "backup", Short: "Take and check backups", Args: cobra.NoArgs}

	var out, createKeyFile, dsn, dsnFile string
	var force bool
	create := &cobra.Command{
		Use:   "create --out FILE",
		Short: "Take an online, consistent backup of a running qpcd (writes go on), encrypted under the database key",
		Long: "The backup is a snapshot of the database taken in one read transaction while qpcd keeps serving,\n" +
			"encrypted under the database key, with a manifest (format, qpcd and schema versions, time, SHA-256).\n" +
			"It is written atomically: temporary file, fsync, checks, rename. Back the database key up separately:\n" +
			"the backup cannot be opened without it.\n" +
			"PostgreSQL (store.backend: postgres, or --dsn-file): qpcctl reads every table in one REPEATABLE READ\n" +
			"snapshot itself, while the nodes keep serving, and encrypts the dump under the backup key (--key-file,\n" +
			"else db.key_file / <data_dir>/db.key: 64 hex characters, e.g. openssl rand -hex 32); the manifest\n" +
			"carries each table's row count and checksum. See docs/operations.md, \"Backups on PostgreSQL\".",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if out == "" {
				return usageError{fmt.Errorf("backup create needs --out FILE")}
			}
			if pg, cfg := g.postgresDeployment(dsn, dsnFile); pg {
				return g.createPostgresBackup(cmd, cfg, out, force, createKeyFile, dsn, dsnFile)
			}
			if createKeyFile != "" {
				return usageError{fmt.Errorf("--key-file is for PostgreSQL deployments; a SQLCipher backup is encrypted under the database key")}
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			ctx, cancel := g.longCtx(cmd.Context())
			defer cancel()
			p := g.newProgress()
			p.step("taking a snapshot")
			res, err := c.Backup(ctx, out, force, func(done, total int64) {
				if total > 0 {
					p.show("receiving backup: %s / %s (%d%%)", humanBytes(done), humanBytes(total), done*100/total)
				} else {
					p.show("receiving backup: %s", humanBytes(done))
				}
			})
			p.done()
			if err != nil {
				return failed(err)
			}
			return g.emit(res, func(w io.Writer) {
				fmt.Fprintf(w, "backup written: %s\n", res.File)
				fmt.Fprintf(w, "size:           %s (%d bytes)\n", humanBytes(res.Bytes), res.Bytes)
				printManifest(w, res.Manifest)
				fmt.Fprintf(w, "took:           %.2fs\n", res.TookSeconds)
				if !res.Recorded {
					fmt.Fprintln(w, "note: qpcd did not record this backup as its last one (see qpcd's log)")
				}
			})
		},
	}
	create.Flags().StringVar(&out, "out", "", "backup file to write (must not exist unless --force)")
	create.Flags().BoolVar(&force, "force", false, "replace --out if it exists")
	create.Flags().StringVar(&createKeyFile, "key-file", "", "PostgreSQL: the backup key file (default: the configured database key file)")
	create.Flags().StringVar(&dsn, "dsn", "", "PostgreSQL: the deployment's connection string (default: postgres.dsn; visible in the process list: prefer --dsn-file)")
	create.Flags().StringVar(&dsnFile, "dsn-file", "", "PostgreSQL: file holding the connection string (default: postgres.dsn_file)")

	var keyFile, tmpDir string
	verify := &cobra.Command{
		Use:   "verify FILE",
		Short: "Check a backup file: layout, checksums, opens with the key, cipher and SQLite integrity, schema, row counts",
		Long: "Works on the file alone; qpcd may be running or not. The key is the configured database key\n" +
			"(--config / --db-key-file / DATA_DIR/db.key) unless --key-file names the key the backup was taken under.\n" +
			"The checks that need no key (layout, checksums, size) run first, so a damaged file is told as such without one.\n" +
			"Exit 1 with a distinct message for a truncated, damaged (bit-flipped), wrong-key or wrong-format file.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			// The checks that need no key come first: a missing, truncated
			// or damaged file is told as such wherever qpcctl runs.
			p := g.newProgress()
			p.step("checking the layout and checksums of " + args[0])
			b, err := admin.OpenBackup(args[0])
			p.done()
			if err != nil {
				return failed(err)
			}
			key, err := g.backupKey(keyFile, b)
			if err != nil {
				return err
			}
			defer key.Wipe()
			ctx, cancel := g.longCtx(cmd.Context())
			defer cancel()
			p.step("opening " + args[0] + " with the key and checking its integrity")
			rep, err := b.Verify(ctx, key, tmpDir)
			p.done()
			if err != nil {
				return failed(err)
			}
			return g.emit(rep, func(w io.Writer) {
				fmt.Fprintf(w, "OK %s (%s)\n", rep.Path, humanBytes(rep.Bytes))
				printManifest(w, rep.Manifest)
				fmt.Fprintf(w, "checks:         %v\n", rep.Checks)
				printTables(w, rep.Tables)
			})
		},
	}
	verify.Flags().StringVar(&keyFile, "key-file", "", "key file the backup was encrypted under (default: the configured database key)")
	verify.Flags().StringVar(&tmpDir, "tmp-dir", "", "directory for the extracted database while it is checked (default: system temp)")
	restore := newRestoreCommand(g)
	restore.Short = "Same as qpcctl restore: " + restore.Short
	b.AddCommand(create, verify, restore)
	return b
}

// backupKey is the key to open backup b with: --key-file if given, else
// the configured database key. Without either it says that the checks
// that need no key passed and how to give the key for the rest.
func (g *globals) backupKey(keyFile string, b *admin.BackupFile) (secret.Bytes, error) {
	if keyFile != "" {
		k, err := readKey(keyFile, "--key-file")
		if err != nil {
			return secret.Bytes{}, usageError{err}
		}
		return k, nil
	}
	cfg, err := g.loadConfig()
	if err != nil {
		return secret.Bytes{}, err // the configuration itself is wrong: usage
	}
	k, err := g.configuredKey(cfg)
	if err == nil {
		return k, nil
	}
	var me *secret.ModeError
	if errors.As(err, &me) {
		return secret.Bytes{}, usageError{err} // there, but open to others: fix it first
	}
	which, copyOf := "the database key the backup was taken under", "a copy of that db.key"
	if b.Manifest.IsPostgres() {
		which, copyOf = "the backup key it was created with", "the backup key file"
	}
	if b.Manifest.KeyID != "" {
		which += " (key id " + b.Manifest.KeyID + ")"
	}
	return secret.Bytes{}, failed(fmt.Errorf("%s: %s passed; the other checks (it opens with the key, integrity, schema version, row counts) "+
		"need %s, and qpcctl has none: %v; pass it with --key-file FILE (%s), or --config / --data-dir to use qpcd's",
		b.Path, strings.Join(admin.StructuralChecks, ", "), which, err, copyOf))
}

func printManifest(w io.Writer, m admin.Manifest) {
	fmt.Fprintf(w, "created at:     %s\n", fmtTime(m.CreatedAt))
	fmt.Fprintf(w, "qpcd version:   %s\n", m.QPCDVersion)
	fmt.Fprintf(w, "schema version: %d\n", m.SchemaVersion)
	fmt.Fprintf(w, "format:         %d\n", m.Format)
	if m.IsPostgres() {
		fmt.Fprintf(w, "backend:        postgres (server %s)\n", m.PostgresVersion)
		fmt.Fprintf(w, "payload sha256: %s\n", m.DBSHA256)
		fmt.Fprintf(w, "backup key id:  %s\n", m.KeyID)
		return
	}
	fmt.Fprintf(w, "db sha256:      %s\n", m.DBSHA256)
	fmt.Fprintf(w, "db key id:      %s\n", m.KeyID)
}

func printTables(w io.Writer, t map[string]int64) {
	if len(t) == 0 {
		return
	}
	fmt.Fprintln(w, "rows:")
	for _, name := range sortedKeys(t) {
		fmt.Fprintf(w, "  %-20s %d\n", name, t[name])
	}
}
