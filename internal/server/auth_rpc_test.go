package server

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/quicprochat/quicprochat/internal/auth"
	"github.com/quicprochat/quicprochat/internal/config"
	"github.com/quicprochat/quicprochat/internal/wire"
	"github.com/quicprochat/quicprochat/internal/wire/qpcv1"
)

// wantStatus fails unless err carries the wire status code.
func wantStatus(t *testing.T, what string, err error, code qpcv1.Status) *wire.StatusError {
	t.Helper()
	var se *wire.StatusError
	if !errors.As(err, &se) || se.Code != code {
		t.Fatalf("%s: got %v, want %s", what, err, wire.StatusName(code))
	}
	return se
}

func newKey(t *testing.T) (ed25519.PublicKey, ed25519.PrivateKey) {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return pub, priv
}

func authFailures(ts *testServer, reason string) float64 {
	return testutil.ToFloat64(ts.metrics.AuthFailures.WithLabelValues(reason))
}

func TestRegisterLoginWhoAmI(t *testing.T) {
	ts := startServer(t, testConfig(t))
	d := ts.newDevice(t, "alice")
	var who qpcv1.WhoAmIResponse
	if err := d.call(t, MethodWhoAmI, &qpcv1.WhoAmIRequest{}, &who); err != nil {
		t.Fatal(err)
	}
	if who.GetAccountId() != d.AccountID || who.GetDeviceId() != d.DeviceID || who.GetAccountName() != "alice" {
		t.Fatalf("whoami = %v", &who)
	}
	if who.GetTokenExpiresUnixMs() <= time.Now().UnixMilli() {
		t.Fatalf("token expiry %d is not in the future", who.GetTokenExpiresUnixMs())
	}
	if d.Credential() != "alice/"+d.DeviceID {
		t.Fatalf("credential %q", d.Credential())
	}
}

func TestRegisterRPC(t *testing.T) {
	ts := startServer(t, testConfig(t))
	c := ts.dial(t)
	pub, _ := newKey(t)
	var resp qpcv1.RegisterResponse
	if err := c.Call(ctxT(t), MethodRegister, "", &qpcv1.RegisterRequest{AccountName: "carol", SignatureKey: pub, DeviceName: "laptop"}, &resp); err != nil {
		t.Fatal(err)
	}
	if !auth.ValidID(resp.GetAccountId()) || !auth.ValidID(resp.GetDeviceId()) {
		t.Fatalf("ids %v", &resp)
	}
	dev, err := ts.auth.Device(ctxT(t), resp.GetDeviceId())
	if err != nil || !bytes.Equal(dev.SignatureKey, pub) || dev.AccountName != "carol" || dev.Name != "laptop" {
		t.Fatalf("stored device %+v %v", dev, err)
	}
	pub2, _ := newKey(t)
	err = c.Call(ctxT(t), MethodRegister, "", &qpcv1.RegisterRequest{AccountName: "carol", SignatureKey: pub2}, &resp)
	wantStatus(t, "taken name", err, qpcv1.Status_STATUS_ALREADY_EXISTS)
	err = c.Call(ctxT(t), MethodRegister, "", &qpcv1.RegisterRequest{AccountName: "dave", SignatureKey: pub}, &resp)
	wantStatus(t, "taken key", err, qpcv1.Status_STATUS_ALREADY_EXISTS)
	err = c.Call(ctxT(t), MethodRegister, "", &qpcv1.RegisterRequest{AccountName: "Dave!", SignatureKey: pub2}, &resp)
	wantStatus(t, "bad name", err, qpcv1.Status_STATUS_INVALID_ARGUMENT)
	err = c.Call(ctxT(t), MethodRegister, "", &qpcv1.RegisterRequest{AccountName: "dave", SignatureKey: pub2[:31]}, &resp)
	wantStatus(t, "short key (wire rules)", err, qpcv1.Status_STATUS_INVALID_ARGUMENT)
	err = c.Call(ctxT(t), MethodRegister, "", &qpcv1.RegisterRequest{AccountName: strings.Repeat("d", 33), SignatureKey: pub2}, &resp)
	wantStatus(t, "long name (wire rules)", err, qpcv1.Status_STATUS_INVALID_ARGUMENT)
}

func TestRegisterPolicies(t *testing.T) {
	t.Run("closed", func(t *testing.T) {
		cfg := testConfig(t)
		cfg.Auth.Registration = config.RegistrationClosed
		ts := startServer(t, cfg)
		pub, _ := newKey(t)
		err := ts.dial(t).Call(ctxT(t), MethodRegister, "", &qpcv1.RegisterRequest{AccountName: "erin", SignatureKey: pub}, &qpcv1.RegisterResponse{})
		wantStatus(t, "closed", err, qpcv1.Status_STATUS_PERMISSION_DENIED)
		if authFailures(ts, "registration_closed") != 1 {
			t.Fatal("auth_failures{registration_closed} not counted")
		}
	})
	t.Run("invite", func(t *testing.T) {
		cfg := testConfig(t)
		cfg.Auth.Registration = config.RegistrationInvite
		ts := startServer(t, cfg)
		c := ts.dial(t)
		reg := func(name, code string) error {
			pub, _ := newKey(t)
			return c.Call(ctxT(t), MethodRegister, "", &qpcv1.RegisterRequest{AccountName: name, SignatureKey: pub, InviteCode: code}, &qpcv1.RegisterResponse{})
		}
		wantStatus(t, "no invite", reg("erin", ""), qpcv1.Status_STATUS_PERMISSION_DENIED)
		code, _, err := ts.auth.CreateInvite(ctxT(t), "test", time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		pub, _ := newKey(t)
		var resp qpcv1.RegisterResponse
		if err := c.Call(ctxT(t), MethodRegister, "", &qpcv1.RegisterRequest{AccountName: "erin", SignatureKey: pub, InviteCode: code}, &resp); err != nil {
			t.Fatalf("with invite: %v", err)
		}
		if resp.GetInviteCodeUnused() {
			t.Fatal("an invite the invite policy used is reported unused")
		}
		wantStatus(t, "used invite", reg("frank", code), qpcv1.Status_STATUS_PERMISSION_DENIED)
	})
	// On an open server a code is neither checked nor used: the answer
	// says so (the client warns), and the operator's log says it once.
	t.Run("invite on an open server", func(t *testing.T) {
		ts := startServer(t, testConfig(t))
		c := ts.dial(t)
		var unused int
		for _, name := range []string{"gina", "hank"} {
			pub, _ := newKey(t)
			code, inv, err := ts.auth.CreateInvite(ctxT(t), "test", time.Hour)
			if err != nil {
				t.Fatal(err)
			}
			var resp qpcv1.RegisterResponse
			if err := c.Call(ctxT(t), MethodRegister, "", &qpcv1.RegisterRequest{AccountName: name, SignatureKey: pub, InviteCode: code}, &resp); err != nil {
				t.Fatal(err)
			}
			if resp.GetInviteCodeUnused() {
				unused++
			}
			invs, err := ts.auth.ListInvites(ctxT(t))
			if err != nil {
				t.Fatal(err)
			}
			for _, i := range invs {
				if i.ID == inv.ID && i.UsedBy != "" {
					t.Fatalf("the open policy consumed invite %s", i.ID)
				}
			}
		}
		if unused != 2 {
			t.Fatalf("%d of 2 answers say the code was unused", unused)
		}
		if n := strings.Count(ts.logs(), "which was not used: auth.registration is open"); n != 1 {
			t.Fatalf("the operator's warning was logged %d times, want once", n)
		}
	})
}

func TestLoginChallengeRPC(t *testing.T) {
	ts := startServer(t, testConfig(t))
	d := ts.newDevice(t, "alice")
	c := ts.dial(t)
	var ch qpcv1.LoginChallengeResponse
	if err := c.Call(ctxT(t), MethodLoginChallenge, "", &qpcv1.LoginChallengeRequest{DeviceId: d.DeviceID}, &ch); err != nil {
		t.Fatal(err)
	}
	if len(ch.GetNonce()) != auth.NonceSize || ch.GetExpiresUnixMs() <= time.Now().UnixMilli() {
		t.Fatalf("challenge %v", &ch)
	}
	// An unknown device gets an answer of the same shape.
	var ghost qpcv1.LoginChallengeResponse
	if err := c.Call(ctxT(t), MethodLoginChallenge, "", &qpcv1.LoginChallengeRequest{DeviceId: strings.Repeat("0", 32)}, &ghost); err != nil {
		t.Fatal(err)
	}
	if len(ghost.GetNonce()) != auth.NonceSize || ghost.GetExpiresUnixMs() == 0 {
		t.Fatalf("unknown device challenge %v", &ghost)
	}
	err := c.Call(ctxT(t), MethodLoginChallenge, "", &qpcv1.LoginChallengeRequest{DeviceId: "short"}, &ch)
	wantStatus(t, "bad device id", err, qpcv1.Status_STATUS_INVALID_ARGUMENT)
}

func TestLoginRPC(t *testing.T) {
	ts := startServer(t, testConfig(t))
	d := ts.newDevice(t, "alice")
	c := ts.dial(t)
	tok, err := loginDevice(t, c, d.DeviceID, d.SigKey)
	if err != nil {
		t.Fatal(err)
	}
	if tok.GetAccountId() != d.AccountID || tok.GetDeviceId() != d.DeviceID || len(tok.GetRefreshToken()) != auth.RefreshTokenSize ||
		!strings.HasPrefix(tok.GetAccessToken(), "qpcat1.") || tok.GetRefreshExpiresUnixMs() <= tok.GetAccessExpiresUnixMs() {
		t.Fatalf("tokens %v", tok)
	}
	// Another key, a replayed nonce, a nonce of another device: all UNAUTHENTICATED.
	_, other := newKey(t)
	_, err = loginDevice(t, c, d.DeviceID, other)
	wantStatus(t, "wrong key", err, qpcv1.Status_STATUS_UNAUTHENTICATED)

	var ch qpcv1.LoginChallengeResponse
	if err := c.Call(ctxT(t), MethodLoginChallenge, "", &qpcv1.LoginChallengeRequest{DeviceId: d.DeviceID}, &ch); err != nil {
		t.Fatal(err)
	}
	req := &qpcv1.LoginRequest{DeviceId: d.DeviceID, Nonce: ch.GetNonce(), Signature: ed25519.Sign(d.SigKey, auth.LoginMessage(d.DeviceID, ch.GetNonce()))}
	if err := c.Call(ctxT(t), MethodLogin, "", req, &qpcv1.LoginResponse{}); err != nil {
		t.Fatal(err)
	}
	err = c.Call(ctxT(t), MethodLogin, "", req, &qpcv1.LoginResponse{})
	wantStatus(t, "replayed login", err, qpcv1.Status_STATUS_UNAUTHENTICATED)
	// Signing without the domain separation does not work.
	if err := c.Call(ctxT(t), MethodLoginChallenge, "", &qpcv1.LoginChallengeRequest{DeviceId: d.DeviceID}, &ch); err != nil {
		t.Fatal(err)
	}
	err = c.Call(ctxT(t), MethodLogin, "", &qpcv1.LoginRequest{DeviceId: d.DeviceID, Nonce: ch.GetNonce(), Signature: ed25519.Sign(d.SigKey, ch.GetNonce())}, &qpcv1.LoginResponse{})
	wantStatus(t, "bare nonce signature", err, qpcv1.Status_STATUS_UNAUTHENTICATED)
	err = c.Call(ctxT(t), MethodLogin, "", &qpcv1.LoginRequest{DeviceId: d.DeviceID, Nonce: ch.GetNonce(), Signature: []byte{1}}, &qpcv1.LoginResponse{})
	wantStatus(t, "short signature (wire rules)", err, qpcv1.Status_STATUS_INVALID_ARGUMENT)
	if got := authFailures(ts, "login_failed"); got != 3 {
		t.Fatalf("auth_failures{login_failed} = %v, want 3", got)
	}
}

func TestRefreshRPC(t *testing.T) {
	ts := startServer(t, testConfig(t))
	d := ts.newDevice(t, "alice")
	var r1 qpcv1.RefreshResponse
	if err := d.Client.Call(ctxT(t), MethodRefresh, "", &qpcv1.RefreshRequest{DeviceId: d.DeviceID, RefreshToken: d.RefreshToken}, &r1); err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(r1.GetTokens().GetRefreshToken(), d.RefreshToken) || r1.GetTokens().GetAccessToken() == d.Token {
		t.Fatal("refresh did not rotate")
	}
	if err := d.Client.Call(ctxT(t), MethodWhoAmI, r1.GetTokens().GetAccessToken(), &qpcv1.WhoAmIRequest{}, &qpcv1.WhoAmIResponse{}); err != nil {
		t.Fatalf("refreshed access token: %v", err)
	}
	// Wrong device: PERMISSION_DENIED, token not used up.
	other := ts.newDevice(t, "bob")
	err := d.Client.Call(ctxT(t), MethodRefresh, "", &qpcv1.RefreshRequest{DeviceId: other.DeviceID, RefreshToken: r1.GetTokens().GetRefreshToken()}, &qpcv1.RefreshResponse{})
	wantStatus(t, "wrong device", err, qpcv1.Status_STATUS_PERMISSION_DENIED)
	err = d.Client.Call(ctxT(t), MethodRefresh, "", &qpcv1.RefreshRequest{DeviceId: d.DeviceID, RefreshToken: make([]byte, 32)}, &qpcv1.RefreshResponse{})
	wantStatus(t, "unknown refresh token", err, qpcv1.Status_STATUS_UNAUTHENTICATED)
}

func TestReplayedRefreshTokenRevokesDevice(t *testing.T) {
	ts := startServer(t, testConfig(t))
	d := ts.newDevice(t, "alice")
	bystander := ts.newDevice(t, "bob")
	var r1 qpcv1.RefreshResponse
	if err := d.Client.Call(ctxT(t), MethodRefresh, "", &qpcv1.RefreshRequest{DeviceId: d.DeviceID, RefreshToken: d.RefreshToken}, &r1); err != nil {
		t.Fatal(err)
	}
	// The attacker (or a confused client) presents the used token again.
	err := d.Client.Call(ctxT(t), MethodRefresh, "", &qpcv1.RefreshRequest{DeviceId: d.DeviceID, RefreshToken: d.RefreshToken}, &qpcv1.RefreshResponse{})
	se := wantStatus(t, "replayed refresh token", err, qpcv1.Status_STATUS_UNAUTHENTICATED)
	if !strings.Contains(se.Message, "reused") {
		t.Fatalf("message %q", se.Message)
	}
	// Everything the device held is dead: the new refresh token and both access tokens.
	err = d.Client.Call(ctxT(t), MethodRefresh, "", &qpcv1.RefreshRequest{DeviceId: d.DeviceID, RefreshToken: r1.GetTokens().GetRefreshToken()}, &qpcv1.RefreshResponse{})
	wantStatus(t, "rotated token after reuse", err, qpcv1.Status_STATUS_UNAUTHENTICATED)
	for _, tok := range []string{d.Token, r1.GetTokens().GetAccessToken()} {
		err = d.Client.Call(ctxT(t), MethodWhoAmI, tok, &qpcv1.WhoAmIRequest{}, &qpcv1.WhoAmIResponse{})
		wantStatus(t, "access token after reuse", err, qpcv1.Status_STATUS_UNAUTHENTICATED)
	}
	if authFailures(ts, "refresh_reused") != 1 || authFailures(ts, "token_revoked") != 3 { // the rotated refresh token and the two access tokens
		t.Fatalf("metrics: reused=%v revoked=%v", authFailures(ts, "refresh_reused"), authFailures(ts, "token_revoked"))
	}
	// Other accounts are untouched; the device itself can log in again with its key.
	if err := bystander.call(t, MethodWhoAmI, &qpcv1.WhoAmIRequest{}, &qpcv1.WhoAmIResponse{}); err != nil {
		t.Fatal(err)
	}
	tok, err := loginDevice(t, d.Client, d.DeviceID, d.SigKey)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Client.Call(ctxT(t), MethodWhoAmI, tok.GetAccessToken(), &qpcv1.WhoAmIRequest{}, &qpcv1.WhoAmIResponse{}); err != nil {
		t.Fatal(err)
	}
}

func TestAddDeviceRPC(t *testing.T) {
	ts := startServer(t, testConfig(t))
	d := ts.newDevice(t, "alice")
	d2 := ts.addDevice(t, d)
	var who qpcv1.WhoAmIResponse
	if err := d2.call(t, MethodWhoAmI, &qpcv1.WhoAmIRequest{}, &who); err != nil {
		t.Fatal(err)
	}
	if who.GetAccountId() != d.AccountID || who.GetDeviceId() == d.DeviceID {
		t.Fatalf("second device whoami %v", &who)
	}
	_, err := d.addKey(t, d2.SigKey.Public().(ed25519.PublicKey), "")
	wantStatus(t, "key in use", err, qpcv1.Status_STATUS_ALREADY_EXISTS)
	pub, _ := newKey(t)
	err = d.Client.Call(ctxT(t), MethodAddDevice, "", &qpcv1.AddDeviceRequest{SignatureKey: pub}, &qpcv1.AddDeviceResponse{})
	wantStatus(t, "no token", err, qpcv1.Status_STATUS_UNAUTHENTICATED)
}

func TestListDevicesRPC(t *testing.T) {
	ts := startServer(t, testConfig(t))
	d := ts.newDevice(t, "alice")
	d2 := ts.addDevice(t, d)
	ts.newDevice(t, "bob")
	var resp qpcv1.ListDevicesResponse
	if err := d.call(t, MethodListDevices, &qpcv1.ListDevicesRequest{}, &resp); err != nil {
		t.Fatal(err)
	}
	if len(resp.GetDevices()) != 2 {
		t.Fatalf("devices %v", &resp)
	}
	for _, dv := range resp.GetDevices() {
		if dv.GetDeviceId() != d.DeviceID && dv.GetDeviceId() != d2.DeviceID {
			t.Fatalf("foreign device listed: %v", dv)
		}
		if dv.GetStatus() != auth.StatusActive || dv.GetLastSeenUnixMs() == 0 || len(dv.GetSignatureKey()) != 32 {
			t.Fatalf("device %v", dv)
		}
	}
}

func TestRevokeDeviceRPC(t *testing.T) {
	ts := startServer(t, testConfig(t))
	d := ts.newDevice(t, "alice")
	d2 := ts.addDevice(t, d)
	other := ts.newDevice(t, "bob")
	if err := d2.call(t, MethodWhoAmI, &qpcv1.WhoAmIRequest{}, &qpcv1.WhoAmIResponse{}); err != nil {
		t.Fatal(err)
	}
	err := other.revoke(t, d2.DeviceID)
	wantStatus(t, "another account's device", err, qpcv1.Status_STATUS_NOT_FOUND)
	if err := d.revoke(t, d2.DeviceID); err != nil {
		t.Fatal(err)
	}
	// The revoked device's very next RPC fails, on its existing connection and token.
	err = d2.call(t, MethodWhoAmI, &qpcv1.WhoAmIRequest{}, &qpcv1.WhoAmIResponse{})
	wantStatus(t, "revoked device", err, qpcv1.Status_STATUS_UNAUTHENTICATED)
	err = d2.Client.Call(ctxT(t), MethodRefresh, "", &qpcv1.RefreshRequest{DeviceId: d2.DeviceID, RefreshToken: d2.RefreshToken}, &qpcv1.RefreshResponse{})
	wantStatus(t, "refresh of a revoked device", err, qpcv1.Status_STATUS_UNAUTHENTICATED)
	_, err = loginDevice(t, d2.Client, d2.DeviceID, d2.SigKey)
	wantStatus(t, "login of a revoked device", err, qpcv1.Status_STATUS_UNAUTHENTICATED)
	var list qpcv1.ListDevicesResponse
	if err := d.call(t, MethodListDevices, &qpcv1.ListDevicesRequest{}, &list); err != nil {
		t.Fatal(err)
	}
	for _, dv := range list.GetDevices() {
		if dv.GetDeviceId() == d2.DeviceID && dv.GetStatus() != auth.StatusRevoked {
			t.Fatalf("revoked device listed as %q", dv.GetStatus())
		}
	}
	// The first device still works.
	if err := d.call(t, MethodWhoAmI, &qpcv1.WhoAmIRequest{}, &qpcv1.WhoAmIResponse{}); err != nil {
		t.Fatal(err)
	}
}

func TestWhoAmIWrongDevice(t *testing.T) {
	ts := startServer(t, testConfig(t))
	d := ts.newDevice(t, "alice")
	d2 := ts.addDevice(t, d)
	if err := d.call(t, MethodWhoAmI, &qpcv1.WhoAmIRequest{DeviceId: d.DeviceID}, &qpcv1.WhoAmIResponse{}); err != nil {
		t.Fatal(err)
	}
	err := d.call(t, MethodWhoAmI, &qpcv1.WhoAmIRequest{DeviceId: d2.DeviceID}, &qpcv1.WhoAmIResponse{})
	wantStatus(t, "token of another device", err, qpcv1.Status_STATUS_PERMISSION_DENIED)
	if authFailures(ts, "wrong_device") != 1 {
		t.Fatal("auth_failures{wrong_device} not counted")
	}
}

func TestLookupAccountRPC(t *testing.T) {
	ts := startServer(t, testConfig(t))
	a := ts.newDevice(t, "alice")
	a2 := ts.addDevice(t, a)
	b := ts.newDevice(t, "bob")
	var resp qpcv1.LookupAccountResponse
	if err := b.call(t, MethodLookupAccount, &qpcv1.LookupAccountRequest{AccountName: "alice"}, &resp); err != nil {
		t.Fatal(err)
	}
	if resp.GetAccountId() != a.AccountID || resp.GetAccountName() != "alice" || len(resp.GetDevices()) != 2 {
		t.Fatalf("lookup %v", &resp)
	}
	keys := map[string][]byte{}
	for _, dv := range resp.GetDevices() {
		keys[dv.GetDeviceId()] = dv.GetSignatureKey()
	}
	if !bytes.Equal(keys[a.DeviceID], a.SigKey.Public().(ed25519.PublicKey)) || !bytes.Equal(keys[a2.DeviceID], a2.SigKey.Public().(ed25519.PublicKey)) {
		t.Fatal("lookup returned wrong keys")
	}
	// Revoked devices disappear from the lookup.
	if err := a.revoke(t, a2.DeviceID); err != nil {
		t.Fatal(err)
	}
	if err := b.call(t, MethodLookupAccount, &qpcv1.LookupAccountRequest{AccountName: "alice"}, &resp); err != nil {
		t.Fatal(err)
	}
	if len(resp.GetDevices()) != 1 || resp.GetDevices()[0].GetDeviceId() != a.DeviceID {
		t.Fatalf("after revoke %v", &resp)
	}
	err := b.call(t, MethodLookupAccount, &qpcv1.LookupAccountRequest{AccountName: "nobody"}, &resp)
	wantStatus(t, "unknown name", err, qpcv1.Status_STATUS_NOT_FOUND)
	err = b.Client.Call(ctxT(t), MethodLookupAccount, "", &qpcv1.LookupAccountRequest{AccountName: "alice"}, &resp)
	wantStatus(t, "no token", err, qpcv1.Status_STATUS_UNAUTHENTICATED)
}

func TestBadAccessTokens(t *testing.T) {
	ts := startServer(t, testConfig(t))
	d := ts.newDevice(t, "alice")
	parts := strings.Split(d.Token, ".")
	sig := []byte(parts[2])
	// Flip one character of the signature (keeping valid base64url).
	if sig[5] == 'A' {
		sig[5] = 'B'
	} else {
		sig[5] = 'A'
	}
	forged := parts[0] + "." + parts[1] + "." + string(sig)
	for _, tc := range []struct {
		name, token, reason string
	}{
		{"missing", "", "token_missing"},
		{"malformed", "not-a-token", "token_malformed"},
		{"truncated", d.Token[:len(d.Token)-3], "token_malformed"},
		{"forged", forged, "token_forged"},
	} {
		err := d.Client.Call(ctxT(t), MethodWhoAmI, tc.token, &qpcv1.WhoAmIRequest{}, &qpcv1.WhoAmIResponse{})
		wantStatus(t, tc.name, err, qpcv1.Status_STATUS_UNAUTHENTICATED)
		if authFailures(ts, tc.reason) == 0 {
			t.Errorf("%s: auth_failures{%s} not counted", tc.name, tc.reason)
		}
	}
	// Ping stays public.
	if err := d.Client.Call(ctxT(t), MethodPing, "", &qpcv1.PingRequest{}, &qpcv1.PingResponse{}); err != nil {
		t.Fatal(err)
	}
}

func TestAccessTokenExpiryFakeClock(t *testing.T) {
	clk := newFakeClock()
	cfg := testConfig(t)
	cfg.Auth.AccessTokenTTL = 10 * time.Minute
	ts := startServerWith(t, cfg, clk.Now)
	d := ts.newDevice(t, "alice")
	clk.Advance(10*time.Minute - time.Millisecond)
	if err := d.call(t, MethodWhoAmI, &qpcv1.WhoAmIRequest{}, &qpcv1.WhoAmIResponse{}); err != nil {
		t.Fatalf("just before expiry: %v", err)
	}
	clk.Advance(time.Millisecond)
	err := d.call(t, MethodWhoAmI, &qpcv1.WhoAmIRequest{}, &qpcv1.WhoAmIResponse{})
	se := wantStatus(t, "expired", err, qpcv1.Status_STATUS_UNAUTHENTICATED)
	if !strings.Contains(se.Message, "expired") {
		t.Fatalf("message %q", se.Message)
	}
	// Refresh brings the device back.
	var r qpcv1.RefreshResponse
	if err := d.Client.Call(ctxT(t), MethodRefresh, "", &qpcv1.RefreshRequest{DeviceId: d.DeviceID, RefreshToken: d.RefreshToken}, &r); err != nil {
		t.Fatal(err)
	}
	if err := d.Client.Call(ctxT(t), MethodWhoAmI, r.GetTokens().GetAccessToken(), &qpcv1.WhoAmIRequest{}, &qpcv1.WhoAmIResponse{}); err != nil {
		t.Fatal(err)
	}
	// The refresh token expires too.
	clk.Advance(cfg.Auth.RefreshTokenTTL)
	err = d.Client.Call(ctxT(t), MethodRefresh, "", &qpcv1.RefreshRequest{DeviceId: d.DeviceID, RefreshToken: r.GetTokens().GetRefreshToken()}, &qpcv1.RefreshResponse{})
	wantStatus(t, "expired refresh token", err, qpcv1.Status_STATUS_UNAUTHENTICATED)
}

func TestTokenKeyRotationOverRPC(t *testing.T) {
	ts := startServer(t, testConfig(t))
	d := ts.newDevice(t, "alice")
	if _, err := ts.auth.RotateSigningKey(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	// The token signed by the retired key still works until it expires...
	if err := d.call(t, MethodWhoAmI, &qpcv1.WhoAmIRequest{}, &qpcv1.WhoAmIResponse{}); err != nil {
		t.Fatalf("token of the retired key: %v", err)
	}
	// ...and new logins get tokens of the new key.
	tok, err := loginDevice(t, d.Client, d.DeviceID, d.SigKey)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Client.Call(ctxT(t), MethodWhoAmI, tok.GetAccessToken(), &qpcv1.WhoAmIRequest{}, &qpcv1.WhoAmIResponse{}); err != nil {
		t.Fatal(err)
	}
}

func TestDisabledAccountTokensStop(t *testing.T) {
	ts := startServer(t, testConfig(t))
	d := ts.newDevice(t, "alice")
	if err := ts.auth.DisableAccount(ctxT(t), d.AccountID); err != nil {
		t.Fatal(err)
	}
	err := d.call(t, MethodWhoAmI, &qpcv1.WhoAmIRequest{}, &qpcv1.WhoAmIResponse{})
	if c := wire.Code(err); c != qpcv1.Status_STATUS_UNAUTHENTICATED && c != qpcv1.Status_STATUS_PERMISSION_DENIED {
		t.Fatalf("disabled account: %v", err)
	}
}
