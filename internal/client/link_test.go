package client

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/quicprochat/quicprochat/internal/identity"
	"github.com/quicprochat/quicprochat/internal/server/servertest"
)

// TestLinkSecondDeviceAndWarnings: bob links a second device (code shown
// on the new one, approved on the first), which is certified by his
// identity key; alice, who verified bob, is told about the new device and
// must confirm it before sending to a group that holds it.
func TestLinkSecondDeviceAndWarnings(t *testing.T) {
	srv := servertest.Start(t, servertest.Config(t))
	alice := registered(t, srv, "alice")
	bob := registered(t, srv, "bob")
	ctx := ctxT(t)
	if err := alice.CreateGroup(ctx, "team"); err != nil {
		t.Fatal(err)
	}
	if err := alice.AddMembers(ctx, "team", []string{"bob"}); err != nil {
		t.Fatal(err)
	}
	acceptAll(t, bob)
	send(t, alice, "team", "one")
	if got := texts(t, bob, "team"); len(got) != 1 {
		t.Fatalf("bob's history %q", got)
	}
	bn, err := bob.SafetyNumber(ctx, "alice")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := alice.ConfirmSafetyNumber(ctx, "bob", bn.Number); err != nil {
		t.Fatal(err)
	}

	// The new device asks; bob approves the code it shows.
	bob2, _ := newTestClient(t, srv, testKey(t))
	codes := make(chan string, 1)
	type linked struct {
		id  *Identity
		err error
	}
	done := make(chan linked, 1)
	go func() {
		id, err := bob2.Link(ctx, "bob", LinkOptions{DeviceName: "laptop", Poll: 20 * time.Millisecond, Timeout: 30 * time.Second,
			Code: func(c string) { codes <- c }})
		done <- linked{id, err}
	}()
	var code string
	select {
	case code = <-codes:
	case l := <-done:
		t.Fatalf("link ended before showing a code: %v", l.err)
	}
	if _, err := bob.ApproveLink(ctx, "aaaa-aaaa-aaaa-aaaa", ""); !errors.Is(err, ErrLinkCode) {
		t.Fatalf("a wrong code: %v", err)
	}
	if _, err := alice.ApproveLink(ctx, code, ""); !errors.Is(err, ErrLinkCode) {
		t.Fatalf("another account approved bob's link: %v", err)
	}
	ap, err := bob.ApproveLink(ctx, code, "")
	if err != nil {
		t.Fatal(err)
	}
	l := <-done
	if l.err != nil {
		t.Fatalf("link: %v", l.err)
	}
	if l.id.DeviceID != ap.DeviceID || ap.DeviceName != "laptop" {
		t.Fatalf("linked %s, approved %+v", l.id.DeviceID, ap)
	}
	id2 := whoami(t, bob2)
	bobKey, err := bob.OwnIdentityKey(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if c := id2.Certificate(); c == nil || !c.IdentityKey.Equal(bobKey) || identity.Fingerprint(c.DeviceKey[:]) != code {
		t.Fatalf("the new device's certificate %+v, code %s", c, code)
	}
	if st, err := bob2.KeyPackageStock(ctx); err != nil || st.GetDeviceCount() == 0 {
		t.Fatalf("the new device has no KeyPackages: %v %v", st, err)
	}
	// Only the registering device holds the identity key.
	if _, err := bob2.ApproveLink(ctx, code, ""); !errors.Is(err, ErrNoIdentityKey) {
		t.Fatalf("approving from the linked device: %v", err)
	}
	// The safety number is the same from bob's second device.
	if n2, err := bob2.SafetyNumber(ctx, "alice"); err != nil || n2.Number != bn.Number {
		t.Fatalf("bob2's safety number %v (%v), bob's %s", n2, err, bn.Number)
	}

	// Bob adds his new device to the group; alice sees a new device of a
	// verified contact.
	if err := bob.AddMembers(ctx, "team", []string{"bob"}); err != nil {
		t.Fatal(err)
	}
	if _, err := alice.Sync(ctx, 0); err != nil {
		t.Fatal(err)
	}
	notes, err := alice.TrustNotices(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(notes) != 1 || notes[0].Kind != "new_device" || notes[0].Device != id2.DeviceID || !notes[0].Verified {
		t.Fatalf("notices %+v", notes)
	}
	if tr := memberTrust(t, alice, "team"); tr["bob/"+id2.DeviceID] != TrustNewDevice {
		t.Fatalf("members %v", tr)
	}
	if _, err := alice.SendChecked(ctx, "team", "two", ""); !errors.Is(err, ErrUnverifiedDevice) {
		t.Fatalf("send with an unconfirmed new device: %v", err)
	}
	if _, err := alice.SendChecked(AllowUnverified(ctx), "team", "two", ""); err != nil {
		t.Fatal(err)
	}
	if got := texts(t, bob2, "team"); len(got) != 1 || got[0] != "two" {
		t.Fatalf("bob's new device read %q", got)
	}
	// Confirmed once, the device is no longer in the way.
	if _, err := alice.SendChecked(ctx, "team", "three", ""); err != nil {
		t.Fatal(err)
	}
	if tr := memberTrust(t, alice, "team"); tr["bob/"+id2.DeviceID] != TrustVerified {
		t.Fatalf("members after confirming %v", tr)
	}
}

// TestLinkInterruptedIsNotTimedOut: a link the user stops (Ctrl-C cancels
// the context) is reported as stopped, not as "not approved in time".
func TestLinkInterruptedIsNotTimedOut(t *testing.T) {
	srv := servertest.Start(t, servertest.Config(t))
	registered(t, srv, "bob")
	bob2, _ := newTestClient(t, srv, testKey(t))
	ctx, cancel := context.WithCancel(ctxT(t))
	_, err := bob2.Link(ctx, "bob", LinkOptions{Poll: 20 * time.Millisecond, Timeout: 30 * time.Second, Code: func(string) { cancel() }})
	if err == nil || !strings.Contains(err.Error(), "stopped waiting before the link was approved") || strings.Contains(err.Error(), "in time") {
		t.Fatalf("interrupted link: %v", err)
	}
}
