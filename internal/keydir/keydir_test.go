package keydir

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"github.com/quicprochat/quicprochat/internal/store/storetest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/quicprochat/quicprochat/internal/keydir/keydirtest"
	"github.com/quicprochat/quicprochat/internal/mls"
	"github.com/quicprochat/quicprochat/internal/store"
)

// fakeDevices is an in-memory Devices.
type fakeDevices struct {
	mu       sync.Mutex
	devices  map[string]Device
	accounts map[string]Account // by name
}

func (f *fakeDevices) Device(_ context.Context, id string) (Device, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	d, ok := f.devices[id]
	if !ok {
		return Device{}, fmt.Errorf("%w: %s", ErrUnknownDevice, id)
	}
	return d, nil
}

func (f *fakeDevices) Account(_ context.Context, name string) (Account, []Device, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	a, ok := f.accounts[name]
	if !ok {
		return Account{}, nil, fmt.Errorf("%w: %s", ErrUnknownAccount, name)
	}
	var out []Device
	for _, d := range f.devices {
		if d.AccountID == a.ID && d.Active {
			out = append(out, d)
		}
	}
	return a, out, nil
}

type testDevice struct {
	Device
	key ed25519.PrivateKey
}

func (f *fakeDevices) add(t *testing.T, account, id string) testDevice {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	a, ok := f.accounts[account]
	if !ok {
		a = Account{ID: "acct-" + account, Name: account, Active: true}
		f.accounts[account] = a
	}
	d := Device{ID: id, AccountID: a.ID, AccountName: account, SignatureKey: pub, Active: true}
	f.devices[id] = d
	return testDevice{Device: d, key: priv}
}

// clock is an injectable clock tests advance.
type clock struct{ ns atomic.Int64 }

func newClock() *clock {
	c := &clock{}
	c.ns.Store(time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC).UnixNano())
	return c
}
func (c *clock) Now() time.Time          { return time.Unix(0, c.ns.Load()) }
func (c *clock) Advance(d time.Duration) { c.ns.Add(int64(d)) }

type env struct {
	dir   *Directory
	devs  *fakeDevices
	clock *clock
	reg   *prometheus.Registry
}

func openDB(t *testing.T) *store.DB {
	t.Helper()
	return storetest.Open(t)
}

func newEnv(t *testing.T, mut func(*Options)) *env {
	t.Helper()
	e := &env{devs: &fakeDevices{devices: map[string]Device{}, accounts: map[string]Account{}}, clock: newClock(), reg: prometheus.NewRegistry()}
	o := Options{DB: openDB(t), Devices: e.devs, Now: e.clock.Now, SweepInterval: -1, Registry: e.reg, MaxPerAccount: 10,
		FetchLimits: FetchLimits{PerPair: 1 << 20, PerTarget: 1 << 20}} // limits_test.go tests the limits
	if mut != nil {
		mut(&o)
	}
	d, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Close() })
	e.dir = d
	return e
}

func (e *env) kp(t *testing.T, d testDevice, mut func(*keydirtest.Spec)) []byte {
	t.Helper()
	s := keydirtest.Spec{Identity: Identity(d.AccountName, d.ID), Key: d.key, Now: e.clock.Now()}
	if mut != nil {
		mut(&s)
	}
	b, err := keydirtest.KeyPackage(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func (e *env) kps(t *testing.T, d testDevice, n int) [][]byte {
	out := make([][]byte, n)
	for i := range out {
		out[i] = e.kp(t, d, nil)
	}
	return out
}

var ctx = context.Background()

func TestUploadCountFetch(t *testing.T) {
	e := newEnv(t, nil)
	alice := e.devs.add(t, "alice", "dev-a1")
	bob := e.devs.add(t, "bob", "dev-b1")
	batch := e.kps(t, alice, 3)
	batch = append(batch, e.kp(t, alice, func(s *keydirtest.Spec) { s.Bare = true }))
	res, err := e.dir.Upload(ctx, alice.ID, batch, e.kp(t, alice, nil))
	if err != nil {
		t.Fatal(err)
	}
	if res.Accepted != 4 || res.DeviceStock != 4 || !res.LastResortSet || res.RejectedOverCap != 0 {
		t.Fatalf("upload result %+v", res)
	}
	c, err := e.dir.Count(ctx, alice.AccountID, alice.ID)
	if err != nil || c.Device != 4 || c.Account != 4 || !c.HasLastResort || c.MaxPerAccount != 10 {
		t.Fatalf("count %+v %v", c, err)
	}
	// Re-uploading the same KeyPackage stores nothing twice.
	if res, err := e.dir.Upload(ctx, alice.ID, batch[:1], nil); err != nil || res.DeviceStock != 4 {
		t.Fatalf("re-upload: %+v %v", res, err)
	}
	got, err := e.dir.Fetch(ctx, bob.AccountID, bob.ID, "alice", "")
	if err != nil {
		t.Fatal(err)
	}
	if got.AccountID != alice.AccountID || len(got.Packages) != 1 || got.Packages[0].LastResort || !bytes.Equal(got.Packages[0].Data, batch[0]) {
		t.Fatalf("fetch %+v", got)
	}
	if c, _ := e.dir.Count(ctx, alice.AccountID, alice.ID); c.Device != 3 {
		t.Fatalf("fetch did not consume: %+v", c)
	}
	if v := testutil.ToFloat64(e.dir.metrics.fetched.WithLabelValues(kindPool)); v != 1 {
		t.Fatalf("fetched metric %v", v)
	}
}

func TestUploadRejects(t *testing.T) {
	e := newEnv(t, nil)
	alice := e.devs.add(t, "alice", "dev-a1")
	alice2 := e.devs.add(t, "alice", "dev-a2")
	mallory := e.devs.add(t, "mallory", "dev-m1")
	cases := []struct {
		name string
		kp   []byte
		want error
	}{
		{"other account's identity", e.kp(t, mallory, func(s *keydirtest.Spec) { s.Identity = Identity("alice", alice.ID) }), ErrNotOwner},
		{"other device's identity", e.kp(t, alice, func(s *keydirtest.Spec) { s.Identity = Identity("alice", alice2.ID) }), ErrNotOwner},
		{"another device's key", e.kp(t, alice2, func(s *keydirtest.Spec) { s.Identity = Identity("alice", alice.ID) }), ErrNotOwner},
		{"unknown suite", e.kp(t, alice, func(s *keydirtest.Spec) { s.Suite = 0x7777 }), ErrUnsupportedSuite},
		{"suite not allowed", e.kp(t, alice, func(s *keydirtest.Spec) { s.Suite = mls.MLS128DHKEMX25519ChaCha20Poly1305SHA256Ed25519 }), ErrUnsupportedSuite},
		{"bad signature", e.kp(t, alice, func(s *keydirtest.Spec) { s.BadSignature = true }), ErrInvalidKeyPackage},
		{"expired lifetime", e.kp(t, alice, func(s *keydirtest.Spec) { s.NotAfter = e.clock.Now().Add(-time.Minute) }), ErrInvalidKeyPackage},
		{"garbage", []byte{0, 1, 0, 5, 0xff}, ErrInvalidKeyPackage},
		{"empty", []byte{}, ErrInvalidKeyPackage},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			batch := [][]byte{e.kp(t, alice, nil), c.kp}
			_, err := e.dir.Upload(ctx, alice.ID, batch, nil)
			if !errors.Is(err, c.want) {
				t.Fatalf("got %v, want %v", err, c.want)
			}
			// Nothing of a refused batch is stored.
			if n, _ := e.dir.Count(ctx, alice.AccountID, alice.ID); n.Device != 0 {
				t.Fatalf("refused batch stored %d", n.Device)
			}
			if _, err := e.dir.Upload(ctx, alice.ID, nil, c.kp); !errors.Is(err, c.want) {
				t.Fatalf("as last resort: got %v, want %v", err, c.want)
			}
		})
	}
	if _, err := e.dir.Upload(ctx, "nope", e.kps(t, alice, 1), nil); !errors.Is(err, ErrUnknownDevice) {
		t.Fatalf("unknown device: %v", err)
	}
	if v := testutil.ToFloat64(e.dir.metrics.rejected.WithLabelValues("not_owner")); v < 3 {
		t.Fatalf("rejected{not_owner} = %v", v)
	}
}

func TestCapRejectsTheExcess(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.MaxPerAccount = 3 })
	a1 := e.devs.add(t, "alice", "dev-a1")
	a2 := e.devs.add(t, "alice", "dev-a2")
	res, err := e.dir.Upload(ctx, a1.ID, e.kps(t, a1, 2), nil)
	if err != nil || res.Accepted != 2 {
		t.Fatalf("%+v %v", res, err)
	}
	// The cap is per account: the second device gets the one slot left.
	res, err = e.dir.Upload(ctx, a2.ID, e.kps(t, a2, 3), nil)
	if err != nil || res.Accepted != 1 || res.RejectedOverCap != 2 {
		t.Fatalf("%+v %v", res, err)
	}
	if _, err := e.dir.Upload(ctx, a2.ID, e.kps(t, a2, 1), nil); !errors.Is(err, ErrCapExceeded) {
		t.Fatalf("over cap: %v", err)
	}
	// Last-resort KeyPackages do not count against the cap.
	if res, err := e.dir.Upload(ctx, a2.ID, e.kps(t, a2, 1), e.kp(t, a2, nil)); err != nil || !res.LastResortSet || res.RejectedOverCap != 1 {
		t.Fatalf("last resort at cap: %+v %v", res, err)
	}
}

func TestPoolExhaustionFallsBackToLastResort(t *testing.T) {
	e := newEnv(t, nil)
	alice := e.devs.add(t, "alice", "dev-a1")
	bare := e.devs.add(t, "alice", "dev-a2") // no KeyPackages at all
	bob := e.devs.add(t, "bob", "dev-b1")
	lr1 := e.kp(t, alice, nil)
	if _, err := e.dir.Upload(ctx, alice.ID, e.kps(t, alice, 1), lr1); err != nil {
		t.Fatal(err)
	}
	lr2 := e.kp(t, alice, nil)
	if _, err := e.dir.Upload(ctx, alice.ID, nil, lr2); err != nil { // replaces lr1
		t.Fatal(err)
	}
	first, err := e.dir.Fetch(ctx, bob.AccountID, bob.ID, "alice", alice.ID)
	if err != nil || len(first.Packages) != 1 || first.Packages[0].LastResort {
		t.Fatalf("first fetch %+v %v", first, err)
	}
	for range 2 { // last resort is returned again and again, not consumed
		got, err := e.dir.Fetch(ctx, bob.AccountID, bob.ID, "alice", "")
		if err != nil {
			t.Fatal(err)
		}
		if len(got.Packages) != 1 || !got.Packages[0].LastResort || !bytes.Equal(got.Packages[0].Data, lr2) {
			t.Fatalf("want the replacing last resort, got %+v", got)
		}
		if len(got.Missing) != 1 || got.Missing[0] != bare.ID {
			t.Fatalf("missing %v", got.Missing)
		}
	}
	if _, err := e.dir.Fetch(ctx, bob.AccountID, bob.ID, "nobody", ""); !errors.Is(err, ErrUnknownAccount) {
		t.Fatalf("unknown account: %v", err)
	}
	if _, err := e.dir.Fetch(ctx, bob.AccountID, bob.ID, "alice", "dev-zz"); !errors.Is(err, ErrUnknownDevice) {
		t.Fatalf("unknown device: %v", err)
	}
}

func TestConcurrentFetchersNeverShare(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.MaxPerAccount = 100 })
	alice := e.devs.add(t, "alice", "dev-a1")
	bob := e.devs.add(t, "bob", "dev-b1")
	const n = 60
	if _, err := e.dir.Upload(ctx, alice.ID, e.kps(t, alice, n), e.kp(t, alice, nil)); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	seen := map[string]int{}
	lastResort := 0
	var wg sync.WaitGroup
	for w := range 12 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 8 {
				got, err := e.dir.Fetch(ctx, bob.AccountID, bob.ID, "alice", "")
				if err != nil || len(got.Packages) != 1 {
					t.Errorf("fetcher %d: %+v %v", w, got, err)
					return
				}
				mu.Lock()
				if got.Packages[0].LastResort {
					lastResort++
				} else {
					seen[string(got.Packages[0].Data)]++
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if len(seen) != n || lastResort != 12*8-n {
		t.Fatalf("distinct pool KeyPackages %d (want %d), last resort %d", len(seen), n, lastResort)
	}
	for _, c := range seen {
		if c != 1 {
			t.Fatal("a KeyPackage was handed out twice")
		}
	}
}

func TestExpiry(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.TTL = 24 * time.Hour })
	alice := e.devs.add(t, "alice", "dev-a1")
	bob := e.devs.add(t, "bob", "dev-b1")
	// One KeyPackage whose own lifetime ends in 2 h, one bounded by the TTL.
	short := e.kp(t, alice, func(s *keydirtest.Spec) { s.NotAfter = e.clock.Now().Add(2 * time.Hour) })
	long := e.kp(t, alice, nil)
	if _, err := e.dir.Upload(ctx, alice.ID, [][]byte{short, long}, e.kp(t, alice, nil)); err != nil {
		t.Fatal(err)
	}
	e.clock.Advance(3 * time.Hour)
	// Fetch enforces expiry before the sweeper ran: the short one is skipped.
	got, err := e.dir.Fetch(ctx, bob.AccountID, bob.ID, "alice", "")
	if err != nil || len(got.Packages) != 1 || !bytes.Equal(got.Packages[0].Data, long) {
		t.Fatalf("fetch after 3h: %+v %v", got, err)
	}
	if n, err := e.dir.Sweep(ctx); err != nil || n != 1 {
		t.Fatalf("sweep removed %d, %v", n, err)
	}
	e.clock.Advance(22 * time.Hour) // 25 h after upload: past the TTL
	got, err = e.dir.Fetch(ctx, bob.AccountID, bob.ID, "alice", "")
	if err != nil || len(got.Packages) != 0 || len(got.Missing) != 1 {
		t.Fatalf("fetch after TTL: %+v %v", got, err)
	}
	if c, _ := e.dir.Count(ctx, alice.AccountID, alice.ID); c.Device != 0 || c.HasLastResort {
		t.Fatalf("count after TTL %+v", c)
	}
	if n, err := e.dir.Sweep(ctx); err != nil || n != 1 {
		t.Fatalf("sweep removed %d, %v", n, err)
	}
	if err := e.dir.RefreshStats(ctx); err != nil {
		t.Fatal(err)
	}
	if v := testutil.ToFloat64(e.dir.metrics.stock.WithLabelValues(kindLastResort)); v != 0 {
		t.Fatalf("stock %v", v)
	}
}

func TestMetricsLint(t *testing.T) {
	e := newEnv(t, nil)
	problems, err := testutil.GatherAndLint(e.reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}
}

func TestSweeperStopsOnClose(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.SweepInterval = time.Millisecond })
	if err := e.dir.Close(); err != nil {
		t.Fatal(err)
	}
}
