package secret

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestReadPrivateFile(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string, mode fs.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil { // WriteFile's mode passes through the umask
			t.Fatal(err)
		}
		return p
	}
	good := write("good", "s3cret\n", 0o600)
	b, err := ReadPrivateFile(good, 64)
	if err != nil || string(b.Reveal()) != "s3cret\n" {
		t.Fatalf("0600 file: %q %v", b.Reveal(), err)
	}
	if _, err := ReadPrivateFile(write("ro", "x", 0o400), 64); err != nil {
		t.Fatalf("0400 file: %v", err)
	}
	for _, mode := range []fs.FileMode{0o644, 0o640, 0o604, 0o620, 0o602, 0o610, 0o601} {
		p := write("open", "s3cret", mode)
		_, err := ReadPrivateFile(p, 64)
		var me *ModeError
		if !errors.Is(err, ErrOpenToOthers) || !errors.As(err, &me) || me.Mode != mode {
			t.Fatalf("mode %04o: %v", mode, err)
		}
		if msg := err.Error(); !strings.Contains(msg, fmt.Sprintf("mode %04o;", uint32(mode))) ||
			!strings.Contains(msg, "run: chmod 600 "+p) || strings.Contains(msg, "s3cret") {
			t.Fatalf("mode %04o: message %q", mode, msg)
		}
	}
	if err := CheckFileMode("/x", 0o644); err == nil || err.Error() != "it has mode 0644; run: chmod 600 /x" {
		t.Fatalf("CheckFileMode text: %v", err)
	}
	if _, err := ReadPrivateFile(dir, 64); !errors.Is(err, ErrNotRegular) {
		t.Fatalf("directory: %v", err)
	}
	if _, err := ReadPrivateFile(write("big", strings.Repeat("x", 65), 0o600), 64); !errors.Is(err, ErrFileTooLarge) {
		t.Fatalf("too large: %v", err)
	}
	var pe *fs.PathError
	if _, err := ReadPrivateFile(filepath.Join(dir, "missing"), 64); !errors.As(err, &pe) || !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("missing: %v", err)
	}
}

func TestShellQuote(t *testing.T) {
	for in, want := range map[string]string{
		"/etc/qpcd/dsn": "/etc/qpcd/dsn",
		"/my dsn":       "'/my dsn'",
		"/it's":         `'/it'\''s'`,
		"":              "''",
	} {
		if got := ShellQuote(in); got != want {
			t.Errorf("ShellQuote(%q) = %q, want %q", in, got, want)
		}
	}
}
