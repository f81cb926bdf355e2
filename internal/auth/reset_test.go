package auth

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/quicprochat/quicprochat/internal/identity"
	"github.com/quicprochat/quicprochat/internal/keylog"
	"github.com/quicprochat/quicprochat/internal/keylog/logstore"
)

// TestResetIdentityKey: a device of the account replaces a lost identity
// key only with a re-authentication bound to the new key; the new key is
// in the key log (after the old one), every certificate of the account is
// dropped, an audit event is written; a second reset within a day, a
// reset of an account without an identity key, of the current key, or on
// a server without the key log are refused with typed errors.
func TestResetIdentityKey(t *testing.T) {
	var kl *logstore.Log
	e := newEnv(t, func(o *Options) {
		l, err := logstore.Open(context.Background(), logstore.Options{DB: o.DB, Now: o.Now})
		if err != nil {
			t.Fatal(err)
		}
		kl = l
		o.KeyLog = l
	})
	ctx := context.Background()
	old, _ := identity.Generate()
	oldPub := old.Public()
	pub, priv := genKey(t)
	acc, id1, err := e.s.Register(ctx, RegisterParams{AccountName: "bob", SignatureKey: pub, DeviceName: "lost", IdentityKey: oldPub.Bytes()})
	if err != nil {
		t.Fatal(err)
	}
	bob1 := dev{account: acc, id: id1, priv: priv}
	pub2, priv2 := genKey(t)
	id2, err := e.addDevice(bob1, pub2, "linked", t)
	if err != nil {
		t.Fatal(err)
	}
	bob2 := dev{account: acc, id: id2, priv: priv2}
	for _, d := range []struct {
		id  string
		key []byte
	}{{id1, pub}, {id2, pub2}} {
		c, _ := identity.Issue(old, "bob", d.id, d.key, e.clk.Now())
		raw, _ := c.Marshal()
		if err := e.s.CertifyDevice(ctx, Actor{AccountID: acc, DeviceID: id2}, d.id, raw); err != nil {
			t.Fatal(err)
		}
	}
	nk, _ := identity.Generate()
	newPub := nk.Public()
	a2 := Actor{AccountID: acc, DeviceID: id2}

	if _, err := e.s.ResetIdentityKey(ctx, a2, newPub.Bytes(), Reauth{}); !errors.Is(err, ErrReauthRequired) {
		t.Fatalf("without re-authentication: %v", err)
	}
	// A re-authentication for adding a device with these bytes as its key
	// is not one for a reset.
	if _, err := e.s.ResetIdentityKey(ctx, a2, newPub.Bytes(), e.reauth(t, bob2, PurposeAddDevice, newPub.Bytes())); !errors.Is(err, ErrReauthFailed) {
		t.Fatalf("with an add-device re-authentication: %v", err)
	}
	other, _ := identity.Generate()
	otherPub := other.Public()
	if _, err := e.s.ResetIdentityKey(ctx, a2, newPub.Bytes(), e.reauth(t, bob2, PurposeResetIdentity, otherPub.Bytes())); !errors.Is(err, ErrReauthFailed) {
		t.Fatalf("with a re-authentication for another key: %v", err)
	}
	// bob1 signs, but the actor is bob2: refused.
	if _, err := e.s.ResetIdentityKey(ctx, a2, newPub.Bytes(), e.reauth(t, bob1, PurposeResetIdentity, newPub.Bytes())); !errors.Is(err, ErrReauthFailed) {
		t.Fatalf("another device's signature: %v", err)
	}
	if _, err := e.s.ResetIdentityKey(ctx, a2, oldPub.Bytes(), e.reauth(t, bob2, PurposeResetIdentity, oldPub.Bytes())); !errors.Is(err, ErrInvalidKey) {
		t.Fatalf("reset to the current key: %v", err)
	}

	res, err := e.s.ResetIdentityKey(ctx, a2, newPub.Bytes(), e.reauth(t, bob2, PurposeResetIdentity, newPub.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	if len(res.UncertifiedDevices) != 2 {
		t.Fatalf("uncertified %v", res.UncertifiedDevices)
	}
	a, devs, err := e.s.LookupAccount(ctx, "bob")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.IdentityKey, newPub.Bytes()) {
		t.Fatal("the account's identity key was not replaced")
	}
	for _, d := range devs {
		if len(d.Certificate) != 0 {
			t.Fatalf("device %s kept its certificate by the old key", d.ID)
		}
	}
	// A certificate by the old key is refused now; by the new key accepted.
	c, _ := identity.Issue(old, "bob", id2, pub2, e.clk.Now())
	raw, _ := c.Marshal()
	if err := e.s.CertifyDevice(ctx, a2, id2, raw); !errors.Is(err, ErrInvalidCertificate) {
		t.Fatalf("a certificate by the old key: %v", err)
	}
	c, _ = identity.Issue(nk, "bob", id2, pub2, e.clk.Now())
	raw, _ = c.Marshal()
	if err := e.s.CertifyDevice(ctx, a2, id2, raw); err != nil {
		t.Fatal(err)
	}
	ents, err := kl.Entries(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var keys [][]byte
	for _, r := range ents {
		en, err := keylog.ParseEntry(r)
		if err != nil {
			t.Fatal(err)
		}
		if en.Kind == keylog.KindIdentityKey && en.AccountName == "bob" {
			keys = append(keys, en.Data)
		}
	}
	if len(keys) != 2 || !bytes.Equal(keys[0], oldPub.Bytes()) || !bytes.Equal(keys[1], newPub.Bytes()) {
		t.Fatalf("bob's identity keys in the log: %x", keys)
	}
	if rep, err := logstore.Verify(ctx, e.db); err != nil || !rep.OK {
		t.Fatalf("key log verify: %+v %v", rep, err)
	}
	if !strings.Contains(e.log.String(), "identity.reset") || !strings.Contains(e.log.String(), identity.Fingerprint(newPub.Bytes())) {
		t.Fatalf("no identity.reset audit event:\n%s", e.log.String())
	}

	third, _ := identity.Generate()
	thirdPub := third.Public()
	e.clk.Advance(IdentityResetInterval - time.Minute)
	if _, err := e.s.ResetIdentityKey(ctx, a2, thirdPub.Bytes(), e.reauth(t, bob2, PurposeResetIdentity, thirdPub.Bytes())); !errors.Is(err, ErrIdentityResetTooSoon) {
		t.Fatalf("a second reset within a day: %v", err)
	}
	if !strings.Contains(e.log.String(), "reason=too_soon") {
		t.Fatal("no identity.reset_refused audit event")
	}
	e.clk.Advance(2 * time.Minute)
	if _, err := e.s.ResetIdentityKey(ctx, a2, thirdPub.Bytes(), e.reauth(t, bob2, PurposeResetIdentity, thirdPub.Bytes())); err != nil {
		t.Fatalf("a reset a day later: %v", err)
	}
	// A revoked device cannot reset.
	if err := e.revoke(t, bob2, id1); err != nil {
		t.Fatal(err)
	}
	e.clk.Advance(IdentityResetInterval + time.Minute)
	a1 := Actor{AccountID: acc, DeviceID: id1}
	if _, err := e.s.ResetIdentityKey(ctx, a1, newPub.Bytes(), e.reauth(t, bob1, PurposeResetIdentity, newPub.Bytes())); !errors.Is(err, ErrReauthFailed) {
		t.Fatalf("reset from a revoked device: %v", err)
	}

	legacy := e.register(t, "legacy")
	if _, err := e.s.ResetIdentityKey(ctx, Actor{AccountID: legacy.account, DeviceID: legacy.id}, newPub.Bytes(),
		e.reauth(t, legacy, PurposeResetIdentity, newPub.Bytes())); !errors.Is(err, ErrNoIdentityKey) {
		t.Fatalf("reset of an account without identity key: %v", err)
	}

	// Without the key log a reset could not be shown to contacts.
	e2 := newEnv(t, nil)
	d := e2.register(t, "carol")
	if _, err := e2.s.ResetIdentityKey(ctx, Actor{AccountID: d.account, DeviceID: d.id}, newPub.Bytes(),
		e2.reauth(t, d, PurposeResetIdentity, newPub.Bytes())); !errors.Is(err, ErrIdentityResetUnavailable) {
		t.Fatalf("reset without a key log: %v", err)
	}
}
