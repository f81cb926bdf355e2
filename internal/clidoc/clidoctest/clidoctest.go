// Package clidoctest checks that a binary's committed man pages and
// completion scripts (packaging/man, packaging/completions) match what its
// command tree generates now, and rewrites them with -update-docs.
package clidoctest

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/quicprochat/quicprochat/internal/clidoc"
)

var update = flag.Bool("update-docs", false, "rewrite packaging/man and packaging/completions for this binary")

// Check runs the binary's gen-docs through run (its CLI entry point, given
// arguments without the program name) and compares the output with the
// files in packagingDir that belong to binary.
func Check(t *testing.T, binary, packagingDir string, run func(args []string) error) {
	t.Helper()
	tmp := t.TempDir()
	gen := map[string]string{"man": filepath.Join(tmp, "man"), "completions": filepath.Join(tmp, "completions")}
	if err := run([]string{clidoc.CommandName, "--man", gen["man"], "--completions", gen["completions"]}); err != nil {
		t.Fatalf("%s %s: %v", binary, clidoc.CommandName, err)
	}
	for _, kind := range []string{"man", "completions"} {
		committed := filepath.Join(packagingDir, kind)
		want := files(t, gen[kind], binary)
		if len(want) == 0 {
			t.Fatalf("%s generated no %s files", binary, kind)
		}
		if *update {
			for name := range files(t, committed, binary) {
				_ = os.Remove(filepath.Join(committed, name))
			}
			if err := os.MkdirAll(committed, 0o755); err != nil {
				t.Fatal(err)
			}
			for name, b := range want {
				if err := os.WriteFile(filepath.Join(committed, name), b, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			continue
		}
		have := files(t, committed, binary)
		for name, b := range want {
			if !bytes.Equal(have[name], b) {
				t.Errorf("%s/%s is stale or missing; run: go test ./cmd/%s -run GeneratedDocs -update-docs", committed, name, binary)
			}
		}
		for name := range have {
			if _, ok := want[name]; !ok {
				t.Errorf("%s/%s belongs to no %s command; run with -update-docs", committed, name, binary)
			}
		}
	}
}

// files reads dir's files that belong to binary: BINARY.1, BINARY-SUB.1,
// BINARY.bash, _BINARY, BINARY.fish.
func files(t *testing.T, dir, binary string) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	entries, err := os.ReadDir(dir)
	if os.IsNotExist(err) {
		return out
	}
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		n := e.Name()
		mine := n == binary+".1" || strings.HasPrefix(n, binary+"-") && strings.HasSuffix(n, ".1") ||
			n == binary+".bash" || n == "_"+binary || n == binary+".fish"
		if !mine || e.IsDir() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, n))
		if err != nil {
			t.Fatal(err)
		}
		out[n] = b
	}
	return out
}
