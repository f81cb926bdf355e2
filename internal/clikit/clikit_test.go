package clikit

import (
	"strings"
	"testing"
)

func TestPositional(t *testing.T) {
	for use, want := range map[string]string{
		"register NAME [--invite CODE]":          "NAME",
		"send CHANNEL [TEXT]":                    "CHANNEL",
		"add NAME USER...":                       "NAME USER...",
		"revert-epoch CHANNEL_ID --to EPOCH":     "CHANNEL_ID",
		"retry [MESSAGE_ID | --all]":             "",
		"init --server HOST:PORT [--pin SHA256]": "",
		"whoami":                                 "",
	} {
		if got := strings.Join(positional(use), " "); got != want {
			t.Errorf("positional(%q) = %q, want %q", use, got, want)
		}
	}
}

func TestWantsJSON(t *testing.T) {
	if !WantsJSON([]string{"bogus", "--json"}) || WantsJSON([]string{"send", "--", "--json"}) || WantsJSON([]string{"--json=false"}) {
		t.Error("WantsJSON")
	}
}
