// Command qpcctl is the quicprochat admin CLI. It talks to a running qpcd
// through its admin socket, or to files directly when qpcd is stopped.
package main

import (
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"

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
	root := &cobra.Command{
		Use:           "qpcctl",
		Short:         "quicprochat admin CLI",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.AddCommand(&cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  cobra.NoArgs,
		Run:   func(*cobra.Command, []string) { fmt.Fprintln(stdout, "qpcctl", version.String()) },
	})
	root.AddCommand(newReleaseCommand(stdout))
	root.SetArgs(args)
	if err := root.Execute(); err != nil {
		fmt.Fprintln(stderr, "qpcctl:", err)
		var ee exitError
		if errors.As(err, &ee) {
			return ee.code
		}
		return 2
	}
	return 0
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
	rel := &cobra.Command{Use: "release", Short: "Release artifacts: verify signatures", Args: cobra.NoArgs}
	rel.AddCommand(verify)
	return rel
}
