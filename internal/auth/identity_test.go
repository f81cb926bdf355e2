package auth

import (
	"context"
	"crypto/ed25519"
	"errors"
	"testing"
	"time"

	"github.com/quicprochat/quicprochat/internal/identity"
)

// TestCertifyDevice: a certificate is stored only when it verifies under
// the account's identity key and binds that account, device and key.
func TestCertifyDevice(t *testing.T) {
	e := newEnv(t, nil)
	ctx := context.Background()
	ik, err := identity.Generate()
	if err != nil {
		t.Fatal(err)
	}
	pub, priv := genKey(t)
	ikPub := ik.Public()
	acc, devID, err := e.s.Register(ctx, RegisterParams{AccountName: "bob", SignatureKey: pub, DeviceName: "d", IdentityKey: ikPub.Bytes()})
	if err != nil {
		t.Fatal(err)
	}
	bob := dev{account: acc, id: devID, priv: priv}
	a := Actor{AccountID: acc, DeviceID: devID}
	issue := func(k identity.PrivateKey, account, id string, key []byte) []byte {
		c, err := identity.Issue(k, account, id, key, e.clk.Now())
		if err != nil {
			t.Fatal(err)
		}
		raw, _ := c.Marshal()
		return raw
	}
	other, _ := identity.Generate()
	otherPub, _ := genKey(t)
	for name, raw := range map[string][]byte{
		"garbage":           {1, 2, 3},
		"another key":       issue(other, "bob", devID, pub),
		"another account":   issue(ik, "mallory", devID, pub),
		"another device id": issue(ik, "bob", "ffffffffffffffffffffffffffffffff", pub),
		"another dev key":   issue(ik, "bob", devID, otherPub),
	} {
		if err := e.s.CertifyDevice(ctx, a, devID, raw); !errors.Is(err, ErrInvalidCertificate) {
			t.Errorf("%s: %v, want ErrInvalidCertificate", name, err)
		}
	}
	good := issue(ik, "bob", devID, pub)
	if err := e.s.CertifyDevice(ctx, a, devID, good); err != nil {
		t.Fatal(err)
	}
	d, err := e.s.Device(ctx, devID)
	if err != nil || string(d.Certificate) != string(good) || string(d.IdentityKey) != string(ikPub.Bytes()) {
		t.Fatalf("stored %x / %x (%v)", d.Certificate, d.IdentityKey, err)
	}
	// Another account cannot store certificates for bob's devices.
	alice := e.register(t, "alice")
	if err := e.s.CertifyDevice(ctx, Actor{AccountID: alice.account, DeviceID: alice.id}, devID, good); !errors.Is(err, ErrNotFound) {
		t.Fatalf("foreign device: %v", err)
	}
	// An account registered without an identity key cannot certify.
	if err := e.s.CertifyDevice(ctx, Actor{AccountID: alice.account, DeviceID: alice.id}, alice.id, issue(ik, "alice", alice.id, []byte(alice.priv.Public().(ed25519.PublicKey)))); err == nil {
		t.Fatal("certified a device of an account without an identity key")
	}
	// An identity key equal to the device key is refused at registration.
	p2, _ := genKey(t)
	if _, _, err := e.s.Register(ctx, RegisterParams{AccountName: "carol", SignatureKey: p2, IdentityKey: p2}); !errors.Is(err, ErrInvalidKey) {
		t.Fatalf("identity key = device key: %v", err)
	}
	_ = bob
}

// TestLinkRequests: a new device's request is listed for the account,
// answered with the device id once added, bounded per account (without
// evicting), and expires.
func TestLinkRequests(t *testing.T) {
	e := newEnv(t, nil)
	ctx := context.Background()
	bob := e.register(t, "bob")
	newPub, _ := genKey(t)
	st, err := e.s.RequestLink(ctx, "bob", newPub, "laptop")
	if err != nil || st.DeviceID != "" || !st.Expires.Equal(e.clk.Now().Add(LinkRequestTTL)) {
		t.Fatalf("request: %+v, %v", st, err)
	}
	if _, err := e.s.RequestLink(ctx, "nobody", newPub, ""); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown account: %v", err)
	}
	reqs, err := e.s.ListLinkRequests(ctx, bob.account)
	if err != nil || len(reqs) != 1 || string(reqs[0].SignatureKey) != string(newPub) || reqs[0].DeviceName != "laptop" {
		t.Fatalf("list: %+v, %v", reqs, err)
	}
	// Fill the account's slots; the next one is refused, the first kept.
	for range maxLinkRequests - 1 {
		p, _ := genKey(t)
		if _, err := e.s.RequestLink(ctx, "bob", p, ""); err != nil {
			t.Fatal(err)
		}
	}
	p, _ := genKey(t)
	if _, err := e.s.RequestLink(ctx, "bob", p, ""); !errors.Is(err, ErrTooManyLinkRequests) {
		t.Fatalf("over the cap: %v", err)
	}
	if _, err := e.s.RequestLink(ctx, "bob", newPub, "laptop"); err != nil {
		t.Fatalf("refreshing a pending request at the cap: %v", err)
	}
	id, err := e.addDevice(bob, newPub, "laptop", t)
	if err != nil {
		t.Fatal(err)
	}
	st, err = e.s.RequestLink(ctx, "bob", newPub, "laptop")
	if err != nil || st.DeviceID != id || st.AccountID != bob.account {
		t.Fatalf("after approval: %+v, %v", st, err)
	}
	if reqs, _ := e.s.ListLinkRequests(ctx, bob.account); len(reqs) != maxLinkRequests-1 {
		t.Fatalf("the approved request is still listed: %d", len(reqs))
	}
	// Another account's existing key cannot be requested.
	alice := e.register(t, "alice")
	if _, err := e.s.RequestLink(ctx, "alice", newPub, ""); !errors.Is(err, ErrKeyInUse) {
		t.Fatalf("a key of bob's for alice: %v", err)
	}
	_ = alice
	e.clk.Advance(LinkRequestTTL + time.Second)
	if reqs, _ := e.s.ListLinkRequests(ctx, bob.account); len(reqs) != 0 {
		t.Fatalf("expired requests listed: %d", len(reqs))
	}
	if _, err := e.s.RequestLink(ctx, "bob", p, ""); err != nil {
		t.Fatalf("after expiry: %v", err)
	}
}
