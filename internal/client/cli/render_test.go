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

// TestKeyLogAlarmPrinted: recv and watch print fork evidence as [keylog]
// lines naming both heads and where they came from, and as a
// "keylog_alarm" object with --json; names from other people are made safe.
func TestKeyLogAlarmPrinted(t *testing.T) {
	al := client.KeyLogAlarm{Kind: "fork", Detail: "two roots for size 9", HeadA: "01aa", SourceA: "server", HeadB: "01bb",
		SourceB: "carol/0f62\x1b[2J in team", AtMs: 1}
	var out strings.Builder
	a := &app{io: IO{Stdout: &out}}
	if err := a.printKeyLogAlarms([]client.KeyLogAlarm{al}); err != nil {
		t.Fatal(err)
	}
	text := out.String()
	if !strings.HasPrefix(text, "[keylog] WARNING: the server showed different key logs (fork)") || !strings.Contains(text, "01aa") ||
		!strings.Contains(text, "01bb") || strings.Contains(text, "\x1b") {
		t.Fatalf("human alarm %q", text)
	}
	out.Reset()
	a.json = true
	if err := a.printKeyLogAlarms([]client.KeyLogAlarm{al}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), `{"keylog_alarm":{"kind":"fork"`) || !strings.Contains(out.String(), `"head_b":"01bb"`) {
		t.Fatalf("json alarm %q", out.String())
	}
}
