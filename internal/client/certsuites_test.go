package client

import (
	"bytes"
	"testing"

	"github.com/quicprochat/quicprochat/internal/identity"
	"github.com/quicprochat/quicprochat/internal/mls"
	"github.com/quicprochat/quicprochat/internal/server/servertest"
	"github.com/quicprochat/quicprochat/internal/wire/qpcv1"
)

// TestKeyPackagesCertifiedOnEverySuite: a device stocks KeyPackages per
// suite, and each suite's KeyPackages carry the device certificate (an
// X-Wing group's add would otherwise be refused as uncertified), so adding
// the account works on either suite and the member shows as certified.
func TestKeyPackagesCertifiedOnEverySuite(t *testing.T) {
	cfg := servertest.Config(t)
	cfg.MLS.AllowedSuites = "MLS_256_XWING_AES256GCM_SHA512_Ed25519,1"
	srv := servertest.Start(t, cfg)
	ctx := ctxT(t)
	alice := registered(t, srv, "alice")
	bob := registered(t, srv, "bob")
	bobID := whoami(t, bob)
	want, err := bobID.Certificate().Marshal()
	if err != nil {
		t.Fatal(err)
	}

	for _, suite := range []mls.CipherSuiteID{xwing, Suite} {
		var resp qpcv1.FetchKeyPackagesResponse
		if err := alice.call(ctx, "FetchKeyPackages", &qpcv1.FetchKeyPackagesRequest{AccountName: "bob", CipherSuites: []uint32{uint32(suite)}}, &resp); err != nil {
			t.Fatalf("fetch %v: %v", suite, err)
		}
		if resp.GetCipherSuite() != uint32(suite) || len(resp.GetKeyPackages()) != 1 {
			t.Fatalf("fetch %v: suite %d, %d KeyPackages", suite, resp.GetCipherSuite(), len(resp.GetKeyPackages()))
		}
		kp, err := parseKeyPackage(resp.GetKeyPackages()[0].GetKeyPackage())
		if err != nil {
			t.Fatal(err)
		}
		if kp.CipherSuite != suite {
			t.Fatalf("asked for %v, got a KeyPackage of %v", suite, kp.CipherSuite)
		}
		got := certificateOf(&kp.LeafNode)
		if !bytes.Equal(got, want) {
			t.Fatalf("%v KeyPackage carries certificate %x, want bob's %x", suite, got, want)
		}
		if _, err := identity.Parse(got); err != nil {
			t.Fatal(err)
		}
	}

	for _, g := range []struct {
		name  string
		suite mls.CipherSuiteID
	}{{"xw", xwing}, {"one", Suite}} {
		if err := alice.CreateGroupWithSuite(ctx, g.name, g.suite); err != nil {
			t.Fatal(err)
		}
		if s := groupSuite(t, alice, g.name); s != g.suite {
			t.Fatalf("%s is on %v", g.name, s)
		}
		if err := alice.AddMembers(ctx, g.name, []string{"bob"}); err != nil {
			t.Fatalf("add bob to the %v group: %v", g.suite, err)
		}
		if tr := memberTrust(t, alice, g.name); tr["bob/"+bobID.DeviceID] != TrustCertified || tr["alice/"+whoami(t, alice).DeviceID] != TrustSelf {
			t.Fatalf("%s members %v", g.name, tr)
		}
	}
}
