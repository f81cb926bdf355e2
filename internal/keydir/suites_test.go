package keydir

import (
	"errors"
	"slices"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/quicprochat/quicprochat/internal/keydir/keydirtest"
	"github.com/quicprochat/quicprochat/internal/mls"
)

const xwing = mls.MLS256XWingAES256GCMSHA512Ed25519

func (e *env) suiteKP(t *testing.T, d testDevice, suite mls.CipherSuiteID) []byte {
	t.Helper()
	return e.kp(t, d, func(s *keydirtest.Spec) { s.Generate = suite })
}

func TestPolicy(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.Suites = []mls.CipherSuiteID{xwing, 4, 1, xwing} })
	p := e.dir.Policy()
	if !slices.Equal(p.Allowed, []mls.CipherSuiteID{xwing, 4, 1}) || p.Minimum != 1 {
		t.Fatalf("policy %+v", p)
	}
	if !p.Allows(4) || p.Allows(3) || p.Allows(mls.MLS256XWingChaCha20Poly1305SHA512Ed25519) {
		t.Fatal("Allows")
	}
	if d := newEnv(t, nil).dir.Policy(); !slices.Equal(d.Allowed, DefaultSuites) || d.Minimum != 1 {
		t.Fatalf("default policy %+v", d)
	}
}

// A device stocks each allowed suite with its own pool and last resort:
// a last resort of one suite does not replace the other's, counts are per
// suite, and a KeyPackage of a suite outside the allowlist is refused.
func TestPerSuiteStock(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.Suites = []mls.CipherSuiteID{xwing, 1} })
	alice := e.devs.add(t, "alice", "dev-a1")
	if _, err := e.dir.Upload(ctx, alice.ID, [][]byte{e.suiteKP(t, alice, 1), e.suiteKP(t, alice, 1)}, e.suiteKP(t, alice, 1)); err != nil {
		t.Fatal(err)
	}
	if _, err := e.dir.Upload(ctx, alice.ID, [][]byte{e.suiteKP(t, alice, xwing)}, e.suiteKP(t, alice, xwing)); err != nil {
		t.Fatal(err)
	}
	c, err := e.dir.Count(ctx, alice.AccountID, alice.ID)
	if err != nil {
		t.Fatal(err)
	}
	want := []SuiteCount{{xwing, 1, true}, {1, 2, true}}
	if c.Device != 3 || !c.HasLastResort || !slices.Equal(c.Suites, want) {
		t.Fatalf("count %+v, want suites %+v", c, want)
	}
	// A new suite-1 last resort replaces only suite 1's.
	if _, err := e.dir.Upload(ctx, alice.ID, nil, e.suiteKP(t, alice, 1)); err != nil {
		t.Fatal(err)
	}
	if c, _ = e.dir.Count(ctx, alice.AccountID, alice.ID); !slices.Equal(c.Suites, want) {
		t.Fatalf("after a new suite-1 last resort: %+v", c.Suites)
	}
	mustRefresh(t, e)
	if v := testutil.ToFloat64(e.dir.metrics.suiteStock.WithLabelValues(xwing.String(), kindPool)); v != 1 {
		t.Fatalf("X-Wing pool gauge %v", v)
	}
	if v := testutil.ToFloat64(e.dir.metrics.suiteStock.WithLabelValues("MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519", kindLastResort)); v != 1 {
		t.Fatalf("suite-1 last-resort gauge %v", v)
	}
	stock, err := e.dir.StockBySuite(ctx)
	if err != nil || len(stock) != 2 || stock[0] != (SuiteStock{xwing, true, 1, 1}) || stock[1] != (SuiteStock{1, true, 2, 1}) {
		t.Fatalf("StockBySuite %+v, %v", stock, err)
	}
	// Outside the allowlist: refused as today.
	strict := newEnv(t, nil)
	bob := strict.devs.add(t, "bob", "dev-b1")
	if _, err := strict.dir.Upload(ctx, bob.ID, [][]byte{strict.suiteKP(t, bob, xwing)}, nil); !errors.Is(err, ErrUnsupportedSuite) {
		t.Fatalf("X-Wing KeyPackage on a suite-1 server: %v", err)
	}
}

func mustRefresh(t *testing.T, e *env) {
	t.Helper()
	if err := e.dir.RefreshStats(ctx); err != nil {
		t.Fatal(err)
	}
}

// Fetch with a preference list returns the first suite every device of
// the account holds, and consumes only that suite's KeyPackages.
func TestFetchNegotiatesSuite(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.Suites = []mls.CipherSuiteID{xwing, 1} })
	a1 := e.devs.add(t, "alice", "dev-a1")
	a2 := e.devs.add(t, "alice", "dev-a2")
	carol := e.devs.add(t, "carol", "dev-c1")
	for _, d := range []testDevice{a1, a2} {
		if _, err := e.dir.Upload(ctx, d.ID, [][]byte{e.suiteKP(t, d, 1)}, e.suiteKP(t, d, 1)); err != nil {
			t.Fatal(err)
		}
	}
	// Only a1 stocks X-Wing: the account as a whole falls back to suite 1.
	if _, err := e.dir.Upload(ctx, a1.ID, [][]byte{e.suiteKP(t, a1, xwing)}, nil); err != nil {
		t.Fatal(err)
	}
	res, err := e.dir.Fetch(ctx, carol.AccountID, carol.ID, "alice", "", xwing, 1)
	if err != nil {
		t.Fatal(err)
	}
	if res.Suite != 1 || len(res.Packages) != 2 || len(res.Missing) != 0 {
		t.Fatalf("fetch %+v", res)
	}
	for _, p := range res.Packages {
		if suiteOf(t, p.Data) != 1 {
			t.Fatalf("device %s got suite %v", p.DeviceID, suiteOf(t, p.Data))
		}
	}
	c, _ := e.dir.Count(ctx, a1.AccountID, a1.ID)
	if !slices.Equal(c.Suites, []SuiteCount{{xwing, 1, false}, {1, 0, true}}) {
		t.Fatalf("a1 after the fetch: %+v (the X-Wing KeyPackage must stay)", c.Suites)
	}
	// Now a2 stocks X-Wing too: X-Wing wins; a1 pool, a2 pool.
	if _, err := e.dir.Upload(ctx, a2.ID, [][]byte{e.suiteKP(t, a2, xwing)}, nil); err != nil {
		t.Fatal(err)
	}
	res, err = e.dir.Fetch(ctx, carol.AccountID, carol.ID, "alice", "", xwing, 1)
	if err != nil || res.Suite != xwing || len(res.Packages) != 2 {
		t.Fatalf("fetch %+v %v", res, err)
	}
	for _, p := range res.Packages {
		if suiteOf(t, p.Data) != xwing || p.LastResort {
			t.Fatalf("device %s: suite %v last resort %v", p.DeviceID, suiteOf(t, p.Data), p.LastResort)
		}
	}
	// X-Wing exhausted and without a last resort: asking for X-Wing only
	// names the devices that lack it.
	res, err = e.dir.Fetch(ctx, carol.AccountID, carol.ID, "alice", "", xwing)
	if err != nil || res.Suite != xwing || len(res.Packages) != 0 || len(res.Missing) != 2 {
		t.Fatalf("fetch of an exhausted suite %+v %v", res, err)
	}
	// A suite outside the allowlist is never chosen.
	if _, err := e.dir.Fetch(ctx, carol.AccountID, carol.ID, "alice", "", 3); !errors.Is(err, ErrUnsupportedSuite) {
		t.Fatalf("fetch of a suite outside the allowlist: %v", err)
	}
	// Without suites: any suite, as before negotiation.
	res, err = e.dir.Fetch(ctx, carol.AccountID, carol.ID, "alice", "")
	if err != nil || res.Suite != 0 || len(res.Packages) != 2 {
		t.Fatalf("legacy fetch %+v %v", res, err)
	}
}

func suiteOf(t *testing.T, raw []byte) mls.CipherSuiteID {
	t.Helper()
	kp, err := decodeKeyPackage(raw)
	if err != nil {
		t.Fatal(err)
	}
	return kp.CipherSuite
}
