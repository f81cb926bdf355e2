package server

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	dt "github.com/quicprochat/quicprochat/internal/delivery/deliverytest"
	"github.com/quicprochat/quicprochat/internal/wire"
	"github.com/quicprochat/quicprochat/internal/wire/qpcv1"
)

func newGroupID() []byte {
	g := make([]byte, 32)
	_, _ = rand.Read(g)
	return g
}

var rpcMsgN atomic.Int64

func newMessageID() string { return fmt.Sprintf("00000000-0000-4000-8000-%012d", rpcMsgN.Add(1)) }

// groupChannel creates a group channel owned by owner with the others added.
func groupChannel(t *testing.T, owner *testDevice, others ...*testDevice) ([]byte, []byte) {
	t.Helper()
	g := newGroupID()
	var cr qpcv1.CreateGroupChannelResponse
	if err := owner.call(t, MethodCreateGroupChannel, &qpcv1.CreateGroupChannelRequest{GroupId: g}, &cr); err != nil || !cr.GetCreated() {
		t.Fatalf("create group channel: %v %v", &cr, err)
	}
	id := cr.GetChannel().GetChannelId()
	if len(others) > 0 {
		var refs []*qpcv1.MemberRef
		for _, o := range others {
			refs = append(refs, &qpcv1.MemberRef{AccountName: o.AccountName})
		}
		var ar qpcv1.AddMembersResponse
		if err := owner.call(t, MethodAddMembers, &qpcv1.AddMembersRequest{ChannelId: id, Members: refs}, &ar); err != nil {
			t.Fatalf("add members: %v", err)
		}
		for _, o := range others {
			acceptInvitations(t, o, id)
		}
	}
	return id, g
}

// drain fetches and acknowledges everything waiting for d and returns its
// inbox position.
func drain(t *testing.T, d *testDevice) uint64 {
	t.Helper()
	var inbox uint64
	for {
		f := fetch(t, d)
		ack := &qpcv1.AckRequest{}
		top := map[string]uint64{}
		for _, m := range f.GetMessages() {
			top[string(m.GetChannelId())] = max(top[string(m.GetChannelId())], m.GetSeq())
		}
		for ch, seq := range top {
			ack.Cursors = append(ack.Cursors, &qpcv1.ChannelCursor{ChannelId: []byte(ch), Seq: seq})
		}
		for _, it := range f.GetInbox() {
			inbox = max(inbox, it.GetSeq())
		}
		ack.InboxSeq = inbox
		if len(ack.Cursors) == 0 && len(f.GetInbox()) == 0 {
			return inbox
		}
		if err := d.call(t, MethodAck, ack, &qpcv1.AckResponse{}); err != nil {
			t.Fatalf("ack: %v", err)
		}
	}
}

// acceptInvitations accepts d's pending invitations to channel ch (all of
// them when ch is nil) and returns how many.
func acceptInvitations(t *testing.T, d *testDevice, ch []byte) int {
	t.Helper()
	var lr qpcv1.ListInvitationsResponse
	if err := d.call(t, MethodListInvitations, &qpcv1.ListInvitationsRequest{}, &lr); err != nil {
		t.Fatalf("list invitations: %v", err)
	}
	n := 0
	for _, inv := range lr.GetInvitations() {
		if ch != nil && !bytes.Equal(inv.GetChannelId(), ch) {
			continue
		}
		var ar qpcv1.AcceptInvitationResponse
		if err := d.call(t, MethodAcceptInvitation, &qpcv1.AcceptInvitationRequest{InvitationId: inv.GetInvitationId()}, &ar); err != nil {
			t.Fatalf("accept invitation: %v", err)
		}
		n++
	}
	return n
}

func enqueue(t *testing.T, d *testDevice, ch []byte, msgID string, msg, gi []byte) (*qpcv1.EnqueueResponse, error) {
	t.Helper()
	var r qpcv1.EnqueueResponse
	err := d.call(t, MethodEnqueue, &qpcv1.EnqueueRequest{ChannelId: ch, MessageId: msgID, MlsMessage: msg, GroupInfo: gi}, &r)
	return &r, err
}

func mustEnqueue(t *testing.T, d *testDevice, ch, msg []byte) *qpcv1.EnqueueResponse {
	t.Helper()
	r, err := enqueue(t, d, ch, newMessageID(), msg, nil)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func fetch(t *testing.T, d *testDevice) *qpcv1.FetchResponse {
	t.Helper()
	var r qpcv1.FetchResponse
	if err := d.call(t, MethodFetch, &qpcv1.FetchRequest{}, &r); err != nil {
		t.Fatal(err)
	}
	return &r
}

// gauge reads a metric without labels (or the sum over its labels) from the server's registry.
func (ts *testServer) gauge(t *testing.T, name string) float64 {
	t.Helper()
	mfs, err := ts.metrics.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			sum += metricValue(m)
		}
	}
	return sum
}

func metricValue(m *dto.Metric) float64 {
	switch {
	case m.GetGauge() != nil:
		return m.GetGauge().GetValue()
	case m.GetCounter() != nil:
		return m.GetCounter().GetValue()
	}
	return 0
}

// Every delivery RPC once, in the order a client uses them.
func TestDeliveryRPCs(t *testing.T) {
	ts := startServer(t, svcConfig(t))
	alice, bob := ts.newDevice(t, "alice"), ts.newDevice(t, "bob")
	bob2 := ts.addDevice(t, bob)

	// CreateGroupChannel, AddMembers, ListChannels.
	ch, g := groupChannel(t, alice, bob)
	var cr qpcv1.CreateGroupChannelResponse
	if err := bob.call(t, MethodCreateGroupChannel, &qpcv1.CreateGroupChannelRequest{GroupId: g}, &cr); err != nil || cr.GetCreated() || !bytes.Equal(cr.GetChannel().GetChannelId(), ch) {
		t.Fatalf("second create by a member: %v %v", &cr, err)
	}
	var lr qpcv1.ListChannelsResponse
	if err := bob2.call(t, MethodListChannels, &qpcv1.ListChannelsRequest{}, &lr); err != nil || len(lr.GetChannels()) != 1 ||
		lr.GetChannels()[0].GetType() != qpcv1.ChannelType_CHANNEL_TYPE_GROUP || len(lr.GetChannels()[0].GetMembers()) != 2 {
		t.Fatalf("list: %v %v", &lr, err)
	}

	// The log starts with the server's membership events (bob invited,
	// bob joined); everything below counts from there.
	base := lr.GetChannels()[0].GetHeadSeq()
	if base != 2 {
		t.Fatalf("head after invite and accept: %d, want 2 (two membership events)", base)
	}
	drain(t, bob)
	inboxBase := drain(t, bob2) // the invitation notice

	// Enqueue: a commit with its GroupInfo, then application messages.
	r, err := enqueue(t, alice, ch, newMessageID(), dt.Commit(g, 0), dt.GroupInfo(g, 1))
	if err != nil || r.GetSeq() != base+1 || r.GetEpoch() != 1 || r.GetDuplicate() || r.GetServerTimeUnixMs() == 0 {
		t.Fatalf("commit: %v %v", r, err)
	}
	var gi qpcv1.GetGroupInfoResponse
	if err := bob.call(t, MethodGetGroupInfo, &qpcv1.GetGroupInfoRequest{ChannelId: ch}, &gi); err != nil || gi.GetEpoch() != 1 || !bytes.Equal(gi.GetGroupInfo(), dt.GroupInfo(g, 1)) {
		t.Fatalf("group info: %v %v", &gi, err)
	}
	app := dt.Application(g, 1, 1024)
	if r := mustEnqueue(t, alice, ch, app); r.GetSeq() != base+2 {
		t.Fatalf("application: %v", r)
	}

	// Fetch with sequence numbers; Ack advances only the acking device.
	f := fetch(t, bob)
	if len(f.GetMessages()) != 2 || f.GetMessages()[0].GetSeq() != base+1 || f.GetMessages()[1].GetSeq() != base+2 ||
		!bytes.Equal(f.GetMessages()[1].GetMlsMessage(), app) || f.GetMessages()[1].GetSenderAccountId() != alice.AccountID ||
		f.GetMessages()[1].GetSenderDeviceId() != alice.DeviceID || f.GetMessages()[1].GetEpoch() != 1 {
		t.Fatalf("fetch: %v", f)
	}
	var ack qpcv1.AckResponse
	if err := bob.call(t, MethodAck, &qpcv1.AckRequest{Cursors: []*qpcv1.ChannelCursor{{ChannelId: ch, Seq: base + 2}}}, &ack); err != nil {
		t.Fatal(err)
	}
	if f := fetch(t, bob); len(f.GetMessages()) != 0 {
		t.Fatalf("after ack: %v", f)
	}
	if f := fetch(t, bob2); len(f.GetMessages()) != 2 {
		t.Fatalf("other device after bob's ack: %v", f)
	}
	// Read-ahead: bob2 holds seq base+1 without acknowledging it.
	var ra qpcv1.FetchResponse
	if err := bob2.call(t, MethodFetch, &qpcv1.FetchRequest{After: []*qpcv1.ChannelCursor{{ChannelId: ch, Seq: base + 1}}}, &ra); err != nil ||
		len(ra.GetMessages()) != 1 || ra.GetMessages()[0].GetSeq() != base+2 {
		t.Fatalf("fetch after %d: %v %v", base+1, &ra, err)
	}

	// SendToInbox: a Welcome to one device.
	var sr qpcv1.SendToInboxResponse
	if err := alice.call(t, MethodSendToInbox, &qpcv1.SendToInboxRequest{ChannelId: ch, Kind: qpcv1.InboxKind_INBOX_KIND_WELCOME,
		Payload: dt.Welcome(), Recipients: []*qpcv1.InboxRecipient{{AccountName: "bob", DeviceId: bob2.DeviceID}}}, &sr); err != nil || sr.GetDelivered() != 1 {
		t.Fatalf("send to inbox: %v %v", &sr, err)
	}
	f = fetch(t, bob2)
	if len(f.GetInbox()) != 1 || f.GetInbox()[0].GetSeq() != inboxBase+1 || f.GetInbox()[0].GetKind() != qpcv1.InboxKind_INBOX_KIND_WELCOME ||
		f.GetInbox()[0].GetSenderDeviceId() != alice.DeviceID || !bytes.Equal(f.GetInbox()[0].GetPayload(), dt.Welcome()) {
		t.Fatalf("inbox: %v", f)
	}
	if err := bob2.call(t, MethodAck, &qpcv1.AckRequest{InboxSeq: inboxBase + 1, Cursors: []*qpcv1.ChannelCursor{{ChannelId: ch, Seq: base + 2}}}, &ack); err != nil {
		t.Fatal(err)
	}
	if f := fetch(t, bob2); len(f.GetInbox())+len(f.GetMessages()) != 0 {
		t.Fatalf("after inbox ack: %v", f)
	}
	if len(fetch(t, bob).GetInbox()) != 0 {
		t.Fatal("bob's first device got bob2's Welcome")
	}

	// CreateDMChannel: either side gets the same channel.
	var d1, d2 qpcv1.CreateDMChannelResponse
	if err := alice.call(t, MethodCreateDMChannel, &qpcv1.CreateDMChannelRequest{PeerAccountName: "bob", GroupId: newGroupID(), TtlSeconds: 3600}, &d1); err != nil || !d1.GetCreated() {
		t.Fatalf("create DM: %v %v", &d1, err)
	}
	// bob is invited, not a member, until he accepts.
	expectStatus(t, bob.call(t, MethodCreateDMChannel, &qpcv1.CreateDMChannelRequest{PeerAccountName: "alice", GroupId: newGroupID()}, &d2),
		qpcv1.Status_STATUS_ALREADY_EXISTS)
	if n := acceptInvitations(t, bob, d1.GetChannel().GetChannelId()); n != 1 {
		t.Fatalf("DM invitations accepted: %d", n)
	}
	if err := bob.call(t, MethodCreateDMChannel, &qpcv1.CreateDMChannelRequest{PeerAccountName: "alice", GroupId: newGroupID()}, &d2); err != nil || d2.GetCreated() ||
		!bytes.Equal(d1.GetChannel().GetChannelId(), d2.GetChannel().GetChannelId()) || d2.GetChannel().GetTtlSeconds() != 3600 ||
		d2.GetChannel().GetType() != qpcv1.ChannelType_CHANNEL_TYPE_DM {
		t.Fatalf("second DM create: %v %v", &d2, err)
	}

	// RemoveMembers: bob leaves; he can no longer post or read.
	var rr qpcv1.RemoveMembersResponse
	if err := bob.call(t, MethodRemoveMembers, &qpcv1.RemoveMembersRequest{ChannelId: ch, Members: []*qpcv1.MemberRef{{AccountName: "bob"}}}, &rr); err != nil || rr.GetRemoved() != 1 {
		t.Fatalf("leave: %v %v", &rr, err)
	}
	_, err = enqueue(t, bob, ch, newMessageID(), dt.Application(g, 1, 10), nil)
	expectStatus(t, err, qpcv1.Status_STATUS_PERMISSION_DENIED)

	// Every operation left an audit trail in metrics.
	if ts.gauge(t, "qpcd_enqueue_total") < 3 || ts.gauge(t, "qpcd_fetch_total") < 6 || ts.gauge(t, "qpcd_enqueue_bytes_total") < 1024 {
		t.Fatal("delivery metrics did not move")
	}
}

func TestDeliveryNegative(t *testing.T) {
	cfg := svcConfig(t)
	cfg.Limits.MaxPayloadBytes = 64 << 10
	ts := startServer(t, cfg)
	alice, bob, mallory := ts.newDevice(t, "alice"), ts.newDevice(t, "bob"), ts.newDevice(t, "mallory")
	ch, g := groupChannel(t, alice, bob)

	t.Run("replayed message id", func(t *testing.T) {
		id := newMessageID()
		first, err := enqueue(t, alice, ch, id, dt.Application(g, 0, 100), nil)
		if err != nil {
			t.Fatal(err)
		}
		mustEnqueue(t, alice, ch, dt.Application(g, 0, 100))
		again, err := enqueue(t, alice, ch, id, dt.Application(g, 0, 100), nil)
		if err != nil || !again.GetDuplicate() || again.GetSeq() != first.GetSeq() {
			t.Fatalf("replay: %v %v", again, err)
		}
		n := 0
		for _, m := range fetch(t, bob).GetMessages() {
			if m.GetMessageId() == id {
				n++
			}
		}
		if n != 1 {
			t.Fatalf("message stored %d times", n)
		}
		_, err = enqueue(t, bob, ch, id, dt.Application(g, 0, 100), nil)
		expectStatus(t, err, qpcv1.Status_STATUS_ALREADY_EXISTS)
	})
	t.Run("non-member posts and reads", func(t *testing.T) {
		_, err := enqueue(t, mallory, ch, newMessageID(), dt.Application(g, 0, 10), nil)
		expectStatus(t, err, qpcv1.Status_STATUS_PERMISSION_DENIED)
		if f := fetch(t, mallory); len(f.GetMessages()) != 0 {
			t.Fatal("non-member read channel messages")
		}
		var ack qpcv1.AckResponse
		expectStatus(t, mallory.call(t, MethodAck, &qpcv1.AckRequest{Cursors: []*qpcv1.ChannelCursor{{ChannelId: ch, Seq: 1}}}, &ack), qpcv1.Status_STATUS_PERMISSION_DENIED)
		var gi qpcv1.GetGroupInfoResponse
		expectStatus(t, mallory.call(t, MethodGetGroupInfo, &qpcv1.GetGroupInfoRequest{ChannelId: ch}, &gi), qpcv1.Status_STATUS_PERMISSION_DENIED)
		var ar qpcv1.AddMembersResponse
		expectStatus(t, mallory.call(t, MethodAddMembers, &qpcv1.AddMembersRequest{ChannelId: ch, Members: []*qpcv1.MemberRef{{AccountName: "mallory"}}}, &ar), qpcv1.Status_STATUS_PERMISSION_DENIED)
		var sr qpcv1.SendToInboxResponse
		expectStatus(t, mallory.call(t, MethodSendToInbox, &qpcv1.SendToInboxRequest{ChannelId: ch, Kind: qpcv1.InboxKind_INBOX_KIND_OTHER,
			Payload: []byte("spam"), Recipients: []*qpcv1.InboxRecipient{{AccountName: "bob", DeviceId: bob.DeviceID}}}, &sr), qpcv1.Status_STATUS_PERMISSION_DENIED)
		expectStatus(t, alice.call(t, MethodSendToInbox, &qpcv1.SendToInboxRequest{ChannelId: ch, Kind: qpcv1.InboxKind_INBOX_KIND_OTHER,
			Payload: []byte("x"), Recipients: []*qpcv1.InboxRecipient{{AccountName: "mallory", DeviceId: mallory.DeviceID}}}, &sr), qpcv1.Status_STATUS_PERMISSION_DENIED)
		var cr qpcv1.CreateGroupChannelResponse
		expectStatus(t, mallory.call(t, MethodCreateGroupChannel, &qpcv1.CreateGroupChannelRequest{GroupId: g}, &cr), qpcv1.Status_STATUS_ALREADY_EXISTS)
		if ts.gauge(t, "qpcd_delivery_denied_total") < 4 {
			t.Fatal("denials not counted")
		}
	})
	t.Run("concurrent commits for one epoch", func(t *testing.T) {
		carol := ts.newDevice(t, "carol")
		c2, g2 := groupChannel(t, alice, bob, carol)
		for epoch := uint64(0); epoch < 3; epoch++ {
			if wins, stale := raceCommits(t, []*testDevice{alice, bob, carol}, c2, g2, epoch); wins != 1 || stale != 2 {
				t.Fatalf("epoch %d: %d won, %d stale", epoch, wins, stale)
			}
		}
	})
	t.Run("oversized payload", func(t *testing.T) {
		// Within the frame cap (payload + envelope overhead) but above
		// limits.max_payload_bytes: refused by the delivery service.
		_, err := enqueue(t, alice, ch, newMessageID(), dt.Application(g, 0, 64<<10), nil)
		expectStatus(t, err, qpcv1.Status_STATUS_RESOURCE_EXHAUSTED)
		// Beyond the frame cap the transport refuses the frame before any
		// handler runs (TestOversizedFrameRefusedWithoutAllocating).
	})
	t.Run("malformed MLS message", func(t *testing.T) {
		for name, m := range map[string][]byte{
			"garbage":     []byte("not mls"),
			"truncated":   dt.Application(g, 0, 100)[:30],
			"welcome":     dt.Welcome(),
			"other group": dt.Application(newGroupID(), 0, 10),
		} {
			_, err := enqueue(t, alice, ch, newMessageID(), m, nil)
			if statusOf(err) != qpcv1.Status_STATUS_INVALID_ARGUMENT {
				t.Fatalf("%s: %v", name, err)
			}
		}
	})
	t.Run("field rules", func(t *testing.T) {
		_, err := enqueue(t, alice, ch[:8], newMessageID(), dt.Application(g, 0, 10), nil)
		expectStatus(t, err, qpcv1.Status_STATUS_INVALID_ARGUMENT)
		_, err = enqueue(t, alice, ch, "", dt.Application(g, 0, 10), nil)
		expectStatus(t, err, qpcv1.Status_STATUS_INVALID_ARGUMENT)
		var cr qpcv1.CreateGroupChannelResponse
		expectStatus(t, alice.call(t, MethodCreateGroupChannel, &qpcv1.CreateGroupChannelRequest{GroupId: g[:31]}, &cr), qpcv1.Status_STATUS_INVALID_ARGUMENT)
		err = alice.Client.Call(ctxT(t), MethodFetch, "", &qpcv1.FetchRequest{}, &qpcv1.FetchResponse{})
		expectStatus(t, err, qpcv1.Status_STATUS_UNAUTHENTICATED)
	})
}

func statusOf(err error) qpcv1.Status { return wire.Code(err) }

// FetchWait over QUIC: many waiters on one connection and across
// connections all wake on one enqueue, well before their timeout.
func TestFetchWaitWakesOnEnqueue(t *testing.T) {
	ts := startServer(t, svcConfig(t))
	alice, bob := ts.newDevice(t, "alice"), ts.newDevice(t, "bob")
	bob2 := ts.addDevice(t, bob)
	ch, g := groupChannel(t, alice, bob)
	drain(t, bob)
	drain(t, bob2)
	type result struct {
		r   *qpcv1.FetchResponse
		err error
		at  time.Time
	}
	out := make(chan result, 6)
	for i := range 6 {
		d := []*testDevice{bob, bob2}[i%2]
		go func() {
			var r qpcv1.FetchResponse
			err := d.call(t, MethodFetchWait, &qpcv1.FetchWaitRequest{TimeoutMs: 20000}, &r)
			out <- result{&r, err, time.Now()}
		}()
	}
	waitFor(t, 10*time.Second, "6 long-poll waiters", func() bool { return ts.gauge(t, "qpcd_long_poll_waiters") == 6 })
	sent := time.Now()
	mustEnqueue(t, alice, ch, dt.Application(g, 0, 1024))
	for range 6 {
		res := <-out
		if res.err != nil || len(res.r.GetMessages()) != 1 {
			t.Fatalf("woken fetch: %v %v", res.r, res.err)
		}
		if d := res.at.Sub(sent); d > 5*time.Second {
			t.Fatalf("woke %s after the enqueue", d)
		}
	}
	if ts.gauge(t, "qpcd_fanout_wakeups_total") < 6 {
		t.Fatal("wakeups not counted")
	}
}

// A FetchWait longer than limits.long_poll_max is clipped, not refused;
// draining the server ends long polls early with an empty OK.
func TestFetchWaitClipAndDrain(t *testing.T) {
	cfg := svcConfig(t)
	cfg.Limits.LongPollMax = 200 * time.Millisecond
	ts := startServer(t, cfg)
	bob := ts.newDevice(t, "bob")
	start := time.Now()
	var r qpcv1.FetchResponse
	if err := bob.call(t, MethodFetchWait, &qpcv1.FetchWaitRequest{TimeoutMs: 3_600_000}, &r); err != nil {
		t.Fatalf("clipped wait: %v", err)
	}
	if time.Since(start) > 10*time.Second {
		t.Fatal("wait not clipped to the cap")
	}

	cfg = svcConfig(t)
	cfg.Limits.LongPollMax = time.Minute
	ts = startServer(t, cfg)
	bob = ts.newDevice(t, "bob")
	done := make(chan error, 1)
	go func() {
		var r qpcv1.FetchResponse
		done <- bob.call(t, MethodFetchWait, &qpcv1.FetchWaitRequest{TimeoutMs: 60000}, &r)
	}()
	waitFor(t, 10*time.Second, "long-poll waiter", func() bool { return ts.gauge(t, "qpcd_long_poll_waiters") == 1 })
	ts.cancel() // start draining; the cleanup waits for Run to return
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("long poll during drain: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("drain did not end the long poll")
	}
}

// Message expiry on the server's injectable clock.
func TestMessageExpiry(t *testing.T) {
	clk := newFakeClock()
	ts := startServerWith(t, svcConfig(t), clk.Now)
	alice, bob := ts.newDevice(t, "alice"), ts.newDevice(t, "bob")
	ch, g := groupChannel(t, alice, bob)
	drain(t, bob) // the membership events (seq 1, 2) and bob's invitation notice
	mustEnqueue(t, alice, ch, dt.Application(g, 0, 10))
	clk.Advance(6 * 24 * time.Hour)
	relogin(t, alice)
	mustEnqueue(t, alice, ch, dt.Application(g, 0, 10))
	clk.Advance(24*time.Hour + time.Minute) // the first is 7 days + 1 min old
	relogin(t, bob)
	f := fetch(t, bob)
	if len(f.GetMessages()) != 1 || f.GetMessages()[0].GetSeq() != 4 {
		t.Fatalf("after retention: %v", f)
	}
	// The expired message and the two membership events before it.
	if n, err := ts.delivery.Sweep(ctxT(t)); err != nil || n != 3 {
		t.Fatalf("sweep: %d %v", n, err)
	}
}

// raceCommits sends a commit for epoch from every device at once and counts
// the winners and the STALE_EPOCH answers; any other answer fails t.
func raceCommits(t *testing.T, devs []*testDevice, ch, group []byte, epoch uint64) (wins, stale int32) {
	t.Helper()
	var w, s atomic.Int32
	var wg sync.WaitGroup
	start := make(chan struct{})
	for _, d := range devs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			_, err := enqueue(t, d, ch, newMessageID(), dt.Commit(group, epoch), nil)
			switch statusOf(err) {
			case qpcv1.Status_STATUS_OK:
				w.Add(1)
			case qpcv1.Status_STATUS_STALE_EPOCH:
				s.Add(1)
			default:
				t.Errorf("commit: %v", err)
			}
		}()
	}
	close(start)
	wg.Wait()
	return w.Load(), s.Load()
}
