// Package cli is the qpc command line: cobra commands over internal/client, human output or one JSON object per line.
package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/quicprochat/quicprochat/internal/clidoc"
	"github.com/quicprochat/quicprochat/internal/client"
	"github.com/quicprochat/quicprochat/internal/clikit"
	"github.com/quicprochat/quicprochat/internal/safetext"
	"github.com/quicprochat/quicprochat/internal/secret"
	"github.com/quicprochat/quicprochat/internal/tracing"
	"github.com/quicprochat/quicprochat/internal/version"
	"github.com/quicprochat/quicprochat/internal/wire"
	"github.com/quicprochat/quicprochat/internal/wire/qpcv1"
)

// Exit codes.
const (
	ExitOK      = 0
	ExitFailure = 1
	ExitUsage   = 2
)

// EnvHome names the client's home directory.
const EnvHome = "QPC_HOME"

// IO is what a run reads and writes; tests pass buffers.
type IO struct {
	Stdin  io.Reader
	Stdout io.Writer
	Stderr io.Writer
	Getenv func(string) string
}

type usageError struct{ err error }

func (u usageError) Error() string { return u.err.Error() }
func (u usageError) Unwrap() error { return u.err }

func usagef(format string, a ...any) error { return usageError{fmt.Errorf(format, a...)} }

type app struct {
	tp      *tracing.Provider // set up on the first client opened (tracing.go)
	io      IO
	home    string
	json    bool
	keyFile string
	verbose bool
	timeout time.Duration
	// interactive: a person waits for this command (everything but
	// watch): fewer retries and a shorter dial timeout.
	interactive bool
	// allowUnverified: --allow-unverified on group add and send.
	allowUnverified bool
}

// Run runs qpc with args (without the program name) and returns the exit
// code: 0 ok, 1 the operation failed, 2 usage.
func Run(ctx context.Context, args []string, o IO) int {
	if o.Getenv == nil {
		o.Getenv = os.Getenv
	}
	if o.Stdin == nil {
		o.Stdin = strings.NewReader("")
	}
	a := &app{io: o, interactive: true}
	root := &cobra.Command{
		Use:   "qpc",
		Short: "quicprochat end-to-end encrypted messenger client",
		Long: "qpc is the quicprochat client. Its state (device key, tokens, groups, messages, outbox) lives in an\n" +
			"encrypted database in --home (default $QPC_HOME, else ~/.config/qpc). The database key comes from\n" +
			"QPC_CLIENT_KEY (64 hex characters), or QPC_CLIENT_PASSPHRASE (Argon2id), or the key file\n" +
			"(default <home>/client.key, created by qpc init).\n" +
			"Exit codes: 0 ok, 1 the operation failed, 2 usage.",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(o.Stdout)
	root.SetErr(o.Stderr)
	root.SetIn(o.Stdin)
	pf := root.PersistentFlags()
	pf.StringVar(&a.home, "home", "", "client state directory (default $QPC_HOME, else ~/.config/qpc)")
	pf.BoolVar(&a.json, "json", false, "print one JSON object per line")
	pf.StringVar(&a.keyFile, "key-file", "", "database key file (default <home>/client.key)")
	pf.BoolVarP(&a.verbose, "verbose", "v", false, "log retries and reconnects to stderr")
	pf.DurationVar(&a.timeout, "timeout", 2*time.Minute, "give up after this long (watch: ignored)")
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	root.AddCommand(
		&cobra.Command{Use: "version", Short: "Print the version", Args: cobra.NoArgs, RunE: func(*cobra.Command, []string) error {
			return a.emit(map[string]string{"version": version.Version}, "qpc "+version.String())
		}},
		a.initCmd(), a.statusCmd(), a.registerCmd(), a.loginCmd(), a.whoamiCmd(), a.devicesCmd(), a.keysCmd(),
		a.groupCmd(), a.dmCmd(), a.sendCmd(), a.recvCmd(), a.watchCmd(), a.historyCmd(), a.outboxCmd(),
		a.verifyCmd(), a.identityCmd(), a.invitationsCmd(), clidoc.Command(),
	)
	root.AddCommand(a.blockCmds()...)
	for _, c := range root.Commands() {
		switch c.Name() {
		case "send", "history":
			c.ValidArgsFunction = a.completeGroups
		case "group":
			for _, sc := range c.Commands() {
				if sc.Name() != "create" && sc.Name() != "list" {
					sc.ValidArgsFunction = a.completeGroups
				}
			}
		}
	}
	clikit.Strict(root, func(err error) error { return usageError{err} })
	root.Version = version.String()
	jsonOut := clikit.WantsJSON(args)
	if jsonOut {
		b, _ := json.Marshal(map[string]string{"version": version.Version})
		root.SetVersionTemplate(string(b) + "\n")
	} else {
		root.SetVersionTemplate("qpc {{.Version}}\n")
	}
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	a.flushTraces()
	if err == nil {
		return ExitOK
	}
	code := ExitFailure
	var ue usageError
	if errors.As(err, &ue) || isCobraUsage(err) {
		code = ExitUsage
	}
	fmt.Fprintln(o.Stderr, "qpc:", err)
	if a.json || jsonOut {
		_ = json.NewEncoder(o.Stdout).Encode(map[string]any{"error": err.Error(), "exit_code": code})
	}
	return code
}

func isCobraUsage(err error) bool {
	s := err.Error()
	return strings.HasPrefix(s, "unknown command") || strings.HasPrefix(s, "unknown flag") || strings.Contains(s, "accepts ") || strings.Contains(s, "requires at least")
}

func (a *app) homeDir() (string, error) {
	if a.home != "" {
		return a.home, nil
	}
	if h := a.io.Getenv(EnvHome); h != "" {
		return h, nil
	}
	d, err := os.UserConfigDir()
	if err != nil {
		return "", usagef("no home directory: %v; pass --home DIR or set %s", err, EnvHome)
	}
	return filepath.Join(d, "qpc"), nil
}

func (a *app) options() (client.Options, error) {
	home, err := a.homeDir()
	if err != nil {
		return client.Options{}, err
	}
	o := client.Options{Home: home}
	tp, err := a.tracer(context.Background())
	if err != nil {
		return client.Options{}, err
	}
	if tp.Enabled() {
		o.Tracer = tp.Tracer()
	}
	switch {
	case a.io.Getenv(client.EnvKey) != "":
		o.Keys.Hex = secret.New([]byte(a.io.Getenv(client.EnvKey)))
	case a.io.Getenv(client.EnvPassphrase) != "":
		o.Keys.Passphrase = secret.New([]byte(a.io.Getenv(client.EnvPassphrase)))
	default:
		o.Keys.KeyFile = a.keyFile
	}
	if a.verbose {
		o.Logger = slog.New(slog.NewTextHandler(a.io.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	if a.interactive {
		// A person waits: give up on an unreachable server after about
		// half a minute rather than minutes (watch keeps the defaults).
		o.Backoff = client.Backoff{MaxAttempts: 4, Max: 4 * time.Second, DialTimeout: 5 * time.Second}
	}
	if a.progress() {
		o.Backoff.OnRetry = func(method string, attempt, maxAttempts int, wait time.Duration, err error) {
			fmt.Fprintf(a.io.Stderr, "qpc: %s: attempt %d of %d failed (%v); next try in %s\n", method, attempt, maxAttempts, shortErr(err), wait.Round(100*time.Millisecond))
		}
	}
	return o, nil
}

// progress reports whether retries are shown on stderr (clikit's rule: a
// terminal or QPC_PROGRESS=1, never --json).
func (a *app) progress() bool {
	return clikit.ShowProgress(a.json, a.io.Getenv, clikit.IsTerminal(a.io.Stderr))
}

func shortErr(err error) string {
	s := err.Error()
	if len(s) > 120 {
		s = s[:120] + "..."
	}
	return s
}

func (a *app) open(ctx context.Context) (*client.Client, error) {
	o, err := a.options()
	if err != nil {
		return nil, err
	}
	return client.Open(ctx, o)
}

// withClient opens the client state, runs fn with a deadline and closes it.
func (a *app) withClient(cmd *cobra.Command, fn func(ctx context.Context, c *client.Client) error) error {
	ctx, cancel := context.WithTimeout(cmd.Context(), a.timeout)
	defer cancel()
	c, err := a.open(ctx)
	if err != nil {
		return explain(err)
	}
	defer c.Close()
	return explain(fn(ctx, c))
}

// explain adds the fix for common server statuses.
func explain(err error) error {
	if err == nil {
		return nil
	}
	var se *wire.StatusError
	if errors.As(err, &se) {
		switch se.Code {
		case qpcv1.Status_STATUS_UNAUTHENTICATED:
			// A revoked device cannot log in again: qpc login would fail
			// the same way, so do not suggest it.
			if strings.Contains(se.Message, "device revoked") {
				return fmt.Errorf("%w (this device was revoked from its account, by another of its devices or by the operator; "+
					"it cannot log in again: add this install as a new device from a device that is still active, "+
					"see docs/client.md, or register a new account)", err)
			}
			return fmt.Errorf("%w (run qpc login)", err)
		case qpcv1.Status_STATUS_UNSUPPORTED_VERSION:
			return fmt.Errorf("%w (upgrade qpc)", err)
		case qpcv1.Status_STATUS_INTERNAL:
			return fmt.Errorf("%w (a server bug or storage failure: report it to the operator with this message)", err)
		}
	}
	var te *client.TrustError
	if errors.As(err, &te) {
		return err // it names the fix itself
	}
	if client.Retryable(err) || errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("%w (the server is unreachable or busy: check the address in qpc whoami / qpc init, that qpcd runs and that UDP to its port is open, then retry; --timeout and -v change how long and how visibly qpc tries)", err)
	}
	if errors.Is(err, safetext.ErrUnsafe) {
		return usageError{err}
	}
	return err
}

// emit prints v as one JSON line with --json, else the human text.
func (a *app) emit(v any, human string) error {
	if a.json {
		return json.NewEncoder(a.io.Stdout).Encode(v)
	}
	if human != "" {
		_, err := fmt.Fprintln(a.io.Stdout, human)
		return err
	}
	return nil
}
