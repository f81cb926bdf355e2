package clidoc

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

// TestManKeepsPlaceholders: "<data_dir>" in a help text or a flag's usage
// reaches the man page (the renderer took it for an HTML tag and dropped
// it, so qpcctl's pages said "default /db.key").
func TestManKeepsPlaceholders(t *testing.T) {
	root := &cobra.Command{Use: "tool", Long: "reads <data_dir>/db.key", Run: func(*cobra.Command, []string) {}}
	root.PersistentFlags().String("db-key-file", "", "key file (default <data_dir>/db.key)")
	sub := &cobra.Command{Use: "sub", Short: "uses <SOCKET>", Run: func(*cobra.Command, []string) {}}
	root.AddCommand(sub)
	dir := t.TempDir()
	if err := WriteMan(root, dir); err != nil {
		t.Fatal(err)
	}
	for page, wants := range map[string][]string{
		"tool.1":     {"reads <data_dir>/db.key", "(default <data_dir>/db.key)"},
		"tool-sub.1": {"uses <SOCKET>", "(default <data_dir>/db.key)"}, // inherited flag
	} {
		b, err := os.ReadFile(filepath.Join(dir, page))
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range wants {
			if !strings.Contains(string(b), want) {
				t.Errorf("%s lacks %q:\n%s", page, want, b)
			}
		}
		if strings.Contains(string(b), `\<`) {
			t.Errorf("%s shows the escape:\n%s", page, b)
		}
	}
}
