package client

import (
	"encoding/hex"
	"os"
	"path/filepath"
	"testing"

	"github.com/quicprochat/quicprochat/internal/admin"
	dt "github.com/quicprochat/quicprochat/internal/delivery/deliverytest"
	"github.com/quicprochat/quicprochat/internal/server/servertest"
	"github.com/quicprochat/quicprochat/internal/wire"
	"github.com/quicprochat/quicprochat/internal/wire/qpcv1"
)

// A member wedges a group with commits nobody else can process (well framed,
// so the server accepts them); the honest clients drop them and fall behind
// the server's epoch until they can no longer send. The operator reverts
// the channel and removes the offender over the admin API; a member's
// removal commit is then accepted and the group works again, with real MLS
// clients on both sides.
func TestOperatorRecoversAWedgedGroup(t *testing.T) {
	cfg := servertest.Config(t)
	sockDir, err := os.MkdirTemp("", "qpcadm") // Unix socket paths are short
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(sockDir) })
	cfg.Admin.Socket = filepath.Join(sockDir, "a.sock")
	srv := servertest.Start(t, cfg)
	adm := admin.NewClient(cfg.Admin.Socket)
	alice := registered(t, srv, "alice")
	bob := registered(t, srv, "bob")
	mallory := registered(t, srv, "mallory")
	ctx := ctxT(t)
	if err := alice.CreateGroup(ctx, "team"); err != nil {
		t.Fatal(err)
	}
	if err := alice.AddMembers(ctx, "team", []string{"bob", "mallory"}); err != nil {
		t.Fatal(err)
	}
	acceptAll(t, bob, mallory)
	send(t, alice, "team", "hello")
	if got := texts(t, bob, "team"); len(got) != 1 {
		t.Fatalf("bob: %q", got)
	}
	texts(t, mallory, "team")
	shared := epochOf(t, alice, "team")
	ch, err := alice.channelOf(ctx, "team")
	if err != nil {
		t.Fatal(err)
	}
	chHex := hex.EncodeToString(ch)
	info, err := adm.GetChannel(ctx, chHex, 10)
	if err != nil {
		t.Fatal(err)
	}
	group, _ := hex.DecodeString(info.GroupID)
	if info.Epoch != shared {
		t.Fatalf("server epoch %d, alice's %d", info.Epoch, shared)
	}

	// Mallory's garbage commits, three epochs' worth: the accepted window
	// (two epochs behind) no longer reaches the honest members' epoch.
	for i := range uint64(3) {
		id, _ := NewMessageID()
		if err := mallory.call(ctx, "Enqueue", &qpcv1.EnqueueRequest{ChannelId: ch, MessageId: id, MlsMessage: dt.Commit(group, shared+i)},
			&qpcv1.EnqueueResponse{}); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range []*Client{alice, bob} {
		if _, err := c.Sync(ctx, 0); err != nil {
			t.Fatalf("sync over the garbage commits: %v", err)
		}
		if e := epochOf(t, c, "team"); e != shared {
			t.Fatalf("an honest client moved to epoch %d on garbage", e)
		}
	}
	id, _ := NewMessageID()
	stuck := alice.call(ctx, "Enqueue", &qpcv1.EnqueueRequest{ChannelId: ch, MessageId: id, MlsMessage: dt.Application(group, shared, 10)}, &qpcv1.EnqueueResponse{})
	if wire.Code(stuck) != qpcv1.Status_STATUS_STALE_EPOCH {
		t.Fatalf("a message at the honest epoch while wedged: %v, want STALE_EPOCH", stuck)
	}

	// Through the client: refused after its bounded redos, kept in the outbox.
	if _, err := alice.Send(ctx, "team", "while wedged", ""); wire.Code(err) != qpcv1.Status_STATUS_STALE_EPOCH {
		t.Fatalf("alice's send while wedged: %v, want STALE_EPOCH after the redos", err)
	}

	// The operator: who moved the epoch, then revert and remove.
	if info, err = adm.GetChannel(ctx, chHex, 10); err != nil || len(info.Commits) == 0 || info.Commits[0].AccountName != "mallory" {
		t.Fatalf("channel commits: %+v %v", info.Commits, err)
	}
	res, err := adm.RevertEpoch(ctx, chHex, admin.RevertEpochRequest{To: shared, RemoveAccount: "mallory"})
	if err != nil || res.From != shared+3 || res.RemovedMemberships != 1 {
		t.Fatalf("revert: %+v %v", res, err)
	}
	// The removal is announced: mallory's client learns it from its inbox
	// and marks the group, the members see it in the group's events.
	if _, err := mallory.Sync(ctx, 0); err != nil {
		t.Fatal(err)
	}
	if gs, _ := mallory.Groups(ctx); len(gs) != 1 || gs[0].Status != statusRemoved {
		t.Fatalf("mallory's group after the operator removed her: %v", gs)
	}
	if got := events(t, bob, "team"); !contains(got, "the server's operator removed mallory") {
		t.Fatalf("bob was not told of mallory's removal: %q", got)
	}

	// A member removes mallory from the MLS group; everyone continues.
	if err := alice.RemoveMember(ctx, "team", "mallory"); err != nil {
		t.Fatalf("removal commit after the revert: %v", err)
	}
	send(t, alice, "team", "recovered")
	// The message refused while wedged was kept and goes out too.
	if got := texts(t, bob, "team"); len(got) != 3 || got[1] != "while wedged" || got[2] != "recovered" {
		t.Fatalf("bob after the recovery: %q", got)
	}
	if ea, eb := epochOf(t, alice, "team"), epochOf(t, bob, "team"); ea != shared+1 || eb != ea {
		t.Fatalf("epochs after the recovery: alice %d, bob %d, want %d", ea, eb, shared+1)
	}
	if ms, _ := bob.Members(ctx, "team"); len(ms) != 2 {
		t.Fatalf("bob's group still has %d members", len(ms))
	}
}
