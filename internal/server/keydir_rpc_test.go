package server

import (
	"bytes"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/quicprochat/quicprochat/internal/config"
	"github.com/quicprochat/quicprochat/internal/keydir/keydirtest"
	"github.com/quicprochat/quicprochat/internal/mls"
	"github.com/quicprochat/quicprochat/internal/wire"
	"github.com/quicprochat/quicprochat/internal/wire/qpcv1"
)

// svcConfig is a test config whose rate limits do not get in the way of
// tests that make many RPCs from one address.
func svcConfig(t *testing.T) config.Config {
	cfg := testConfig(t)
	cfg.Limits.RateLimit = 100000
	cfg.Limits.RateBurst = 100000
	cfg.KeyPackages.FetchPerPair = 100000 // TestKeyPackageDrainRefused tests these
	cfg.KeyPackages.FetchPerTarget = 100000
	return cfg
}

// keyPackage builds a KeyPackage for d (mut may change the spec).
func keyPackage(t *testing.T, d *testDevice, now time.Time, mut func(*keydirtest.Spec)) []byte {
	t.Helper()
	s := keydirtest.Spec{Identity: d.Credential(), Key: d.SigKey, Now: now}
	if mut != nil {
		mut(&s)
	}
	kp, err := keydirtest.KeyPackage(s)
	if err != nil {
		t.Fatal(err)
	}
	return kp
}

func keyPackages(t *testing.T, d *testDevice, n int) [][]byte {
	out := make([][]byte, n)
	for i := range out {
		out[i] = keyPackage(t, d, time.Now(), nil)
	}
	return out
}

func expectStatus(t *testing.T, err error, want qpcv1.Status) {
	t.Helper()
	if got := wire.Code(err); got != want {
		t.Fatalf("status %s (%v), want %s", wire.StatusName(got), err, wire.StatusName(want))
	}
}

func fetchKP(t *testing.T, d *testDevice, account, device string) *qpcv1.FetchKeyPackagesResponse {
	t.Helper()
	var resp qpcv1.FetchKeyPackagesResponse
	if err := d.call(t, MethodFetchKeyPackages, &qpcv1.FetchKeyPackagesRequest{AccountName: account, DeviceId: device}, &resp); err != nil {
		t.Fatal(err)
	}
	return &resp
}

// Upload, Count and Fetch over QUIC: pool KeyPackages are consumed in
// order, then the last-resort one comes back flagged.
func TestKeyPackageUploadCountFetch(t *testing.T) {
	ts := startServer(t, svcConfig(t))
	alice, bob := ts.newDevice(t, "alice"), ts.newDevice(t, "bob")
	pool := keyPackages(t, alice, 2)
	lastResort := keyPackage(t, alice, time.Now(), nil)
	var up qpcv1.UploadKeyPackagesResponse
	if err := alice.call(t, MethodUploadKeyPackages, &qpcv1.UploadKeyPackagesRequest{KeyPackages: pool, LastResort: lastResort}, &up); err != nil {
		t.Fatal(err)
	}
	if up.GetAccepted() != 2 || up.GetDeviceStock() != 2 || !up.GetLastResortSet() {
		t.Fatalf("upload: %v", &up)
	}
	var cnt qpcv1.CountKeyPackagesResponse
	if err := alice.call(t, MethodCountKeyPackages, &qpcv1.CountKeyPackagesRequest{}, &cnt); err != nil {
		t.Fatal(err)
	}
	if cnt.GetDeviceCount() != 2 || cnt.GetAccountCount() != 2 || !cnt.GetHasLastResort() || cnt.GetMaxPerAccount() != 100 {
		t.Fatalf("count: %v", &cnt)
	}
	for i := range 2 {
		r := fetchKP(t, bob, "alice", "")
		if r.GetAccountId() != alice.AccountID || len(r.GetKeyPackages()) != 1 || r.GetKeyPackages()[0].GetLastResort() ||
			!bytes.Equal(r.GetKeyPackages()[0].GetKeyPackage(), pool[i]) || r.GetKeyPackages()[0].GetDeviceId() != alice.DeviceID {
			t.Fatalf("fetch %d: %v", i, r)
		}
	}
	// Pool exhausted: the last-resort KeyPackage, flagged, again and again.
	for range 2 {
		r := fetchKP(t, bob, "alice", alice.DeviceID)
		if len(r.GetKeyPackages()) != 1 || !r.GetKeyPackages()[0].GetLastResort() || !bytes.Equal(r.GetKeyPackages()[0].GetKeyPackage(), lastResort) {
			t.Fatalf("after exhaustion: %v", r)
		}
	}
	// A second device without KeyPackages is reported missing.
	alice2 := ts.addDevice(t, alice)
	r := fetchKP(t, bob, "alice", "")
	if len(r.GetKeyPackages()) != 1 || len(r.GetMissingDeviceIds()) != 1 || r.GetMissingDeviceIds()[0] != alice2.DeviceID {
		t.Fatalf("two devices: %v", r)
	}
	if err := alice.call(t, MethodCountKeyPackages, &qpcv1.CountKeyPackagesRequest{}, &cnt); err != nil || cnt.GetDeviceCount() != 0 {
		t.Fatalf("count after fetches: %v %v", &cnt, err)
	}
	var resp qpcv1.FetchKeyPackagesResponse
	expectStatus(t, bob.call(t, MethodFetchKeyPackages, &qpcv1.FetchKeyPackagesRequest{AccountName: "nobody"}, &resp), qpcv1.Status_STATUS_NOT_FOUND)
	expectStatus(t, bob.call(t, MethodFetchKeyPackages, &qpcv1.FetchKeyPackagesRequest{AccountName: "alice", DeviceId: bob.DeviceID}, &resp), qpcv1.Status_STATUS_NOT_FOUND)
}

func TestKeyPackageUploadRefusals(t *testing.T) {
	cfg := svcConfig(t)
	cfg.KeyPackages.MaxPerAccount = 3
	ts := startServer(t, cfg)
	alice, bob := ts.newDevice(t, "alice"), ts.newDevice(t, "bob")
	now := time.Now()
	cases := []struct {
		name string
		kp   []byte
		want qpcv1.Status
	}{
		// Bob's identity and key, uploaded by alice: another account's KeyPackage.
		{"another account's KeyPackage", keyPackage(t, bob, now, nil), qpcv1.Status_STATUS_PERMISSION_DENIED},
		{"another account's identity with alice's key", keyPackage(t, alice, now, func(s *keydirtest.Spec) { s.Identity = bob.Credential() }), qpcv1.Status_STATUS_PERMISSION_DENIED},
		{"unknown suite", keyPackage(t, alice, now, func(s *keydirtest.Spec) { s.Suite = 0x0a0a }), qpcv1.Status_STATUS_INVALID_ARGUMENT},
		{"suite outside the allowlist", keyPackage(t, alice, now, func(s *keydirtest.Spec) { s.Suite = mls.MLS256DHKEMX448AES256GCMSHA512Ed448 }), qpcv1.Status_STATUS_INVALID_ARGUMENT},
		{"bad signature", keyPackage(t, alice, now, func(s *keydirtest.Spec) { s.BadSignature = true }), qpcv1.Status_STATUS_INVALID_ARGUMENT},
		{"expired", keyPackage(t, alice, now, func(s *keydirtest.Spec) { s.NotAfter = now.Add(-time.Second) }), qpcv1.Status_STATUS_INVALID_ARGUMENT},
		{"not a KeyPackage", []byte("hello"), qpcv1.Status_STATUS_INVALID_ARGUMENT},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var up qpcv1.UploadKeyPackagesResponse
			err := alice.call(t, MethodUploadKeyPackages, &qpcv1.UploadKeyPackagesRequest{KeyPackages: [][]byte{keyPackage(t, alice, now, nil), c.kp}}, &up)
			expectStatus(t, err, c.want)
		})
	}
	var cnt qpcv1.CountKeyPackagesResponse
	if err := alice.call(t, MethodCountKeyPackages, &qpcv1.CountKeyPackagesRequest{}, &cnt); err != nil || cnt.GetAccountCount() != 0 {
		t.Fatalf("refused batches stored KeyPackages: %v %v", &cnt, err)
	}
	// The cap: 3 of 5 stored, then RESOURCE_EXHAUSTED.
	var up qpcv1.UploadKeyPackagesResponse
	if err := alice.call(t, MethodUploadKeyPackages, &qpcv1.UploadKeyPackagesRequest{KeyPackages: keyPackages(t, alice, 5)}, &up); err != nil {
		t.Fatal(err)
	}
	if up.GetAccepted() != 3 || up.GetRejectedOverCap() != 2 {
		t.Fatalf("cap: %v", &up)
	}
	expectStatus(t, alice.call(t, MethodUploadKeyPackages, &qpcv1.UploadKeyPackagesRequest{KeyPackages: keyPackages(t, alice, 1)}, &up), qpcv1.Status_STATUS_RESOURCE_EXHAUSTED)
	// Field rules: more than 100 KeyPackages in one request.
	expectStatus(t, alice.call(t, MethodUploadKeyPackages, &qpcv1.UploadKeyPackagesRequest{KeyPackages: make([][]byte, 101)}, &up), qpcv1.Status_STATUS_INVALID_ARGUMENT)
	// No token, no upload.
	err := alice.Client.Call(ctxT(t), MethodUploadKeyPackages, "", &qpcv1.UploadKeyPackagesRequest{KeyPackages: keyPackages(t, alice, 1)}, &up)
	expectStatus(t, err, qpcv1.Status_STATUS_UNAUTHENTICATED)
}

// Concurrent fetchers on separate connections never receive the same
// KeyPackage.
func TestKeyPackageConcurrentFetchers(t *testing.T) {
	ts := startServer(t, svcConfig(t))
	alice := ts.newDevice(t, "alice")
	const n = 30
	var up qpcv1.UploadKeyPackagesResponse
	if err := alice.call(t, MethodUploadKeyPackages, &qpcv1.UploadKeyPackagesRequest{
		KeyPackages: keyPackages(t, alice, n), LastResort: keyPackage(t, alice, time.Now(), nil)}, &up); err != nil || up.GetAccepted() != n {
		t.Fatalf("%v %v", &up, err)
	}
	fetchers := make([]*testDevice, 5)
	for i := range fetchers {
		fetchers[i] = ts.newDevice(t, "fetcher"+string(rune('a'+i)))
	}
	var mu sync.Mutex
	seen := map[string]int{}
	lastResort := 0
	var wg sync.WaitGroup
	for _, f := range fetchers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 8 {
				var r qpcv1.FetchKeyPackagesResponse
				if err := f.Client.Call(ctxT(t), MethodFetchKeyPackages, f.Token, &qpcv1.FetchKeyPackagesRequest{AccountName: "alice"}, &r); err != nil || len(r.GetKeyPackages()) != 1 {
					t.Errorf("fetch: %v %v", &r, err)
					return
				}
				mu.Lock()
				if k := r.GetKeyPackages()[0]; k.GetLastResort() {
					lastResort++
				} else {
					seen[string(k.GetKeyPackage())]++
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if len(seen) != n || lastResort != 5*8-n {
		t.Fatalf("%d distinct pool KeyPackages (want %d), %d last resort", len(seen), n, lastResort)
	}
	for _, c := range seen {
		if c != 1 {
			t.Fatal("a KeyPackage was handed out twice")
		}
	}
}

// KeyPackage expiry on the server's injectable clock: fetch skips expired
// ones at once, the sweeper deletes them.
func TestKeyPackageExpiry(t *testing.T) {
	clk := newFakeClock()
	ts := startServerWith(t, svcConfig(t), clk.Now)
	alice, bob := ts.newDevice(t, "alice"), ts.newDevice(t, "bob")
	short := keyPackage(t, alice, clk.Now(), func(s *keydirtest.Spec) { s.NotAfter = clk.Now().Add(time.Hour) })
	long := keyPackage(t, alice, clk.Now(), nil)
	var up qpcv1.UploadKeyPackagesResponse
	if err := alice.call(t, MethodUploadKeyPackages, &qpcv1.UploadKeyPackagesRequest{KeyPackages: [][]byte{short, long}}, &up); err != nil {
		t.Fatal(err)
	}
	clk.Advance(2 * time.Hour)
	relogin(t, bob)
	if r := fetchKP(t, bob, "alice", ""); len(r.GetKeyPackages()) != 1 || !bytes.Equal(r.GetKeyPackages()[0].GetKeyPackage(), long) {
		t.Fatalf("after the short lifetime: %v", r)
	}
	relogin(t, alice) // the 15-minute access token expired with the clock
	if err := alice.call(t, MethodUploadKeyPackages, &qpcv1.UploadKeyPackagesRequest{KeyPackages: [][]byte{keyPackage(t, alice, clk.Now(), nil)}}, &up); err != nil {
		t.Fatal(err)
	}
	clk.Advance(25 * time.Hour) // past keypackages.ttl (24 h)
	relogin(t, bob)
	if r := fetchKP(t, bob, "alice", ""); len(r.GetKeyPackages()) != 0 || len(r.GetMissingDeviceIds()) != 1 {
		t.Fatalf("after the TTL: %v", r)
	}
	if n, err := ts.keydir.Sweep(ctxT(t)); err != nil || n != 2 {
		t.Fatalf("sweep: %d %v", n, err)
	}
}

// relogin gets d a fresh access token (after a fake clock moved past its TTL).
func relogin(t *testing.T, d *testDevice) {
	t.Helper()
	tok, err := loginDevice(t, d.Client, d.DeviceID, d.SigKey)
	if err != nil {
		t.Fatalf("relogin: %v", err)
	}
	d.Token, d.RefreshToken = tok.GetAccessToken(), tok.GetRefreshToken()
}

// TestKeyPackageDrainRefused is issue 23's KeyPackage drain over QUIC: one
// account fetching another's KeyPackages in a loop used to take the whole
// pool of 100 in about a second, leaving every later adder the same
// last-resort KeyPackage. Now one fetcher gets keypackages.fetch_per_pair,
// any number of fetchers together keypackages.fetch_per_target, each
// refusal is RESOURCE_EXHAUSTED with the wait, the owner's device is told
// to refill, and refusals are counted.
func TestKeyPackageDrainRefused(t *testing.T) {
	clk := newFakeClock()
	cfg := testConfig(t)
	// Request rate limits out of the way: the fetch limits alone must stop the drain.
	cfg.Limits.RateLimit, cfg.Limits.RateBurst = 100000, 100000
	if cfg.KeyPackages.FetchPerPair != 5 || cfg.KeyPackages.FetchPerTarget != 30 || cfg.KeyPackages.FetchWindow != time.Hour {
		t.Fatalf("defaults changed: %+v", cfg.KeyPackages)
	}
	ts := startServerWith(t, cfg, clk.Now)
	alice := ts.newDevice(t, "alice")
	var up qpcv1.UploadKeyPackagesResponse
	if err := alice.call(t, MethodUploadKeyPackages, &qpcv1.UploadKeyPackagesRequest{
		KeyPackages: keyPackages(t, alice, 100), LastResort: keyPackage(t, alice, time.Now(), nil)}, &up); err != nil || up.GetAccepted() != 100 {
		t.Fatalf("upload: %v %v", &up, err)
	}
	// drain fetches alice's KeyPackages until refused; none may be the last resort.
	drain := func(d *testDevice) (int, *wire.StatusError) {
		t.Helper()
		for n := 0; n < 100; n++ {
			var resp qpcv1.FetchKeyPackagesResponse
			err := d.call(t, MethodFetchKeyPackages, &qpcv1.FetchKeyPackagesRequest{AccountName: "alice"}, &resp)
			if err != nil {
				return n, wantStatus(t, d.AccountName+"'s fetch beyond the limit", err, qpcv1.Status_STATUS_RESOURCE_EXHAUSTED)
			}
			if len(resp.GetKeyPackages()) != 1 || resp.GetKeyPackages()[0].GetLastResort() {
				t.Fatalf("%s's fetch %d: %v", d.AccountName, n+1, &resp)
			}
		}
		t.Fatalf("%s fetched 100 KeyPackages without a refusal", d.AccountName)
		return 0, nil
	}
	mallory := ts.newDevice(t, "mallory")
	n, se := drain(mallory)
	if n != 5 {
		t.Fatalf("one fetcher took %d KeyPackages, want 5", n)
	}
	if se.RetryAfter < 11*time.Minute || se.RetryAfter > 12*time.Minute+time.Second ||
		!strings.Contains(se.Message, `"alice"`) || !strings.Contains(se.Message, "5 times per 1h0m0s") {
		t.Fatalf("refusal: retry after %v, %q", se.RetryAfter, se.Message)
	}
	// The owner's device hears of it with its next fetch, until it looks.
	if !fetch(t, alice).GetRefillKeyPackages() {
		t.Fatal("the owner's device is not told to refill")
	}
	var cnt qpcv1.CountKeyPackagesResponse
	if err := alice.call(t, MethodCountKeyPackages, &qpcv1.CountKeyPackagesRequest{}, &cnt); err != nil || cnt.GetDeviceCount() != 95 {
		t.Fatalf("count: %v %v", &cnt, err)
	}
	if fetch(t, alice).GetRefillKeyPackages() {
		t.Fatal("the refill signal outlived the device's count")
	}
	// Sybils: together no more than the target's 30 per hour.
	total := n
	var last *wire.StatusError
	for i := range 10 {
		k, se := drain(ts.newDevice(t, fmt.Sprintf("sybil%d", i)))
		total, last = total+k, se
	}
	if total != 30 {
		t.Fatalf("eleven fetchers took %d KeyPackages, want 30", total)
	}
	if !strings.Contains(last.Message, "by all accounts together") || last.RetryAfter <= 0 || last.RetryAfter > 2*time.Minute+time.Second {
		t.Fatalf("target refusal: retry after %v, %q", last.RetryAfter, last.Message)
	}
	if got := ts.gauge(t, "qpcd_keypackages_fetch_refused_total"); got != 11 {
		t.Fatalf("qpcd_keypackages_fetch_refused_total = %v, want 11", got)
	}
	if got := ts.gauge(t, "qpcd_keypackages_fetched_total"); got != 30 {
		t.Fatalf("qpcd_keypackages_fetched_total = %v, want 30 (no last resort)", got)
	}
	// After the advertised wait, someone new adds alice with a fresh KeyPackage.
	clk.Advance(last.RetryAfter)
	bob := ts.newDevice(t, "bob")
	if r := fetchKP(t, bob, "alice", ""); len(r.GetKeyPackages()) != 1 || r.GetKeyPackages()[0].GetLastResort() {
		t.Fatalf("bob after the wait: %v", r)
	}
}
