package client

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quicprochat/quicprochat/internal/config"
	"github.com/quicprochat/quicprochat/internal/identity"
	"github.com/quicprochat/quicprochat/internal/keylog"
	"github.com/quicprochat/quicprochat/internal/keylog/logstore"
	"github.com/quicprochat/quicprochat/internal/server/servertest"
	"github.com/quicprochat/quicprochat/internal/store"
	"github.com/quicprochat/quicprochat/internal/wire"
	"github.com/quicprochat/quicprochat/internal/wire/qpcv1"
)

// linkDevice links a new device to account, approved by approver.
func linkDevice(t *testing.T, srv *servertest.Server, approver *Client, account string) *Client {
	t.Helper()
	ctx := ctxT(t)
	dev, _ := newTestClient(t, srv, testKey(t))
	codes := make(chan string, 1)
	done := make(chan error, 1)
	go func() {
		_, err := dev.Link(ctx, account, LinkOptions{DeviceName: "second", Poll: 20 * time.Millisecond, Timeout: 30 * time.Second,
			Code: func(c string) { codes <- c }})
		done <- err
	}()
	select {
	case code := <-codes:
		if _, err := approver.ApproveLink(ctx, code, ""); err != nil {
			t.Fatal(err)
		}
	case err := <-done:
		t.Fatalf("link ended before showing a code: %v", err)
	}
	if err := <-done; err != nil {
		t.Fatalf("link: %v", err)
	}
	return dev
}

// TestResetLostIdentityKey: bob loses the device that held his identity
// key and resets it from his linked device. Alice, who had verified bob,
// gets the loud identity-changed warning and cannot send to the group
// until she verifies him again (or passes --allow-unverified); carol, who
// never verified him, is told as well; the key log holds both identity
// keys and still verifies; a reset without re-authentication, and a second
// reset within a day, are refused with typed errors.
func TestResetLostIdentityKey(t *testing.T) {
	var offset atomic.Int64
	clock := func() time.Time { return time.Now().Add(time.Duration(offset.Load())) }
	srv := servertest.StartWith(t, servertest.Config(t), clock)
	ctx := ctxT(t)
	alice := registered(t, srv, "alice")
	bob := registered(t, srv, "bob")
	carol := registered(t, srv, "carol")
	bob2 := linkDevice(t, srv, bob, "bob")
	bob3 := linkDevice(t, srv, bob, "bob")
	lost := whoami(t, bob).DeviceID
	oldKey, err := bob.OwnIdentityKey(ctx)
	if err != nil {
		t.Fatal(err)
	}

	if err := alice.CreateGroup(ctx, "team"); err != nil {
		t.Fatal(err)
	}
	if err := alice.AddMembers(ctx, "team", []string{"bob", "carol"}); err != nil {
		t.Fatal(err)
	}
	acceptAll(t, bob, bob2, bob3, carol)
	bn, err := bob2.SafetyNumber(ctx, "alice")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := alice.ConfirmSafetyNumber(ctx, "bob", bn.Number); err != nil {
		t.Fatal(err)
	}
	send(t, alice, "team", "before")
	if got := texts(t, carol, "team"); len(got) != 1 {
		t.Fatalf("carol read %q", got)
	}
	if n, err := carol.TrustNotices(ctx); err != nil || len(n) != 0 {
		t.Fatalf("carol's notices before the reset: %+v %v", n, err)
	}
	if tr := memberTrust(t, carol, "team"); tr["bob/"+whoami(t, bob2).DeviceID] != TrustCertified {
		t.Fatalf("carol's view before: %v", tr)
	}

	// The registering device is gone.
	_ = bob.Close()

	// Without re-authentication, or with one for another key, the server refuses.
	newPub := mustIdentityKey(t)
	err = bob2.call(ctx, "ResetIdentityKey", &qpcv1.ResetIdentityKeyRequest{IdentityKey: newPub.Bytes()}, &qpcv1.ResetIdentityKeyResponse{})
	if !isStatus(err, qpcv1.Status_STATUS_PERMISSION_DENIED) {
		t.Fatalf("reset without re-authentication: %v", err)
	}
	r, err := bob2.reauth(ctx, &qpcv1.ReauthChallengeRequest{Purpose: qpcv1.ReauthPurpose_REAUTH_PURPOSE_RESET_IDENTITY, NewIdentityKey: mustIdentityKey(t).Bytes()})
	if err != nil {
		t.Fatal(err)
	}
	err = bob2.call(ctx, "ResetIdentityKey", &qpcv1.ResetIdentityKeyRequest{IdentityKey: newPub.Bytes(), Reauth: r}, &qpcv1.ResetIdentityKeyResponse{})
	if !isStatus(err, qpcv1.Status_STATUS_PERMISSION_DENIED) {
		t.Fatalf("reset with a re-authentication for another key: %v", err)
	}
	// Nor may another account's device reset bob's key: the call resets
	// only the caller's own account (carol's "reset" changes carol).
	if _, err := bob2.OwnIdentityKey(ctx); err != nil {
		t.Fatal(err)
	}

	// Bob revokes the lost device and resets from the linked one.
	if err := bob2.RevokeDevice(ctx, lost); err != nil {
		t.Fatal(err)
	}
	res, err := bob2.ResetIdentity(ctx)
	if err != nil {
		t.Fatalf("reset: %v", err)
	}
	newKey, err := bob2.OwnIdentityKey(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if newKey.Equal(oldKey) || res.NewIdentity != identity.Fingerprint(newKey[:]) || res.OldIdentity != identity.Fingerprint(oldKey[:]) ||
		len(res.GroupsRejoined) != 1 || res.Resumed {
		t.Fatalf("reset %+v; old %s new %s", res, oldKey, newKey)
	}
	if len(res.Uncertified) != 1 || res.Uncertified[0] != whoami(t, bob3).DeviceID {
		t.Fatalf("uncertified devices %v, want bob3 only", res.Uncertified)
	}
	// bob2 now holds the identity key: it approves bob3 again by the code
	// bob3 shows (qpc whoami); bob3 takes the new certificate on its next
	// sync and rejoins its groups with it.
	if _, err := bob2.ApproveLink(ctx, deviceCode(t, bob3), ""); err != nil {
		t.Fatalf("approve bob3 again: %v", err)
	}
	if _, err := bob3.Sync(ctx, 0); err != nil {
		t.Fatal(err)
	}
	if c := whoami(t, bob3).Certificate(); c == nil || !c.IdentityKey.Equal(newKey) {
		t.Fatalf("bob3's certificate after approval: %+v", c)
	}
	// bob2 now holds the identity key: it can approve devices.
	if c := whoami(t, bob2).Certificate(); c == nil || !c.IdentityKey.Equal(newKey) {
		t.Fatalf("bob2's certificate after the reset: %+v", c)
	}
	if st, err := bob2.KeyPackageStock(ctx); err != nil || st.GetDeviceCount() == 0 {
		t.Fatalf("no fresh KeyPackages: %v %v", st, err)
	}

	// Alice, who verified bob, is warned loudly and cannot send silently.
	if _, err := alice.Sync(ctx, 0); err != nil {
		t.Fatal(err)
	}
	notes, err := alice.TrustNotices(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !hasNotice(notes, "identity_changed", "bob", res.NewIdentity, true) {
		t.Fatalf("alice's notices %+v", notes)
	}
	if _, err := alice.SendChecked(ctx, "team", "after", ""); !errors.Is(err, ErrIdentityChanged) {
		t.Fatalf("alice's send after bob's reset: %v", err)
	}
	sn, err := alice.SafetyNumber(ctx, "bob")
	if err != nil {
		t.Fatal(err)
	}
	bn2, err := bob2.SafetyNumber(ctx, "alice")
	if err != nil {
		t.Fatal(err)
	}
	if sn.ChangedKey != res.NewIdentity || sn.ChangedNumber != bn2.Number || sn.Number == bn2.Number {
		t.Fatalf("alice's safety number %+v, bob's now %s", sn, bn2.Number)
	}
	// The lookup path (KeyPackages proven by the key log) says the same:
	// adding bob to a new group is refused.
	if err := alice.CreateGroup(ctx, "team2"); err != nil {
		t.Fatal(err)
	}
	if err := alice.AddMembers(ctx, "team2", []string{"bob"}); !errors.Is(err, ErrIdentityChanged) {
		t.Fatalf("adding bob after his reset: %v", err)
	}
	// Re-verifying the new number lets her send again.
	if v, err := alice.ConfirmSafetyNumber(ctx, "bob", bn2.Number); err != nil || !v.Verified || v.TheirKey != res.NewIdentity {
		t.Fatalf("re-verify: %+v %v", v, err)
	}
	if _, err := alice.SendChecked(ctx, "team", "after", ""); err != nil {
		t.Fatalf("send after re-verifying: %v", err)
	}
	for _, b := range []*Client{bob2, bob3} {
		if got := texts(t, b, "team"); len(got) == 0 || got[len(got)-1] != "after" {
			t.Fatalf("%s read %q", whoami(t, b).DeviceID, got)
		}
	}

	// Carol, who never verified bob, sees the change too.
	if _, err := carol.Sync(ctx, 0); err != nil {
		t.Fatal(err)
	}
	cn, err := carol.TrustNotices(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !hasNotice(cn, "identity_changed", "bob", res.NewIdentity, false) {
		t.Fatalf("carol's notices %+v", cn)
	}
	if tr := memberTrust(t, carol, "team"); tr["bob/"+whoami(t, bob2).DeviceID] != TrustIdentityChanged {
		t.Fatalf("carol's view after: %v", tr)
	}
	// She never verified bob: the warning does not stop her sending.
	if _, err := carol.SendChecked(ctx, "team", "hi", ""); err != nil {
		t.Fatalf("carol's send: %v", err)
	}

	// The lost device's leaf is gone from the group.
	for _, m := range mustMembers(t, alice, "team") {
		if m.Device == lost {
			t.Fatalf("the revoked device is still in the group: %+v", m)
		}
	}

	// A second reset the same day is refused; a day later it is allowed.
	if _, err := bob2.ResetIdentity(ctx); !errors.Is(err, ErrIdentityResetTooSoon) || !isStatus(err, qpcv1.Status_STATUS_RESOURCE_EXHAUSTED) {
		t.Fatalf("second reset within a day: %v", err)
	}
	if k, _ := bob2.OwnIdentityKey(ctx); !k.Equal(newKey) {
		t.Fatal("a refused reset changed this device's identity key")
	}
	offset.Store(int64(25 * time.Hour))
	if _, err := bob2.ResetIdentity(ctx); err != nil {
		t.Fatalf("reset a day later: %v", err)
	}

	// The key log holds every identity key bob had, and checks out.
	ents, err := srv.Server().KeyLog().Entries(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var bobKeys []identity.PublicKey
	for _, raw := range ents {
		e, err := keylog.ParseEntry(raw)
		if err != nil {
			t.Fatal(err)
		}
		if e.AccountName == "bob" && e.Kind == keylog.KindIdentityKey {
			k, err := identity.ParsePublicKey(e.Data)
			if err != nil {
				t.Fatal(err)
			}
			bobKeys = append(bobKeys, k)
		}
	}
	if len(bobKeys) != 3 || !bobKeys[0].Equal(oldKey) || !bobKeys[1].Equal(newKey) {
		t.Fatalf("bob's identity keys in the log: %v", bobKeys)
	}
	srv.Stop(t)
	verifyKeyLogOnDisk(t, srv)
}

// deviceCode is the code qpc whoami shows: the device key's fingerprint.
func deviceCode(t *testing.T, c *Client) string {
	t.Helper()
	id, err := c.Identity(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	defer id.Wipe()
	return identity.Fingerprint(id.PublicKey())
}

func mustIdentityKey(t *testing.T) identity.PublicKey {
	t.Helper()
	k, err := identity.Generate()
	if err != nil {
		t.Fatal(err)
	}
	defer k.Wipe()
	return k.Public()
}

func isStatus(err error, code qpcv1.Status) bool {
	var se *wire.StatusError
	return errors.As(err, &se) && se.Code == code
}

func hasNotice(ns []TrustNotice, kind, account, keyFP string, verified bool) bool {
	for _, n := range ns {
		if n.Kind == kind && n.Account == account && n.KeyFP == keyFP && n.Verified == verified {
			return true
		}
	}
	return false
}

func mustMembers(t *testing.T, c *Client, group string) []Member {
	t.Helper()
	ms, err := c.Members(ctxT(t), group)
	if err != nil {
		t.Fatal(err)
	}
	return ms
}

// verifyKeyLogOnDisk runs what qpcctl keylog verify runs on the stopped
// server's database.
func verifyKeyLogOnDisk(t *testing.T, srv *servertest.Server) {
	t.Helper()
	key, err := config.ReadKeyFile(filepath.Join(srv.Config.DataDir, "db.key"))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	db, err := store.Open(ctx, store.Options{Path: filepath.Join(srv.Config.DataDir, "qpcd.db"), Key: key})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	rep, err := logstore.Verify(ctx, db)
	if err != nil || !rep.OK {
		t.Fatalf("key log verify: %+v %v", rep, err)
	}
}

// TestAddDeviceByKeyIsCertified: qpc devices add KEY on the device that
// holds the identity key certifies the new device; on a device that does
// not, it is refused before anything is added (a device without a
// certificate could not be reached), pointing at qpc device link.
func TestAddDeviceByKeyIsCertified(t *testing.T) {
	srv := servertest.Start(t, servertest.Config(t))
	ctx := ctxT(t)
	alice := registered(t, srv, "alice")
	alice2 := linkDevice(t, srv, alice, "alice")
	ik, err := alice.OwnIdentityKey(ctx)
	if err != nil {
		t.Fatal(err)
	}
	key := mustIdentityKey(t) // any Ed25519 public key will do as a device key
	d, err := alice.AddCertifiedDevice(ctx, key.Bytes(), "tablet")
	if err != nil {
		t.Fatal(err)
	}
	devs, err := alice.Devices(ctx)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, dv := range devs {
		if dv.GetDeviceId() != d.DeviceID {
			continue
		}
		found = true
		cert, err := identity.Parse(dv.GetCertificate())
		if err != nil {
			t.Fatalf("the added device has no certificate: %v", err)
		}
		if err := cert.Verify(identity.Expect{AccountName: "alice", DeviceID: d.DeviceID, DeviceKey: key.Bytes(), IdentityKey: &ik}); err != nil {
			t.Fatal(err)
		}
	}
	if !found {
		t.Fatalf("device %s not listed", d.DeviceID)
	}
	before := len(devs)
	other := mustIdentityKey(t)
	_, err = alice2.AddCertifiedDevice(ctx, other.Bytes(), "phone")
	if !errors.Is(err, ErrNoIdentityKey) || !strings.Contains(err.Error(), "qpc device link alice") {
		t.Fatalf("add by key from a device without the identity key: %v", err)
	}
	if devs, err := alice.Devices(ctx); err != nil || len(devs) != before {
		t.Fatalf("a refused add changed the devices: %d, was %d (%v)", len(devs), before, err)
	}
}

// TestResetIdentityResumes: a reset whose reply was lost (the server
// replaced the key; this device stored the new key but stopped before
// certifying itself) is finished by running the reset again, which does
// not make another key.
func TestResetIdentityResumes(t *testing.T) {
	srv := servertest.Start(t, servertest.Config(t))
	ctx := ctxT(t)
	bob := registered(t, srv, "bob")
	bob2 := linkDevice(t, srv, bob, "bob")
	k, err := identity.Generate()
	if err != nil {
		t.Fatal(err)
	}
	pub := k.Public()
	if err := bob2.storeIdentityKey(ctx, k.Seed(), pub.Bytes()); err != nil {
		t.Fatal(err)
	}
	r, err := bob2.reauth(ctx, &qpcv1.ReauthChallengeRequest{Purpose: qpcv1.ReauthPurpose_REAUTH_PURPOSE_RESET_IDENTITY, NewIdentityKey: pub.Bytes()})
	if err != nil {
		t.Fatal(err)
	}
	if err := bob2.call(ctx, "ResetIdentityKey", &qpcv1.ResetIdentityKeyRequest{IdentityKey: pub.Bytes(), Reauth: r}, &qpcv1.ResetIdentityKeyResponse{}); err != nil {
		t.Fatal(err)
	}
	// The device stopped here. Its KeyPackages are gone and it has no
	// valid certificate; running the reset again finishes it.
	res, err := bob2.ResetIdentity(ctx)
	if err != nil {
		t.Fatalf("resume: %v", err)
	}
	if !res.Resumed || res.NewIdentity != identity.Fingerprint(pub[:]) {
		t.Fatalf("resume %+v, want the key made before (%s)", res, identity.Fingerprint(pub[:]))
	}
	if c := whoami(t, bob2).Certificate(); c == nil || !c.IdentityKey.Equal(pub) {
		t.Fatalf("certificate after resuming: %+v", c)
	}
	if st, err := bob2.KeyPackageStock(ctx); err != nil || st.GetDeviceCount() == 0 {
		t.Fatalf("no KeyPackages after resuming: %v %v", st, err)
	}
}
