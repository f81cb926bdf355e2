package client

import (
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/quicprochat/quicprochat/internal/mls"
	"github.com/quicprochat/quicprochat/internal/server/servertest"
	"github.com/quicprochat/quicprochat/internal/wire/qpcv1"
)

const xwing = mls.MLS256XWingAES256GCMSHA512Ed25519

// registeredWithSuites is a registered client that uses only suites (an
// older or narrower client).
func registeredWithSuites(t *testing.T, srv *servertest.Server, name string, suites ...mls.CipherSuiteID) *Client {
	t.Helper()
	o := Options{Home: filepath.Join(t.TempDir(), "home"), Keys: testKey(t), Backoff: fastBackoff, Suites: suites}
	c, err := Init(ctxT(t), o, ServerTrust{Addr: srv.Addr(), PinSHA256: srv.Pin()}, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	if _, err := c.Register(ctxT(t), RegisterParams{AccountName: name}); err != nil {
		t.Fatal(err)
	}
	return c
}

func groupSuite(t *testing.T, c *Client, name string) mls.CipherSuiteID {
	t.Helper()
	s, err := c.GroupSuite(ctxT(t), name)
	if err != nil {
		t.Fatalf("suite of %s: %v", name, err)
	}
	return s
}

// TestSuiteNegotiation runs the negotiation rules against a real qpcd that
// prefers X-Wing and also allows suite 1: devices stock both suites; a new
// group takes X-Wing; a device without X-Wing cannot be added to it (the
// error names the suite) but can be to a suite-1 group (--suite); a DM
// takes the first suite both sides have.
func TestSuiteNegotiation(t *testing.T) {
	cfg := servertest.Config(t)
	cfg.MLS.AllowedSuites = "MLS_256_XWING_AES256GCM_SHA512_Ed25519,1"
	srv := servertest.Start(t, cfg)
	ctx := ctxT(t)
	alice := registered(t, srv, "alice")
	bob := registered(t, srv, "bob")
	carol := registeredWithSuites(t, srv, "carol", Suite) // an older client: suite 1 only

	p, err := alice.SuitePolicy(ctx)
	if err != nil || !slices.Equal(p.Allowed, []mls.CipherSuiteID{xwing, 1}) || p.Minimum != 1 {
		t.Fatalf("policy %+v, %v", p, err)
	}
	// Stock per suite: alice both, carol suite 1 only.
	st, err := alice.KeyPackageStock(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, s := range st.GetSuites() {
		got = append(got, mls.CipherSuiteID(s.GetCipherSuite()).String())
		if int(s.GetDeviceCount()) != DefaultStock || !s.GetHasLastResort() {
			t.Fatalf("alice's stock of %v: %v", mls.CipherSuiteID(s.GetCipherSuite()), s)
		}
	}
	if strings.Join(got, ",") != xwing.String()+","+Suite.String() {
		t.Fatalf("alice stocks %v", got)
	}
	if st, _ := carol.KeyPackageStock(ctx); len(st.GetSuites()) != 1 || st.GetSuites()[0].GetCipherSuite() != uint32(Suite) {
		t.Fatalf("carol stocks %v", st.GetSuites())
	}
	rep, err := alice.KeyPackageUpkeep(ctx)
	if err != nil || rep.Uploaded != 0 || len(rep.Suites) != 2 || rep.ServerStock != 2*DefaultStock || !rep.LastResort {
		t.Fatalf("idle upkeep over two suites: %+v, %v", rep, err)
	}

	// A new group takes the preferred suite; bob (who has it) joins.
	if err := alice.CreateGroup(ctx, "team"); err != nil {
		t.Fatal(err)
	}
	if s := groupSuite(t, alice, "team"); s != xwing {
		t.Fatalf("team is on %v", s)
	}
	if err := alice.AddMembers(ctx, "team", []string{"bob"}); err != nil {
		t.Fatal(err)
	}
	acceptAll(t, bob)
	send(t, alice, "team", "post-quantum hello")
	if got := texts(t, bob, "team"); strings.Join(got, "|") != "post-quantum hello" {
		t.Fatalf("bob read %q", got)
	}
	// carol has no X-Wing KeyPackage: a clear error naming the suite.
	err = alice.AddMembers(ctx, "team", []string{"carol"})
	if !errors.Is(err, ErrSuiteUnavailable) || !strings.Contains(err.Error(), "MLS_256_XWING_AES256GCM_SHA512_Ed25519") {
		t.Fatalf("adding carol to an X-Wing group: %v", err)
	}
	// --suite overrides within the policy.
	if err := alice.CreateGroupWithSuite(ctx, "classic", Suite); err != nil {
		t.Fatal(err)
	}
	if s := groupSuite(t, alice, "classic"); s != Suite {
		t.Fatalf("classic is on %v", s)
	}
	if err := alice.AddMembers(ctx, "classic", []string{"carol"}); err != nil {
		t.Fatalf("adding carol to a suite-1 group: %v", err)
	}
	for _, bad := range []mls.CipherSuiteID{mls.MLS128DHKEMX25519ChaCha20Poly1305SHA256Ed25519, mls.MLS256DHKEMX448AES256GCMSHA512Ed448} {
		if err := alice.CreateGroupWithSuite(ctx, "nope", bad); !errors.Is(err, ErrSuiteUnavailable) {
			t.Fatalf("group on %v (outside the policy): %v", bad, err)
		}
	}
	// DMs: alice-bob on X-Wing, bob-carol falls back to suite 1.
	if _, err := alice.DM(ctx, "bob"); err != nil {
		t.Fatal(err)
	}
	if s := groupSuite(t, alice, "@bob"); s != xwing {
		t.Fatalf("alice-bob DM on %v", s)
	}
	if _, err := bob.DM(ctx, "carol"); err != nil {
		t.Fatal(err)
	}
	if s := groupSuite(t, bob, "@carol"); s != Suite {
		t.Fatalf("bob-carol DM on %v", s)
	}
	send(t, bob, "@carol", "classic hello")
	acceptAll(t, carol) // the DM (and the group "classic") are invitations
	if got := texts(t, carol, "@bob"); strings.Join(got, "|") != "classic hello" {
		t.Fatalf("carol read %q", got)
	}
	if s := groupSuite(t, carol, "@bob"); s != Suite {
		t.Fatalf("carol's side of the DM on %v", s)
	}
}

// TestClientDowngradeGuards: whatever the server sends, the client refuses
// a Welcome, GroupInfo or KeyPackage of a suite other than the group's or
// weaker than the server's advertised minimum (ErrSuiteDowngrade). Here the
// server delivers a suite-1 Welcome to a device whose server advertised
// X-Wing as its minimum (a lying or downgraded server): no group is
// joined.
func TestClientDowngradeGuards(t *testing.T) {
	cfg := servertest.Config(t)
	cfg.MLS.AllowedSuites = "MLS_256_XWING_AES256GCM_SHA512_Ed25519,1"
	srv := servertest.Start(t, cfg)
	ctx := ctxT(t)
	alice := registered(t, srv, "alice")
	bob := registered(t, srv, "bob")
	if err := alice.CreateGroupWithSuite(ctx, "old", Suite); err != nil {
		t.Fatal(err)
	}
	if err := alice.AddMembers(ctx, "old", []string{"bob"}); err != nil {
		t.Fatal(err)
	}
	// bob's view of the policy: X-Wing only.
	bob.policy.mu.Lock()
	bob.policy.got = &SuitePolicy{Allowed: []mls.CipherSuiteID{xwing}, Minimum: xwing}
	bob.policy.mu.Unlock()
	// Bob accepts: the held Welcome reaches his inbox and is refused.
	acceptAll(t, bob)
	if _, err := bob.Sync(ctx, 0); err != nil {
		t.Fatal(err)
	}
	if gs, _ := bob.Groups(ctx); len(gs) != 0 {
		t.Fatalf("bob joined a suite-1 group below the minimum: %+v", gs)
	}
	for _, tc := range []struct {
		got, want mls.CipherSuiteID
	}{{Suite, 0}, {Suite, xwing}, {xwing, Suite}, {mls.MLS256DHKEMX448AES256GCMSHA512Ed448, 0}} {
		if err := bob.checkGroupSuite(ctx, tc.got, tc.want); !errors.Is(err, ErrSuiteDowngrade) {
			t.Errorf("%v for a group of %v: %v", tc.got, tc.want, err)
		}
	}
	if err := bob.checkGroupSuite(ctx, xwing, xwing); err != nil {
		t.Fatalf("X-Wing in an X-Wing group: %v", err)
	}
	// A server answering a fetch with a suite that was not asked for.
	if _, err := bob.fetchedSuite(ctx, &qpcv1.FetchKeyPackagesResponse{CipherSuite: uint32(Suite)}, []mls.CipherSuiteID{xwing}); !errors.Is(err, ErrSuiteDowngrade) {
		t.Fatalf("fetch answered with another suite: %v", err)
	}
	// A rejoin GroupInfo of another suite than the group's is refused.
	gi := mls.MLSMessage{Version: mls.ProtocolVersionMLS10, WireFormat: mls.WireFormatGroupInfo,
		GroupInfo: &mls.GroupInfo{GroupContext: mls.GroupContext{Version: mls.ProtocolVersionMLS10, CipherSuite: Suite, GroupID: []byte("g")}}}
	raw, err := gi.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bob.rejoinSuite(ctx, []byte("no such channel"), raw); !errors.Is(err, ErrSuiteDowngrade) {
		t.Fatalf("rejoin GroupInfo below the minimum: %v", err)
	}
}
