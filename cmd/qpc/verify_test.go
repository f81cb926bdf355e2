package main

import (
	"bufio"
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"strings"
	"testing"

	"github.com/quicprochat/quicprochat/internal/identity"
	"github.com/quicprochat/quicprochat/internal/server/servertest"
)

// qpc verify (safety numbers, QR code, --confirm), qpc device link /
// approve, and the warnings about a verified contact's new device, through
// the built binary.
func TestVerifyLinkAndNewDeviceWarnings(t *testing.T) {
	srv := servertest.Start(t, servertest.Config(t))
	alice, bob := newUser(t), newUser(t)
	for _, u := range []struct {
		u    *user
		name string
	}{{alice, "alice"}, {bob, "bob"}} {
		u.u.ok("init", "--server", srv.Addr(), "--pin", srv.Pin())
		u.u.ok("register", u.name)
	}
	alice.ok("group", "create", "team")
	alice.ok("group", "add", "team", "bob")
	acceptInvitations(t, bob)
	alice.ok("send", "team", "hi")
	bob.ok("recv")

	number := func(u *user, peer string) string {
		t.Helper()
		l := jsonLines(t, u.ok("--json", "verify", peer))
		n, _ := l[0]["number"].(string)
		if len(n) != 60 || l[0]["verified"] != false {
			t.Fatalf("verify %s: %v", peer, l)
		}
		return n
	}
	an, bn := number(alice, "@bob"), number(bob, "alice")
	if an != bn {
		t.Fatalf("alice sees %s, bob %s", an, bn)
	}
	human := alice.ok("verify", "@bob", "--qr", "on")
	if !strings.Contains(human, identity.FormatSafetyNumber(an, true)[:23]) || !strings.Contains(human, "not verified") || !strings.ContainsAny(human, "█▀▄") {
		t.Fatalf("human output: %q", human)
	}
	if out := alice.ok("verify", "@bob"); strings.ContainsAny(out, "█▀▄") {
		t.Fatalf("QR code printed to a pipe: %q", out)
	}
	wrong := []byte(an)
	wrong[0] = '0' + (wrong[0]-'0'+1)%10
	if r := alice.run("verify", "@bob", "--confirm", string(wrong)); r.code != 1 || !strings.Contains(r.stderr, "does not match") {
		t.Fatalf("a wrong number: exit %d, %q", r.code, r.stderr)
	}
	if r := alice.run("verify", "@bob", "--confirm", "12345"); r.code != 2 {
		t.Fatalf("a short number: exit %d, want 2", r.code)
	}
	if out := alice.ok("verify", "@bob", "--confirm", identity.FormatSafetyNumber(an, false)); !strings.Contains(out, "bob is now verified") {
		t.Fatalf("confirm: %q", out)
	}

	// bob links a second device.
	bob2 := newUser(t)
	bob2.ok("init", "--server", srv.Addr(), "--pin", srv.Pin())
	link := bob2.cmd("", "--json", "device", "link", "bob", "--name", "laptop")
	stdout, err := link.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var linkErr bytes.Buffer
	link.Stderr = &linkErr
	if err := link.Start(); err != nil {
		t.Fatal(err)
	}
	lines := bufio.NewScanner(stdout)
	if !lines.Scan() {
		t.Fatalf("device link printed nothing: %s", linkErr.String())
	}
	var first map[string]any
	if err := json.Unmarshal(lines.Bytes(), &first); err != nil {
		t.Fatal(err)
	}
	code, _ := first["code"].(string)
	if r := bob.run("device", "approve", "not-a-code"); r.code != 2 {
		t.Fatalf("approve with a malformed code: exit %d", r.code)
	}
	approved := jsonLines(t, bob.ok("--json", "device", "approve", code))
	if !lines.Scan() {
		t.Fatalf("device link ended without a result: %s", linkErr.String())
	}
	var last map[string]any
	if err := json.Unmarshal(lines.Bytes(), &last); err != nil {
		t.Fatal(err)
	}
	if err := link.Wait(); err != nil {
		t.Fatalf("device link: %v: %s", err, linkErr.String())
	}
	if last["device_id"] != approved[0]["device_id"] || last["identity_key"] != approved[0]["identity_key"] || last["identity_key"] == "" {
		t.Fatalf("link %v, approve %v", last, approved)
	}
	newDev, _ := last["device_id"].(string)
	if n := number(bob2, "alice"); n != an {
		t.Fatalf("bob's second device sees safety number %s, want %s", n, an)
	}

	// bob adds his new device to the group: alice is told, sees it in the
	// member list, and must confirm before sending there.
	bob.ok("group", "add", "team", "bob")
	out := alice.ok("recv")
	if !strings.Contains(out, "[trust]") || !strings.Contains(out, newDev) || !strings.Contains(out, "whom you verified, has a new device") {
		t.Fatalf("recv does not show the new device: %q", out)
	}
	if members := alice.ok("group", "members", "team"); !strings.Contains(members, "bob/"+newDev+"  new-device") {
		t.Fatalf("members: %q", members)
	}
	if r := alice.run("send", "team", "hello"); r.code != 1 || !strings.Contains(r.stderr, "--allow-unverified") {
		t.Fatalf("send with an unconfirmed device: exit %d, %q", r.code, r.stderr)
	}
	alice.ok("send", "--allow-unverified", "team", "hello")
	if got := bob2.ok("recv"); !strings.Contains(got, "hello") {
		t.Fatalf("bob's new device: %q", got)
	}
	alice.ok("send", "team", "again")
}

// linkUser links a new home to account through qpc device link, approved
// by approver with qpc device approve.
func linkUser(t *testing.T, srv *servertest.Server, approver *user, account string) *user {
	t.Helper()
	u := newUser(t)
	u.ok("init", "--server", srv.Addr(), "--pin", srv.Pin())
	link := u.cmd("", "--json", "device", "link", account)
	stdout, err := link.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var linkErr bytes.Buffer
	link.Stderr = &linkErr
	if err := link.Start(); err != nil {
		t.Fatal(err)
	}
	lines := bufio.NewScanner(stdout)
	if !lines.Scan() {
		t.Fatalf("device link printed nothing: %s", linkErr.String())
	}
	var first map[string]any
	if err := json.Unmarshal(lines.Bytes(), &first); err != nil {
		t.Fatal(err)
	}
	code, _ := first["code"].(string)
	approver.ok("device", "approve", code)
	for lines.Scan() {
	}
	if err := link.Wait(); err != nil {
		t.Fatalf("device link: %v: %s", err, linkErr.String())
	}
	return u
}

// qpc identity reset from a linked device after the registering one is
// lost: confirmation, the warning alice (who verified bob) gets, the send
// that needs re-verification, the daily limit; qpc devices add refuses on
// a device without the identity key.
func TestIdentityResetCommand(t *testing.T) {
	srv := servertest.Start(t, servertest.Config(t))
	alice, bob := newUser(t), newUser(t)
	alice.ok("init", "--server", srv.Addr(), "--pin", srv.Pin())
	alice.ok("register", "alice")
	bob.ok("init", "--server", srv.Addr(), "--pin", srv.Pin())
	bob.ok("register", "bob")
	bob2 := linkUser(t, srv, bob, "bob")
	pub, _, _ := ed25519.GenerateKey(rand.Reader)
	if r := bob2.run("devices", "add", hex.EncodeToString(pub)); r.code != 1 || !strings.Contains(r.stderr, "qpc device link bob") {
		t.Fatalf("devices add without the identity key: exit %d, %q", r.code, r.stderr)
	}
	alice.ok("group", "create", "team")
	alice.ok("group", "add", "team", "bob")
	acceptInvitations(t, bob)
	bob2.ok("recv")
	bn := jsonLines(t, bob2.ok("--json", "verify", "@alice"))[0]["number"].(string)
	alice.ok("verify", "@bob", "--confirm", bn)
	alice.ok("send", "team", "before")

	// bob's first device is lost.
	var lost string
	for _, d := range jsonLines(t, bob2.ok("--json", "devices")) {
		if d["this_device"] != true {
			lost, _ = d["device_id"].(string)
		}
	}
	bob2.ok("devices", "revoke", lost)
	if r := bob2.run("identity", "reset"); r.code != 2 || !strings.Contains(r.stderr, "--yes") {
		t.Fatalf("reset without confirmation: exit %d, %q", r.code, r.stderr)
	}
	out := bob2.ok("identity", "reset", "--yes")
	if !strings.Contains(out, "identity key is now") || !strings.Contains(out, "rejoined with the new certificate: team") {
		t.Fatalf("reset: %q", out)
	}
	got := alice.ok("recv")
	if !strings.Contains(got, "[trust] WARNING") || !strings.Contains(got, "you verified bob") {
		t.Fatalf("alice's recv after bob's reset: %q", got)
	}
	if r := alice.run("send", "team", "after"); r.code != 1 || !strings.Contains(r.stderr, "--allow-unverified") || !strings.Contains(r.stderr, "identity key changed") {
		t.Fatalf("alice's send after bob's reset: exit %d, %q", r.code, r.stderr)
	}
	if v := alice.ok("verify", "@bob"); !strings.Contains(v, "WARNING: a device certified by another identity key") {
		t.Fatalf("verify after the reset: %q", v)
	}
	bn2 := jsonLines(t, bob2.ok("--json", "verify", "@alice"))[0]["number"].(string)
	alice.ok("verify", "@bob", "--confirm", bn2)
	alice.ok("send", "team", "after")
	if got := bob2.ok("recv"); !strings.Contains(got, "after") {
		t.Fatalf("bob2: %q", got)
	}
	if r := bob2.run("identity", "reset", "--yes"); r.code != 1 || !strings.Contains(r.stderr, "24 hours") {
		t.Fatalf("a second reset the same day: exit %d, %q", r.code, r.stderr)
	}
}
