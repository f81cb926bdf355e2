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
	pf.DurationVar(&g.timeout, "timeout", 10*time.Minute, "give up on the operation after this long")
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

func (g *globals) ctx(parent context.Context) (context.Context, context.CancelFunc) {
	if parent == nil {
		parent = context.Background()
	}
	return context.WithTimeout(parent, g.timeout)
}

// emit prints v as JSON (--json) or calls human.
func (g *globals) emit(v any, human func(w io.Writer)) error {
	if g.json {
		// One JSON document per line (as qpc prints), what scripts and jq -c expect.
		return json.NewEncoder(g.stdout).Encode(v)
	}
	human(g.stdout)
	return nil
}

// progressOn reports whether progress goes to stderr: a terminal, not --json.
func (g *globals) progressOn() bool {
	return !g.json && g.isTTY != nil && g.isTTY()
}

// stderrIsTerminal is the default isTTY.
func stderrIsTerminal() bool {
	st, err := os.Stderr.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// progress prints a one-line, self-overwriting status on a terminal.
type progress struct {
	g    *globals
	on   bool
	last time.Time
	used bool
}

func (g *globals) newProgress() *progress { return &progress{g: g, on: g.progressOn()} }

func (p *progress) show(format string, args ...any) {
	if !p.on {
		return
	}
	if time.Since(p.last) < 100*time.Millisecond && p.used {
		return
	}
	p.last = time.Now()
	p.used = true
	fmt.Fprintf(p.g.stderr, "\r\033[K"+format, args...)
}

func (p *progress) step(s string) {
	if !p.on {
		return
	}
	p.used = true
	fmt.Fprintf(p.g.stderr, "\r\033[K%s...", s)
}

func (p *progress) done() {
	if p.on && p.used {
		fmt.Fprint(p.g.stderr, "\r\033[K")
	}
}

// ticker shows "what... Ns" every 200 ms until stop is called.
func (p *progress) ticker(what string) (stop func()) {
	if !p.on {
		return func() {}
	}
	start := time.Now()
	quit := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		t := time.NewTicker(200 * time.Millisecond)
		defer t.Stop()
		for {
			fmt.Fprintf(p.g.stderr, "\r\033[K%s... %s", what, time.Since(start).Round(100*time.Millisecond))
			select {
			case <-quit:
				fmt.Fprint(p.g.stderr, "\r\033[K")
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
