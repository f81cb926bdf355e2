package server

import (
	"crypto/ed25519"
	"crypto/rand"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/quicprochat/quicprochat/internal/auth"
	"github.com/quicprochat/quicprochat/internal/rpcclient"
	"github.com/quicprochat/quicprochat/internal/wire/qpcv1"
)

// testDevice is a registered, logged-in device on a test server, with its
// own connection.
type testDevice struct {
	Client       *rpcclient.Client
	Token        string // access token
	RefreshToken []byte
	AccountID    string
	AccountName  string
	DeviceID     string
	SigKey       ed25519.PrivateKey
}

// newDevice registers the account name (the server must allow open
// registration, the default) with a fresh Ed25519 key, logs the device in
// and returns it. Its MLS credential identity is AccountName + "/" + DeviceID.
func (ts *testServer) newDevice(t *testing.T, name string) *testDevice {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	c := ts.dial(t)
	var reg qpcv1.RegisterResponse
	if err := c.Call(ctxT(t), MethodRegister, "", &qpcv1.RegisterRequest{
		AccountName: name, SignatureKey: pub, DeviceName: name + "'s test device",
	}, &reg); err != nil {
		t.Fatalf("register %q: %v", name, err)
	}
	d := &testDevice{Client: c, AccountID: reg.GetAccountId(), AccountName: name, DeviceID: reg.GetDeviceId(), SigKey: priv}
	tok, err := loginDevice(t, c, d.DeviceID, priv)
	if err != nil {
		t.Fatalf("login %q: %v", name, err)
	}
	d.Token, d.RefreshToken = tok.GetAccessToken(), tok.GetRefreshToken()
	return d
}

// addDevice adds a second device to d's account (with its own connection)
// and logs it in.
func (ts *testServer) addDevice(t *testing.T, d *testDevice) *testDevice {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	id, err := d.addKey(t, pub, "second")
	if err != nil {
		t.Fatalf("add device: %v", err)
	}
	c := ts.dial(t)
	nd := &testDevice{Client: c, AccountID: d.AccountID, AccountName: d.AccountName, DeviceID: id, SigKey: priv}
	tok, err := loginDevice(t, c, nd.DeviceID, priv)
	if err != nil {
		t.Fatalf("login added device: %v", err)
	}
	nd.Token, nd.RefreshToken = tok.GetAccessToken(), tok.GetRefreshToken()
	return nd
}

// reauth asks for a re-authentication challenge for one change and signs
// it with the device's key.
func (d *testDevice) reauth(t *testing.T, p qpcv1.ReauthPurpose, target string, newKey []byte) (*qpcv1.Reauth, error) {
	t.Helper()
	var ch qpcv1.ReauthChallengeResponse
	if err := d.call(t, MethodReauthChallenge, &qpcv1.ReauthChallengeRequest{Purpose: p, TargetDeviceId: target, NewSignatureKey: newKey}, &ch); err != nil {
		return nil, err
	}
	ap, param := auth.PurposeAddDevice, newKey
	if p == qpcv1.ReauthPurpose_REAUTH_PURPOSE_REVOKE_DEVICE {
		ap, param = auth.PurposeRevokeDevice, []byte(target)
	}
	sig := ed25519.Sign(d.SigKey, auth.ReauthMessage(ap, d.AccountID, d.DeviceID, auth.ReauthBinding(param), ch.GetChallenge()))
	return &qpcv1.Reauth{Challenge: ch.GetChallenge(), Signature: sig}, nil
}

// addKey adds a device with key pub to d's account, re-authenticated by d.
func (d *testDevice) addKey(t *testing.T, pub []byte, name string) (string, error) {
	t.Helper()
	r, err := d.reauth(t, qpcv1.ReauthPurpose_REAUTH_PURPOSE_ADD_DEVICE, "", pub)
	if err != nil {
		return "", err
	}
	var resp qpcv1.AddDeviceResponse
	err = d.call(t, MethodAddDevice, &qpcv1.AddDeviceRequest{SignatureKey: pub, DeviceName: name, Reauth: r}, &resp)
	return resp.GetDeviceId(), err
}

// revoke revokes target from d's account, re-authenticated by d.
func (d *testDevice) revoke(t *testing.T, target string) error {
	t.Helper()
	r, err := d.reauth(t, qpcv1.ReauthPurpose_REAUTH_PURPOSE_REVOKE_DEVICE, target, nil)
	if err != nil {
		return err
	}
	return d.call(t, MethodRevokeDevice, &qpcv1.RevokeDeviceRequest{DeviceId: target, Reauth: r}, &qpcv1.RevokeDeviceResponse{})
}

// loginDevice runs LoginChallenge and Login for a device key.
func loginDevice(t *testing.T, c *rpcclient.Client, deviceID string, key ed25519.PrivateKey) (*qpcv1.Tokens, error) {
	t.Helper()
	var ch qpcv1.LoginChallengeResponse
	if err := c.Call(ctxT(t), MethodLoginChallenge, "", &qpcv1.LoginChallengeRequest{DeviceId: deviceID}, &ch); err != nil {
		return nil, err
	}
	var lr qpcv1.LoginResponse
	err := c.Call(ctxT(t), MethodLogin, "", &qpcv1.LoginRequest{
		DeviceId: deviceID, Nonce: ch.GetNonce(),
		Signature: ed25519.Sign(key, auth.LoginMessage(deviceID, ch.GetNonce())),
	}, &lr)
	if err != nil {
		return nil, err
	}
	return lr.GetTokens(), nil
}

// call sends an authenticated RPC with the device's access token.
func (d *testDevice) call(t *testing.T, method string, req, resp proto.Message) error {
	t.Helper()
	return d.Client.Call(ctxT(t), method, d.Token, req, resp)
}

// Credential is the device's MLS BasicCredential identity.
func (d *testDevice) Credential() string { return auth.CredentialIdentity(d.AccountName, d.DeviceID) }

// fakeClock is an injectable clock that only moves when told.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{t: time.Now()} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}
