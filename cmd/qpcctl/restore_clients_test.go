package main

import (
	"errors"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/quicprochat/quicprochat/internal/client"
	"github.com/quicprochat/quicprochat/internal/store/pgtest"
)

// deployment is one qpcd deployment a restore test runs against: it
// starts, backs up, and is stopped, restored from that backup and started
// again.
type deployment struct {
	t       *testing.T
	dataDir string
	node    *daemon
	backup  func() // takes the backup (qpcd running)
	restore func() // restores it (qpcd stopped) and starts qpcd again
}

func sqlcipherDeployment(t *testing.T) *deployment {
	d := &deployment{t: t, dataDir: filepath.Join(shortDir(t), "data")}
	file := filepath.Join(shortDir(t), "snap.qpcbak")
	d.node = startQPCD(t, d.dataDir)
	d.backup = func() { ctlOK(t, d.dataDir, nil, "backup", "create", "--out", file) }
	d.restore = func() {
		ctlOK(t, d.dataDir, nil, "restore", file)
		d.node = startQPCD(t, d.dataDir)
	}
	return d
}

func postgresDeployment(t *testing.T) *deployment {
	dsnFile := writeDSNFile(t, shortDir(t), pgtest.NewDatabase(t))
	d := &deployment{t: t, dataDir: shortDir(t)}
	d.node = startQPCD(t, d.dataDir, "QPC_STORE_BACKEND=postgres", "QPC_POSTGRES_DSN_FILE="+dsnFile)
	keyFile := writeBackupKey(t, "6b")
	file := filepath.Join(shortDir(t), "snap.qpcbak")
	d.backup = func() {
		ctlOK(t, d.dataDir, nil, "backup", "create", "--out", file, "--dsn-file", dsnFile, "--key-file", keyFile)
	}
	d.restore = func() {
		dsnFile2 := writeDSNFile(t, shortDir(t), pgtest.NewDatabase(t))
		ctlOK(t, d.dataDir, nil, "backup", "restore", file, "--dsn-file", dsnFile2, "--backup-key-file", keyFile)
		d.node = startQPCD(t, d.dataDir, "QPC_STORE_BACKEND=postgres", "QPC_POSTGRES_DSN_FILE="+dsnFile2)
	}
	return d
}

// stopRestoreStart drains qpcd, closes the clients, restores the backup,
// starts qpcd and reconnects the clients (same homes, same tokens).
func (d *deployment) stopRestoreStart(people ...*chatter) {
	d.t.Helper()
	d.node.drain(d.t)
	for _, p := range people {
		_ = p.c.Close()
		p.c = nil
	}
	d.restore()
	for _, p := range people {
		p.connect(d.t, d.node.quic, d.node.pin)
	}
}

// team registers the people and puts them all in group "team" (the first
// creates it and invites the others, who accept).
func team(t *testing.T, d *deployment, names ...string) []*chatter {
	t.Helper()
	var people []*chatter
	for _, name := range names {
		ch := &chatter{name: name, home: filepath.Join(shortDir(t), "home")}
		ch.connect(t, d.node.quic, d.node.pin)
		if _, err := ch.c.Register(ctxMinute(t), client.RegisterParams{AccountName: name}); err != nil {
			t.Fatalf("register %s: %v", name, err)
		}
		people = append(people, ch)
	}
	if err := people[0].c.CreateGroup(ctxMinute(t), "team"); err != nil {
		t.Fatal(err)
	}
	if err := people[0].c.AddMembers(ctxMinute(t), "team", names[1:]); err != nil {
		t.Fatal(err)
	}
	for _, p := range people[1:] {
		invs, err := p.c.Invitations(ctxMinute(t))
		if err != nil || len(invs) != 1 {
			t.Fatalf("%s's invitations: %v, %v", p.name, invs, err)
		}
		if _, err := p.c.AcceptInvitation(ctxMinute(t), invs[0].ID); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range people {
		p.sync(t)
	}
	return people
}

// teamMessages is the chatter's history of team: text -> the message.
func teamMessages(t *testing.T, ch *chatter) map[string]client.Message {
	t.Helper()
	ms, err := ch.c.History(ctxMinute(t), "team", 10000)
	if err != nil {
		t.Fatalf("%s history: %v", ch.name, err)
	}
	out := map[string]client.Message{}
	for _, m := range ms {
		if m.Event != nil {
			continue
		}
		if _, dup := out[m.Text]; dup {
			t.Errorf("%s holds %q twice", ch.name, m.Text)
		}
		out[m.Text] = m
	}
	return out
}

// restoreLosesNothing: alice and bob chat, the deployment is backed up,
// they chat more (each receives the other's messages), the deployment is
// restored from the backup. What alice sends afterwards must reach bob,
// although his cursor is past the restored channel head; and what was
// sent between the backup and the restore is sent again by its sender, so
// both end with the whole conversation, nothing marked lost.
func restoreLosesNothing(t *testing.T, d *deployment) {
	people := team(t, d, "alice", "bob")
	alice, bob := people[0], people[1]
	alice.send(t, "before alice")
	bob.sync(t)
	bob.send(t, "before bob")
	alice.sync(t)

	d.backup()
	alice.send(t, "between alice 1")
	alice.send(t, "between alice 2")
	bob.sync(t)
	bob.send(t, "between bob")
	alice.sync(t)
	if h := teamMessages(t, bob); h["between alice 2"].Text == "" {
		t.Fatalf("bob did not receive alice's message before the restore: %v", h)
	}

	d.stopRestoreStart(alice, bob)
	// alice sends before she has fetched anything from the restored
	// server: the message gets a sequence number bob has already seen.
	alice.send(t, "after restore alice")
	rep := bob.sync(t)
	if got := teamMessages(t, bob); got["after restore alice"].Text == "" {
		cu, _ := bob.c.Cursors(ctxMinute(t))
		t.Fatalf("bob never received the message alice sent after the restore; he holds %v (sync %+v, cursors %+v)", keys(got), rep, cu)
	}
	if rep.ServerRestored == nil || len(rep.ServerRestored.Channels) != 1 || rep.ServerRestored.Channels[0].Channel != "team" {
		t.Fatalf("bob's first sync after the restore reports %+v, want the restore noticed for team", rep.ServerRestored)
	}
	// Until its sender sends it again, a message past the snapshot is
	// marked in bob's history as lost in the restore.
	if m := teamMessages(t, bob)["between alice 1"]; !m.LostInRestore {
		t.Fatalf("bob's copy of a message the restore dropped is not marked: %+v", m)
	}
	// A second sync reports nothing again (the notice is given once).
	if rep := bob.sync(t); rep.ServerRestored != nil {
		t.Fatalf("a second sync reports the restore again: %+v", rep.ServerRestored)
	}

	// alice's next sync notices the restore and queues her messages past
	// her position on the restored server again (same ids: the one she
	// sent since the restore is a duplicate the server recognises); her
	// flush (qpc recv flushes after syncing) sends them, as bob's does his.
	rep = alice.sync(t)
	if rep.ServerRestored == nil || rep.ServerRestored.Resent != 3 {
		t.Fatalf("alice's sync after the restore: %+v, want her 3 messages past her position queued again", rep.ServerRestored)
	}
	for _, p := range people {
		if _, err := p.c.Flush(ctxMinute(t)); err != nil {
			t.Fatalf("%s flushes: %v", p.name, err)
		}
	}
	waitFor(t, 30*time.Second, "both hold the whole conversation, nothing lost", func() bool {
		for _, p := range people {
			p.sync(t)
		}
		for _, p := range people {
			h := teamMessages(t, p)
			for _, text := range []string{"before alice", "before bob", "between alice 1", "between alice 2", "between bob", "after restore alice"} {
				if m, ok := h[text]; !ok || m.LostInRestore || (m.Outgoing && m.Delivery != client.DeliveryDelivered) {
					return false
				}
			}
		}
		return true
	})
	// And the conversation goes on both ways.
	bob.send(t, "after restore bob")
	alice.sync(t)
	if teamMessages(t, alice)["after restore bob"].Text == "" {
		t.Fatal("alice did not receive bob's message after the restore")
	}
}

func keys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

func TestRestoreLosesNothingForClients(t *testing.T) {
	restoreLosesNothing(t, sqlcipherDeployment(t))
}

func TestPostgresRestoreLosesNothingForClients(t *testing.T) {
	restoreLosesNothing(t, postgresDeployment(t))
}

// TestRestoreGroupEpochAhead: a commit made after the backup (alice
// removes carol) is lost in the restore, so bob's group is an epoch ahead
// of the server's channel. bob's message is refused with a typed error
// that says what happened and what to do, and stays queued; once alice's
// client notices the restore it sends its commit again, the channel
// catches up, and bob's message goes out.
func TestRestoreGroupEpochAhead(t *testing.T) {
	d := sqlcipherDeployment(t)
	people := team(t, d, "alice", "bob", "carol")
	alice, bob, carol := people[0], people[1], people[2]
	alice.send(t, "before")
	for _, p := range people {
		p.sync(t)
	}
	d.backup()
	if err := alice.c.RemoveMember(ctxMinute(t), "team", "carol"); err != nil {
		t.Fatal(err)
	}
	bob.sync(t)
	carol.sync(t)

	d.stopRestoreStart(alice, bob, carol)
	bob.sync(t)
	_, err := bob.c.Send(ctxMinute(t), "team", "bob after restore", "")
	var ahead *client.GroupAheadError
	if !errors.As(err, &ahead) || !errors.Is(err, client.ErrGroupAheadOfServer) || ahead.Group != "team" || ahead.LocalEpoch != ahead.ServerEpoch+1 {
		t.Fatalf("bob's send to a group the restore set back: %v, want a GroupAheadError for team one epoch ahead", err)
	}
	if ob, err := bob.c.Outbox(ctxMinute(t)); err != nil || len(ob) == 0 || ob[len(ob)-1].Status != client.OutboxPending {
		t.Fatalf("bob's message is not kept pending: %+v, %v", ob, err)
	}
	// alice's client sends the lost commit again (qpc recv: sync, flush).
	alice.sync(t)
	if _, err := alice.c.Flush(ctxMinute(t)); err != nil {
		t.Fatalf("alice's flush sending her commit again: %v", err)
	}
	if _, err := bob.c.Flush(ctxMinute(t)); err != nil {
		t.Fatalf("bob's flush after alice sent her commit again: %v", err)
	}
	alice.sync(t)
	if teamMessages(t, alice)["bob after restore"].Text == "" {
		t.Fatal("alice did not receive bob's message")
	}
	// carol is out of the group again, on the server too.
	rep := carol.sync(t)
	if !slices.Contains(rep.RemovedFrom, "team") {
		if gs, err := carol.c.Groups(ctxMinute(t)); err != nil || len(gs) != 1 || gs[0].Status == "active" {
			t.Fatalf("carol after alice's commit was sent again: %+v, %+v, %v", rep, gs, err)
		}
	}
	if _, err := carol.c.Send(ctxMinute(t), "team", "carol after removal", ""); err == nil {
		t.Fatal("carol, removed, could still send to team")
	}
}

// TestRestoreGroupRejoinWhenCommitterGone: as TestRestoreGroupEpochAhead,
// but the member who made the lost commit never comes back. The others
// follow the error's advice: each runs qpc group rejoin; the group works
// again on the server's branch and the message that waited goes out,
// readable.
func TestRestoreGroupRejoinWhenCommitterGone(t *testing.T) {
	d := sqlcipherDeployment(t)
	people := team(t, d, "alice", "bob", "carol", "dave")
	alice, bob, carol, dave := people[0], people[1], people[2], people[3]
	alice.send(t, "before") // carries the group's name to the others
	for _, p := range people {
		p.sync(t)
	}
	d.backup()
	if err := alice.c.RemoveMember(ctxMinute(t), "team", "carol"); err != nil {
		t.Fatal(err)
	}
	bob.sync(t)
	dave.sync(t)

	d.stopRestoreStart(bob, dave) // alice's device is gone; carol stays away
	_ = alice
	_ = carol
	bob.sync(t)
	dave.sync(t)
	_, err := bob.c.Send(ctxMinute(t), "team", "waited for the rejoin", "")
	if !errors.Is(err, client.ErrGroupAheadOfServer) {
		t.Fatalf("bob's send: %v, want ErrGroupAheadOfServer", err)
	}
	for _, p := range []*chatter{bob, dave} {
		if err := p.c.Rejoin(ctxMinute(t), "team"); err != nil {
			t.Fatalf("%s rejoins: %v", p.name, err)
		}
	}
	bob.sync(t) // dave's external commit
	if _, err := bob.c.Flush(ctxMinute(t)); err != nil {
		t.Fatalf("bob's flush after rejoining: %v", err)
	}
	dave.sync(t)
	if teamMessages(t, dave)["waited for the rejoin"].Text == "" {
		t.Fatal("dave cannot read bob's message after both rejoined")
	}
	dave.send(t, "dave after rejoin")
	bob.sync(t)
	if teamMessages(t, bob)["dave after rejoin"].Text == "" {
		t.Fatal("bob cannot read dave's message after both rejoined")
	}
}
