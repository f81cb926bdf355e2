package server

import (
	"crypto/ed25519"
	"crypto/rand"
	"database/sql"
	"errors"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/quicprochat/quicprochat/internal/identity"
	"github.com/quicprochat/quicprochat/internal/keylog"
	"github.com/quicprochat/quicprochat/internal/mls"
	"github.com/quicprochat/quicprochat/internal/wire"
	"github.com/quicprochat/quicprochat/internal/wire/qpcv1"
)

// registerWithIdentity registers name with an identity key and certifies
// its device, as the qpc client does.
func (ts *testServer) registerWithIdentity(t *testing.T, name string) (*testDevice, identity.PrivateKey, *identity.Certificate) {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	idk, err := identity.Generate()
	if err != nil {
		t.Fatal(err)
	}
	ik := idk.Public()
	c := ts.dial(t)
	var reg qpcv1.RegisterResponse
	if err := c.Call(ctxT(t), MethodRegister, "", &qpcv1.RegisterRequest{AccountName: name, SignatureKey: pub, DeviceName: "d", IdentityKey: ik[:]}, &reg); err != nil {
		t.Fatal(err)
	}
	d := &testDevice{Client: c, AccountID: reg.GetAccountId(), AccountName: name, DeviceID: reg.GetDeviceId(), SigKey: priv}
	tok, err := loginDevice(t, c, d.DeviceID, priv)
	if err != nil {
		t.Fatal(err)
	}
	d.Token = tok.GetAccessToken()
	cert, err := identity.Issue(idk, name, d.DeviceID, pub, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := cert.Marshal()
	if err := d.call(t, MethodCertifyDevice, &qpcv1.CertifyDeviceRequest{DeviceId: d.DeviceID, Certificate: raw}, &qpcv1.CertifyDeviceResponse{}); err != nil {
		t.Fatal(err)
	}
	return d, idk, cert
}

func verifiedHead(t *testing.T, raw []byte, pub ed25519.PublicKey) *keylog.Head {
	t.Helper()
	h, err := keylog.ParseHead(raw)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Verify(pub); err != nil {
		t.Fatal(err)
	}
	return h
}

func checkInclusion(t *testing.T, p *qpcv1.KeyLogProof, h *keylog.Head, kind keylog.Kind, account string, data []byte) {
	t.Helper()
	if p == nil {
		t.Fatalf("no %v proof for %s", kind, account)
	}
	if err := keylog.VerifyInclusion(p.GetEntry(), p.GetIndex(), p.GetPath(), h); err != nil {
		t.Fatal(err)
	}
	e, err := keylog.ParseEntry(p.GetEntry())
	if err != nil {
		t.Fatal(err)
	}
	if !e.Binds(kind, account, data) {
		t.Fatalf("the proven %v entry of %s binds something else", kind, account)
	}
}

// TestKeyLogOverRPC: registration and certification append entries in
// their own transactions; lookups and fetches prove them against a signed
// head; heads stay consistent; the log key survives a restart; the
// self-check metric says the log is consistent.
func TestKeyLogOverRPC(t *testing.T) {
	ts := startServer(t, testConfig(t))
	early := ts.newDevice(t, "early") // an account from before identity keys: no entry
	var first qpcv1.GetKeyLogHeadResponse
	if err := early.call(t, MethodGetKeyLogHead, &qpcv1.GetKeyLogHeadRequest{}, &first); err != nil {
		t.Fatal(err)
	}
	logKey := ed25519.PublicKey(first.GetLogPublicKey())
	h0 := verifiedHead(t, first.GetTreeHead(), logKey)

	alice, aliceID, aliceCert := ts.registerWithIdentity(t, "alice")
	bob, _, _ := ts.registerWithIdentity(t, "bob")
	var look qpcv1.LookupAccountResponse
	if err := bob.call(t, MethodLookupAccount, &qpcv1.LookupAccountRequest{AccountName: "alice"}, &look); err != nil {
		t.Fatal(err)
	}
	h := verifiedHead(t, look.GetKeyLog().GetTreeHead(), logKey)
	if h.Size != h0.Size+4 {
		t.Fatalf("head size %d after two registrations and two certificates (from %d)", h.Size, h0.Size)
	}
	ik := aliceID.Public()
	checkInclusion(t, look.GetKeyLog().GetIdentity(), h, keylog.KindIdentityKey, "alice", ik[:])
	certRaw, _ := aliceCert.Marshal()
	checkInclusion(t, look.GetKeyLog().GetDevices()[alice.DeviceID], h, keylog.KindDeviceCertificate, "alice", certRaw)

	// FetchKeyPackages proves the same for the devices it returns.
	uploadCertified(t, alice, aliceCert)
	var fetched qpcv1.FetchKeyPackagesResponse
	if err := bob.call(t, MethodFetchKeyPackages, &qpcv1.FetchKeyPackagesRequest{AccountName: "alice"}, &fetched); err != nil {
		t.Fatal(err)
	}
	fh := verifiedHead(t, fetched.GetKeyLog().GetTreeHead(), logKey)
	checkInclusion(t, fetched.GetKeyLog().GetIdentity(), fh, keylog.KindIdentityKey, "alice", ik[:])
	checkInclusion(t, fetched.GetKeyLog().GetDevices()[alice.DeviceID], fh, keylog.KindDeviceCertificate, "alice", certRaw)

	// The first head is a prefix of the latest.
	var cons qpcv1.GetKeyLogConsistencyResponse
	if err := bob.call(t, MethodGetKeyLogConsistency, &qpcv1.GetKeyLogConsistencyRequest{FromSize: h0.Size}, &cons); err != nil {
		t.Fatal(err)
	}
	latest := verifiedHead(t, cons.GetTreeHead(), logKey)
	if err := keylog.VerifyConsistency(h0, latest, cons.GetProof()); err != nil {
		t.Fatal(err)
	}
	err := bob.call(t, MethodGetKeyLogConsistency, &qpcv1.GetKeyLogConsistencyRequest{FromSize: 9, ToSize: 2}, &cons)
	var se *wire.StatusError
	if !errors.As(err, &se) || se.Code != qpcv1.Status_STATUS_INVALID_ARGUMENT {
		t.Fatalf("backwards range: %v", err)
	}

	if testutil.ToFloat64(ts.keyLogGauge.consistent) != 1 {
		t.Fatal("qpcd_keylog_consistent is not 1")
	}

	// A restart keeps the key and the tree.
	if err := ts.stop(t); err != nil {
		t.Fatal(err)
	}
	ts2 := startServer(t, ts.cfg)
	var again qpcv1.GetKeyLogHeadResponse
	if err := ts2.dial(t).Call(ctxT(t), MethodGetKeyLogHead, "", &qpcv1.GetKeyLogHeadRequest{}, &again); err == nil {
		t.Fatal("GetKeyLogHead answered without a token")
	}
	bob.Client = ts2.dial(t)
	relogin(t, bob)
	if err := bob.call(t, MethodGetKeyLogHead, &qpcv1.GetKeyLogHeadRequest{}, &again); err != nil {
		t.Fatal(err)
	}
	if !logKey.Equal(ed25519.PublicKey(again.GetLogPublicKey())) {
		t.Fatal("the log key changed across a restart")
	}
	if h2 := verifiedHead(t, again.GetTreeHead(), logKey); !h2.SameView(latest) {
		t.Fatalf("head after restart %v, before %v", h2, latest)
	}

	// Someone with the database rewrites an entry: the next self-check
	// drops qpcd_keylog_consistent to 0 (the alert's input).
	ctx := ctxT(t)
	if err := ts2.db.WriteTx(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, "UPDATE keylog_entries SET leaf_hash = ? WHERE seq = 0", make([]byte, 32))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	ts2.checkKeyLog(ctx)
	if testutil.ToFloat64(ts2.keyLogGauge.consistent) != 0 || testutil.ToFloat64(ts2.keyLogGauge.failures) != 1 {
		t.Fatal("a tampered log still reads as consistent")
	}
}

// uploadCertified uploads one KeyPackage whose leaf carries cert.
func uploadCertified(t *testing.T, d *testDevice, cert *identity.Certificate) {
	t.Helper()
	s, err := mls.Suite(1)
	if err != nil {
		t.Fatal(err)
	}
	sk, _, err := s.SignaturePrivateKeyFromBytes(d.SigKey.Seed())
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := cert.Marshal()
	b, err := mls.GenerateKeyPackage(1, mls.BasicIdentity(d.AccountName, d.DeviceID), sk,
		mls.KeyPackageOptions{Lifetime: 48 * time.Hour, LeafExtensions: []mls.Extension{{Type: mls.ExtensionType(identity.ExtensionType), Data: raw}}})
	if err != nil {
		t.Fatal(err)
	}
	kp, err := (&mls.MLSMessage{Version: mls.ProtocolVersionMLS10, WireFormat: mls.WireFormatKeyPackage, KeyPackage: &b.KeyPackage}).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if err := d.call(t, MethodUploadKeyPackages, &qpcv1.UploadKeyPackagesRequest{KeyPackages: [][]byte{kp}}, &qpcv1.UploadKeyPackagesResponse{}); err != nil {
		t.Fatal(err)
	}
}
