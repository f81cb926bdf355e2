package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/quicprochat/quicprochat/internal/server/servertest"
	"github.com/quicprochat/quicprochat/internal/transport"
)

// TestEveryCommandGroupIsStrict: every command group of qpc exits 2 with a
// usage error for an unknown subcommand (it used to print help and exit
// 0), and for none; --json turns every error into one JSON object on
// stdout; --version works; a missing argument is named with the usage line.
func TestEveryCommandGroupIsStrict(t *testing.T) {
	u := newUser(t)
	for _, group := range [][]string{{}, {"group"}, {"completion"}, {"outbox"}} {
		r := u.run(append(append([]string{}, group...), "bogus")...)
		if r.code != 2 || !strings.Contains(r.stderr, "bogus") {
			t.Errorf("qpc %v bogus: exit %d, stderr %q; want 2 naming the command", group, r.code, r.stderr)
		}
		r = u.run(append([]string{"--json"}, append(append([]string{}, group...), "bogus")...)...)
		if objs := jsonLines(t, r.stdout); r.code != 2 || len(objs) != 1 || objs[0]["exit_code"] != float64(2) || objs[0]["error"] == "" {
			t.Errorf("qpc --json %v bogus: exit %d, stdout %q", group, r.code, r.stdout)
		}
	}
	if r := u.run("group"); r.code != 2 || !strings.Contains(r.stderr, "needs a command") {
		t.Errorf("qpc group: exit %d, %q", r.code, r.stderr)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"register"}, "missing NAME (usage: qpc register NAME"},
		{[]string{"group", "add", "team"}, "missing USER..."},
		{[]string{"send"}, "missing CHANNEL (usage: qpc send CHANNEL [TEXT]"},
		{[]string{"outbox", "discard"}, "missing MESSAGE_ID"},
		{[]string{"whoami", "x"}, "takes no arguments"},
	} {
		if r := u.run(c.args...); r.code != 2 || !strings.Contains(r.stderr, c.want) {
			t.Errorf("qpc %v: exit %d, stderr %q; want 2 and %q", c.args, r.code, r.stderr, c.want)
		}
	}
	if r := u.run("--version"); r.code != 0 || !strings.HasPrefix(r.stdout, "qpc ") {
		t.Errorf("--version: exit %d, %q", r.code, r.stdout)
	}
	if r := u.run("--json", "--version"); r.code != 0 || len(jsonLines(t, r.stdout)) != 1 {
		t.Errorf("--json --version: exit %d, %q", r.code, r.stdout)
	}
}

// TestInitRefusesWhatCannotWork: a malformed --server is a usage error
// (it used to be saved and retried as if unreachable), and a self-signed
// server without --pin is refused at once with the fingerprint to pin,
// without saving anything.
func TestInitRefusesWhatCannotWork(t *testing.T) {
	for _, addr := range []string{"127.0.0.1", "127.0.0.1:notaport", "https://127.0.0.1:27443", ":7443", "127.0.0.1:70000"} {
		u := newUser(t)
		r := u.run("init", "--server", addr)
		if r.code != 2 || !strings.Contains(r.stderr, "HOST:PORT") {
			t.Errorf("init --server %s: exit %d, %q; want 2 naming HOST:PORT", addr, r.code, r.stderr)
		}
		if _, err := os.Stat(filepath.Join(u.home, "client.db")); err == nil {
			t.Errorf("init --server %s saved settings", addr)
		}
	}
	srv := servertest.Start(t, servertest.Config(t))
	u := newUser(t)
	start := time.Now()
	r := u.run("init", "--server", srv.Addr())
	if r.code != 1 || !strings.Contains(r.stderr, "not trusted") || !strings.Contains(r.stderr, "--pin "+srv.Pin()) || strings.Contains(r.stderr, "unreachable") {
		t.Fatalf("init without --pin: exit %d, %q; want 1, 'not trusted' and the --pin fix", r.code, r.stderr)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("init without --pin took %s: a certificate error is not retried", d)
	}
	if _, err := os.Stat(filepath.Join(u.home, "client.db")); err == nil {
		t.Error("init without --pin saved settings")
	}
}

// TestMessageSurvivesCertificateRotation: the operator rotates qpcd's TLS
// certificate; alice (old pin) sends: the message is kept (exit 1, the
// error says the certificate changed and shows the re-pin command); she
// re-pins and recv sends it; bob gets it exactly once.
func TestMessageSurvivesCertificateRotation(t *testing.T) {
	srv := servertest.Start(t, servertest.Config(t))
	alice, bob := newUser(t), newUser(t)
	for i, u := range []*user{alice, bob} {
		u.ok("init", "--server", srv.Addr(), "--pin", srv.Pin())
		u.ok("register", []string{"alice", "bob"}[i])
	}
	alice.ok("group", "create", "team")
	alice.ok("group", "add", "team", "bob")
	acceptInvitations(t, bob)
	alice.ok("send", "team", "one")
	bob.ok("recv")

	newPin := rotate(t, srv)
	r := alice.run("send", "team", "two")
	if r.code != 1 || !strings.Contains(r.stderr, "certificate changed") || !strings.Contains(r.stderr, "qpc init --server "+srv.Addr()+" --pin "+newPin) ||
		!strings.Contains(r.stderr, "kept in the outbox") || strings.Contains(r.stderr, "refused") {
		t.Fatalf("send with the old pin: exit %d, stderr %q", r.code, r.stderr)
	}
	ob := jsonLines(t, alice.ok("--json", "outbox"))
	if last := ob[len(ob)-1]; last["status"] != "pending" || last["channel"] != "team" {
		t.Fatalf("outbox: %v", ob)
	}
	if h := alice.ok("history", "team"); !strings.Contains(h, "two  [not delivered yet") {
		t.Fatalf("alice's history does not mark the undelivered message:\n%s", h)
	}
	for _, u := range []*user{alice, bob} {
		u.ok("init", "--server", srv.Addr(), "--pin", newPin)
	}
	alice.ok("recv")
	bob.ok("recv")
	bob.ok("recv")
	if hist := bob.ok("history", "team"); strings.Count(hist, ">: two") != 1 || strings.Count(hist, ">: one") != 1 {
		t.Fatalf("bob's history:\n%s", hist)
	}
	if h := alice.ok("history", "team"); strings.Contains(h, "not delivered") {
		t.Fatalf("alice's history after delivery:\n%s", h)
	}
}

// TestWhatOthersChooseCannotFoolTheTerminal: names with control characters
// are refused; a display name that is not the account name shows with the
// account; escape sequences and bidi overrides in text are made visible.
func TestWhatOthersChooseCannotFoolTheTerminal(t *testing.T) {
	srv := servertest.Start(t, servertest.Config(t))
	bob, mallory := newUser(t), newUser(t)
	for _, u := range []*user{bob, mallory} {
		u.ok("init", "--server", srv.Addr(), "--pin", srv.Pin())
	}
	if r := mallory.run("register", "mallory", "--display-name", "alice\x1b[2K"); r.code != 2 || !strings.Contains(r.stderr, "U+001B") {
		t.Fatalf("register with an escape in the display name: exit %d, %q", r.code, r.stderr)
	}
	mallory.ok("register", "mallory", "--display-name", "alice")
	bob.ok("register", "bob")
	if r := bob.run("group", "create", "x\x1b[31my"); r.code != 2 {
		t.Fatalf("group create with an escape: exit %d, %q", r.code, r.stderr)
	}
	mallory.ok("group", "create", "team")
	mallory.ok("group", "add", "team", "bob")
	acceptInvitations(t, bob)
	mallory.ok("send", "team", "pay \u202Egnp.exe\x1b[2J now\n[team] 12:00:00 <bob>: forged")
	out := bob.ok("recv")
	if !strings.Contains(out, "<alice (mallory)>") {
		t.Fatalf("recv does not show the account behind the display name: %q", out)
	}
	if strings.ContainsAny(out, "\x1b\u202E") || !strings.Contains(out, `<U+202E>`) || !strings.Contains(out, `\x1b[2J`) {
		t.Fatalf("recv printed control characters raw: %q", out)
	}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if strings.HasPrefix(line, "[team] 12:00:00 <bob>") {
			t.Fatalf("a message forged a line of output: %q", out)
		}
	}
	// --json keeps the raw text.
	mallory.ok("send", "team", "raw\u202E")
	if ms := jsonLines(t, bob.ok("--json", "recv")); len(ms) != 1 || ms[0]["text"] != "raw\u202E" {
		t.Fatalf("recv --json: %v", ms)
	}
}

// TestRecvTellsRemovedMember: the first recv after a removal says so.
func TestRecvTellsRemovedMember(t *testing.T) {
	srv := servertest.Start(t, servertest.Config(t))
	alice, carol := newUser(t), newUser(t)
	for i, u := range []*user{alice, carol} {
		u.ok("init", "--server", srv.Addr(), "--pin", srv.Pin())
		u.ok("register", []string{"alice", "carol"}[i])
	}
	alice.ok("group", "create", "team")
	alice.ok("group", "add", "team", "carol")
	acceptInvitations(t, carol)
	alice.ok("send", "team", "hi")
	carol.ok("recv")
	if r := alice.run("group", "add", "team", "carol"); r.code != 1 || !strings.Contains(r.stderr, "already") {
		t.Fatalf("adding an existing member: exit %d, %q", r.code, r.stderr)
	}
	alice.ok("group", "remove", "team", "carol")
	r := carol.run("recv")
	if r.code != 0 || !strings.Contains(r.stderr, "you were removed from team") {
		t.Fatalf("carol's first recv after removal: exit %d, stderr %q", r.code, r.stderr)
	}
	if r := carol.run("recv"); strings.Contains(r.stderr, "removed") {
		t.Fatalf("the notice repeats: %q", r.stderr)
	}
}

// rotate gives srv a new certificate as `qpcctl rotate tls` does after
// the files were replaced, and returns its fingerprint.
func rotate(t *testing.T, srv *servertest.Server) string {
	t.Helper()
	tmp := t.TempDir()
	cert, key := filepath.Join(tmp, "cert.pem"), filepath.Join(tmp, "key.pem")
	if _, err := transport.EnsureDevCertificate(cert, key, time.Now()); err != nil {
		t.Fatal(err)
	}
	for _, f := range []struct{ src, dst string }{{key, "key.pem"}, {cert, "cert.pem"}} {
		b, err := os.ReadFile(f.src)
		if err != nil {
			t.Fatal(err)
		}
		dst := filepath.Join(srv.Config.DataDir, "tls", f.dst)
		if err := os.WriteFile(dst+".new", b, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(dst+".new", dst); err != nil {
			t.Fatal(err)
		}
	}
	if err := srv.Server().ReloadTLS(); err != nil {
		t.Fatal(err)
	}
	return srv.Server().CertFingerprint()
}

// TestCompletionOffersGroupNames: shell completion of send and group
// commands offers this device's groups.
func TestCompletionOffersGroupNames(t *testing.T) {
	srv := servertest.Start(t, servertest.Config(t))
	u := newUser(t)
	u.ok("init", "--server", srv.Addr(), "--pin", srv.Pin())
	u.ok("register", "alice")
	u.ok("group", "create", "team")
	for _, args := range [][]string{{"__complete", "send", ""}, {"__complete", "group", "add", ""}} {
		if out := u.ok(args...); !strings.Contains(out, "team\n") {
			t.Errorf("qpc %v: %q", args, out)
		}
	}
	if r := u.run("completion", "bash"); r.code != 0 || !strings.Contains(r.stdout, "bash completion") {
		t.Errorf("completion bash: exit %d", r.code)
	}
}

// TestErrorsPointTheRightWay: a wrong passphrase gets the client's advice
// (it got qpcd's "check data/db.key or QPC_DB_KEY"), a passphrase home
// opened without the variable says so (not "run qpc init"), and sending to
// @peer before opening the DM suggests qpc dm.
func TestErrorsPointTheRightWay(t *testing.T) {
	srv := servertest.Start(t, servertest.Config(t))
	u := newUser(t, "QPC_CLIENT_PASSPHRASE=right one")
	u.ok("init", "--server", srv.Addr(), "--pin", srv.Pin())
	u.ok("register", "alice")
	wrong := &user{t: t, home: u.home, env: []string{"QPC_CLIENT_PASSPHRASE=wrong one"}}
	if r := wrong.run("whoami"); r.code != 1 || strings.Contains(r.stderr, "QPC_DB_KEY") || strings.Contains(r.stderr, "db.key") || !strings.Contains(r.stderr, "QPC_CLIENT_PASSPHRASE") {
		t.Errorf("wrong passphrase: exit %d, %q", r.code, r.stderr)
	}
	none := &user{t: t, home: u.home, env: []string{"QPC_CLIENT_PASSPHRASE="}}
	if r := none.run("whoami"); r.code != 1 || !strings.Contains(r.stderr, "created with a passphrase") || strings.Contains(r.stderr, "run qpc init") {
		t.Errorf("passphrase home without the variable: exit %d, %q", r.code, r.stderr)
	}
	if r := u.run("send", "@bob", "hi"); r.code != 1 || !strings.Contains(r.stderr, "qpc dm bob") {
		t.Errorf("send to @bob before qpc dm: exit %d, %q", r.code, r.stderr)
	}
}

// TestRegisterInviteOnOpenServer: an invite code given to a server that
// lets anyone register is not used; qpc says so on stderr (and in --json)
// instead of ignoring it silently, and says nothing without a code.
func TestRegisterInviteOnOpenServer(t *testing.T) {
	srv := servertest.Start(t, servertest.Config(t))
	u := newUser(t)
	u.ok("init", "--server", srv.Addr(), "--pin", srv.Pin())
	r := u.run("register", "erin", "--invite", "ABCD-EFGH-JKLM")
	if r.code != 0 || !strings.Contains(r.stdout, "registered erin") ||
		!strings.Contains(r.stderr, "warning: this server lets anyone register, so the invite code was not needed and was not used") {
		t.Fatalf("register --invite on an open server: exit %d, stdout %q, stderr %q; want 0 and a warning", r.code, r.stdout, r.stderr)
	}
	v := newUser(t)
	v.ok("init", "--server", srv.Addr(), "--pin", srv.Pin())
	r = v.run("--json", "register", "frank", "--invite", "ABCD-EFGH-JKLM")
	if objs := jsonLines(t, r.stdout); r.code != 0 || len(objs) != 1 || objs[0]["invite_code_unused"] != true {
		t.Fatalf("--json register --invite on an open server: exit %d, stdout %q", r.code, r.stdout)
	}
	w := newUser(t)
	w.ok("init", "--server", srv.Addr(), "--pin", srv.Pin())
	r = w.run("--json", "register", "gina")
	if objs := jsonLines(t, r.stdout); r.code != 0 || len(objs) != 1 || objs[0]["invite_code_unused"] != nil || strings.Contains(r.stderr, "invite") {
		t.Fatalf("register without a code: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
}

// TestUnknownGroupSaysWhatToDo: every command that names a group answers an
// unknown one with the same pointer (some said only "no such group").
func TestUnknownGroupSaysWhatToDo(t *testing.T) {
	srv := servertest.Start(t, servertest.Config(t))
	u := newUser(t)
	u.ok("init", "--server", srv.Addr(), "--pin", srv.Pin())
	u.ok("register", "ivy")
	for _, args := range [][]string{
		{"history", "nosuch"}, {"send", "nosuch", "hi"}, {"group", "members", "nosuch"},
		{"group", "add", "nosuch", "ivy"}, {"group", "remove", "nosuch", "ivy"}, {"group", "leave", "nosuch"},
	} {
		if r := u.run(args...); r.code != 1 || !strings.Contains(r.stderr, `no such group "nosuch"; see qpc group list, or create it with qpc group create`) {
			t.Errorf("qpc %v: exit %d, %q", args, r.code, r.stderr)
		}
	}
	if r := u.run("history", "@carol"); r.code != 1 || !strings.Contains(r.stderr, "open the DM first with qpc dm carol") {
		t.Errorf("qpc history @carol: exit %d, %q", r.code, r.stderr)
	}
}
