package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/quicprochat/quicprochat/internal/admin"
	"github.com/quicprochat/quicprochat/internal/clikit"
	"github.com/quicprochat/quicprochat/internal/config"
	"github.com/quicprochat/quicprochat/internal/secret"
)

// Exit codes.
const (
	exitOK      = 0
	exitFailure = 1
	exitUsage   = 2
)

// globals are the root's persistent flags and the output streams.
type globals struct {
	stdout, stderr io.Writer
	configFile     string
	socket         string
	json           bool
	timeout        time.Duration
	flags          *pflag.FlagSet // holds --data-dir and --db-key-file for config.Load
	env            []string       // nil: os.Environ()
	isTTY          func() bool
	effective      time.Duration // the time limit of the running command
	stopWaiting    func()        // ends ctx's "waiting for qpcd" line
}

func (g *globals) register(root *cobra.Command) {
	pf := root.PersistentFlags()
	pf.StringVar(&g.configFile, "config", "", "qpcd's YAML configuration file (for the data dir, admin socket and database key)")
	pf.StringVar(&g.socket, "socket", "", "qpcd's admin socket (default: admin.socket from the configuration, QPC_ADMIN_SOCKET, else <data_dir>/admin.sock)")
	pf.String("data-dir", config.Default().DataDir, "qpcd's data directory (QPC_DATA_DIR)")
	pf.String("db-key-file", "", "database key file (QPC_DB_KEY_FILE; default <data_dir>/db.key)")
	// qpcd's own name for the socket option, accepted as a synonym of --socket.
	pf.String("admin-socket", "", "qpcd's admin socket (QPC_ADMIN_SOCKET); same as --socket")
	_ = pf.MarkHidden("admin-socket")
	pf.BoolVar(&g.json, "json", false, "print the result as JSON on stdout, one object per line (errors too)")
	pf.DurationVar(&g.timeout, "timeout", 0, fmt.Sprintf("give up on the operation after this long (default %s for backup, restore, rotate db-key, migrate, drain and release; %s for the rest, which answer in milliseconds)", longTimeout, quickTimeout))
	g.flags = pf
}

// usageError exits with code 2.
type usageError struct{ err error }

func (u usageError) Error() string { return u.err.Error() }
func (u usageError) Unwrap() error { return u.err }

// failed wraps an operation's error so run exits 1.
func failed(err error) error {
	if err == nil {
		return nil
	}
	var ue usageError
	if errors.As(err, &ue) {
		return err
	}
	var ee exitError
	if errors.As(err, &ee) {
		return err
	}
	return exitError{code: exitFailure, err: err}
}

// loadConfig reads qpcd's configuration like qpcd does (defaults < file <
// QPC_* < flags) and resolves the default paths.
func (g *globals) loadConfig() (config.Config, error) {
	cfg, err := config.Load(config.LoadOptions{File: g.configFile, Flags: g.flags, Env: g.env})
	if err != nil {
		return config.Config{}, usageError{fmt.Errorf("%w (qpcctl reads qpcd's configuration: pass the same --config / QPC_* settings)", err)}
	}
	return cfg.Resolved(), nil
}

// client returns an admin API client for the configured socket.
func (g *globals) client() (*admin.Client, error) {
	if g.socket != "" {
		return admin.NewClient(g.socket), nil
	}
	cfg, err := g.loadConfig()
	if err != nil {
		return nil, err
	}
	return admin.NewClient(cfg.Admin.Socket), nil
}

// needDataDir refuses, as a usage error, a command that works on qpcd's
// data directory when there is none where qpcctl looks: run elsewhere than
// the deployment, the missing key file would otherwise be the first thing
// it reported.
func needDataDir(cfg config.Config, command string) error {
	if _, err := os.Stat(cfg.DataDir); errors.Is(err, os.ErrNotExist) {
		return usageError{fmt.Errorf("qpcd's data directory %s does not exist (from %s): %s works on the data directory of a stopped qpcd; "+
			"pass its --data-dir or --config (for a new host or a drill: mkdir -m 0700 DIR, put the database key in DIR/db.key (0600), see docs/operations.md)",
			cfg.DataDir, dataDirSource(cfg), command)}
	}
	return nil
}

// dataDirSource says where qpcctl took the data directory from.
func dataDirSource(cfg config.Config) string {
	if cfg.DataDir == config.Default().DataDir {
		return "the default, relative to " + workingDir()
	}
	return "--data-dir, QPC_DATA_DIR or --config"
}

func workingDir() string {
	wd, err := os.Getwd()
	if err != nil {
		return "the working directory"
	}
	return wd
}

// dbKey returns the configured database key (inline or from the key file).
func (g *globals) dbKey(cfg config.Config) (secret.Bytes, error) {
	k, err := g.configuredKey(cfg)
	if err != nil {
		return secret.Bytes{}, fmt.Errorf("%w; pass --db-key-file (or --config) so qpcctl finds the database key", err)
	}
	return k, nil
}

// configuredKey is dbKey without the advice, for commands that take the
// key another way too.
func (g *globals) configuredKey(cfg config.Config) (secret.Bytes, error) {
	if !cfg.DB.Key.IsZero() {
		return cfg.DB.Key.Clone(), nil
	}
	return config.ReadKeyFile(cfg.DB.KeyFile)
}

// readKey reads a key file given on the command line; its errors name the
// flag, not the configuration option.
func readKey(path, flag string) (secret.Bytes, error) {
	k, err := config.ReadKeyFile(path)
	if err != nil {
		var fe *config.FieldError
		if errors.As(err, &fe) {
			return secret.Bytes{}, fmt.Errorf("%s %s: expected %s", flag, path, fe.Expected)
		}
		return secret.Bytes{}, fmt.Errorf("%s %s: %w", flag, path, err)
	}
	return k, nil
}

// Default timeouts (--timeout 0). A person waits for an admin call: a qpcd
// that does not answer a status or a list within half a minute is stuck,
// and saying so beats ten silent minutes. Work that copies the database
// gets longer.
const (
	quickTimeout = 30 * time.Second
	longTimeout  = 10 * time.Minute
)

// ctx bounds a quick admin call: --timeout, else quickTimeout. A call
// still unanswered after a second is shown as awaited (progress rules),
// until the answer or the end of the command.
func (g *globals) ctx(parent context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := g.bounded(parent, quickTimeout)
	stop := g.newProgress().tickerAfter(time.Second, "waiting for qpcd's answer (gives up after "+g.effective.String()+", --timeout)")
	g.stopWaiting = stop
	return ctx, func() { g.endWaiting(); cancel() }
}

// longCtx bounds work that copies or checks the whole database: --timeout,
// else longTimeout. Such commands show their own progress.
func (g *globals) longCtx(parent context.Context) (context.Context, context.CancelFunc) {
	return g.bounded(parent, longTimeout)
}

func (g *globals) bounded(parent context.Context, def time.Duration) (context.Context, context.CancelFunc) {
	if parent == nil {
		parent = context.Background()
	}
	g.effective = def
	if g.timeout > 0 {
		g.effective = g.timeout
	}
	return context.WithTimeout(parent, g.effective)
}

// endWaiting stops the "waiting for qpcd" line before anything is printed.
func (g *globals) endWaiting() {
	if g.stopWaiting != nil {
		g.stopWaiting()
		g.stopWaiting = nil
	}
}

// timeoutHint explains a command that ran out of time.
func (g *globals) timeoutHint(err error) error {
	if !errors.Is(err, context.DeadlineExceeded) || g.effective == 0 {
		return err
	}
	return fmt.Errorf("%w (no answer within %s, this command's time limit: qpcd may be stuck or overloaded, see its log and qpcctl status; if it is only slow, pass a longer --timeout)", err, g.effective)
}

// emit prints v as JSON (--json) or calls human.
func (g *globals) emit(v any, human func(w io.Writer)) error {
	g.endWaiting()
	if g.json {
		// One JSON document per line (as qpc prints), what scripts and jq -c expect.
		return json.NewEncoder(g.stdout).Encode(v)
	}
	human(g.stdout)
	return nil
}

// progressOn reports whether progress goes to stderr (clikit's rule: a
// terminal or QPC_PROGRESS=1, never --json).
func (g *globals) progressOn() bool {
	return clikit.ShowProgress(g.json, g.getenv, g.isTTY != nil && g.isTTY())
}

func (g *globals) getenv(k string) string {
	if g.env == nil {
		return os.Getenv(k)
	}
	prefix := k + "="
	for _, kv := range g.env {
		if strings.HasPrefix(kv, prefix) {
			return kv[len(prefix):]
		}
	}
	return ""
}

// stderrIsTerminal is the default isTTY.
func stderrIsTerminal() bool { return clikit.IsTerminal(os.Stderr) }

// progress prints a status line on stderr: on a terminal one line that
// overwrites itself; forced elsewhere (QPC_PROGRESS=1), plain lines at most
// once a second, which a log keeps readable.
type progress struct {
	g    *globals
	on   bool
	tty  bool
	last time.Time
	used bool
}

func (g *globals) newProgress() *progress {
	return &progress{g: g, on: g.progressOn(), tty: g.isTTY != nil && g.isTTY()}
}

// every is how often a changing status is printed.
func (p *progress) every() time.Duration {
	if p.tty {
		return 100 * time.Millisecond
	}
	return time.Second
}

func (p *progress) line(s string) {
	if p.tty {
		fmt.Fprint(p.g.stderr, "\r\033[K"+s)
	} else {
		fmt.Fprintln(p.g.stderr, "qpcctl: "+s)
	}
}

func (p *progress) show(format string, args ...any) {
	if !p.on {
		return
	}
	if time.Since(p.last) < p.every() && p.used {
		return
	}
	p.last = time.Now()
	p.used = true
	p.line(fmt.Sprintf(format, args...))
}

func (p *progress) step(s string) {
	if !p.on {
		return
	}
	p.used = true
	p.last = time.Now()
	p.line(s + "...")
}

func (p *progress) done() {
	if p.on && p.used && p.tty {
		fmt.Fprint(p.g.stderr, "\r\033[K")
	}
	p.used = false
}

// ticker shows "what... Ns" until stop is called: at once, then every
// 200 ms on a terminal (every 5 s forced elsewhere).
func (p *progress) ticker(what string) (stop func()) {
	return p.tickerAfter(0, what)
}

// tickerAfter is ticker that stays silent for the first delay: a quick
// answer shows nothing, a slow one says what is awaited.
func (p *progress) tickerAfter(delay time.Duration, what string) (stop func()) {
	if !p.on {
		return func() {}
	}
	start := time.Now()
	quit := make(chan struct{})
	finished := make(chan struct{})
	period := 200 * time.Millisecond
	if !p.tty {
		period = 5 * time.Second
	}
	go func() {
		defer close(finished)
		select {
		case <-quit:
			return
		case <-time.After(delay):
		}
		t := time.NewTicker(period)
		defer t.Stop()
		shown := false
		for {
			p.line(fmt.Sprintf("%s... %s", what, time.Since(start).Round(100*time.Millisecond)))
			shown = true
			select {
			case <-quit:
				if shown && p.tty {
					fmt.Fprint(p.g.stderr, "\r\033[K")
				}
				return
			case <-t.C:
			}
		}
	}()
	return func() { close(quit); <-finished }
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

func fmtTime(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}

func ago(now, t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	return now.Sub(t).Round(time.Second).String() + " ago"
}

// tableRows prints aligned columns.
func tableRows(w io.Writer, header []string, rows [][]string) {
	widths := make([]int, len(header))
	for i, h := range header {
		widths[i] = len(h)
	}
	for _, r := range rows {
		for i, c := range r {
			widths[i] = max(widths[i], len(c))
		}
	}
	line := func(cells []string) {
		var b strings.Builder
		for i, c := range cells {
			if i > 0 {
				b.WriteString("  ")
			}
			if i == len(cells)-1 {
				b.WriteString(c)
			} else {
				b.WriteString(c + strings.Repeat(" ", widths[i]-len(c)))
			}
		}
		fmt.Fprintln(w, b.String())
	}
	line(header)
	for _, r := range rows {
		line(r)
	}
}

// callAdmin makes one admin API call with the command's timeout. A failure
// exits 1 with the admin client's message, which names the fix.
func callAdmin[T any](cmd *cobra.Command, g *globals, call func(*admin.Client, context.Context) (T, error)) (T, error) {
	var zero T
	c, err := g.client()
	if err != nil {
		return zero, err
	}
	ctx, cancel := g.ctx(cmd.Context())
	defer cancel()
	res, err := call(c, ctx)
	if err != nil {
		return zero, failed(err)
	}
	return res, nil
}
