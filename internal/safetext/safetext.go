// Package safetext keeps text from other people from taking over a terminal or passing for someone else: Check refuses control, bidirectional and invisible format characters in user-chosen names, and Display makes them visible in human output.
package safetext

import (
	"errors"
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// ErrUnsafe: a name holds a character that can hide or rearrange text on a
// terminal (a control character, an escape sequence, a bidirectional
// override or isolate, an invisible format character) or is not UTF-8.
var ErrUnsafe = errors.New("safetext: control, bidirectional or invisible characters are not allowed")

// unsafe reports whether r may hide, move or restyle text on a terminal:
// C0 and C1 controls (ESC starts escape sequences), DEL, and the Unicode
// format characters (Cf), which include the bidirectional embeddings,
// overrides and isolates (U+202A-U+202E, U+2066-U+2069), the marks
// U+200E, U+200F, U+061C, zero-width characters and U+FEFF, plus the line
// and paragraph separators.
func unsafe(r rune) bool {
	return unicode.IsControl(r) || unicode.Is(unicode.Cf, r) || r == '\u2028' || r == '\u2029' || r == utf8.RuneError
}

// Check returns an error wrapping ErrUnsafe if name (a display name, group
// name, device name or any other name people choose) is not valid UTF-8 or
// holds an unsafe character; what names the field, for the message.
func Check(what, name string) error {
	if !utf8.ValidString(name) {
		return fmt.Errorf("%w: %s is not valid UTF-8", ErrUnsafe, what)
	}
	for i, r := range name {
		if unsafe(r) {
			return fmt.Errorf("%w: %s has %U at byte %d", ErrUnsafe, what, r, i)
		}
	}
	return nil
}

// Display returns s fit for a terminal, one line per line of s: unsafe
// characters are shown as visible escapes (\x1b, <U+202E>), and each line
// after the first is indented by indent so it cannot pass for a new line
// of output (a forged header). Tabs are kept.
func Display(s, indent string) string { return render(s, indent, true) }

// Line is Display for a value that must stay on one line (a name, a
// label): a newline is shown as \x0a too.
func Line(s string) string { return render(s, "", false) }

func render(s, indent string, newlines bool) string {
	if !needsWork(s) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && n <= 1:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case r == '\n' && newlines:
			b.WriteString("\n")
			b.WriteString(indent)
		case r == '\t':
			b.WriteRune(r)
		case r < 0x20 || r == 0x7f:
			fmt.Fprintf(&b, `\x%02x`, r)
		case unsafe(r):
			fmt.Fprintf(&b, "<%U>", r)
		default:
			b.WriteString(s[i : i+n])
		}
		i += n
	}
	return b.String()
}

func needsWork(s string) bool {
	for _, r := range s {
		if r != '\t' && unsafe(r) || r == utf8.RuneError {
			return true
		}
	}
	return !utf8.ValidString(s)
}
