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

func TestShowProgress(t *testing.T) {
	forced := func(k string) string {
		if k == EnvProgress {
			return "1"
		}
		return ""
	}
	none := func(string) string { return "" }
	for _, c := range []struct {
		json     bool
		getenv   func(string) string
		terminal bool
		want     bool
	}{
		{false, none, true, true},
		{false, none, false, false},
		{false, forced, false, true},
		{true, forced, true, false},
		{true, none, true, false},
	} {
		if got := ShowProgress(c.json, c.getenv, c.terminal); got != c.want {
			t.Errorf("ShowProgress(json=%v, forced=%v, terminal=%v) = %v", c.json, c.getenv(EnvProgress) == "1", c.terminal, got)
		}
	}
}
