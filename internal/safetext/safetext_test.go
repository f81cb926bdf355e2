package safetext

import (
	"errors"
	"strings"
	"testing"
)

func TestCheck(t *testing.T) {
	for _, bad := range []string{"alice\x1b[2K", "ali\u202Eecila", "a\u2066b", "bell\a", "zero\u200bwidth", "a\nb", "nul\x00", "c1\u0085", "\xff"} {
		if err := Check("display name", bad); !errors.Is(err, ErrUnsafe) {
			t.Errorf("Check(%q) = %v, want ErrUnsafe", bad, err)
		}
	}
	for _, good := range []string{"alice", "Zoë Müller", "佐藤", "team-1", "O'Brien", ""} {
		if err := Check("display name", good); err != nil {
			t.Errorf("Check(%q) = %v", good, err)
		}
	}
}

func TestDisplay(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"hello", "hello"},
		{"alice\x1b[2K", `alice\x1b[2K`},
		{"abc\u202Edef", "abc<U+202E>def"},
		{"two\nlines", "two\n    lines"},
		{"tab\tkept", "tab\tkept"},
		{"bad\xffbyte", `bad\xffbyte`},
		{"\x1b]0;title\x07", `\x1b]0;title\x07`},
	} {
		if got := Display(c.in, "    "); got != c.want {
			t.Errorf("Display(%q) = %q, want %q", c.in, got, c.want)
		}
	}
	if got := Line("a\nb"); got != `a\x0ab` {
		t.Errorf("Line = %q", got)
	}
	// Nothing that reaches the terminal keeps an ESC or a bidi override.
	out := Display("x\x1b[31my\u202E\u2067", "  ")
	if strings.ContainsAny(out, "\x1b\u202E\u2067") {
		t.Errorf("Display left control characters: %q", out)
	}
}

func FuzzDisplay(f *testing.F) {
	f.Add("alice\x1b[2K\u202E\n")
	f.Fuzz(func(t *testing.T, s string) {
		out := Line(s)
		for _, r := range out {
			if unsafe(r) && r != '\t' {
				t.Fatalf("Line(%q) = %q keeps %U", s, out, r)
			}
		}
	})
}
