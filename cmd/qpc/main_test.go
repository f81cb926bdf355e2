package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/quicprochat/quicprochat/internal/server/servertest"
)

var update = flag.Bool("update", false, "rewrite testdata/help.golden")

// qpcBin is the qpc binary built once for these tests: they run it as a
// user would.
var qpcBin string

func TestMain(m *testing.M) {
	flag.Parse()
	dir, err := os.MkdirTemp("", "qpc-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	qpcBin = filepath.Join(dir, "qpc")
	out, err := exec.Command("go", "build", "-o", qpcBin, ".").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "build qpc: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

type result struct {
	code           int
	stdout, stderr string
}

// user is one person at a terminal: a home directory and environment.
type user struct {
	t    *testing.T
	home string
	env  []string
}

func newUser(t *testing.T, env ...string) *user {
	return &user{t: t, home: filepath.Join(t.TempDir(), "home"), env: env}
}

func (u *user) cmd(stdin string, args ...string) *exec.Cmd {
	c := exec.Command(qpcBin, append([]string{"--home", u.home}, args...)...)
	c.Env = append(os.Environ(), u.env...)
	c.Stdin = strings.NewReader(stdin)
	return c
}

func (u *user) runIn(stdin string, args ...string) result {
	u.t.Helper()
	c := u.cmd(stdin, args...)
	var out, errb bytes.Buffer
	c.Stdout, c.Stderr = &out, &errb
	err := c.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		u.t.Fatalf("run qpc %v: %v", args, err)
	}
	return result{code: code, stdout: out.String(), stderr: errb.String()}
}

func (u *user) run(args ...string) result { u.t.Helper(); return u.runIn("", args...) }

// ok runs a command that must succeed and returns its stdout.
func (u *user) ok(args ...string) string {
	u.t.Helper()
	r := u.run(args...)
	if r.code != 0 {
		u.t.Fatalf("qpc %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), r.code, r.stdout, r.stderr)
	}
	return r.stdout
}

// jsonLines decodes --json output: one object per line.
func jsonLines(t *testing.T, out string) []map[string]any {
	t.Helper()
	var objs []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if line == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("not one JSON object per line: %q: %v", line, err)
		}
		objs = append(objs, m)
	}
	return objs
}

func TestHelpGolden(t *testing.T) {
	r := newUser(t).run("--help")
	if r.code != 0 {
		t.Fatalf("--help: exit %d", r.code)
	}
	path := filepath.Join("testdata", "help.golden")
	if *update {
		if err := os.WriteFile(path, []byte(r.stdout), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./cmd/qpc -run Help -update)", err)
	}
	if r.stdout != string(want) {
		t.Fatalf("--help changed:\n%s", r.stdout)
	}
}

// acceptInvitations accepts u's pending invitations through the binary.
func acceptInvitations(t *testing.T, u *user) {
	t.Helper()
	invs := jsonLines(t, u.ok("--json", "invitations"))
	if len(invs) == 0 {
		t.Fatal("no invitation to accept")
	}
	for _, in := range invs {
		id, _ := in["id"].(string)
		if out := u.ok("invitations", "accept", id); !strings.Contains(out, "joined") && !strings.Contains(out, "accepted") {
			t.Fatalf("accept: %q", out)
		}
	}
}

// withoutEvents drops membership events and invitation notices from JSON lines.
func withoutEvents(ms []map[string]any) []map[string]any {
	var out []map[string]any
	for _, m := range ms {
		if m["event"] == nil && m["invitation"] == nil {
			out = append(out, m)
		}
	}
	return out
}

func TestUsageErrorsExit2(t *testing.T) {
	u := newUser(t)
	for _, args := range [][]string{
		{"frobnicate"},
		{"init"},
		{"register"},
		{"group", "add", "team"},
		{"whoami", "extra"},
		{"--no-such-flag"},
		{"init", "--server", "127.0.0.1:1", "--pin", "aa", "--ca", "x.pem"},
	} {
		if r := u.run(args...); r.code != 2 || r.stderr == "" {
			t.Errorf("qpc %v: exit %d (stderr %q), want 2 and a message", args, r.code, r.stderr)
		}
	}
	// Not initialised: a failure (1) that names the fix.
	if r := u.run("whoami"); r.code != 1 || !strings.Contains(r.stderr, "qpc init") {
		t.Errorf("whoami before init: exit %d, %q", r.code, r.stderr)
	}
}

func TestPinMismatch(t *testing.T) {
	srv := servertest.Start(t, servertest.Config(t))
	wrong := strings.Repeat("0", 64)
	r := newUser(t).run("init", "--server", srv.Addr(), "--pin", wrong)
	if r.code != 1 || !strings.Contains(r.stderr, wrong) || !strings.Contains(r.stderr, srv.Pin()) {
		t.Fatalf("wrong pin: exit %d, stderr %q; want 1 and both fingerprints", r.code, r.stderr)
	}
}

// TestTwoUsers runs the README walkthrough through the binary: alice
// (key file) and bob (passphrase) register, talk in a group and a DM.
func TestTwoUsers(t *testing.T) {
	srv := servertest.Start(t, servertest.Config(t))
	alice := newUser(t)
	bob := newUser(t, "QPC_CLIENT_PASSPHRASE=correct horse battery staple")
	for _, u := range []*user{alice, bob} {
		u.ok("init", "--server", srv.Addr(), "--pin", srv.Pin())
	}
	if out := alice.ok("register", "alice"); !strings.Contains(out, "registered alice") {
		t.Fatalf("register: %q", out)
	}
	bob.ok("register", "bob", "--display-name", "Bob B.")
	if st, err := os.Stat(filepath.Join(alice.home, "client.key")); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("alice's key file: %v", err)
	}
	if _, err := os.Stat(filepath.Join(bob.home, "client.salt")); err != nil {
		t.Fatalf("bob's salt file: %v", err)
	}
	who := jsonLines(t, alice.ok("--json", "whoami"))
	if len(who) != 1 || who[0]["account"] != "alice" {
		t.Fatalf("whoami --json: %v", who)
	}
	if out := alice.ok("keys"); !strings.Contains(out, "stock 10 of 10, last resort true") {
		t.Fatalf("keys: %q", out)
	}
	if devs := jsonLines(t, bob.ok("--json", "devices")); len(devs) != 1 || devs[0]["this_device"] != true {
		t.Fatalf("devices: %v", devs)
	}

	alice.ok("group", "create", "team")
	if out := alice.ok("group", "add", "team", "bob"); !strings.Contains(out, "invited bob") {
		t.Fatalf("group add: %q", out)
	}
	// bob is invited: recv tells him, nothing of the group reaches him
	// until he accepts.
	if out := bob.ok("recv"); !strings.Contains(out, "alice invites you") || !strings.Contains(out, "qpc invitations accept") {
		t.Fatalf("bob recv before accepting: %q", out)
	}
	acceptInvitations(t, bob)
	alice.ok("send", "team", "hello bob")
	if out := bob.ok("recv"); !strings.Contains(out, "[team]") || !strings.Contains(out, "<alice>: hello bob") {
		t.Fatalf("bob recv: %q", out)
	}
	if r := bob.runIn("hi alice\n", "send", "team"); r.code != 0 {
		t.Fatalf("send from stdin: %d %s", r.code, r.stderr)
	}
	msgs := withoutEvents(jsonLines(t, alice.ok("--json", "recv")))
	if len(msgs) != 1 || msgs[0]["text"] != "hi alice" || msgs[0]["display_name"] != "Bob B." || msgs[0]["channel"] != "team" {
		t.Fatalf("alice recv --json: %v", msgs)
	}
	out := alice.ok("history", "team")
	if strings.Count(out, "\n")-strings.Count(out, " * ") != 2 || !strings.Contains(out, "hello bob") || !strings.Contains(out, "hi alice") ||
		!strings.Contains(out, "* alice invited bob") || !strings.Contains(out, "* bob joined") {
		t.Fatalf("history: %q", out)
	}
	if ms := jsonLines(t, bob.ok("--json", "group", "members", "team")); len(ms) != 2 {
		t.Fatalf("members: %v", ms)
	}

	// A DM, and watch printing it as it arrives.
	if out := alice.ok("dm", "bob"); !strings.Contains(out, "@bob") {
		t.Fatalf("dm: %q", out)
	}
	alice.ok("send", "@bob", "just us")
	if out := bob.ok("dm", "alice"); !strings.Contains(out, "@alice") { // accepts alice's DM invitation
		t.Fatalf("bob's dm: %q", out)
	}
	w := bob.cmd("", "--json", "watch")
	stdout, err := w.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	w.Stderr = io.Discard
	if err := w.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan map[string]any, 4)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			var m map[string]any
			if json.Unmarshal(sc.Bytes(), &m) == nil && m["event"] == nil && m["invitation"] == nil {
				lines <- m
			}
		}
		close(lines)
	}()
	expect := func(text string) {
		t.Helper()
		select {
		case m := <-lines:
			if m["text"] != text {
				t.Fatalf("watch printed %v, want %q", m, text)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("watch did not print %q", text)
		}
	}
	expect("just us")
	alice.ok("send", "@bob", "still there?")
	expect("still there?")
	_ = w.Process.Signal(syscall.SIGINT)
	if err := w.Wait(); err != nil {
		t.Fatalf("watch after SIGINT: %v (want exit 0)", err)
	}

	// Leave and remove.
	bob.ok("group", "leave", "team")
	alice.ok("recv")
	if ms := jsonLines(t, alice.ok("--json", "group", "members", "team")); len(ms) != 1 {
		t.Fatalf("members after bob left: %v", ms)
	}
	if r := bob.run("send", "team", "x"); r.code != 1 {
		t.Fatalf("send after leaving: exit %d", r.code)
	}
}

// TestQueuedWhileServerDown: a message sent while qpcd is down is queued
// (exit 0, "queued"), and delivered exactly once after qpcd restarts.
func TestQueuedWhileServerDown(t *testing.T) {
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

	srv.Stop(t)
	r := alice.run("--json", "--timeout", "3s", "send", "team", "two")
	out := jsonLines(t, r.stdout)
	if r.code != 0 || len(out) != 1 || out[0]["queued"] != true {
		t.Fatalf("send while down: exit %d, %v, stderr %q", r.code, out, r.stderr)
	}
	ob := jsonLines(t, alice.ok("--json", "outbox"))
	if last := ob[len(ob)-1]; last["status"] != "pending" {
		t.Fatalf("outbox after a send while down: %v", ob)
	}
	srv.Start(t)
	alice.ok("recv") // flushes the outbox
	bob.ok("recv")
	bob.ok("recv")
	hist := bob.ok("history", "team")
	if strings.Count(hist, ">: two") != 1 || strings.Count(hist, ">: one") != 1 {
		t.Fatalf("bob's history after the restart:\n%s", hist)
	}
}

// TestInvitationsAndBlocks: decline, block and unblock through the binary,
// human and --json.
func TestInvitationsAndBlocks(t *testing.T) {
	srv := servertest.Start(t, servertest.Config(t))
	alice, bob := newUser(t), newUser(t)
	for i, u := range []*user{alice, bob} {
		u.ok("init", "--server", srv.Addr(), "--pin", srv.Pin())
		u.ok("register", []string{"alice", "bob"}[i])
	}
	alice.ok("group", "create", "team")
	alice.ok("group", "add", "team", "bob")
	if out := bob.ok("invitations"); !strings.Contains(out, "alice invites you to a group") {
		t.Fatalf("invitations: %q", out)
	}
	invs := jsonLines(t, bob.ok("--json", "invitations"))
	if len(invs) != 1 || invs[0]["inviter"] != "alice" || invs[0]["kind"] != "group" {
		t.Fatalf("invitations --json: %v", invs)
	}
	id, _ := invs[0]["id"].(string)
	if out := bob.ok("invitations", "decline", id); !strings.Contains(out, "declined "+id) {
		t.Fatalf("decline: %q", out)
	}
	if r := bob.run("invitations", "accept", id); r.code != 1 || !strings.Contains(r.stderr, "not_found") || strings.Count(r.stderr, "qpc invitations") != 1 {
		t.Fatalf("accept after decline: exit %d, %q (the pointer to qpc invitations once)", r.code, r.stderr)
	}
	if out := bob.ok("invitations"); !strings.Contains(out, "no pending invitations") {
		t.Fatalf("invitations after decline: %q", out)
	}
	if out := alice.ok("recv"); !strings.Contains(out, "* bob declined the invitation") {
		t.Fatalf("alice recv after the decline: %q", out)
	}

	if out := jsonLines(t, bob.ok("--json", "block", "alice")); len(out) != 1 || out[0]["blocked"] != "alice" {
		t.Fatalf("block --json: %v", out)
	}
	if r := alice.run("group", "add", "team", "bob"); r.code != 1 || !strings.Contains(r.stderr, "permission_denied") {
		t.Fatalf("invite by a blocked account: exit %d, %q", r.code, r.stderr)
	}
	if r := alice.run("dm", "bob"); r.code != 1 || !strings.Contains(r.stderr, "permission_denied") {
		t.Fatalf("DM by a blocked account: exit %d, %q", r.code, r.stderr)
	}
	if out := bob.ok("blocked"); !strings.Contains(out, "alice") {
		t.Fatalf("blocked: %q", out)
	}
	bob.ok("unblock", "alice")
	if r := bob.run("unblock", "alice"); r.code != 1 || !strings.Contains(r.stderr, "not blocked") {
		t.Fatalf("unblock twice: exit %d, %q", r.code, r.stderr)
	}
	if r := bob.run("block"); r.code != 2 {
		t.Fatalf("block without USER: exit %d", r.code)
	}
	alice.ok("group", "add", "team", "bob")
}

// TestKeyFilesOpenToOthersRefused: qpc refuses a database key file (the
// default <home>/client.key or --key-file) or a passphrase salt file that
// group or others may access, naming the file, its mode and the chmod fix.
func TestKeyFilesOpenToOthersRefused(t *testing.T) {
	srv := servertest.Start(t, servertest.Config(t))
	alice := newUser(t)
	bob := newUser(t, "QPC_CLIENT_PASSPHRASE=correct horse battery staple")
	for name, u := range map[string]*user{"alice": alice, "bob": bob} {
		u.ok("init", "--server", srv.Addr(), "--pin", srv.Pin())
		u.ok("register", name)
	}
	keyFile := filepath.Join(alice.home, "client.key")
	copied := filepath.Join(filepath.Dir(alice.home), "copied key")
	raw, err := os.ReadFile(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(copied, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	salt := filepath.Join(bob.home, "client.salt")
	for _, c := range []struct {
		u    *user
		file string
		mode os.FileMode
		args []string
		fix  string
	}{
		{alice, keyFile, 0o644, nil, "chmod 600 " + keyFile},
		{alice, keyFile, 0o660, nil, "chmod 600 " + keyFile},
		{alice, copied, 0o640, []string{"--key-file", copied}, "chmod 600 '" + copied + "'"},
		{bob, salt, 0o664, nil, "chmod 600 " + salt},
	} {
		if err := os.Chmod(c.file, c.mode); err != nil {
			t.Fatal(err)
		}
		args := append(c.args, "whoami")
		r := c.u.run(args...)
		want := fmt.Sprintf("it has mode %04o; run: %s", uint32(c.mode), c.fix)
		if r.code != 1 || !strings.Contains(r.stderr, want) {
			t.Errorf("qpc %v with %s at %04o: exit %d, stderr %q; want 1 and %q", args, c.file, uint32(c.mode), r.code, r.stderr, want)
		}
		if err := os.Chmod(c.file, 0o600); err != nil {
			t.Fatal(err)
		}
		c.u.ok(args...) // fixed as told
	}
}
