package main

import (
	"crypto/rand"
	"encoding/hex"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/quicprochat/quicprochat/internal/admin"
	dt "github.com/quicprochat/quicprochat/internal/delivery/deliverytest"
	"github.com/quicprochat/quicprochat/internal/wire"
	"github.com/quicprochat/quicprochat/internal/wire/qpcv1"
)

// The operator's recovery of a group a member wedged with commits nobody
// else can process, through the built qpcctl against a real qpcd: `channels
// show` names the offender's commits, `channels revert-epoch` moves the
// channel back and takes the offender off, and an honest commit at the
// shared epoch is accepted again.
func TestChannelsRevertEpoch(t *testing.T) {
	dataDir := filepath.Join(shortDir(t), "data")
	d := startQPCD(t, dataDir)
	c := d.mustDial(t)
	tokens := map[string]string{}
	for _, name := range []string{"alice", "bob", "mallory"} {
		dev, key, err := register(c, name)
		if err != nil {
			t.Fatal(err)
		}
		tok, err := login(c, dev, key)
		if err != nil {
			t.Fatal(err)
		}
		tokens[name] = tok.GetAccessToken()
	}
	call := func(who, method string, req, resp proto.Message) error {
		ctx, cancel := rpcCtx()
		defer cancel()
		return c.Call(ctx, method, tokens[who], req, resp)
	}
	group := make([]byte, 32)
	_, _ = rand.Read(group)
	var created qpcv1.CreateGroupChannelResponse
	if err := call("alice", "CreateGroupChannel", &qpcv1.CreateGroupChannelRequest{GroupId: group}, &created); err != nil {
		t.Fatal(err)
	}
	chID := created.GetChannel().GetChannelId()
	if err := call("alice", "AddMembers", &qpcv1.AddMembersRequest{ChannelId: chID, Members: []*qpcv1.MemberRef{{AccountName: "bob"}, {AccountName: "mallory"}}},
		&qpcv1.AddMembersResponse{}); err != nil {
		t.Fatal(err)
	}
	for _, who := range []string{"bob", "mallory"} { // they join by accepting
		var li qpcv1.ListInvitationsResponse
		if err := call(who, "ListInvitations", &qpcv1.ListInvitationsRequest{}, &li); err != nil || len(li.GetInvitations()) != 1 {
			t.Fatalf("%s's invitations: %v %v", who, &li, err)
		}
		if err := call(who, "AcceptInvitation", &qpcv1.AcceptInvitationRequest{InvitationId: li.GetInvitations()[0].GetInvitationId()},
			&qpcv1.AcceptInvitationResponse{}); err != nil {
			t.Fatal(err)
		}
	}
	n := 0
	commit := func(who string, epoch uint64) error {
		n++
		return call(who, "Enqueue", &qpcv1.EnqueueRequest{ChannelId: chID, MessageId: hex.EncodeToString([]byte{byte(n)}) + "-commit",
			MlsMessage: dt.Commit(group, epoch), GroupInfo: dt.GroupInfo(group, epoch+1)}, &qpcv1.EnqueueResponse{})
	}
	if err := commit("alice", 0); err != nil {
		t.Fatal(err)
	}
	for epoch := uint64(1); epoch <= 2; epoch++ { // bogus, but well-framed
		if err := commit("mallory", epoch); err != nil {
			t.Fatal(err)
		}
	}
	if err := commit("bob", 1); wire.Code(err) != qpcv1.Status_STATUS_STALE_EPOCH {
		t.Fatalf("bob's commit while wedged: %v, want STALE_EPOCH", err)
	}

	id := hex.EncodeToString(chID)
	var info admin.Channel
	ctlOK(t, dataDir, &info, "channels", "show", id, "--commits", "5")
	if info.Epoch != 3 || len(info.Commits) != 3 || info.Commits[0].AccountName != "mallory" || info.Commits[0].Epoch != 2 ||
		info.Commits[2].AccountName != "alice" || len(info.Members) != 3 {
		t.Fatalf("channels show: %+v", info)
	}
	if r := ctl(t, dataDir, "channels", "show", id); r.code != 0 || !strings.Contains(r.stdout, "2 -> 3") || !strings.Contains(r.stdout, "mallory") {
		t.Fatalf("channels show (text): %+v", r)
	}

	for _, bad := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"channels", "revert-epoch", id}, 2, "--to is required"},
		{[]string{"channels", "revert-epoch", id, "--to", "x"}, 2, "not an epoch"},
		{[]string{"channels", "revert-epoch", id, "--to", "3"}, 1, "revert to an earlier one"},
		{[]string{"channels", "revert-epoch", strings.Repeat("00", 16), "--to", "0"}, 1, "no such channel"},
		{[]string{"channels", "revert-epoch", "zz", "--to", "0"}, 1, "hex characters"},
		{[]string{"channels", "revert-epoch", id, "--to", "1", "--remove", "nobody"}, 1, "not found"},
	} {
		if r := ctl(t, dataDir, bad.args...); r.code != bad.code || !strings.Contains(r.stderr, bad.want) {
			t.Fatalf("%v: exit %d, stderr %q; want exit %d and %q", bad.args, r.code, r.stderr, bad.code, bad.want)
		}
	}

	var res admin.RevertEpochResult
	ctlOK(t, dataDir, &res, "channels", "revert-epoch", id, "--to", "1", "--remove", "mallory")
	if res.From != 3 || res.To != 1 || !res.GroupInfoCleared || res.RemovedAccount != "mallory" || res.RemovedMemberships != 1 {
		t.Fatalf("revert-epoch: %+v", res)
	}
	if err := commit("bob", 1); err != nil {
		t.Fatalf("bob's commit after the revert: %v", err)
	}
	if err := commit("mallory", 2); wire.Code(err) != qpcv1.Status_STATUS_PERMISSION_DENIED {
		t.Fatalf("mallory after removal: %v, want PERMISSION_DENIED", err)
	}
	if !strings.Contains(d.logText(), "channel.epoch_revert") {
		t.Fatal("no channel.epoch_revert audit event in qpcd's log")
	}
}
