package compat

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// TestCompatDatabaseUpgrade: a database written by the old qpcd (SQLCipher,
// and PostgreSQL, which the old release supports too) is opened and
// migrated by the new qpcd with nothing lost. Accounts made by the old
// server log in; messages the old server stored and that were not fetched
// yet are delivered by the new one; history is complete; clients upgraded
// to the new qpc keep their homes; a new account joins the old group. The
// old qpcd then refuses the migrated database with an error naming the
// schema versions (a downgrade needs the pre-upgrade backup), and the new
// qpcd starts on it again.
func TestCompatDatabaseUpgrade(t *testing.T) {
	needOld(t)
	for _, backend := range backends(t) {
		t.Run(backend, func(t *testing.T) {
			s := newServer(t, backend)
			s.start(oldRel)
			alice, bob := newUser(t, "alice", oldRel), newUser(t, "bob", oldRel)
			for _, u := range []*user{alice, bob} {
				u.ok("init", "--server", s.listen, "--pin", s.pin)
				u.ok("register", u.name)
			}
			alice.ok("group", "create", "team")
			alice.ok("group", "add", "team", "bob")
			alice.ok("send", "team", "m1")
			bob.recvUntil("m1")
			bob.ok("send", "team", "m2 from bob")
			alice.recvUntil("m2 from bob")
			// Stored by the old server, fetched only after the upgrade.
			alice.ok("send", "team", "m3 waiting")
			alice.ok("dm", "bob")
			alice.ok("send", "@bob", "dm waiting")
			s.stop()

			took := s.start(newRel)
			if !strings.Contains(s.logTail(64<<10), `"msg":"store: applied migration"`) {
				t.Fatalf("the new qpcd applied no migration to the old database")
			}

			// Old clients on the migrated server: login, pending messages, history.
			alice.ok("login")
			bob.ok("login")
			bob.recvUntil("m3 waiting", "dm waiting")
			alice.ok("send", "team", "m4 after upgrade")
			bob.recvUntil("m4 after upgrade")
			want := []string{"m1", "m2 from bob", "m3 waiting", "m4 after upgrade"}
			for _, u := range []*user{alice, bob} {
				h := texts(u.jsonOK("history", "team"))
				for _, w := range want {
					if count(h, w) != 1 {
						t.Fatalf("%s's history after the server upgrade: %q (want each of %q once)", u.name, h, want)
					}
				}
			}

			// The users upgrade qpc: the new qpc opens (and migrates) the old homes.
			alice.rel, bob.rel = newRel, newRel
			for _, u := range []*user{alice, bob} {
				h := texts(u.jsonOK("history", "team"))
				for _, w := range want {
					if count(h, w) != 1 {
						t.Fatalf("%s's history with the new qpc: %q", u.name, h)
					}
				}
			}
			if h := texts(bob.jsonOK("history", "@alice")); count(h, "dm waiting") != 1 {
				t.Fatalf("bob's DM history with the new qpc: %q", h)
			}
			bob.ok("send", "team", "m5 new qpc")
			alice.recvUntil("m5 new qpc")
			carol := newUser(t, "carol", newRel)
			carol.ok("init", "--server", s.listen, "--pin", s.pin)
			carol.ok("register", "carol")
			alice.ok("group", "add", "team", "carol")
			carol.acceptInvitations() // joining is by consent on the new qpcd
			alice.ok("send", "team", "hi carol")
			carol.recvUntil("hi carol")
			bob.recvUntil("hi carol")
			s.stop()

			// Downgrade: the old qpcd refuses the migrated database.
			log := s.refused(oldRel)
			if !strings.Contains(log, "schema version") || !strings.Contains(log, "this qpcd knows up to") {
				t.Fatalf("the old qpcd on the migrated database: no schema error in its log:\n%s", log)
			}
			s.start(newRel)
			if h := texts(bob.jsonOK("history", "team")); count(h, "hi carol") != 1 {
				t.Fatalf("bob's history after the refused downgrade: %q", h)
			}
			s.stop()
			figure(t, "the new qpcd migrated the old database and was ready in %s; the old qpcd refused it: %s",
				took.Round(time.Millisecond), refusal(log))
		})
	}
}

// refusal is the error line of a refused start (the last log line that
// names the schema).
func refusal(log string) string {
	lines := strings.Split(strings.TrimSpace(log), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if strings.Contains(lines[i], "schema version") {
			return strings.TrimSpace(lines[i])
		}
	}
	return fmt.Sprintf("(%d log lines, none naming the schema)", len(lines))
}
