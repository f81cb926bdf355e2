// Command qpcctl is the quicprochat admin CLI. It talks to a running qpcd
// through its admin socket, or to files directly when qpcd is stopped.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/quicprochat/quicprochat/internal/clidoc"
	"github.com/quicprochat/quicprochat/internal/clikit"
	"github.com/quicprochat/quicprochat/internal/release"
	"github.com/quicprochat/quicprochat/internal/version"
)

// exitError carries a command's own exit code (1: the operation failed) to run.
type exitError struct {
	code int
	err  error
}

func (e exitError) Error() string { return e.err.Error() }
func (e exitError) Unwrap() error { return e.err }

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	g := &globals{stdout: stdout, stderr: stderr, isTTY: stderrIsTerminal}
	root := &cobra.Command{
		Use:   "qpcctl",
		Short: "quicprochat admin CLI",
		Long: "qpcctl talks to a running qpcd through its admin socket (status, backup create, rotate, accounts,\n" +
			"devices, invites, drain) and works on files directly where qpcd must be stopped (restore) or\n" +
			"need not run (backup verify). It finds the socket and the database key from qpcd's configuration\n" +
			"(--config, QPC_* variables, --data-dir) or --socket.\n" +
			"Exit codes: 0 ok, 1 the operation failed, 2 usage (bad flags, arguments or configuration).",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	g.register(root)
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	root.AddCommand(&cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			return g.emit(map[string]string{"version": version.Version, "commit": version.Commit, "date": version.Date, "go": version.GoVersion()},
				func(w io.Writer) { fmt.Fprintln(w, "qpcctl", version.String()) })
		},
	})
	rel := newReleaseCommand(stdout)
	addCanaryCommands(rel, g) // release_canary.go
	root.AddCommand(rel)
	root.AddCommand(newStatusCommand(g), newBackupCommand(g), newRestoreCommand(g), newRotateCommand(g),
		newAccountsCommand(g), newDevicesCommand(g), newInvitesCommand(g), newChannelsCommand(g), newDrainCommand(g), newMigrateCommand(g), newKeyLogCommand(g))
	root.AddCommand(clidoc.Command())
	traceLongCommands(root, g) // tracing.go
	clikit.Strict(root, func(err error) error { return usageError{err} })
	root.Version = version.String()
	if clikit.WantsJSON(args) {
		b, _ := json.Marshal(map[string]string{"version": version.Version, "commit": version.Commit, "date": version.Date, "go": version.GoVersion()})
		root.SetVersionTemplate(string(b) + "\n")
	} else {
		root.SetVersionTemplate("qpcctl {{.Version}}\n")
	}
	root.SetArgs(args)
	// Ctrl-C or SIGTERM cancels the command's context, so it cleans up
	// (temporary files of backup and restore) and exits 1.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := root.ExecuteContext(ctx); err != nil {
		code := exitUsage // cobra's own errors: unknown command, wrong arguments
		var ee exitError
		if errors.As(err, &ee) {
			code = ee.code
		}
		g.endWaiting()
		err = g.timeoutHint(err)
		fmt.Fprintln(stderr, "qpcctl:", err)
		// --json seen only in args (not parsed): an unknown command, or
		// release verify's own --json, whose result already holds the error.
		if g.json || (clikit.WantsJSON(args) && code == exitUsage) {
			// One JSON object per line, usage errors included.
			_ = json.NewEncoder(stdout).Encode(map[string]any{"error": err.Error(), "exit_code": code})
		}
		return code
	}
	return exitOK
}

// newReleaseCommand is `qpcctl release verify FILE`; the work is in internal/release.
func newReleaseCommand(stdout io.Writer) *cobra.Command {
	var cfg release.VerifyConfig
	verify := &cobra.Command{
		Use:   "verify FILE",
		Short: "Check a release file against its minisign signature and the release public key",
		Long: "Exit codes: 0 verified, 1 not verified (wrong key, altered signature, altered file, unreadable), 2 usage.\n" +
			"The public key defaults to " + release.DefaultPublicKeyPath + ", installed by the packages.",
		Args: cobra.ExactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			cfg.File = args[0]
			code, err := release.RunVerify(cfg, stdout)
			if err != nil {
				return exitError{code: code, err: err}
			}
			return nil
		},
	}
	verify.Flags().StringVar(&cfg.Signature, "sig", "", "signature file (default FILE.minisig)")
	verify.Flags().StringVar(&cfg.PublicKey, "pubkey", "", "minisign public key file (default "+release.DefaultPublicKeyPath+")")
	verify.Flags().BoolVar(&cfg.JSON, "json", false, "print the result as JSON")
	rel := &cobra.Command{Use: "release", Short: "Releases: verify signatures, install, canary, promote, rollback", Args: cobra.NoArgs}
	rel.AddCommand(verify)
	return rel
}
