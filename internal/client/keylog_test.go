package client

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/quicprochat/quicprochat/internal/identity"
	"github.com/quicprochat/quicprochat/internal/keylog"
	"github.com/quicprochat/quicprochat/internal/server"
	"github.com/quicprochat/quicprochat/internal/server/servertest"
	"github.com/quicprochat/quicprochat/internal/wire/qpcv1"
)

// splitView is the malicious server's second log: to one account (the
// victim) it shows the honest log plus one more entry, "bob -> a key the
// server holds", under heads signed with the real log key; everyone else
// sees the honest log.
type splitView struct {
	mu       sync.Mutex
	victim   string // account id shown the fork
	tree     keylog.Tree
	forged   []byte // the forged entry, leaf tree.Size()-1
	head     *keylog.Head
	evilKey  identity.PublicKey
	forgedOf string // whose key the forged entry replaces
	from     uint64 // the size of the newest head the victim holds
}

func (v *splitView) set(victim string, from uint64, account string, honest [][]byte, evil identity.PublicKey, signer *keylog.Signer) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.tree = keylog.Tree{}
	for _, e := range honest {
		v.tree.Append(keylog.LeafHash(e))
	}
	forged, err := keylog.IdentityKeyEntry(account, evil, time.Now()).Marshal()
	if err != nil {
		return err
	}
	v.tree.Append(keylog.LeafHash(forged))
	root, err := v.tree.RootAt(v.tree.Size())
	if err != nil {
		return err
	}
	v.victim, v.from, v.forged, v.evilKey, v.forgedOf = victim, from, forged, evil, account
	v.head = signer.Sign(v.tree.Size(), root, time.Now())
	return nil
}

// lie answers the victim's key lookups, head and consistency requests from
// the forked tree (the real server, with its answers swapped, as in
// TestMaliciousDirectoryForgedDeviceRefused).
func (v *splitView) lie(_ context.Context, call *server.Call, method string, resp proto.Message) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.head == nil || call.Principal == nil || call.Principal.AccountID != v.victim {
		return
	}
	n := v.tree.Size()
	switch r := resp.(type) {
	case *qpcv1.LookupAccountResponse:
		if r.GetAccountName() != v.forgedOf {
			return
		}
		p, err := v.tree.InclusionProof(n-1, n)
		if err != nil {
			return
		}
		r.IdentityKey = v.evilKey.Bytes()
		r.Devices = nil
		r.KeyLog = &qpcv1.KeyLogInclusion{TreeHead: v.head.Marshal(), Identity: &qpcv1.KeyLogProof{Index: n - 1, Entry: v.forged, Path: p}}
	case *qpcv1.GetKeyLogConsistencyResponse:
		h, err := keylog.ParseHead(r.GetTreeHead())
		if err != nil || h.Size != n {
			return // a size only the honest log has: the real answer goes out
		}
		// The honest log has a head of the fork's size too: the victim is
		// given the fork's, proven from the head it held.
		p, err := v.tree.ConsistencyProof(v.from, n)
		if err != nil {
			return
		}
		r.TreeHead, r.Proof = v.head.Marshal(), p
	}
}

// TestKeyLogSplitViewDetectedByGossip is issue 19's split view: the real
// qpcd, with its answers to carol swapped, shows carol a log in which
// bob's identity key is one the server holds, and shows alice the honest
// log. Each log is internally valid (signed by the log key, with proofs);
// carol's client accepts bob's forged key. Alice and carol are in one
// group: the heads they gossip inside their messages cannot both be views
// of one log, and both clients raise ErrKeyLogFork with the two signed
// heads as evidence.
func TestKeyLogSplitViewDetectedByGossip(t *testing.T) {
	var v splitView
	srv := servertest.StartLying(t, servertest.Config(t), v.lie)
	alice := registered(t, srv, "alice")
	bob := registered(t, srv, "bob")
	carol := registered(t, srv, "carol")
	ctx := ctxT(t)
	if err := alice.CreateGroup(ctx, "team"); err != nil {
		t.Fatal(err)
	}
	if err := alice.AddMembers(ctx, "team", []string{"carol"}); err != nil {
		t.Fatal(err)
	}
	acceptAll(t, carol)
	send(t, alice, "team", "hi carol")
	if got := texts(t, carol, "team"); strings.Join(got, "|") != "hi carol" {
		t.Fatalf("carol's history %q", got)
	}

	// The fork: carol from now on sees the honest log plus "bob -> evil".
	l := srv.Server().KeyLog()
	honest, err := l.Entries(ctx)
	if err != nil {
		t.Fatal(err)
	}
	evil, err := identity.Generate()
	if err != nil {
		t.Fatal(err)
	}
	ch, err := carol.KeyLogHead(ctx)
	if err != nil || ch == nil {
		t.Fatalf("carol holds no head: %v", err)
	}
	if err := v.set(whoami(t, carol).AccountID, ch.Size, "bob", honest, evil.Public(), l.Signer()); err != nil {
		t.Fatal(err)
	}
	// The honest log grows past the fork's size (dave registers), so the
	// real server has a head of every size carol asks about.
	registered(t, srv, "dave")
	// Carol looks bob up (qpc verify @bob) and, alone, cannot tell: the
	// forged key is proven in the log she is shown, which extends every
	// head she held.
	sn, err := carol.SafetyNumber(ctx, "bob")
	if err != nil {
		t.Fatalf("carol's lookup of bob in the forked log: %v", err)
	}
	if ek := evil.Public(); sn.TheirKey != identity.Fingerprint(ek[:]) {
		t.Fatalf("carol pinned %s, not the forged key %s", sn.TheirKey, evil.Public())
	}
	if a, _ := carol.KeyLogAlarms(ctx); len(a) != 0 {
		t.Fatalf("carol alone already saw a fork: %+v", a)
	}

	// Alice sees the honest log.
	if _, err := alice.SafetyNumber(ctx, "dave"); err != nil {
		t.Fatal(err)
	}
	if _, err := alice.SafetyNumber(ctx, "bob"); err != nil {
		t.Fatal(err)
	}
	ah, err := alice.KeyLogHead(ctx)
	if err != nil || ah == nil || ah.Size < v.head.Size {
		t.Fatalf("alice's head %v (%v), fork size %d", ah, err, v.head.Size)
	}

	// Gossip: carol's message carries her (forked) head to alice, alice's
	// carries hers to carol. Each side's check fails.
	send(t, carol, "team", "hello from carol")
	if got := texts(t, alice, "team"); !strings.Contains(strings.Join(got, "|"), "hello from carol") {
		t.Fatalf("alice's history %q", got)
	}
	expectFork(t, alice, "carol/")
	// Alice has nothing to say: a control message carries her head, and
	// carol shows no message for it.
	if err := alice.GossipKeyLog(ctx, "team"); err != nil {
		t.Fatal(err)
	}
	if got := texts(t, carol, "team"); strings.Join(got, "|") != "hi carol|hello from carol" {
		t.Fatalf("carol's history %q", got)
	}
	expectFork(t, carol, "alice/")

	// From now on every key lookup of carol's fails loudly with the typed
	// error, until the fork is explained.
	if _, err := carol.SafetyNumber(ctx, "dave"); !errors.Is(err, ErrKeyLogFork) {
		t.Fatalf("carol's next lookup: %v", err)
	}
	// The honest pair is unaffected: bob's real key is proven to alice,
	// and bob sees the same safety number as she does.
	an, err := alice.SafetyNumber(ctx, "bob")
	if err != nil {
		t.Fatal(err)
	}
	bn, err := bob.SafetyNumber(ctx, "alice")
	if err != nil || an.Number != bn.Number {
		t.Fatalf("alice/bob safety numbers %v / %v (%v)", an, bn, err)
	}
}

func expectFork(t *testing.T, c *Client, from string) {
	t.Helper()
	alarms, err := c.KeyLogAlarms(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	if len(alarms) != 1 {
		t.Fatalf("alarms %+v, want one", alarms)
	}
	a := alarms[0]
	if a.Kind != "fork" && a.Kind != "inconsistent" || len(a.HeadA) != 2*keylog.HeadSize || len(a.HeadB) != 2*keylog.HeadSize || a.HeadA == a.HeadB {
		t.Fatalf("alarm without the two heads as evidence: %+v", a)
	}
	if !strings.HasPrefix(a.SourceA, from) && !strings.HasPrefix(a.SourceB, from) {
		t.Fatalf("alarm does not name the gossip from %s: %+v", from, a)
	}
	if again, _ := c.KeyLogAlarms(ctxT(t)); len(again) != 0 {
		t.Fatalf("alarm shown twice: %+v", again)
	}
}

// TestKeyLogBadProofsRefused: a key lookup whose proof is missing, does
// not lead to the signed root, or proves another entry (a real one, of
// another account) is refused before anything is pinned, on both the
// verify and the add path.
func TestKeyLogBadProofsRefused(t *testing.T) {
	var mode atomic.Int32
	var aliceEntry atomic.Pointer[qpcv1.KeyLogProof]
	doctor := func(incl *qpcv1.KeyLogInclusion) {
		if incl == nil {
			return
		}
		switch mode.Load() {
		case 1:
			incl.TreeHead, incl.Identity, incl.Devices = nil, nil, nil
		case 2:
			if p := incl.GetIdentity(); p != nil && len(p.Path) > 0 {
				p.Path[0] = append([]byte(nil), p.Path[0]...)
				p.Path[0][0] ^= 1
			}
		case 3:
			incl.Identity = aliceEntry.Load()
		}
	}
	cfg := servertest.Config(t)
	srv := servertest.StartLying(t, cfg, func(_ context.Context, _ *server.Call, _ string, resp proto.Message) {
		switch r := resp.(type) {
		case *qpcv1.LookupAccountResponse:
			if r.GetAccountName() == "alice" && aliceEntry.Load() == nil {
				aliceEntry.Store(proto.Clone(r.GetKeyLog().GetIdentity()).(*qpcv1.KeyLogProof))
			}
			if r.GetAccountName() == "bob" {
				doctor(r.KeyLog)
			}
		case *qpcv1.FetchKeyPackagesResponse:
			doctor(r.KeyLog)
		}
	})
	alice := registered(t, srv, "alice")
	registered(t, srv, "bob")
	carol := registered(t, srv, "carol")
	ctx := ctxT(t)
	if _, err := carol.SafetyNumber(ctx, "alice"); err != nil || aliceEntry.Load() == nil {
		t.Fatalf("carol looks up alice: %v", err)
	}
	if err := alice.CreateGroup(ctx, "g"); err != nil {
		t.Fatal(err)
	}
	for m, name := range map[int32]string{1: "no proof", 2: "a path that does not lead to the root", 3: "alice's entry as bob's"} {
		mode.Store(m)
		if _, err := alice.SafetyNumber(ctx, "bob"); !errors.Is(err, ErrKeyLogProof) {
			t.Fatalf("%s, verify: %v", name, err)
		}
		if err := alice.AddMembers(ctx, "g", []string{"bob"}); !errors.Is(err, ErrKeyLogProof) {
			t.Fatalf("%s, add: %v", name, err)
		}
	}
	// Nothing was pinned: the honest answer is taken.
	mode.Store(0)
	if _, err := alice.SafetyNumber(ctx, "bob"); err != nil {
		t.Fatal(err)
	}
	if err := alice.AddMembers(ctx, "g", []string{"bob"}); err != nil {
		t.Fatal(err)
	}
}
