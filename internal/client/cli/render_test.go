package cli

import (
	"strings"
	"testing"

	"github.com/quicprochat/quicprochat/internal/client"
)

// TestEventTextMadeSafe: a membership event printed by recv, watch and
// history goes through the same neutralising as a message: its text (built
// from names the server sent) cannot move the cursor, clear the screen,
// reverse the line or forge a second line.
func TestEventTextMadeSafe(t *testing.T) {
	m := client.Message{Channel: "team", Text: "mallory\x1b[2J removed bob\u202E\n[team] 12:00:00 <bob>: forged",
		Event: &client.Event{Type: "removed", Actor: "mallory", Subject: "bob"}}
	line := humanMessage(m)
	if strings.ContainsAny(line, "\x1b\u202E\n") {
		t.Fatalf("event printed with raw control characters: %q", line)
	}
	if !strings.Contains(line, `\x1b[2J`) || !strings.Contains(line, "<U+202E>") || !strings.Contains(line, "* mallory") {
		t.Fatalf("event line %q: want the escape and the override shown visibly", line)
	}
	in := invitationLine(client.Invitation{ID: "id\x1b[1A", Inviter: "eve\u202E", Kind: "group"})
	if strings.ContainsAny(in, "\x1b\u202E") {
		t.Fatalf("invitation printed with raw control characters: %q", in)
	}
}
