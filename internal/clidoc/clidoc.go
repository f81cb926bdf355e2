// Package clidoc writes the man pages and shell completion scripts of the
// qpcd, qpcctl and qpc command trees; the packages ship them from
// packaging/man and packaging/completions, which tests keep current.
package clidoc

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/cobra/doc"
	"github.com/spf13/pflag"
)

// CommandName is the hidden subcommand every binary carries for this.
const CommandName = "gen-docs"

// ErrWrite: a page or script could not be written.
var ErrWrite = errors.New("clidoc: cannot write")

// Command is `BINARY gen-docs --man DIR --completions DIR`, hidden from help.
func Command() *cobra.Command {
	var manDir, complDir string
	c := &cobra.Command{
		Use:    CommandName + " --man DIR --completions DIR",
		Short:  "Write man pages and shell completion scripts (used to build the packages)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			root := cmd.Root()
			if manDir != "" {
				if err := WriteMan(root, manDir); err != nil {
					return err
				}
			}
			if complDir != "" {
				if err := WriteCompletions(root, complDir); err != nil {
					return err
				}
			}
			return nil
		},
	}
	c.Flags().StringVar(&manDir, "man", "", "directory for the section 1 man pages")
	c.Flags().StringVar(&complDir, "completions", "", "directory for the bash, zsh and fish completion scripts")
	return c
}

// thLine is the man page title line; its date field is left empty so that
// the pages depend only on the command tree (reproducible, and comparable
// in tests).
var thLine = regexp.MustCompile(`(?m)^\.TH "([^"]*)" "([^"]*)" "[^"]*" `)

// WriteMan writes one page per visible command: BINARY.1, BINARY-SUB.1, ...
func WriteMan(root *cobra.Command, dir string) error {
	root.DisableAutoGenTag = true
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("%w: %v", ErrWrite, err)
	}
	escapePlaceholders(root)
	header := &doc.GenManHeader{Section: "1", Source: "quicprochat", Manual: "quicprochat manual"}
	var walk func(c *cobra.Command) error
	walk = func(c *cobra.Command) error {
		if !c.IsAvailableCommand() && c != root || c.IsAdditionalHelpTopicCommand() {
			return nil
		}
		for _, sub := range c.Commands() {
			if err := walk(sub); err != nil {
				return err
			}
		}
		var buf bytes.Buffer
		h := *header
		if err := doc.GenMan(c, &h, &buf); err != nil {
			return fmt.Errorf("%w: %s: %v", ErrWrite, c.CommandPath(), err)
		}
		page := thLine.ReplaceAll(buf.Bytes(), []byte(`.TH "$1" "$2" "" `))
		name := strings.ReplaceAll(c.CommandPath(), " ", "-") + ".1"
		if err := os.WriteFile(filepath.Join(dir, name), page, 0o644); err != nil {
			return fmt.Errorf("%w: %v", ErrWrite, err)
		}
		return nil
	}
	return walk(root)
}

// placeholder is "<data_dir>" and the like, which the man page renderer
// would take for an HTML tag and drop ("default /db.key").
var placeholder = regexp.MustCompile(`<([A-Za-z_])`)

// escapePlaceholders escapes the placeholders of every help text and flag
// usage under root for the renderer (gen-docs runs in a process of its
// own, so changing the tree is harmless).
func escapePlaceholders(root *cobra.Command) {
	esc := func(s string) string { return placeholder.ReplaceAllString(s, `\<$1`) }
	seen := map[*pflag.Flag]bool{}
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		c.Short, c.Long, c.Example = esc(c.Short), esc(c.Long), esc(c.Example)
		for _, fs := range []*pflag.FlagSet{c.LocalFlags(), c.PersistentFlags()} {
			fs.VisitAll(func(f *pflag.Flag) {
				if !seen[f] {
					seen[f] = true
					f.Usage = esc(f.Usage)
				}
			})
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(root)
}

// WriteCompletions writes NAME.bash, _NAME (zsh) and NAME.fish.
func WriteCompletions(root *cobra.Command, dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("%w: %v", ErrWrite, err)
	}
	name := root.Name()
	for file, gen := range map[string]func(*bytes.Buffer) error{
		name + ".bash": func(b *bytes.Buffer) error { return root.GenBashCompletionV2(b, true) },
		"_" + name:     func(b *bytes.Buffer) error { return root.GenZshCompletion(b) },
		name + ".fish": func(b *bytes.Buffer) error { return root.GenFishCompletion(b, true) },
	} {
		var buf bytes.Buffer
		if err := gen(&buf); err != nil {
			return fmt.Errorf("%w: %s: %v", ErrWrite, file, err)
		}
		if err := os.WriteFile(filepath.Join(dir, file), buf.Bytes(), 0o644); err != nil {
			return fmt.Errorf("%w: %v", ErrWrite, err)
		}
	}
	return nil
}
