package main

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
)

// TestEveryCommandGroupIsStrict: every command group of qpcctl exits 2 with
// a usage error for an unknown subcommand or none (they printed help and
// exited 0); with --json the error is one JSON object on one line; a
// missing argument is named with the usage line; --version works.
func TestEveryCommandGroupIsStrict(t *testing.T) {
	dir := filepath.Join(shortDir(t), "data")
	groups := [][]string{{}, {"rotate"}, {"backup"}, {"accounts"}, {"devices"}, {"invites"}, {"channels"}, {"release"}, {"completion"}}
	for _, g := range groups {
		args := append(append([]string{}, g...), "bogus")
		r := ctl(t, dir, args...)
		if r.code != 2 || !strings.Contains(r.stderr, `unknown command "bogus"`) {
			t.Errorf("qpcctl %v: exit %d, stderr %q; want 2", args, r.code, r.stderr)
		}
		r = ctl(t, dir, append([]string{"--json"}, args...)...)
		var obj map[string]any
		if r.code != 2 || strings.Count(strings.TrimSpace(r.stdout), "\n") != 0 || json.Unmarshal([]byte(r.stdout), &obj) != nil || obj["exit_code"] != float64(2) {
			t.Errorf("qpcctl --json %v: exit %d, stdout %q; want one JSON line", args, r.code, r.stdout)
		}
		if len(g) > 0 {
			if r := ctl(t, dir, g...); r.code != 2 || !strings.Contains(r.stderr, "needs a command") {
				t.Errorf("qpcctl %v: exit %d, stderr %q", g, r.code, r.stderr)
			}
		}
	}
	if r := ctl(t, dir, "accounts", "show"); r.code != 2 || !strings.Contains(r.stderr, "missing ") || !strings.Contains(r.stderr, "usage: qpcctl accounts show") {
		t.Errorf("accounts show: exit %d, %q", r.code, r.stderr)
	}
	if r := ctl(t, dir, "--version"); r.code != 0 || !strings.HasPrefix(r.stdout, "qpcctl ") {
		t.Errorf("--version: exit %d, %q", r.code, r.stdout)
	}
}
