package compat

import (
	"strconv"
	"strings"
	"testing"
)

// TestCompatMixedGroupEmbedsTree: the ratchet tree beside the GroupInfo
// (docs/protocol.md, "Ratchet tree beside the GroupInfo") across an
// upgrade. On the old qpcd, alice (new qpc) and bob (old qpc) share a
// group; the server is upgraded to the new qpcd on the same database.
// Bob's leaf does not list the capability, so alice's next commit keeps
// the tree in the GroupInfo (qpcd_group_infos_stored_total{tree=
// "embedded"}), where bob's old qpc could rejoin from; bob's old qpc keeps
// reading and sending. A group of new clients only sends the tree beside
// ({tree="beside"}).
func TestCompatMixedGroupEmbedsTree(t *testing.T) {
	needOld(t)
	s := newServer(t, backends(t)[0])
	s.start(oldRel)
	alice, bob := newUser(t, "alice", newRel), newUser(t, "bob", oldRel)
	for _, u := range []*user{alice, bob} {
		u.ok("init", "--server", s.listen, "--pin", s.pin)
		u.ok("register", u.name)
	}
	alice.ok("group", "create", "team")
	alice.ok("group", "add", "team", "bob")
	alice.ok("send", "team", "on the old qpcd")
	bob.recvUntil("on the old qpcd")
	s.stop()

	s.start(newRel)
	carol := newUser(t, "carol", newRel)
	carol.ok("init", "--server", s.listen, "--pin", s.pin)
	carol.ok("register", "carol")
	alice.ok("group", "add", "team", "carol")
	carol.acceptInvitations()
	if got := s.groupInfos(t, "embedded"); got != 1 {
		t.Fatalf("alice's commit in a group with bob's old leaf: %v GroupInfos stored with the tree embedded, want 1 (beside: %v)", got, s.groupInfos(t, "beside"))
	}
	if got := s.groupInfos(t, "beside"); got != 0 {
		t.Fatalf("%v GroupInfos stored with the tree beside in a group with an old client's leaf, want 0", got)
	}
	alice.ok("send", "team", "after the upgrade")
	bob.recvUntil("after the upgrade")
	carol.recvUntil("after the upgrade")
	bob.ok("send", "team", "old qpc still sends")
	alice.recvUntil("old qpc still sends")

	// New clients only: the tree goes beside.
	alice.ok("group", "create", "new-only")
	alice.ok("group", "add", "new-only", "carol")
	carol.acceptInvitations()
	if got := s.groupInfos(t, "beside"); got != 1 {
		t.Fatalf("alice's commit in a group of new clients: %v GroupInfos stored with the tree beside, want 1", got)
	}
	alice.ok("send", "new-only", "trees beside")
	carol.recvUntil("trees beside")
	figure(t, "after the upgrade: %v GroupInfos stored with the tree embedded (mixed group), %v beside (new clients only)",
		s.groupInfos(t, "embedded"), s.groupInfos(t, "beside"))
	s.stop()
}

// groupInfos is qpcd_group_infos_stored_total{tree=placement}.
func (s *server) groupInfos(t *testing.T, placement string) float64 {
	t.Helper()
	prefix := `qpcd_group_infos_stored_total{tree="` + placement + `"} `
	for _, line := range s.metrics(t) {
		if v, ok := strings.CutPrefix(line, prefix); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil {
				t.Fatalf("metrics line %q: %v", line, err)
			}
			return f
		}
	}
	t.Fatalf("qpcd exposes no %s", prefix)
	return 0
}
