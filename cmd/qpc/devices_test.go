package main

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"strings"
	"testing"
	"time"

	"github.com/quicprochat/quicprochat/internal/auth"
	"github.com/quicprochat/quicprochat/internal/rpcclient"
	"github.com/quicprochat/quicprochat/internal/server/servertest"
	"github.com/quicprochat/quicprochat/internal/transport"
	"github.com/quicprochat/quicprochat/internal/wire/qpcv1"
)

// qpc devices add/revoke sign the change with the device key, and qpc recv
// shows the server's notices when another device of the account adds or
// revokes a device.
func TestDevicesAddRevokeAndNotices(t *testing.T) {
	srv := servertest.Start(t, servertest.Config(t))
	alice := newUser(t)
	alice.ok("init", "--server", srv.Addr(), "--pin", srv.Pin())
	alice.ok("register", "alice")

	if r := alice.run("devices", "add", "abcd"); r.code != 2 {
		t.Fatalf("bad key: exit %d, want 2 (usage)", r.code)
	}
	// A second device of alice's, whose key lives elsewhere (here: in the test).
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	added := jsonLines(t, alice.ok("--json", "devices", "add", hex.EncodeToString(pub), "--name", "phone"))
	if len(added) != 1 {
		t.Fatalf("devices add: %v", added)
	}
	phoneID, _ := added[0]["device_id"].(string)
	if devs := jsonLines(t, alice.ok("--json", "devices")); len(devs) != 2 {
		t.Fatalf("devices after add: %v", devs)
	}
	// alice's own change is not news to alice.
	if out := alice.ok("recv"); strings.Contains(out, "[account]") {
		t.Fatalf("recv after alice's own add: %q", out)
	}

	// The phone adds a tablet, then revokes itself; alice hears of both.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := rpcclient.Dial(ctx, srv.Addr(), transport.DialOptions{PinSHA256: srv.Pin()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var ch qpcv1.LoginChallengeResponse
	if err := c.Call(ctx, "LoginChallenge", "", &qpcv1.LoginChallengeRequest{DeviceId: phoneID}, &ch); err != nil {
		t.Fatal(err)
	}
	var lr qpcv1.LoginResponse
	if err := c.Call(ctx, "Login", "", &qpcv1.LoginRequest{DeviceId: phoneID, Nonce: ch.GetNonce(),
		Signature: ed25519.Sign(priv, auth.LoginMessage(phoneID, ch.GetNonce()))}, &lr); err != nil {
		t.Fatal(err)
	}
	tok, acc := lr.GetTokens().GetAccessToken(), lr.GetTokens().GetAccountId()
	reauth := func(req *qpcv1.ReauthChallengeRequest, p auth.Purpose, param []byte) *qpcv1.Reauth {
		var rc qpcv1.ReauthChallengeResponse
		if err := c.Call(ctx, "ReauthChallenge", tok, req, &rc); err != nil {
			t.Fatal(err)
		}
		return &qpcv1.Reauth{Challenge: rc.GetChallenge(),
			Signature: ed25519.Sign(priv, auth.ReauthMessage(p, acc, phoneID, auth.ReauthBinding(param), rc.GetChallenge()))}
	}
	tabletPub, _, _ := ed25519.GenerateKey(rand.Reader)
	r := reauth(&qpcv1.ReauthChallengeRequest{Purpose: qpcv1.ReauthPurpose_REAUTH_PURPOSE_ADD_DEVICE, NewSignatureKey: tabletPub}, auth.PurposeAddDevice, tabletPub)
	var ar qpcv1.AddDeviceResponse
	if err := c.Call(ctx, "AddDevice", tok, &qpcv1.AddDeviceRequest{SignatureKey: tabletPub, DeviceName: "tablet", Reauth: r}, &ar); err != nil {
		t.Fatal(err)
	}
	out := alice.ok("recv")
	if !strings.Contains(out, "[account]") || !strings.Contains(out, ar.GetDeviceId()) || !strings.Contains(out, "was added to your account by device "+phoneID) {
		t.Fatalf("recv does not show the add: %q", out)
	}
	// Shown once.
	if out := alice.ok("recv"); strings.Contains(out, "[account]") {
		t.Fatalf("notice shown twice: %q", out)
	}
	// alice revokes the tablet with the CLI; the phone is told, alice is not.
	if out := alice.ok("devices", "revoke", ar.GetDeviceId()); !strings.Contains(out, "revoked device "+ar.GetDeviceId()) {
		t.Fatalf("devices revoke: %q", out)
	}
	var fr qpcv1.FetchResponse
	if err := c.Call(ctx, "Fetch", tok, &qpcv1.FetchRequest{}, &fr); err != nil {
		t.Fatal(err)
	}
	if n := len(fr.GetInbox()); n != 1 || fr.GetInbox()[0].GetKind() != qpcv1.InboxKind_INBOX_KIND_ACCOUNT_EVENT {
		t.Fatalf("the phone's inbox after alice's revoke: %v", fr.GetInbox())
	}
	if out := alice.ok("recv"); strings.Contains(out, "[account]") {
		t.Fatalf("alice told of her own revoke: %q", out)
	}
	// Unknown device: a clear error, exit 1.
	if r := alice.run("devices", "revoke", strings.Repeat("0", 32)); r.code != 1 || !strings.Contains(r.stderr, "qpc devices") {
		t.Fatalf("revoke unknown: exit %d, %q", r.code, r.stderr)
	}
}
