package client

import (
	"errors"
	"strings"
	"testing"

	"github.com/quicprochat/quicprochat/internal/server/servertest"
	"github.com/quicprochat/quicprochat/internal/wire/qpcv1"
)

// TestKeyPackageStockRefilledOnNextContact: when the server's stock of a
// device's KeyPackages drops without a Welcome (the server restored from an
// older backup; KeyPackages fetched for an add that never happened), the
// next Sync notices and uploads, instead of waiting for the hourly check.
func TestKeyPackageStockRefilledOnNextContact(t *testing.T) {
	cfg := servertest.Config(t)
	// Drain the pool from one account, as a restore or abandoned adds would
	// leave it; the fetch limits against draining are not under test here.
	cfg.KeyPackages.FetchPerPair, cfg.KeyPackages.FetchPerTarget = 100, 100
	srv := servertest.Start(t, cfg)
	ctx := ctxT(t)
	alice := registered(t, srv, "alice")
	bob := registered(t, srv, "bob")
	if _, err := alice.Sync(ctx, 0); err != nil { // the hourly check is now recent
		t.Fatal(err)
	}
	for range DefaultStock {
		var resp qpcv1.FetchKeyPackagesResponse
		if err := bob.call(ctx, "FetchKeyPackages", &qpcv1.FetchKeyPackagesRequest{AccountName: "alice"}, &resp); err != nil {
			t.Fatal(err)
		}
	}
	n, err := alice.KeyPackageStock(ctx)
	if err != nil || n.GetDeviceCount() != 0 {
		t.Fatalf("stock after draining: %v, %v", n, err)
	}
	if _, err := alice.Sync(ctx, 0); err != nil {
		t.Fatal(err)
	}
	if n, err := alice.KeyPackageStock(ctx); err != nil || n.GetDeviceCount() != DefaultStock || !n.GetHasLastResort() {
		t.Fatalf("stock after the next contact: %v, %v; want %d and a last resort", n, err, DefaultStock)
	}
}

// TestRemovedMemberToldOnFirstReceive: a removed member cannot fetch the
// commit that removed her (the server dropped her from the channel); her
// next Sync still reports the removal, once, and marks the group removed.
func TestRemovedMemberToldOnFirstReceive(t *testing.T) {
	srv := servertest.Start(t, servertest.Config(t))
	ctx := ctxT(t)
	alice := registered(t, srv, "alice")
	carol := registered(t, srv, "carol")
	if err := alice.CreateGroup(ctx, "team"); err != nil {
		t.Fatal(err)
	}
	if err := alice.AddMembers(ctx, "team", []string{"carol"}); err != nil {
		t.Fatal(err)
	}
	acceptAll(t, carol)
	send(t, alice, "team", "hello")
	if got := texts(t, carol, "team"); strings.Join(got, "|") != "hello" {
		t.Fatalf("carol's history %q", got)
	}
	if err := alice.RemoveMember(ctx, "team", "carol"); err != nil {
		t.Fatal(err)
	}
	rep, err := carol.Sync(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(rep.RemovedFrom, ",") != "team" {
		t.Fatalf("first sync after removal: %+v; want removed_from [team]", rep)
	}
	gs, err := carol.Groups(ctx)
	if err != nil || len(gs) != 1 || gs[0].Status != statusRemoved {
		t.Fatalf("carol's groups %+v, %v", gs, err)
	}
	if rep, err := carol.Sync(ctx, 0); err != nil || len(rep.RemovedFrom) != 0 {
		t.Fatalf("second sync: %+v, %v; the removal is reported once", rep, err)
	}
	// Alice (still a member) is not told anything.
	if rep, err := alice.Sync(ctx, 0); err != nil || len(rep.RemovedFrom) != 0 {
		t.Fatalf("alice's sync: %+v, %v", rep, err)
	}
}

// TestAddExistingMemberFails: adding an account whose devices are all in
// the group already (or yourself) says so instead of reporting success.
func TestAddExistingMemberFails(t *testing.T) {
	srv := servertest.Start(t, servertest.Config(t))
	ctx := ctxT(t)
	alice := registered(t, srv, "alice")
	registered(t, srv, "bob")
	if err := alice.CreateGroup(ctx, "team"); err != nil {
		t.Fatal(err)
	}
	if err := alice.AddMembers(ctx, "team", []string{"bob"}); err != nil {
		t.Fatal(err)
	}
	for _, who := range []string{"bob", "alice"} {
		if err := alice.AddMembers(ctx, "team", []string{who}); !errors.Is(err, ErrAlreadyMember) || !strings.Contains(err.Error(), who) {
			t.Fatalf("adding %s again: %v", who, err)
		}
	}
	if e := epochOf(t, alice, "team"); e != 1 {
		t.Fatalf("epoch %d after re-adding members; want 1 (nothing committed)", e)
	}
}

// TestPendingInvitationIsNotARemoval: a device that still holds a group
// whose channel it is now only invited to (it was removed and invited back,
// and the removal notice expired unseen) is not told it was removed, and
// keeps the group; accepting brings a newer Welcome that replaces the
// stale state, and it reads the group again.
func TestPendingInvitationIsNotARemoval(t *testing.T) {
	srv := servertest.Start(t, servertest.Config(t))
	ctx := ctxT(t)
	alice := registered(t, srv, "alice")
	carol := registered(t, srv, "carol")
	if err := alice.CreateGroup(ctx, "team"); err != nil {
		t.Fatal(err)
	}
	if err := alice.AddMembers(ctx, "team", []string{"carol"}); err != nil {
		t.Fatal(err)
	}
	acceptAll(t, carol)
	send(t, alice, "team", "hello")
	if got := texts(t, carol, "team"); strings.Join(got, "|") != "hello" {
		t.Fatalf("carol's history %q", got)
	}
	if err := alice.RemoveMember(ctx, "team", "carol"); err != nil {
		t.Fatal(err)
	}
	if err := alice.AddMembers(ctx, "team", []string{"carol"}); err != nil {
		t.Fatal(err)
	}
	// The notices (removed, invited) expire before carol's device fetches
	// them: acknowledged here without being read.
	var f qpcv1.FetchResponse
	if err := carol.call(ctx, "Fetch", &qpcv1.FetchRequest{}, &f); err != nil {
		t.Fatal(err)
	}
	var last uint64
	for _, it := range f.GetInbox() {
		last = max(last, it.GetSeq())
	}
	if last == 0 {
		t.Fatalf("carol's inbox holds no notice: %v", f.GetInbox())
	}
	if err := carol.call(ctx, "Ack", &qpcv1.AckRequest{InboxSeq: last}, &qpcv1.AckResponse{}); err != nil {
		t.Fatal(err)
	}
	rep, err := carol.Sync(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.RemovedFrom) != 0 {
		t.Fatalf("sync while invited: %+v; a pending invitation is not a removal", rep)
	}
	if gs, err := carol.Groups(ctx); err != nil || len(gs) != 1 || gs[0].Status != statusActive {
		t.Fatalf("carol's groups while invited: %+v, %v", gs, err)
	}
	acceptAll(t, carol)
	send(t, alice, "team", "welcome back")
	if got := texts(t, carol, "team"); strings.Join(got, "|") != "hello|welcome back" {
		t.Fatalf("carol's history after accepting again %q", got)
	}
}
