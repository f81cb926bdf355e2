// Command qpcd is the quicprochat server. It parses flags into a
// config.Config and hands it to the server package; nothing else lives here.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/quicprochat/quicprochat/internal/clidoc"
	"github.com/quicprochat/quicprochat/internal/clikit"
	"github.com/quicprochat/quicprochat/internal/config"
	"github.com/quicprochat/quicprochat/internal/obs"
	"github.com/quicprochat/quicprochat/internal/server"
	"github.com/quicprochat/quicprochat/internal/version"
)

// Exit codes.
const (
	exitOK      = 0
	exitFailure = 1
	exitUsage   = 2 // bad flags or an invalid configuration
)

// usageError marks errors that exit with code 2.
type usageError struct{ err error }

func (u usageError) Error() string { return u.err.Error() }
func (u usageError) Unwrap() error { return u.err }

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	root := newRootCommand(stdout, stderr)
	clikit.Strict(root, func(err error) error { return usageError{err} })
	root.Version = version.String()
	root.SetVersionTemplate("qpcd {{.Version}}\n")
	root.SetArgs(args)
	err := root.Execute()
	if err == nil {
		return exitOK
	}
	fmt.Fprintln(stderr, "qpcd:", err)
	var ue usageError
	if errors.As(err, &ue) || errors.Is(err, config.ErrInvalid) {
		return exitUsage
	}
	return exitFailure
}

func newRootCommand(stdout, stderr io.Writer) *cobra.Command {
	var configFile string
	root := &cobra.Command{
		Use:           "qpcd",
		Short:         "quicprochat server",
		Long:          "qpcd serves quicprochat over QUIC. With no configuration it runs in development mode:\ndata in ./data, a generated database key and self-signed certificate, loopback ports.",
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := load(cmd, configFile)
			if err != nil {
				return err
			}
			return serve(cmd.Context(), cfg, stderr)
		},
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	root.AddCommand(clidoc.Command())
	root.PersistentFlags().StringVar(&configFile, "config", "", "YAML configuration file (QPC_* environment and flags override it)")
	config.RegisterFlags(root.PersistentFlags())

	configCmd := &cobra.Command{Use: "config", Short: "Inspect the configuration", Args: cobra.NoArgs}
	configCmd.AddCommand(&cobra.Command{
		Use:   "print",
		Short: "Print the effective configuration (secrets redacted)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := load(cmd, configFile)
			if err != nil {
				return err
			}
			return cfg.Resolved().WriteYAML(stdout)
		},
	}, &cobra.Command{
		Use:   "check",
		Short: "Validate the configuration without starting",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if _, err := load(cmd, configFile); err != nil {
				return err
			}
			fmt.Fprintln(stdout, "configuration OK")
			return nil
		},
	})
	root.AddCommand(configCmd, &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  cobra.NoArgs,
		Run:   func(*cobra.Command, []string) { fmt.Fprintln(stdout, "qpcd", version.String()) },
	})
	return root
}

func load(cmd *cobra.Command, file string) (config.Config, error) {
	return config.Load(config.LoadOptions{File: file, Flags: cmd.Flags()})
}

// serve runs qpcd until SIGINT or SIGTERM, then drains; SIGHUP reloads TLS
// and, on PostgreSQL with postgres.dsn_file, the database credentials.
func serve(parent context.Context, cfg config.Config, stderr io.Writer) error {
	log, err := obs.NewLogger(stderr, cfg.Log.Level, cfg.Log.Format)
	if err != nil {
		return usageError{err}
	}
	if parent == nil {
		parent = context.Background()
	}
	ctx, stop := signal.NotifyContext(parent, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	srv, err := server.New(ctx, server.Options{Config: cfg, Logger: log})
	if err != nil {
		return err
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go func() {
		for range hup {
			_ = srv.ReloadTLS()
			_ = srv.ReloadDatabaseCredentials(ctx)
		}
	}()
	return srv.Run(ctx)
}
