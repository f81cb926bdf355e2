package server

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/quicprochat/quicprochat/internal/obs"
	"github.com/quicprochat/quicprochat/internal/wire"
	"github.com/quicprochat/quicprochat/internal/wire/qpcv1"
)

func rateLimited(ts *testServer, scope string) float64 {
	return testutil.ToFloat64(ts.metrics.RateLimited.WithLabelValues(scope))
}

func TestRateLimitPerIP(t *testing.T) {
	clk := newFakeClock()
	cfg := testConfig(t)
	cfg.Limits.RateLimit = 2
	cfg.Limits.RateBurst = 3
	ts := startServerWith(t, cfg, clk.Now)
	c := ts.dial(t)
	ping := func() error {
		return c.Call(ctxT(t), MethodPing, "", &qpcv1.PingRequest{}, &qpcv1.PingResponse{})
	}
	for i := range 3 {
		if err := ping(); err != nil {
			t.Fatalf("call %d within the burst: %v", i, err)
		}
	}
	err := ping()
	se := wantStatus(t, "over the burst", err, qpcv1.Status_STATUS_RESOURCE_EXHAUSTED)
	if se.RetryAfter <= 0 || se.RetryAfter > 500*time.Millisecond || !strings.Contains(se.Message, "ip") {
		t.Fatalf("retry after %v, message %q; want (0, 500ms] at 2/s", se.RetryAfter, se.Message)
	}
	if rateLimited(ts, obs.ScopeIP) != 1 {
		t.Fatalf("rate_limited{ip} = %v", rateLimited(ts, obs.ScopeIP))
	}
	// Public auth methods are limited too: a login flood from one address stops here.
	err = c.Call(ctxT(t), MethodLoginChallenge, "", &qpcv1.LoginChallengeRequest{DeviceId: strings.Repeat("0", 32)}, &qpcv1.LoginChallengeResponse{})
	wantStatus(t, "public method over the limit", err, qpcv1.Status_STATUS_RESOURCE_EXHAUSTED)
	// A refused call costs nothing: after the advertised wait the next one passes.
	clk.Advance(se.RetryAfter)
	if err := ping(); err != nil {
		t.Fatalf("after retry-after: %v", err)
	}
	// A second connection from the same address shares the bucket.
	err = ts.dial(t).Call(ctxT(t), MethodPing, "", &qpcv1.PingRequest{}, &qpcv1.PingResponse{})
	wantStatus(t, "second connection, same IP", err, qpcv1.Status_STATUS_RESOURCE_EXHAUSTED)
}

func TestRateLimitPerDeviceAndAccount(t *testing.T) {
	clk := newFakeClock()
	cfg := testConfig(t)
	ts := startServerWith(t, cfg, clk.Now)
	d := ts.newDevice(t, "alice")
	d2 := ts.addDevice(t, d)
	ctx := context.Background()
	// This test runs from one address, whose bucket would run out first;
	// drain the device's and the account's buckets directly instead.
	exhaust := func(scope, key string) {
		for i := 0; ts.limits.allow(ctx, scope, key) == nil; i++ {
			if i > cfg.Limits.RateBurst {
				t.Fatalf("%s bucket never ran out", scope)
			}
		}
	}
	exhaust(scopeDevice, d.DeviceID)
	err := d.call(t, MethodWhoAmI, &qpcv1.WhoAmIRequest{}, &qpcv1.WhoAmIResponse{})
	se := wantStatus(t, "device over its limit", err, qpcv1.Status_STATUS_RESOURCE_EXHAUSTED)
	if !strings.Contains(se.Message, "device") || se.RetryAfter <= 0 {
		t.Fatalf("%v", se)
	}
	if rateLimited(ts, obs.ScopeDevice) == 0 {
		t.Fatal("rate_limited{device} not counted")
	}
	// The account's other device is not limited by this one's bucket...
	if err := d2.call(t, MethodWhoAmI, &qpcv1.WhoAmIRequest{}, &qpcv1.WhoAmIResponse{}); err != nil {
		t.Fatal(err)
	}
	// ...but by the account's.
	exhaust(scopeAccount, d.AccountID)
	err = d2.call(t, MethodWhoAmI, &qpcv1.WhoAmIRequest{}, &qpcv1.WhoAmIResponse{})
	se = wantStatus(t, "account over its limit", err, qpcv1.Status_STATUS_RESOURCE_EXHAUSTED)
	if !strings.Contains(se.Message, "account") || rateLimited(ts, obs.ScopeAccount) == 0 {
		t.Fatalf("%v, rate_limited{account} = %v", se, rateLimited(ts, obs.ScopeAccount))
	}
	// Other accounts go on.
	b := ts.newDevice(t, "bob")
	if err := b.call(t, MethodWhoAmI, &qpcv1.WhoAmIRequest{}, &qpcv1.WhoAmIResponse{}); err != nil {
		t.Fatal(err)
	}
	clk.Advance(time.Second)
	if err := d2.call(t, MethodWhoAmI, &qpcv1.WhoAmIRequest{}, &qpcv1.WhoAmIResponse{}); err != nil {
		t.Fatalf("after refill: %v", err)
	}
}

// lockedBuffer is an io.Writer for a logger shared by goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func newTestLimits(t *testing.T, perSecond float64, burst int, clk *fakeClock) (*rateLimits, *lockedBuffer, *obs.Metrics) {
	t.Helper()
	buf := &lockedBuffer{}
	lg, err := obs.NewLogger(buf, "info", "text")
	if err != nil {
		t.Fatal(err)
	}
	m := obs.NewMetrics(nil)
	return newRateLimits(perSecond, burst, clk.Now, m, obs.NewAudit(lg)), buf, m
}

func TestRateLimitAuditEvents(t *testing.T) {
	clk := newFakeClock()
	r, buf, m := newTestLimits(t, 1, 1, clk)
	ctx := context.Background()
	if err := r.allow(ctx, scopeIP, "192.0.2.1"); err != nil {
		t.Fatal(err)
	}
	for range 5 {
		err := r.allow(ctx, scopeIP, "192.0.2.1")
		if wire.Code(err) != qpcv1.Status_STATUS_RESOURCE_EXHAUSTED {
			t.Fatalf("got %v", err)
		}
	}
	if got := testutil.ToFloat64(m.RateLimited.WithLabelValues(scopeIP)); got != 5 {
		t.Fatalf("metric counts %v refusals, want 5", got)
	}
	// One audit event per key per second; the rest are counted in the next one.
	if n := strings.Count(buf.String(), "event=ratelimit.hit"); n != 1 {
		t.Fatalf("%d audit events, want 1:\n%s", n, buf.String())
	}
	if !strings.Contains(buf.String(), "scope=ip") || !strings.Contains(buf.String(), "subject=192.0.2.1") {
		t.Fatalf("audit event lacks scope or subject:\n%s", buf.String())
	}
	clk.Advance(auditEvery)
	_ = r.allow(ctx, scopeIP, "192.0.2.1") // refilled one token: allowed
	_ = r.allow(ctx, scopeIP, "192.0.2.1")
	if n := strings.Count(buf.String(), "event=ratelimit.hit"); n != 2 || !strings.Contains(buf.String(), "suppressed=4") {
		t.Fatalf("second window: %d events:\n%s", n, buf.String())
	}
}

func TestRateLimitTableBounded(t *testing.T) {
	clk := newFakeClock()
	r, _, _ := newTestLimits(t, 0.01, 20, clk) // refills from empty in 2000s
	r.max = 100
	ctx := context.Background()
	// A flood of distinct keys never grows the table past its cap.
	for i := range 1000 {
		_ = r.allow(ctx, scopeIP, fmt.Sprintf("10.0.%d.%d", i/256, i%256))
		if r.size() > r.max {
			t.Fatalf("table grew to %d entries, cap %d", r.size(), r.max)
		}
	}
	// Buckets idle long enough to be full again are dropped on the next sweep.
	clk.Advance(r.idleAfter() + sweepEvery)
	_ = r.allow(ctx, scopeIP, "192.0.2.9")
	if r.size() != 1 {
		t.Fatalf("%d buckets after everything went idle, want 1", r.size())
	}
	// A partly used bucket is kept while it is not full again.
	for range 15 {
		_ = r.allow(ctx, scopeDevice, "busy")
	}
	clk.Advance(sweepEvery)
	_ = r.allow(ctx, scopeIP, "192.0.2.10")
	if r.size() != 3 {
		t.Fatalf("%d buckets, want 3 (two partly used, one new)", r.size())
	}
}

func TestIPKey(t *testing.T) {
	for in, want := range map[string]string{
		"192.0.2.1":                 "192.0.2.1",
		"::ffff:192.0.2.1":          "192.0.2.1",
		"2001:db8:1:2:3:4:5:6":      "2001:db8:1:2::/64",
		"2001:db8:1:2:ffff::1":      "2001:db8:1:2::/64",
		"fe80::1%eth0":              "fe80::/64",
		"not an address":            "not an address",
		"2001:db8:1:3:3:4:5:6":      "2001:db8:1:3::/64",
		"2001:0db8:0001:0002::0001": "2001:db8:1:2::/64",
	} {
		if got := ipKey(in); got != want {
			t.Errorf("ipKey(%q) = %q, want %q", in, got, want)
		}
	}
}
