package server

import (
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"google.golang.org/protobuf/proto"

	"github.com/quicprochat/quicprochat/internal/auth"
	"github.com/quicprochat/quicprochat/internal/rpcclient"
	"github.com/quicprochat/quicprochat/internal/transport"
	"github.com/quicprochat/quicprochat/internal/wire/qpcv1"
)

// dialFrom connects from another loopback address (127.0.0.0/8 is all
// local on Linux), so an attacker in a test has its own source address and
// its own per-address buckets, like a second host.
func (ts *testServer) dialFrom(t *testing.T, localIP string) *rpcclient.Client {
	t.Helper()
	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.ParseIP(localIP)})
	if err != nil {
		t.Fatalf("bind %s: %v", localIP, err)
	}
	tr := &quic.Transport{Conn: udp}
	raddr, err := net.ResolveUDPAddr("udp", ts.QUICAddr())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// The attacker does not care whose certificate it is.
	qc, err := tr.Dial(ctx, raddr, &tls.Config{MinVersion: tls.VersionTLS13, NextProtos: []string{transport.ALPN}, InsecureSkipVerify: true},
		&quic.Config{MaxIdleTimeout: time.Minute})
	if err != nil {
		t.Fatalf("dial from %s: %v", localIP, err)
	}
	c := rpcclient.New(qc)
	t.Cleanup(func() {
		_ = c.Close()
		_ = tr.Close()
	})
	return c
}

// Issue 23, "login lockout of a chosen device": device ids are public
// (LookupAccount), LoginChallenge needs no account, and each device used to
// keep its 8 newest nonces, so about 100 challenges a second for the
// victim's device from another host evicted the victim's nonce before it
// could answer. Challenges are now stateless: the victim logs in whatever
// the flood.
func TestLoginChallengeFloodDoesNotLockOutDevice(t *testing.T) {
	ts := startServer(t, testConfig(t))
	victim := ts.newDevice(t, "alice")
	attacker := ts.dialFrom(t, "127.0.0.2")

	var sent atomic.Int64
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(10 * time.Millisecond) // ~100 challenges/s
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			_ = attacker.Call(ctx, MethodLoginChallenge, "", &qpcv1.LoginChallengeRequest{DeviceId: victim.DeviceID}, &qpcv1.LoginChallengeResponse{})
			cancel()
			sent.Add(1)
		}
	}()
	defer func() { close(stop); <-done }()

	for round := range 5 {
		var ch qpcv1.LoginChallengeResponse
		if err := victim.Client.Call(ctxT(t), MethodLoginChallenge, "", &qpcv1.LoginChallengeRequest{DeviceId: victim.DeviceID}, &ch); err != nil {
			t.Fatalf("round %d: victim's challenge: %v", round, err)
		}
		// The victim answers only after the attacker has asked for three
		// times as many challenges as a device used to keep.
		start := sent.Load()
		waitFor(t, 20*time.Second, "the attacker's challenges", func() bool { return sent.Load() >= start+24 })
		var lr qpcv1.LoginResponse
		err := victim.Client.Call(ctxT(t), MethodLogin, "", &qpcv1.LoginRequest{DeviceId: victim.DeviceID, Nonce: ch.GetNonce(),
			Signature: ed25519.Sign(victim.SigKey, auth.LoginMessage(victim.DeviceID, ch.GetNonce()))}, &lr)
		if err != nil {
			t.Fatalf("round %d: victim's login during the flood: %v", round, err)
		}
	}
}

// Login challenges are limited per (target device, source address), on top
// of the per-address limit: one host cannot ask for one device's
// challenges without bound, and another host (the owner) is not affected.
func TestLoginChallengeLimitPerDeviceAndAddress(t *testing.T) {
	clk := newFakeClock()
	cfg := testConfig(t)
	cfg.Auth.ChallengeRate = 1
	cfg.Auth.ChallengeBurst = 3
	ts := startServerWith(t, cfg, clk.Now)
	victim := ts.newDevice(t, "alice") // one challenge from 127.0.0.1 used
	bob := ts.newDevice(t, "bob")
	attacker := ts.dialFrom(t, "127.0.0.2")
	challenge := func(c *rpcclient.Client, dev string) error {
		return c.Call(ctxT(t), MethodLoginChallenge, "", &qpcv1.LoginChallengeRequest{DeviceId: dev}, &qpcv1.LoginChallengeResponse{})
	}
	for i := range 3 {
		if err := challenge(attacker, victim.DeviceID); err != nil {
			t.Fatalf("challenge %d within the burst: %v", i, err)
		}
	}
	se := wantStatus(t, "over the per-device burst", challenge(attacker, victim.DeviceID), qpcv1.Status_STATUS_RESOURCE_EXHAUSTED)
	if se.RetryAfter <= 0 || se.RetryAfter > time.Second || !strings.Contains(se.Message, scopeLoginChallenge) {
		t.Fatalf("refusal %v; want a retry-after within 1s naming %s", se, scopeLoginChallenge)
	}
	if rateLimited(ts, scopeLoginChallenge) != 1 {
		t.Fatalf("rate_limited{%s} = %v", scopeLoginChallenge, rateLimited(ts, scopeLoginChallenge))
	}
	// The same host may still ask for another device's challenge...
	if err := challenge(attacker, bob.DeviceID); err != nil {
		t.Fatalf("another device from the same host: %v", err)
	}
	// ...and the victim, from its own address, logs in.
	if _, err := loginDevice(t, victim.Client, victim.DeviceID, victim.SigKey); err != nil {
		t.Fatalf("the victim's own login: %v", err)
	}
	clk.Advance(se.RetryAfter)
	if err := challenge(attacker, victim.DeviceID); err != nil {
		t.Fatalf("after retry-after: %v", err)
	}
}

// Issue 23, "a stolen access token becomes a permanent account takeover":
// with only the 15-minute bearer token, the thief added a device with its
// own key and revoked the victim's. Both now need the victim's device key.
func TestStolenAccessTokenCannotAddOrRevokeDevices(t *testing.T) {
	ts := startServer(t, testConfig(t))
	victim := ts.newDevice(t, "alice")
	victim2 := ts.addDevice(t, victim)
	thief := ts.dialFrom(t, "127.0.0.2")
	stolen := victim.Token
	thiefPub, thiefPriv := newKey(t)
	call := func(method string, req, resp proto.Message) error {
		return thief.Call(ctxT(t), method, stolen, req, resp)
	}

	// The old attack: the token alone.
	err := call(MethodAddDevice, &qpcv1.AddDeviceRequest{SignatureKey: thiefPub, DeviceName: "thief"}, &qpcv1.AddDeviceResponse{})
	se := wantStatus(t, "add device with a stolen token", err, qpcv1.Status_STATUS_PERMISSION_DENIED)
	if !strings.Contains(se.Message, "re-authentication required") {
		t.Fatalf("message %q does not say what is missing", se.Message)
	}
	err = call(MethodRevokeDevice, &qpcv1.RevokeDeviceRequest{DeviceId: victim2.DeviceID}, &qpcv1.RevokeDeviceResponse{})
	wantStatus(t, "revoke with a stolen token", err, qpcv1.Status_STATUS_PERMISSION_DENIED)
	err = call(MethodRevokeDevice, &qpcv1.RevokeDeviceRequest{DeviceId: victim.DeviceID}, &qpcv1.RevokeDeviceResponse{})
	wantStatus(t, "revoke the token's own device", err, qpcv1.Status_STATUS_PERMISSION_DENIED)

	// The token gets the thief a challenge, but only the victim's key answers it.
	var ch qpcv1.ReauthChallengeResponse
	if err := call(MethodReauthChallenge, &qpcv1.ReauthChallengeRequest{Purpose: qpcv1.ReauthPurpose_REAUTH_PURPOSE_ADD_DEVICE,
		NewSignatureKey: thiefPub}, &ch); err != nil {
		t.Fatal(err)
	}
	sig := ed25519.Sign(thiefPriv, auth.ReauthMessage(auth.PurposeAddDevice, victim.AccountID, victim.DeviceID, auth.ReauthBinding(thiefPub), ch.GetChallenge()))
	err = call(MethodAddDevice, &qpcv1.AddDeviceRequest{SignatureKey: thiefPub, DeviceName: "thief",
		Reauth: &qpcv1.Reauth{Challenge: ch.GetChallenge(), Signature: sig}}, &qpcv1.AddDeviceResponse{})
	se = wantStatus(t, "add device with a proof by the thief's key", err, qpcv1.Status_STATUS_PERMISSION_DENIED)
	if !strings.Contains(se.Message, "re-authentication failed") {
		t.Fatalf("message %q", se.Message)
	}
	if err := call(MethodReauthChallenge, &qpcv1.ReauthChallengeRequest{Purpose: qpcv1.ReauthPurpose_REAUTH_PURPOSE_REVOKE_DEVICE,
		TargetDeviceId: victim2.DeviceID}, &ch); err != nil {
		t.Fatal(err)
	}
	sig = ed25519.Sign(thiefPriv, auth.ReauthMessage(auth.PurposeRevokeDevice, victim.AccountID, victim.DeviceID,
		auth.ReauthBinding([]byte(victim2.DeviceID)), ch.GetChallenge()))
	err = call(MethodRevokeDevice, &qpcv1.RevokeDeviceRequest{DeviceId: victim2.DeviceID,
		Reauth: &qpcv1.Reauth{Challenge: ch.GetChallenge(), Signature: sig}}, &qpcv1.RevokeDeviceResponse{})
	wantStatus(t, "revoke with a proof by the thief's key", err, qpcv1.Status_STATUS_PERMISSION_DENIED)

	// Nothing changed: both devices active, no foreign key on the account.
	var list qpcv1.ListDevicesResponse
	if err := victim.call(t, MethodListDevices, &qpcv1.ListDevicesRequest{}, &list); err != nil {
		t.Fatal(err)
	}
	if len(list.GetDevices()) != 2 {
		t.Fatalf("devices after the attack: %v", list.GetDevices())
	}
	for _, d := range list.GetDevices() {
		if d.GetStatus() != auth.StatusActive {
			t.Fatalf("device %s is %s after the attack", d.GetDeviceId(), d.GetStatus())
		}
	}
	if err := victim2.call(t, MethodWhoAmI, &qpcv1.WhoAmIRequest{}, &qpcv1.WhoAmIResponse{}); err != nil {
		t.Fatalf("the victim's second device after the attack: %v", err)
	}
}

// accountEvents fetches d's inbox and returns the account events in it.
func accountEvents(t *testing.T, d *testDevice) []*qpcv1.AccountEvent {
	t.Helper()
	var resp qpcv1.FetchResponse
	if err := d.call(t, MethodFetch, &qpcv1.FetchRequest{}, &resp); err != nil {
		t.Fatalf("fetch: %v", err)
	}
	return ackAccountEvents(t, d, &resp)
}

// ackAccountEvents returns the account events of a fetch and acknowledges
// its inbox items.
func ackAccountEvents(t *testing.T, d *testDevice, resp *qpcv1.FetchResponse) []*qpcv1.AccountEvent {
	t.Helper()
	var out []*qpcv1.AccountEvent
	var top uint64
	for _, it := range resp.GetInbox() {
		top = max(top, it.GetSeq())
		if it.GetKind() != qpcv1.InboxKind_INBOX_KIND_ACCOUNT_EVENT {
			continue
		}
		if it.GetSenderAccountId() != d.AccountID {
			t.Fatalf("account event from account %s", it.GetSenderAccountId())
		}
		var ev qpcv1.AccountEvent
		if err := proto.Unmarshal(it.GetPayload(), &ev); err != nil {
			t.Fatalf("account event payload: %v", err)
		}
		out = append(out, &ev)
	}
	if top > 0 {
		if err := d.call(t, MethodAck, &qpcv1.AckRequest{InboxSeq: top}, &qpcv1.AckResponse{}); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// A legitimate add or revoke is announced to the account's other devices
// (through the inbox they already fetch, waking their long polls), so a
// device that appears or disappears is noticed.
func TestDeviceChangesAreAnnouncedToOtherDevices(t *testing.T) {
	ts := startServer(t, testConfig(t))
	a := ts.newDevice(t, "alice")
	a2 := ts.addDevice(t, a)
	if evs := accountEvents(t, a); len(evs) != 0 {
		t.Fatalf("the device that made the change was told: %v", evs)
	}

	// a2 is long-polling when a adds a third device.
	type fetched struct {
		resp *qpcv1.FetchResponse
		err  error
	}
	got := make(chan fetched, 1)
	go func() {
		var resp qpcv1.FetchResponse
		err := a2.Client.Call(context.Background(), MethodFetchWait, a2.Token, &qpcv1.FetchWaitRequest{TimeoutMs: 20000}, &resp)
		got <- fetched{&resp, err}
	}()
	waitFor(t, 10*time.Second, "a2's long poll to be parked", func() bool { return ts.gauge(t, "qpcd_long_poll_waiters") == 1 })
	pub3, _ := newKey(t)
	a3, err := a.addKey(t, pub3, "tablet")
	if err != nil {
		t.Fatal(err)
	}
	var evs []*qpcv1.AccountEvent
	select {
	case f := <-got:
		if f.err != nil {
			t.Fatalf("a2's long poll: %v", f.err)
		}
		evs = ackAccountEvents(t, a2, f.resp)
	case <-time.After(20 * time.Second):
		t.Fatal("a2's long poll was not woken by the add")
	}
	if len(evs) != 1 {
		t.Fatalf("events %v", evs)
	}
	ev := evs[0]
	if ev.GetKind() != qpcv1.AccountEventKind_ACCOUNT_EVENT_KIND_DEVICE_ADDED || ev.GetDeviceId() != a3 || ev.GetDeviceName() != "tablet" ||
		ev.GetByDeviceId() != a.DeviceID || string(ev.GetSignatureKey()) != string(pub3) || ev.GetTimeUnixMs() == 0 {
		t.Fatalf("add event %v", ev)
	}

	if err := a.revoke(t, a3); err != nil {
		t.Fatal(err)
	}
	evs = accountEvents(t, a2)
	if len(evs) != 1 || evs[0].GetKind() != qpcv1.AccountEventKind_ACCOUNT_EVENT_KIND_DEVICE_REVOKED || evs[0].GetDeviceId() != a3 ||
		evs[0].GetByDeviceId() != a.DeviceID {
		t.Fatalf("revoke event %v", evs)
	}
	if evs := accountEvents(t, a); len(evs) != 0 {
		t.Fatalf("the acting device was told of its own changes: %v", evs)
	}

	// An operator's revocation is announced too, with no acting device.
	if err := ts.auth.AdminRevokeDevice(context.Background(), a2.DeviceID); err != nil {
		t.Fatal(err)
	}
	evs = accountEvents(t, a)
	if len(evs) != 1 || evs[0].GetDeviceId() != a2.DeviceID || evs[0].GetByDeviceId() != "" {
		t.Fatalf("admin revoke event %v", evs)
	}

	// Nobody can forge one: SendToInbox refuses the kind.
	b := ts.newDevice(t, "bob")
	var cg qpcv1.CreateGroupChannelResponse
	if err := b.call(t, MethodCreateGroupChannel, &qpcv1.CreateGroupChannelRequest{GroupId: make([]byte, 32)}, &cg); err != nil {
		t.Fatal(err)
	}
	err = b.call(t, MethodSendToInbox, &qpcv1.SendToInboxRequest{ChannelId: cg.GetChannel().GetChannelId(),
		Kind: qpcv1.InboxKind_INBOX_KIND_ACCOUNT_EVENT, Payload: []byte{1},
		Recipients: []*qpcv1.InboxRecipient{{AccountName: "bob", DeviceId: b.DeviceID}}}, &qpcv1.SendToInboxResponse{})
	wantStatus(t, "a client sending an account event", err, qpcv1.Status_STATUS_INVALID_ARGUMENT)
}
