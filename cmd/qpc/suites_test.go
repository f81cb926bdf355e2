package main

import (
	"strings"
	"testing"

	"github.com/quicprochat/quicprochat/internal/server/servertest"
)

// TestGroupSuiteCommands: against a qpcd that prefers X-Wing, `group
// create` takes it, `--suite` overrides within the policy, `group info`
// shows the suite, and adding an account without the group's suite fails
// naming it.
func TestGroupSuiteCommands(t *testing.T) {
	cfg := servertest.Config(t)
	cfg.MLS.AllowedSuites = "0xF00D,1"
	srv := servertest.Start(t, cfg)
	alice, bob := newUser(t), newUser(t)
	for _, u := range []*user{alice, bob} {
		u.ok("init", "--server", srv.Addr(), "--pin", srv.Pin())
	}
	alice.ok("register", "alice")
	bob.ok("register", "bob")
	if out := alice.ok("keys"); !strings.Contains(out, "MLS_256_XWING_AES256GCM_SHA512_Ed25519: stock 10 of 10, last resort true") ||
		!strings.Contains(out, "MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519: stock 10 of 10, last resort true") {
		t.Fatalf("keys over two suites: %q", out)
	}
	if out := alice.ok("group", "create", "pq"); !strings.Contains(out, "MLS_256_XWING_AES256GCM_SHA512_Ed25519") {
		t.Fatalf("create: %q", out)
	}
	alice.ok("group", "create", "classic", "--suite", "MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519")
	info := jsonLines(t, alice.ok("--json", "group", "info", "pq"))
	if len(info) != 1 || info[0]["suite"] != "MLS_256_XWING_AES256GCM_SHA512_Ed25519" || info[0]["post_quantum"] != true {
		t.Fatalf("info pq: %v", info)
	}
	if out := alice.ok("group", "info", "classic"); !strings.Contains(out, "suite:    MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519\n") {
		t.Fatalf("info classic: %q", out)
	}
	alice.ok("group", "add", "pq", "bob")
	acceptInvitations(t, bob)
	alice.ok("send", "pq", "hello")
	if out := bob.ok("recv"); !strings.Contains(out, "<alice>: hello") {
		t.Fatalf("bob recv: %q", out)
	}
	// Outside the policy: a failure naming what the server allows.
	if r := alice.run("group", "create", "x448", "--suite", "4"); r.code != 1 || !strings.Contains(r.stderr, "MLS_256_DHKEMX448_AES256GCM_SHA512_Ed448") {
		t.Fatalf("suite outside the policy: exit %d, %q", r.code, r.stderr)
	}
	if r := alice.run("group", "create", "bogus", "--suite", "nope"); r.code != 2 {
		t.Fatalf("unknown suite name: exit %d, %q", r.code, r.stderr)
	}
}
