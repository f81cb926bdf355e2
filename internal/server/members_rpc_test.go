package server

import (
	"bytes"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	dt "github.com/quicprochat/quicprochat/internal/delivery/deliverytest"
	"github.com/quicprochat/quicprochat/internal/wire/qpcv1"
)

// The attacks of issue 23 on membership, replayed against a real qpcd over
// QUIC: unsolicited membership, a leave that did nothing, and removals the
// group could not see.

func addMembers(t *testing.T, d *testDevice, ch []byte, refs ...*qpcv1.MemberRef) (*qpcv1.Channel, error) {
	t.Helper()
	var r qpcv1.AddMembersResponse
	err := d.call(t, MethodAddMembers, &qpcv1.AddMembersRequest{ChannelId: ch, Members: refs}, &r)
	return r.GetChannel(), err
}

func removeMembers(t *testing.T, d *testDevice, ch []byte, refs ...*qpcv1.MemberRef) (uint32, error) {
	t.Helper()
	var r qpcv1.RemoveMembersResponse
	err := d.call(t, MethodRemoveMembers, &qpcv1.RemoveMembersRequest{ChannelId: ch, Members: refs}, &r)
	return r.GetRemoved(), err
}

func account(name string) *qpcv1.MemberRef { return &qpcv1.MemberRef{AccountName: name} }

func invitations(t *testing.T, d *testDevice) []*qpcv1.Invitation {
	t.Helper()
	var r qpcv1.ListInvitationsResponse
	if err := d.call(t, MethodListInvitations, &qpcv1.ListInvitationsRequest{}, &r); err != nil {
		t.Fatalf("list invitations: %v", err)
	}
	return r.GetInvitations()
}

func sendInbox(t *testing.T, d *testDevice, ch []byte, kind qpcv1.InboxKind, payload []byte, to ...*testDevice) error {
	t.Helper()
	req := &qpcv1.SendToInboxRequest{ChannelId: ch, Kind: kind, Payload: payload}
	for _, r := range to {
		req.Recipients = append(req.Recipients, &qpcv1.InboxRecipient{AccountName: r.AccountName, DeviceId: r.DeviceID})
	}
	return d.call(t, MethodSendToInbox, req, &qpcv1.SendToInboxResponse{})
}

// events returns the membership events waiting for d (in its channels'
// logs and its inbox) and acknowledges everything fetched.
func events(t *testing.T, d *testDevice) (log, inbox []*qpcv1.MembershipEvent) {
	t.Helper()
	f := fetch(t, d)
	for _, m := range f.GetMessages() {
		if m.GetEvent() != nil {
			// The body is the event itself (for clients older than events), never an MLS message.
			var body qpcv1.MembershipEvent
			if m.GetSenderDeviceId() != "" || proto.Unmarshal(m.GetMlsMessage(), &body) != nil || !proto.Equal(&body, m.GetEvent()) {
				t.Fatalf("server event with a sender, or a body other than the event: %v", m)
			}
			log = append(log, m.GetEvent())
		}
	}
	for _, it := range f.GetInbox() {
		if it.GetKind() == qpcv1.InboxKind_INBOX_KIND_MEMBERSHIP {
			var ev qpcv1.MembershipEvent
			if err := proto.Unmarshal(it.GetPayload(), &ev); err != nil {
				t.Fatalf("inbox membership event: %v", err)
			}
			inbox = append(inbox, &ev)
		}
	}
	drain(t, d)
	return log, inbox
}

func hasEvent(evs []*qpcv1.MembershipEvent, typ qpcv1.MembershipEventType, actor, subject string) bool {
	for _, e := range evs {
		if e.GetType() == typ && e.GetActorAccountName() == actor && e.GetSubjectAccountName() == subject {
			return true
		}
	}
	return false
}

// A stranger can no longer make someone a member: AddMembers makes an
// invitation; until it is accepted the invitee reads nothing, gets no inbox
// items (only a Welcome, held with the invitation and bounded in size) and
// is not listed as a member. Before the fix the victim was a member at once
// and received the stranger's channel messages and a 5 MiB inbox item.
func TestUnsolicitedMembershipNeedsConsent(t *testing.T) {
	cfg := svcConfig(t)
	cfg.Invitations.MaxWelcomeBytes = 4096
	ts := startServer(t, cfg)
	mallory, victim := ts.newDevice(t, "mallory"), ts.newDevice(t, "victim")
	ch, g := groupChannel(t, mallory)

	c, err := addMembers(t, mallory, ch, account("victim"))
	if err != nil {
		t.Fatalf("invite: %v", err)
	}
	if len(c.GetMembers()) != 1 || len(c.GetInvited()) != 1 || c.GetInvited()[0].GetAccountId() != victim.AccountID {
		t.Fatalf("after AddMembers the victim must be invited, not a member: %v", c)
	}
	mustEnqueue(t, mallory, ch, dt.Application(g, 0, 64<<10))

	// The victim reads nothing of the channel; its inbox holds only the
	// server's small invitation notice.
	log, inbox := events(t, victim)
	if len(log) != 0 {
		t.Fatalf("invitee read the channel's log: %v", log)
	}
	if len(inbox) != 1 || inbox[0].GetType() != qpcv1.MembershipEventType_MEMBERSHIP_EVENT_TYPE_INVITED ||
		inbox[0].GetInvitation().GetInviterAccountName() != "mallory" {
		t.Fatalf("invitation notice: %v", inbox)
	}
	f := fetch(t, victim)
	if len(f.GetMessages())+len(f.GetInbox()) != 0 {
		t.Fatalf("invitee received %v", f)
	}
	var lr qpcv1.ListChannelsResponse
	if err := victim.call(t, MethodListChannels, &qpcv1.ListChannelsRequest{}, &lr); err != nil || len(lr.GetChannels()) != 0 {
		t.Fatalf("invitee lists channels %v %v", &lr, err)
	}

	// Inbox pushes to the invitee are refused; a Welcome waits, bounded.
	expectStatus(t, sendInbox(t, mallory, ch, qpcv1.InboxKind_INBOX_KIND_OTHER, make([]byte, 1<<20), victim), qpcv1.Status_STATUS_PERMISSION_DENIED)
	expectStatus(t, sendInbox(t, mallory, ch, qpcv1.InboxKind_INBOX_KIND_WELCOME, dt.SizedWelcome(8192), victim), qpcv1.Status_STATUS_RESOURCE_EXHAUSTED)
	if err := sendInbox(t, mallory, ch, qpcv1.InboxKind_INBOX_KIND_WELCOME, dt.Welcome(), victim); err != nil {
		t.Fatalf("Welcome for an invitee: %v", err)
	}
	if f := fetch(t, victim); len(f.GetInbox()) != 0 {
		t.Fatalf("a held Welcome reached the invitee before it accepted: %v", f)
	}
	invs := invitations(t, victim)
	if len(invs) != 1 || invs[0].GetWelcomesHeld() != 1 || invs[0].GetInviterAccountName() != "mallory" {
		t.Fatalf("invitations: %v", invs)
	}

	// Declining drops it; mallory's group sees it; accepting it later fails.
	var dr qpcv1.DeclineInvitationResponse
	if err := victim.call(t, MethodDeclineInvitation, &qpcv1.DeclineInvitationRequest{InvitationId: invs[0].GetInvitationId()}, &dr); err != nil {
		t.Fatalf("decline: %v", err)
	}
	expectStatus(t, victim.call(t, MethodAcceptInvitation, &qpcv1.AcceptInvitationRequest{InvitationId: invs[0].GetInvitationId()},
		&qpcv1.AcceptInvitationResponse{}), qpcv1.Status_STATUS_NOT_FOUND)
	if log, _ := events(t, mallory); !hasEvent(log, qpcv1.MembershipEventType_MEMBERSHIP_EVENT_TYPE_DECLINED, "victim", "victim") {
		t.Fatalf("the group did not see the decline: %v", log)
	}
	if len(invitations(t, victim)) != 0 || len(fetch(t, victim).GetMessages()) != 0 {
		t.Fatal("declined invitation still there")
	}
	// Someone else's invitation id is not the victim's to accept.
	other := ts.newDevice(t, "other")
	if _, err := addMembers(t, mallory, ch, account("other")); err != nil {
		t.Fatal(err)
	}
	oi := invitations(t, other)
	expectStatus(t, victim.call(t, MethodAcceptInvitation, &qpcv1.AcceptInvitationRequest{InvitationId: oi[0].GetInvitationId()},
		&qpcv1.AcceptInvitationResponse{}), qpcv1.Status_STATUS_NOT_FOUND)

	// A DM is an invitation too.
	var dm qpcv1.CreateDMChannelResponse
	if err := mallory.call(t, MethodCreateDMChannel, &qpcv1.CreateDMChannelRequest{PeerAccountName: "victim", GroupId: newGroupID()}, &dm); err != nil {
		t.Fatal(err)
	}
	mustEnqueue(t, mallory, dm.GetChannel().GetChannelId(), dt.Application(dm.GetChannel().GetGroupId(), 0, 1000))
	if f := fetch(t, victim); len(f.GetMessages()) != 0 {
		t.Fatalf("DM invitee read the DM: %v", f)
	}
}

// Accepting makes the invitee a member from the point it was invited: it
// reads the adder's commit (sent after the invitation) and gets the Welcome
// that was held for it.
func TestAcceptDeliversHeldWelcomeAndLog(t *testing.T) {
	ts := startServer(t, svcConfig(t))
	alice, bob := ts.newDevice(t, "alice"), ts.newDevice(t, "bob")
	bob2 := ts.addDevice(t, bob)
	ch, g := groupChannel(t, alice)
	if _, err := addMembers(t, alice, ch, account("bob")); err != nil {
		t.Fatal(err)
	}
	commit := mustEnqueue(t, alice, ch, dt.Commit(g, 0))
	if err := sendInbox(t, alice, ch, qpcv1.InboxKind_INBOX_KIND_WELCOME, dt.Welcome(), bob, bob2); err != nil {
		t.Fatalf("Welcomes for a pending invitee: %v", err)
	}
	invs := invitations(t, bob2)
	if len(invs) != 1 || invs[0].GetWelcomesHeld() != 2 {
		t.Fatalf("invitations: %v", invs)
	}
	var ar qpcv1.AcceptInvitationResponse
	if err := bob.call(t, MethodAcceptInvitation, &qpcv1.AcceptInvitationRequest{InvitationId: invs[0].GetInvitationId()}, &ar); err != nil || ar.GetWelcomes() != 2 {
		t.Fatalf("accept: %v %v", &ar, err)
	}
	for _, d := range []*testDevice{bob, bob2} {
		f := fetch(t, d)
		var welcomes int
		for _, it := range f.GetInbox() {
			if it.GetKind() == qpcv1.InboxKind_INBOX_KIND_WELCOME && it.GetSenderDeviceId() == alice.DeviceID && bytes.Equal(it.GetPayload(), dt.Welcome()) {
				welcomes++
			}
		}
		var sawCommit bool
		for _, m := range f.GetMessages() {
			sawCommit = sawCommit || m.GetSeq() == commit.GetSeq()
		}
		if welcomes != 1 || !sawCommit {
			t.Fatalf("%s after accepting: %d Welcomes, commit read %v: %v", d.DeviceID, welcomes, sawCommit, f)
		}
	}
	if log, _ := events(t, alice); !hasEvent(log, qpcv1.MembershipEventType_MEMBERSHIP_EVENT_TYPE_JOINED, "bob", "bob") {
		t.Fatalf("alice did not see bob join: %v", log)
	}
	// Now a member: ordinary inbox items reach him.
	if err := sendInbox(t, alice, ch, qpcv1.InboxKind_INBOX_KIND_OTHER, []byte("hi"), bob); err != nil {
		t.Fatal(err)
	}
}

// Invitations are bounded per inviter per hour (on the server's clock) and
// per invitee.
func TestInvitationLimits(t *testing.T) {
	cfg := svcConfig(t)
	cfg.Invitations.MaxPerHour = 3
	cfg.Invitations.MaxPending = 4
	clk := newFakeClock()
	ts := startServerWith(t, cfg, clk.Now)
	mallory, victim := ts.newDevice(t, "mallory"), ts.newDevice(t, "victim")
	for i := range 3 {
		ch, _ := groupChannel(t, mallory)
		if _, err := addMembers(t, mallory, ch, account("victim")); err != nil {
			t.Fatalf("invitation %d: %v", i, err)
		}
	}
	ch, _ := groupChannel(t, mallory)
	_, err := addMembers(t, mallory, ch, account("victim"))
	expectStatus(t, err, qpcv1.Status_STATUS_RESOURCE_EXHAUSTED)
	var dm qpcv1.CreateDMChannelResponse
	expectStatus(t, mallory.call(t, MethodCreateDMChannel, &qpcv1.CreateDMChannelRequest{PeerAccountName: "victim", GroupId: newGroupID()}, &dm),
		qpcv1.Status_STATUS_RESOURCE_EXHAUSTED)
	if ts.gauge(t, "qpcd_invitations_refused_total") < 2 {
		t.Fatal("refusals not counted")
	}

	clk.Advance(time.Hour + time.Second)
	relogin(t, mallory)
	if _, err := addMembers(t, mallory, ch, account("victim")); err != nil {
		t.Fatalf("after an hour: %v", err)
	}
	// The victim holds 4 unanswered invitations: the most allowed.
	carol := ts.newDevice(t, "carol")
	cc, _ := groupChannel(t, carol)
	_, err = addMembers(t, carol, cc, account("victim"))
	expectStatus(t, err, qpcv1.Status_STATUS_RESOURCE_EXHAUSTED)
	relogin(t, victim)
	if n := len(invitations(t, victim)); n != 4 {
		t.Fatalf("victim holds %d invitations", n)
	}
	// Unanswered invitations lapse after invitations.ttl.
	clk.Advance(cfg.Invitations.TTL)
	relogin(t, victim)
	relogin(t, carol)
	if n := len(invitations(t, victim)); n != 0 {
		t.Fatalf("expired invitations listed: %d", n)
	}
	if _, err := addMembers(t, carol, cc, account("victim")); err != nil {
		t.Fatalf("after the others lapsed: %v", err)
	}
}

// A blocked account's invitations, DMs and inbox items are refused, and
// its pending invitations declined; unblocking restores them.
func TestBlockAccount(t *testing.T) {
	ts := startServer(t, svcConfig(t))
	mallory, bob, alice := ts.newDevice(t, "mallory"), ts.newDevice(t, "bob"), ts.newDevice(t, "alice")
	pending, _ := groupChannel(t, mallory)
	if _, err := addMembers(t, mallory, pending, account("bob")); err != nil {
		t.Fatal(err)
	}
	shared, g := groupChannel(t, alice, bob, mallory)

	var br qpcv1.BlockAccountResponse
	if err := bob.call(t, MethodBlockAccount, &qpcv1.BlockAccountRequest{AccountName: "mallory"}, &br); err != nil || br.GetInvitationsDeclined() != 1 {
		t.Fatalf("block: %v %v", &br, err)
	}
	if len(invitations(t, bob)) != 0 {
		t.Fatal("mallory's invitation survived the block")
	}
	ch, _ := groupChannel(t, mallory)
	_, err := addMembers(t, mallory, ch, account("bob"))
	expectStatus(t, err, qpcv1.Status_STATUS_PERMISSION_DENIED)
	var dm qpcv1.CreateDMChannelResponse
	expectStatus(t, mallory.call(t, MethodCreateDMChannel, &qpcv1.CreateDMChannelRequest{PeerAccountName: "bob", GroupId: newGroupID()}, &dm),
		qpcv1.Status_STATUS_PERMISSION_DENIED)
	expectStatus(t, sendInbox(t, mallory, shared, qpcv1.InboxKind_INBOX_KIND_OTHER, []byte("spam"), bob), qpcv1.Status_STATUS_PERMISSION_DENIED)
	// The shared group keeps working (blocking leaves shared channels as they are).
	mustEnqueue(t, alice, shared, dt.Application(g, 0, 10))
	if err := sendInbox(t, alice, shared, qpcv1.InboxKind_INBOX_KIND_OTHER, []byte("hi"), bob); err != nil {
		t.Fatal(err)
	}

	var lb qpcv1.ListBlockedResponse
	if err := bob.call(t, MethodListBlocked, &qpcv1.ListBlockedRequest{}, &lb); err != nil || len(lb.GetBlocked()) != 1 || lb.GetBlocked()[0].GetAccountName() != "mallory" {
		t.Fatalf("list blocked: %v %v", &lb, err)
	}
	expectStatus(t, bob.call(t, MethodBlockAccount, &qpcv1.BlockAccountRequest{AccountName: "bob"}, &br), qpcv1.Status_STATUS_INVALID_ARGUMENT)
	if err := bob.call(t, MethodUnblockAccount, &qpcv1.UnblockAccountRequest{AccountName: "mallory"}, &qpcv1.UnblockAccountResponse{}); err != nil {
		t.Fatal(err)
	}
	expectStatus(t, bob.call(t, MethodUnblockAccount, &qpcv1.UnblockAccountRequest{AccountName: "mallory"}, &qpcv1.UnblockAccountResponse{}),
		qpcv1.Status_STATUS_NOT_FOUND)
	if _, err := addMembers(t, mallory, ch, account("bob")); err != nil {
		t.Fatalf("after unblock: %v", err)
	}
}

// `qpc group leave` sends {account, device}; memberships are stored per
// account. Before the fix the DELETE matched nothing and answered OK: the
// leaver kept receiving and stayed in the member list. Now the device
// stops reading, the account's other devices keep reading, and a removal
// that changes nothing answers NOT_FOUND.
func TestLeaveByDeviceTakesEffect(t *testing.T) {
	ts := startServer(t, svcConfig(t))
	alice, bob, carol := ts.newDevice(t, "alice"), ts.newDevice(t, "bob"), ts.newDevice(t, "carol")
	bob2 := ts.addDevice(t, bob)
	ch, g := groupChannel(t, alice, bob)
	for _, d := range []*testDevice{alice, bob, bob2} {
		drain(t, d)
	}

	n, err := removeMembers(t, bob, ch, &qpcv1.MemberRef{AccountName: "bob", DeviceId: bob.DeviceID})
	if err != nil || n != 1 {
		t.Fatalf("leave by device: %d %v", n, err)
	}
	mustEnqueue(t, alice, ch, dt.Application(g, 0, 10))
	if f := fetch(t, bob); len(f.GetMessages()) != 0 {
		t.Fatalf("the device that left still receives: %v", f)
	}
	_, err = enqueue(t, bob, ch, newMessageID(), dt.Application(g, 0, 10), nil)
	expectStatus(t, err, qpcv1.Status_STATUS_PERMISSION_DENIED)
	log, inbox := events(t, bob2)
	if !hasEvent(log, qpcv1.MembershipEventType_MEMBERSHIP_EVENT_TYPE_LEFT, "bob", "bob") || len(inbox) != 0 {
		t.Fatalf("bob's other device: log %v inbox %v", log, inbox)
	}
	var lr qpcv1.ListChannelsResponse
	if err := alice.call(t, MethodListChannels, &qpcv1.ListChannelsRequest{}, &lr); err != nil {
		t.Fatal(err)
	}
	for _, m := range lr.GetChannels()[0].GetMembers() {
		if m.GetAccountId() == bob.AccountID && (m.GetDeviceId() == "" || m.GetDeviceId() == bob.DeviceID) {
			t.Fatalf("the device that left is still in the member list: %v", lr.GetChannels()[0].GetMembers())
		}
	}

	// Nothing changes: NOT_FOUND, not OK.
	_, err = removeMembers(t, alice, ch, &qpcv1.MemberRef{AccountName: "bob", DeviceId: bob.DeviceID})
	expectStatus(t, err, qpcv1.Status_STATUS_NOT_FOUND)
	_, err = removeMembers(t, alice, ch, account("carol"))
	expectStatus(t, err, qpcv1.Status_STATUS_NOT_FOUND)
	_ = carol
	// The last device leaves: the account is gone from the list.
	if n, err := removeMembers(t, bob2, ch, &qpcv1.MemberRef{AccountName: "bob", DeviceId: bob2.DeviceID}); err != nil || n != 1 {
		t.Fatalf("second device leaves: %d %v", n, err)
	}
	if err := alice.call(t, MethodListChannels, &qpcv1.ListChannelsRequest{}, &lr); err != nil {
		t.Fatal(err)
	}
	for _, m := range lr.GetChannels()[0].GetMembers() {
		if m.GetAccountId() == bob.AccountID {
			t.Fatalf("bob is still listed: %v", lr.GetChannels()[0].GetMembers())
		}
	}
}

// Any member could remove any other (the creator included) and nobody
// noticed. Now only the member itself or the channel's admin removes, and
// every remaining member and the removed one see the change.
func TestNoMemberRemovedUnnoticed(t *testing.T) {
	ts := startServer(t, svcConfig(t))
	alice, bob, carol, dave := ts.newDevice(t, "alice"), ts.newDevice(t, "bob"), ts.newDevice(t, "carol"), ts.newDevice(t, "dave")
	ch, g := groupChannel(t, alice, bob, carol, dave)
	for _, d := range []*testDevice{alice, bob, carol, dave} {
		drain(t, d)
	}

	// A plain member cannot remove others, the creator least of all.
	_, err := removeMembers(t, bob, ch, account("carol"))
	expectStatus(t, err, qpcv1.Status_STATUS_PERMISSION_DENIED)
	_, err = removeMembers(t, bob, ch, account("alice"))
	expectStatus(t, err, qpcv1.Status_STATUS_PERMISSION_DENIED)
	mustEnqueue(t, alice, ch, dt.Application(g, 0, 10))
	if f := fetch(t, carol); len(f.GetMessages()) != 1 {
		t.Fatalf("carol was cut off by a refused removal: %v", f)
	}
	drain(t, carol)

	// The admin removes carol: everyone sees it, carol in her inbox.
	if n, err := removeMembers(t, alice, ch, account("carol")); err != nil || n != 1 {
		t.Fatalf("admin removes: %d %v", n, err)
	}
	for _, d := range []*testDevice{alice, bob, dave} {
		if log, _ := events(t, d); !hasEvent(log, qpcv1.MembershipEventType_MEMBERSHIP_EVENT_TYPE_REMOVED, "alice", "carol") {
			t.Fatalf("%s did not see carol's removal: %v", d.AccountName, log)
		}
	}
	if _, inbox := events(t, carol); !hasEvent(inbox, qpcv1.MembershipEventType_MEMBERSHIP_EVENT_TYPE_REMOVED, "alice", "carol") {
		t.Fatalf("carol was not told: %v", inbox)
	}

	// A member leaves: seen by all who remain.
	if _, err := removeMembers(t, dave, ch, account("dave")); err != nil {
		t.Fatal(err)
	}
	for _, d := range []*testDevice{alice, bob} {
		if log, _ := events(t, d); !hasEvent(log, qpcv1.MembershipEventType_MEMBERSHIP_EVENT_TYPE_LEFT, "dave", "dave") {
			t.Fatalf("%s did not see dave leave: %v", d.AccountName, log)
		}
	}
	// The creator leaves; the longest-standing member (bob) becomes admin.
	if _, err := removeMembers(t, alice, ch, account("alice")); err != nil {
		t.Fatal(err)
	}
	if _, err := addMembers(t, bob, ch, account("carol")); err != nil {
		t.Fatal(err)
	}
	acceptInvitations(t, carol, ch)
	_, err = removeMembers(t, carol, ch, account("bob"))
	expectStatus(t, err, qpcv1.Status_STATUS_PERMISSION_DENIED)
	if _, err := removeMembers(t, bob, ch, account("carol")); err != nil {
		t.Fatalf("the new admin removes: %v", err)
	}

	// Withdrawing a pending invitation is announced too.
	if _, err := addMembers(t, bob, ch, account("dave")); err != nil {
		t.Fatal(err)
	}
	if len(invitations(t, dave)) != 1 {
		t.Fatal("dave not invited")
	}
	if n, err := removeMembers(t, bob, ch, account("dave")); err != nil || n != 1 || len(invitations(t, dave)) != 0 {
		t.Fatalf("withdraw: %d %v", n, err)
	}
	if log, _ := events(t, bob); !hasEvent(log, qpcv1.MembershipEventType_MEMBERSHIP_EVENT_TYPE_INVITATION_CANCELLED, "bob", "dave") {
		t.Fatalf("withdrawal not announced: %v", log)
	}
}
