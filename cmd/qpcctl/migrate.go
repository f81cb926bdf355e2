package main

import (
	"errors"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/quicprochat/quicprochat/internal/admin"
	"github.com/quicprochat/quicprochat/internal/config"
	"github.com/quicprochat/quicprochat/internal/secret"
	"github.com/quicprochat/quicprochat/internal/store"
)

func newMigrateCommand(g *globals) *cobra.Command {
	m := &cobra.Command{Use: "migrate", Short: "Move a deployment to another storage backend (qpcd stopped)", Args: cobra.NoArgs}
	var dsn, dsnFile string
	to := &cobra.Command{
		Use:   "to-postgres",
		Short: "Copy a stopped deployment's SQLCipher database into an empty PostgreSQL database, verified table by table",
		Long: "Run it like restore: with qpcd stopped, from the deployment's directory or with its --data-dir / --config.\n" +
			"Every table is copied in one transaction into an empty PostgreSQL database (one with no tables, which\n" +
			"is migrated first, or one a qpcd of this release migrated and never used); each table's row count and\n" +
			"checksum are compared on both sides before the transaction commits, so a failed copy leaves the target\n" +
			"empty. Identity sequences are set past the copied ids. The SQLCipher database is kept as it was.\n" +
			"Clients keep their accounts, devices, tokens and read positions: point them at the new nodes.\n" +
			"The connection string comes from --dsn-file (0600), --dsn, or qpcd's postgres.dsn / postgres.dsn_file;\n" +
			"postgres.sslmode and postgres.ca_file apply. See docs/operations.md, \"Moving from SQLCipher to PostgreSQL\".",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := g.loadConfig()
			if err != nil {
				return err
			}
			if err := needDataDir(cfg, "migrate to-postgres"); err != nil {
				return err
			}
			pc, err := postgresTarget(cfg, dsn, dsnFile, "qpcctl migrate to-postgres: give the target with --dsn-file FILE or --dsn")
			if err != nil {
				return err
			}
			defer pc.DSN.Wipe()
			key, err := g.dbKey(cfg)
			if err != nil {
				return failed(err)
			}
			defer key.Wipe()
			ctx, cancel := g.longCtx(cmd.Context())
			defer cancel()
			p := g.newProgress()
			rep, err := admin.MigrateToPostgres(ctx, admin.MigrateOptions{
				DataDir: cfg.DataDir, Key: key, DSN: pc.DSN, Socket: cfg.Admin.Socket,
				Progress: func(cp store.CopyProgress) {
					if cp.Total > 0 {
						p.show("%s %s: %d/%d rows (%d%%)", cp.Phase, cp.Table, cp.Rows, cp.Total, cp.Rows*100/cp.Total)
					} else {
						p.show("%s %s", cp.Phase, cp.Table)
					}
				},
			})
			p.done()
			if err != nil {
				return failed(fmt.Errorf("%w (target %s)", err, config.RedactDSN(string(pc.DSN.Reveal()))))
			}
			return g.emit(rep, func(w io.Writer) { printCopyReport(w, rep) })
		},
	}
	to.Flags().StringVar(&dsn, "dsn", "", "target connection string (visible to other local users in the process list: prefer --dsn-file)")
	to.Flags().StringVar(&dsnFile, "dsn-file", "", "file holding the target connection string (mode 0600 or stricter)")
	m.AddCommand(to)
	return m
}

func printCopyReport(w io.Writer, rep store.CopyReport) {
	fmt.Fprintf(w, "copied into %s: %d rows, schema version %d, verified, in %.1fs\n", rep.Target, rep.Rows, rep.SchemaVersion, rep.TookSeconds)
	printCopyTables(w, rep)
	fmt.Fprintln(w, "next: start qpcd with store.backend: postgres and this database (postgres.dsn_file); keep the SQLCipher data directory until the new deployment is trusted")
}

// printCopyTables prints what a copy into PostgreSQL did, table by table.
func printCopyTables(w io.Writer, rep store.CopyReport) {
	if rep.TargetMigrated {
		fmt.Fprintln(w, "the target was empty and was migrated first")
	}
	rows := make([][]string, 0, len(rep.Tables))
	for _, t := range rep.Tables {
		how := "copied"
		switch {
		case t.Skipped:
			how = "skipped (node registry)"
		case !t.Copied:
			how = "compared"
		}
		next := ""
		if t.NextID > 0 {
			next = fmt.Sprint(t.NextID)
		}
		sum := t.Checksum
		if len(sum) > 16 {
			sum = sum[:16]
		}
		rows = append(rows, []string{t.Table, fmt.Sprint(t.Rows), how, sum, next})
	}
	tableRows(w, []string{"TABLE", "ROWS", "", "CHECKSUM", "NEXT ID"}, rows)
}

// postgresTarget resolves the PostgreSQL connection string: --dsn-file,
// --dsn, else qpcd's postgres.dsn / postgres.dsn_file (postgres.sslmode
// and postgres.ca_file apply either way). hint says how to give one.
func postgresTarget(cfg config.Config, dsn, dsnFile, hint string) (config.PostgresConn, error) {
	if dsn != "" && dsnFile != "" {
		return config.PostgresConn{}, usageError{errors.New("pass --dsn or --dsn-file, not both")}
	}
	if dsn != "" {
		cfg.Postgres.DSN = secret.New([]byte(dsn))
	}
	if dsnFile != "" {
		cfg.Postgres.DSN = secret.Bytes{}
		cfg.Postgres.DSNFile = dsnFile
	}
	pc, err := cfg.PostgresConn()
	if err != nil {
		return config.PostgresConn{}, usageError{fmt.Errorf("%w (%s)", err, hint)}
	}
	return pc, nil
}
