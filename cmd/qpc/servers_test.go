package main

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"

	"github.com/quicprochat/quicprochat/internal/server/servertest"
)

// statusOf runs qpc status --json (extra flags appended) and decodes it.
func statusOf(t *testing.T, u *user, extra ...string) map[string]any {
	t.Helper()
	var st map[string]any
	if err := json.Unmarshal([]byte(u.ok(append([]string{"--json", "status"}, extra...)...)), &st); err != nil {
		t.Fatal(err)
	}
	return st
}

func strs(v any) []string {
	var out []string
	for _, x := range v.([]any) {
		out = append(out, x.(string))
	}
	return out
}

// qpc init records several server nodes and pins (repeated --pin or a
// comma list); qpc status lists them and the node in use; when that node
// stops, the client moves to the next and remembers it for the next run.
// Every node must present a pinned certificate, and a single-address home
// keeps working as before.
func TestSeveralServerNodes(t *testing.T) {
	a := servertest.Start(t, servertest.Config(t))
	b := servertest.Start(t, servertest.Config(t))
	both := a.Addr() + "," + b.Addr()

	for _, bad := range [][]string{{"--server", a.Addr() + "," + a.Addr()}, {"--server", a.Addr() + ",nohost"}} {
		if r := newUser(t).run(append([]string{"init"}, bad...)...); r.code != 2 {
			t.Errorf("init %v: exit %d %q; want 2", bad, r.code, r.stderr)
		}
	}
	// Only a's certificate pinned: b is refused, nothing saved.
	r := newUser(t).run("init", "--server", both, "--pin", a.Pin())
	if r.code != 1 || !strings.Contains(r.stderr, "nothing saved") || !strings.Contains(r.stderr, b.Pin()) {
		t.Fatalf("init with b's certificate unpinned: exit %d, %q", r.code, r.stderr)
	}

	u := newUser(t)
	u.ok("init", "--server", both, "--pin", a.Pin(), "--pin", b.Pin())
	st := statusOf(t, u)
	if !slices.Equal(strs(st["servers"]), []string{a.Addr(), b.Addr()}) || st["current"] != a.Addr() || st["reachable"] != true ||
		len(strs(st["pins"])) != 2 {
		t.Fatalf("status: %v", st)
	}
	if out := u.ok("status"); !strings.Contains(out, "* "+a.Addr()) || !strings.Contains(out, "  "+b.Addr()) {
		t.Fatalf("status text:\n%s", out)
	}
	a.Stop(t)
	if st = statusOf(t, u); st["current"] != b.Addr() || st["reachable"] != true {
		t.Fatalf("status with a stopped: %v", st)
	}
	a.Start(t)
	if st = statusOf(t, u, "--offline"); st["current"] != b.Addr() {
		t.Fatalf("the next run starts on %v, not on the node that worked", st["current"])
	}

	// A comma list of pins works as repeated --pin; a single address is a
	// list of one.
	v := newUser(t)
	v.ok("init", "--server", b.Addr()+","+a.Addr(), "--pin", a.Pin()+","+b.Pin())
	w := newUser(t)
	w.ok("init", "--server", a.Addr(), "--pin", a.Pin())
	if st = statusOf(t, w); !slices.Equal(strs(st["servers"]), []string{a.Addr()}) || st["current"] != a.Addr() || st["reachable"] != true {
		t.Fatalf("single-address status: %v", st)
	}
}
