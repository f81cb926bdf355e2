// Package clikit holds the command-line conventions qpc, qpcctl and qpcd share: unknown or missing subcommands and wrong argument counts are usage errors (exit 2) that name what is wrong and show the usage line, --version, spotting --json before flags are parsed, and when progress goes to stderr (QPC_PROGRESS).
package clikit

import (
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"
)

// Strict walks the command tree under root and makes usage mistakes
// errors that wrap turns into the binary's usage error (exit 2):
//   - a command group (a command with subcommands and nothing to run of its
//     own) given no subcommand, or one it does not know, fails instead of
//     printing help and exiting 0;
//   - an argument-count error names the missing argument(s) from the Use
//     line ("missing NAME") and ends with the usage line.
func Strict(root *cobra.Command, wrap func(error) error) {
	// cobra adds these at Execute; add them now so they are checked too.
	root.InitDefaultHelpCmd()
	root.InitDefaultCompletionCmd()
	strict(root, wrap)
}

func strict(c *cobra.Command, wrap func(error) error) {
	if c.HasSubCommands() && c.Run == nil && c.RunE == nil {
		group(c, wrap)
	} else if c.Args != nil {
		check := c.Args
		c.Args = func(cmd *cobra.Command, args []string) error {
			if err := check(cmd, args); err != nil {
				return wrap(ArgsError(cmd, args, err))
			}
			return nil
		}
	}
	for _, s := range c.Commands() {
		strict(s, wrap)
	}
}

// group makes c (a command group) refuse to run without a known subcommand.
func group(c *cobra.Command, wrap func(error) error) {
	c.Args = func(cmd *cobra.Command, args []string) error {
		if len(args) > 0 {
			return wrap(fmt.Errorf("unknown command %q for %q; its commands: %s (see %s --help)",
				args[0], cmd.CommandPath(), strings.Join(names(cmd), ", "), cmd.CommandPath()))
		}
		return nil
	}
	c.RunE = func(cmd *cobra.Command, _ []string) error {
		return wrap(fmt.Errorf("%s needs a command: %s (see %s --help)", cmd.CommandPath(), strings.Join(names(cmd), ", "), cmd.CommandPath()))
	}
}

func names(c *cobra.Command) []string {
	var out []string
	for _, s := range c.Commands() {
		if s.IsAvailableCommand() {
			out = append(out, s.Name())
		}
	}
	return out
}

// ArgsError rewrites cobra's argument-count error ("accepts 1 arg(s),
// received 0") into one that names the missing arguments, or the
// unexpected ones, and shows the usage line.
func ArgsError(cmd *cobra.Command, args []string, err error) error {
	want := positional(cmd.Use)
	switch {
	case len(args) < len(want):
		return fmt.Errorf("missing %s (usage: %s)", strings.Join(want[len(args):], " "), cmd.UseLine())
	case len(want) == 0 && len(args) > 0 && !strings.Contains(cmd.Use, "["):
		return fmt.Errorf("%s takes no arguments, got %q (usage: %s)", cmd.CommandPath(), args, cmd.UseLine())
	default:
		return fmt.Errorf("%v (usage: %s)", err, cmd.UseLine())
	}
}

// positional lists the required positional arguments of a Use line: the
// upper-case words after the command name, outside [optional] parts.
func positional(use string) []string {
	fields := strings.Fields(use)
	var out []string
	depth := 0
	flagValue := false // the word after "--flag" is its value, not an argument
	for _, f := range fields[min(1, len(fields)):] {
		opening := strings.Count(f, "[")
		isFlag := strings.HasPrefix(strings.TrimLeft(f, "["), "-")
		if depth == 0 && opening == 0 && !isFlag && !flagValue && f == strings.ToUpper(f) && strings.ContainsAny(f, "ABCDEFGHIJKLMNOPQRSTUVWXYZ") {
			out = append(out, f)
		}
		flagValue = isFlag && !strings.Contains(f, "=")
		depth += opening - strings.Count(f, "]")
	}
	return out
}

// WantsJSON reports whether --json (or --json=true) is among args before
// "--": for errors raised before cobra parsed the flags (an unknown
// command), so they are still printed as JSON.
func WantsJSON(args []string) bool {
	for _, a := range args {
		switch a {
		case "--":
			return false
		case "--json", "--json=true", "--json=1":
			return true
		}
	}
	return false
}

// EnvProgress set to "1" makes qpc and qpcctl show progress on stderr even
// when it is not a terminal (a log file, a CI job, a test).
const EnvProgress = "QPC_PROGRESS"

// ShowProgress is the one rule of both CLIs for progress on stderr: never
// with --json (stdout is for machines, stderr stays quiet), always with
// QPC_PROGRESS=1, otherwise when stderr is a terminal.
func ShowProgress(json bool, getenv func(string) string, stderrIsTerminal bool) bool {
	if json {
		return false
	}
	if getenv != nil && getenv(EnvProgress) == "1" {
		return true
	}
	return stderrIsTerminal
}

// IsTerminal reports whether w is a character device (a terminal).
func IsTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}
