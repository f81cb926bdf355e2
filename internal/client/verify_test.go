package client

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/quicprochat/quicprochat/internal/identity"
	"github.com/quicprochat/quicprochat/internal/keylog"
	"github.com/quicprochat/quicprochat/internal/keylog/logstore"
	"github.com/quicprochat/quicprochat/internal/mls"
	"github.com/quicprochat/quicprochat/internal/server"
	"github.com/quicprochat/quicprochat/internal/server/servertest"
	"github.com/quicprochat/quicprochat/internal/wire"
	"github.com/quicprochat/quicprochat/internal/wire/qpcv1"
)

// forgery is what the malicious directory serves instead of an account's
// KeyPackages while set.
type forgery struct {
	mu        sync.Mutex
	accountID string // whose fetches are answered with the forgery
	deviceID  string
	kp        []byte
	log       *logstore.Log // set: forged KeyPackages come with the log's proofs
}

func (f *forgery) set(accountID, deviceID string, kp []byte) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.accountID, f.deviceID, f.kp = accountID, deviceID, kp
}

// lie is the one swap in the real server: FetchKeyPackages for the target
// account answers with a KeyPackage the test (the "operator") made.
func (f *forgery) lie(_ context.Context, _ *server.Call, method string, resp proto.Message) {
	f.mu.Lock()
	defer f.mu.Unlock()
	r, ok := resp.(*qpcv1.FetchKeyPackagesResponse)
	if method != server.MethodFetchKeyPackages || !ok || f.kp == nil || r.GetAccountId() != f.accountID {
		return
	}
	r.KeyPackages = []*qpcv1.FetchedKeyPackage{{DeviceId: f.deviceID, KeyPackage: f.kp}}
	r.MissingDeviceIds = nil
	if f.log != nil {
		// Whatever the log holds for the forged device goes with it (an
		// operator who logged its forgery proves it).
		kp, err := parseKeyPackage(f.kp)
		if err != nil {
			return
		}
		account, _, _ := strings.Cut(string(kp.LeafNode.Credential.Identity), "/")
		r.KeyLog = inclusionOf(f.log, account, f.deviceID)
	}
}

// inclusionOf is what the server's lookups carry, made from the real log.
func inclusionOf(l *logstore.Log, account string, deviceIDs ...string) *qpcv1.KeyLogInclusion {
	ap, err := l.ProveAccount(context.Background(), account, deviceIDs)
	if err != nil {
		return nil
	}
	conv := func(p *logstore.Proof) *qpcv1.KeyLogProof {
		if p == nil {
			return nil
		}
		return &qpcv1.KeyLogProof{Index: p.Index, Entry: p.Entry, Path: p.Path}
	}
	out := &qpcv1.KeyLogInclusion{TreeHead: ap.Head.Marshal(), Identity: conv(ap.Identity), Devices: map[string]*qpcv1.KeyLogProof{}}
	for d, p := range ap.Devices {
		out.Devices[d] = conv(p)
	}
	return out
}

// forgeKeyPackage makes a valid KeyPackage whose credential says
// "<account>/<deviceID>" with a signature key the forger holds, and with
// the given leaf extensions (a certificate, or none).
func forgeKeyPackage(t *testing.T, account, deviceID string, sig ed25519.PrivateKey, ext []mls.Extension) []byte {
	t.Helper()
	s, err := mls.Suite(Suite)
	if err != nil {
		t.Fatal(err)
	}
	sk, _, err := s.SignaturePrivateKeyFromBytes(sig.Seed())
	if err != nil {
		t.Fatal(err)
	}
	b, err := mls.GenerateKeyPackage(Suite, mls.BasicIdentity(account, deviceID), sk, mls.KeyPackageOptions{Lifetime: 48 * time.Hour, LeafExtensions: ext})
	if err != nil {
		t.Fatal(err)
	}
	raw, err := (&mls.MLSMessage{Version: mls.ProtocolVersionMLS10, WireFormat: mls.WireFormatKeyPackage, KeyPackage: &b.KeyPackage}).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

func certExt(t *testing.T, c *identity.Certificate) []mls.Extension {
	t.Helper()
	raw, err := c.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return []mls.Extension{{Type: mls.ExtensionType(identity.ExtensionType), Data: raw}}
}

func whoami(t *testing.T, c *Client) *Identity {
	t.Helper()
	id, err := c.Identity(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	id.Wipe()
	return id
}

func memberTrust(t *testing.T, c *Client, group string) map[string]string {
	t.Helper()
	ms, err := c.MembersTrust(ctxT(t), group)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, m := range ms {
		out[m.Account+"/"+m.Device] = m.Trust
	}
	return out
}

// TestMaliciousDirectoryForgedDeviceRefused is issue 19's attack: the
// server runs the KeyPackage directory, so when alice adds bob it can
// answer with a KeyPackage it made itself whose credential says "bob"
// (and a key it holds). Before identity keys alice's client added it, and
// the server read everything "bob" received. The server here is the real
// qpcd with one swap (its FetchKeyPackages answer for bob is replaced);
// alice's client must refuse every forgery by itself, say why, and the
// honest path must keep working.
func TestMaliciousDirectoryForgedDeviceRefused(t *testing.T) {
	var f forgery
	cfg := servertest.Config(t)
	cfg.KeyPackages.FetchPerPair = 100 // this test fetches bob's many times
	cfg.KeyPackages.FetchPerTarget = 100
	srv := servertest.StartLying(t, cfg, f.lie)
	f.mu.Lock()
	f.log = srv.Server().KeyLog()
	f.mu.Unlock()
	alice := registered(t, srv, "alice")
	bob := registered(t, srv, "bob")
	carol := registered(t, srv, "carol")
	ctx := ctxT(t)
	bobID := whoami(t, bob)

	// Honest: alice adds bob; she pins bob's identity key on first sight.
	if err := alice.CreateGroup(ctx, "team"); err != nil {
		t.Fatal(err)
	}
	if err := alice.AddMembers(ctx, "team", []string{"bob"}); err != nil {
		t.Fatalf("honest add: %v", err)
	}
	acceptAll(t, bob)
	send(t, alice, "team", "hi bob")
	if got := texts(t, bob, "team"); strings.Join(got, "|") != "hi bob" {
		t.Fatalf("bob's history %q", got)
	}
	if tr := memberTrust(t, alice, "team"); tr["bob/"+bobID.DeviceID] != TrustCertified {
		t.Fatalf("alice sees bob as %v", tr)
	}

	// The operator's forgeries: a fresh device "bob/<id>" with a key the
	// server holds.
	_, evil, _ := ed25519.GenerateKey(rand.Reader)
	fakeDev := "0badc0de0badc0de0badc0de0badc0de"
	evilID, err := identity.Generate()
	if err != nil {
		t.Fatal(err)
	}
	forgedCert, err := identity.Issue(evilID, "bob", fakeDev, evil.Public().(ed25519.PublicKey), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	bobCert := bobID.Certificate()
	if bobCert == nil {
		t.Fatal("bob's device has no certificate")
	}
	// bob's real certificate, pasted into a forged leaf for his device id.
	stolen := certExt(t, bobCert)
	cases := []struct {
		name    string
		dev     string
		ext     []mls.Extension
		want    error
		wantMsg string
	}{
		{"no certificate", fakeDev, nil, ErrUncertifiedDevice, "not certified by bob's identity key"},
		// Since the key log (issue 19), a certificate by an identity key the
		// log does not hold for bob is refused before the trust check.
		{"certificate by the server's own identity key", fakeDev, certExt(t, forgedCert), ErrKeyLogProof, "not proven in the server's key log"},
		{"bob's real certificate on the server's key", bobID.DeviceID, stolen, ErrUncertifiedDevice, "another device key"},
	}
	if err := alice.CreateGroup(ctx, "g2"); err != nil {
		t.Fatal(err)
	}
	check := func(verified bool) {
		t.Helper()
		for _, tc := range cases {
			f.set(bobID.AccountID, tc.dev, forgeKeyPackage(t, "bob", tc.dev, evil, tc.ext))
			err := alice.AddMembers(ctx, "g2", []string{"bob"})
			if !errors.Is(err, tc.want) || !errors.Is(err, ErrUntrustedDevice) || !strings.Contains(err.Error(), tc.wantMsg) {
				t.Fatalf("%s (verified %v): %v, want %v mentioning %q", tc.name, verified, err, tc.want, tc.wantMsg)
			}
			if verified && tc.want == ErrIdentityChanged && !strings.Contains(err.Error(), "which you verified") {
				t.Fatalf("%s: a verified contact's error does not say so: %v", tc.name, err)
			}
			if ms := memberTrust(t, alice, "g2"); len(ms) != 1 {
				t.Fatalf("%s: the forged device got into g2: %v", tc.name, ms)
			}
		}
	}
	check(false)

	// Alice and bob compare safety numbers (the same on both sides) and
	// alice marks bob verified; the forgeries are still refused, saying
	// bob was verified.
	an, err := alice.SafetyNumber(ctx, "@bob")
	if err != nil {
		t.Fatal(err)
	}
	bn, err := bob.SafetyNumber(ctx, "alice")
	if err != nil {
		t.Fatal(err)
	}
	if an.Number != bn.Number || len(an.Number) != 60 {
		t.Fatalf("safety numbers differ: %s vs %s", an.Number, bn.Number)
	}
	if _, err := alice.ConfirmSafetyNumber(ctx, "bob", identity.FormatSafetyNumber(bn.Number, true)); err != nil {
		t.Fatal(err)
	}
	check(true)

	// The server gives up lying: the honest add works again.
	f.set("", "", nil)
	if err := alice.AddMembers(ctx, "g2", []string{"bob"}); err != nil {
		t.Fatalf("honest add after the forgeries: %v", err)
	}
	if tr := memberTrust(t, alice, "g2"); tr["bob/"+bobID.DeviceID] != TrustVerified || len(tr) != 2 {
		t.Fatalf("g2 members %v", tr)
	}

	// A commit by another member that brings a forged bob device into a
	// group alice is in is flagged on alice's side: carol (who never met
	// bob and waved the forgery through with --allow-unverified) adds it.
	if err := alice.AddMembers(ctx, "team", []string{"carol"}); err != nil {
		t.Fatal(err)
	}
	acceptAll(t, carol)
	send(t, alice, "team", "welcome carol")
	if got := texts(t, carol, "team"); len(got) != 1 {
		t.Fatalf("carol's history %q", got)
	}
	// Since the key log, a forgery gets past anyone's client only if the
	// operator also publishes it in the log, for everyone to see: it
	// appends "bob -> its identity key" and the forged certificate.
	logForgery(t, srv, "bob", evilID, forgedCert)
	f.set(bobID.AccountID, fakeDev, forgeKeyPackage(t, "bob", fakeDev, evil, certExt(t, forgedCert)))
	err = carol.AddMembers(AllowUnverified(ctx), "team", []string{"bob"}) // the Welcome has nowhere to go
	t.Logf("carol adds the forgery: %v", err)
	f.set("", "", nil)
	if _, err := alice.Sync(ctx, 0); err != nil {
		t.Fatal(err)
	}
	if tr := memberTrust(t, carol, "team"); tr["bob/"+fakeDev] == "" {
		t.Fatalf("carol's commit did not add the forged device: %v", tr)
	}
	notes, err := alice.TrustNotices(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var flagged bool
	for _, n := range notes {
		flagged = flagged || n.Kind == "identity_changed" && n.Account == "bob" && n.Device == fakeDev && n.Verified && n.Group == "team"
	}
	if !flagged {
		t.Fatalf("alice was not told about the forged device: %+v", notes)
	}
	if _, err := alice.SendChecked(ctx, "team", "secret", ""); !errors.Is(err, ErrIdentityChanged) {
		t.Fatalf("sending to a group holding a forged device of a verified contact: %v", err)
	}
	if again, _ := alice.TrustNotices(ctx); len(again) != 0 {
		t.Fatalf("notices shown twice: %+v", again)
	}

	// First contact is trust on first use: a forgery for an account alice
	// never saw (dave) is accepted, but the safety number then differs on
	// the two sides, which is what verifying catches.
	dave := registered(t, srv, "dave")
	daveID := whoami(t, dave)
	daveForged := mustIssue(t, evilID, "dave", fakeDev, evil)
	f.set(daveID.AccountID, fakeDev, forgeKeyPackage(t, "dave", fakeDev, evil, certExt(t, daveForged)))
	// Unlogged, the forgery is refused (the key log proves dave's real key).
	if err := alice.CreateGroup(ctx, "g3"); err != nil {
		t.Fatal(err)
	}
	if err := alice.AddMembers(ctx, "g3", []string{"dave"}); !errors.Is(err, ErrKeyLogProof) {
		t.Fatalf("first contact with an unlogged forgery: %v", err)
	}
	// Logged (in public), it is taken on first use.
	logForgery(t, srv, "dave", evilID, daveForged)
	// The commit is accepted; only the Welcome has nowhere to go (this
	// test's server did not bother to create the device on its side).
	_ = alice.AddMembers(ctx, "g3", []string{"dave"})
	if tr := memberTrust(t, alice, "g3"); tr["dave/"+fakeDev] != TrustCertified {
		t.Fatalf("first contact: the forgery was not taken on first use: %v", tr)
	}
	f.set("", "", nil)
	ac, err := alice.SafetyNumber(ctx, "dave")
	if err != nil {
		t.Fatal(err)
	}
	ca, err := dave.SafetyNumber(ctx, "alice")
	if err != nil {
		t.Fatal(err)
	}
	if ac.Number == ca.Number {
		t.Fatal("a forged first contact gives matching safety numbers")
	}
	if _, err := alice.ConfirmSafetyNumber(ctx, "dave", ca.Number); !errors.Is(err, ErrSafetyNumberMismatch) {
		t.Fatalf("confirming dave's real number against the forged key: %v", err)
	}
}

// logForgery is the operator appending forged entries to its own key log:
// the account's identity key replaced by k, and cert.
func logForgery(t *testing.T, srv *servertest.Server, account string, k identity.PrivateKey, cert *identity.Certificate) {
	t.Helper()
	raw, err := cert.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	l := srv.Server().KeyLog()
	if err := l.Append(ctxT(t), keylog.IdentityKeyEntry(account, k.Public(), time.Now()), ""); err != nil {
		t.Fatal(err)
	}
	if err := l.Append(ctxT(t), keylog.CertificateEntry(account, raw, time.Now()), cert.DeviceID); err != nil {
		t.Fatal(err)
	}
}

func mustIssue(t *testing.T, k identity.PrivateKey, account, dev string, key ed25519.PrivateKey) *identity.Certificate {
	t.Helper()
	c, err := identity.Issue(k, account, dev, key.Public().(ed25519.PublicKey), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestServerRefusesUncertifiedKeyPackages: an account registered with an
// identity key cannot get KeyPackages into the directory without a
// certificate by that key (PERMISSION_DENIED), whatever the uploader.
func TestServerRefusesUncertifiedKeyPackages(t *testing.T) {
	srv := servertest.Start(t, servertest.Config(t))
	bob := registered(t, srv, "bob")
	ctx := ctxT(t)
	id, err := bob.Identity(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer id.Wipe()
	devKey := ed25519.NewKeyFromSeed(id.key.Reveal())
	other, _ := identity.Generate()
	for name, ext := range map[string][]mls.Extension{
		"none":                     nil,
		"signed by another key":    certExt(t, mustIssue(t, other, "bob", id.DeviceID, devKey)),
		"garbage in the extension": {{Type: mls.ExtensionType(identity.ExtensionType), Data: []byte{1, 2, 3}}},
	} {
		kp := forgeKeyPackage(t, "bob", id.DeviceID, devKey, ext)
		err := bob.call(ctx, "UploadKeyPackages", &qpcv1.UploadKeyPackagesRequest{KeyPackages: [][]byte{kp}}, &qpcv1.UploadKeyPackagesResponse{})
		var se *wire.StatusError
		if !errors.As(err, &se) || se.Code != qpcv1.Status_STATUS_PERMISSION_DENIED || !strings.Contains(se.Message, "certif") {
			t.Fatalf("%s: %v, want PERMISSION_DENIED about the certificate", name, err)
		}
	}
	// Its own KeyPackages (certified) were accepted at registration.
	st, err := bob.KeyPackageStock(ctx)
	if err != nil || st.GetDeviceCount() == 0 {
		t.Fatalf("stock %v, %v", st, err)
	}
}
