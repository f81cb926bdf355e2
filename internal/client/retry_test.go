package client

import (
	"context"
	"database/sql"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/quicprochat/quicprochat/internal/server/servertest"
	"github.com/quicprochat/quicprochat/internal/wire"
	"github.com/quicprochat/quicprochat/internal/wire/qpcv1"
)

func TestBackoffFullJitterCapped(t *testing.T) {
	var asked []int64
	top := func(n int64) int64 { asked = append(asked, n); return n - 1 } // the largest draw
	b := Backoff{Base: 100 * time.Millisecond, Max: time.Second, Rand: top}
	want := []time.Duration{100 * time.Millisecond, 200 * time.Millisecond, 400 * time.Millisecond, 800 * time.Millisecond, time.Second, time.Second}
	for n, w := range want {
		if d := b.Delay(n, 0); d != w {
			t.Errorf("Delay(%d) max = %s, want %s", n, d, w)
		}
	}
	if d := b.Delay(100, 0); d != time.Second {
		t.Errorf("Delay(100) = %s, want the cap", d)
	}
	zero := Backoff{Base: 100 * time.Millisecond, Max: time.Second, Rand: func(int64) int64 { return 0 }}
	if d := zero.Delay(3, 0); d != 0 {
		t.Errorf("full jitter lower bound = %s, want 0", d)
	}
	if d := zero.Delay(0, 300*time.Millisecond); d != 300*time.Millisecond {
		t.Errorf("retry-after not honoured: %s", d)
	}
	if d := zero.Delay(0, time.Hour); d != time.Second {
		t.Errorf("retry-after not capped: %s", d)
	}
}

func TestRetryableClassification(t *testing.T) {
	st := func(code qpcv1.Status, ra time.Duration) error { return &wire.StatusError{Code: code, RetryAfter: ra} }
	cases := []struct {
		err  error
		want bool
	}{
		{st(qpcv1.Status_STATUS_UNAVAILABLE, 0), true},
		{st(qpcv1.Status_STATUS_DRAINING, 0), true},
		{st(qpcv1.Status_STATUS_RESOURCE_EXHAUSTED, time.Millisecond), true},
		{st(qpcv1.Status_STATUS_RESOURCE_EXHAUSTED, 0), false},
		{st(qpcv1.Status_STATUS_INVALID_ARGUMENT, 0), false},
		{st(qpcv1.Status_STATUS_STALE_EPOCH, 0), false},
		{st(qpcv1.Status_STATUS_UNAUTHENTICATED, 0), false},
		{&dialError{err: errors.New("timeout")}, true},
		{context.Canceled, false},
		{ErrPinMismatch, false},
	}
	for _, tc := range cases {
		if got := Retryable(tc.err); got != tc.want {
			t.Errorf("Retryable(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}

// TestPinMismatchNamesBothFingerprints: a wrong pin fails at once (no
// retries) with both fingerprints and the fix.
func TestPinMismatchNamesBothFingerprints(t *testing.T) {
	srv := servertest.Start(t, servertest.Config(t))
	wrong := strings.Repeat("ab", 32)
	sleeps := 0
	b := fastBackoff
	b.Sleep = func(context.Context, time.Duration) error { sleeps++; return nil }
	c, err := Init(ctxT(t), Options{Home: t.TempDir(), Keys: testKey(t), Backoff: b}, ServerTrust{Addr: srv.Addr(), PinSHA256: wrong}, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, err = c.Ping(ctxT(t))
	if !errors.Is(err, ErrPinMismatch) {
		t.Fatalf("ping with a wrong pin: %v", err)
	}
	msg := strings.ReplaceAll(err.Error(), ":", "")
	if !strings.Contains(msg, wrong) || !strings.Contains(msg, strings.ReplaceAll(srv.Pin(), ":", "")) || !strings.Contains(err.Error(), "qpc init") {
		t.Fatalf("error does not name both fingerprints and the fix: %v", err)
	}
	if sleeps != 0 {
		t.Fatalf("a pin mismatch was retried %d times", sleeps)
	}
	// Without a pin, CA verification refuses the self-signed certificate.
	ca, err := Init(ctxT(t), Options{Home: t.TempDir(), Keys: testKey(t), Backoff: b}, ServerTrust{Addr: srv.Addr()}, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer ca.Close()
	if _, err := ca.Ping(ctxT(t)); err == nil {
		t.Fatal("a self-signed server was trusted without a pin")
	}
}

// TestReconnectAfterDrain: after qpcd drains and comes back, the next call
// redials transparently; the tokens survive.
func TestReconnectAfterDrain(t *testing.T) {
	srv := servertest.Start(t, servertest.Config(t))
	c := registered(t, srv, "carol")
	ctx := ctxT(t)
	if _, err := c.WhoAmI(ctx); err != nil {
		t.Fatal(err)
	}
	srv.Stop(t)
	srv.Start(t)
	w, err := c.WhoAmI(ctx)
	if err != nil || w.GetAccountName() != "carol" {
		t.Fatalf("whoami after restart: %v, %v", w, err)
	}
}

// TestTokenRefreshAndRelogin: an access token near expiry is refreshed; a
// refused refresh falls back to a login with the device key.
func TestTokenRefreshAndRelogin(t *testing.T) {
	srv := servertest.Start(t, servertest.Config(t))
	clock := time.Now()
	c, o := newTestClient(t, srv, testKey(t))
	_ = o
	c.now = func() time.Time { return clock }
	ctx := ctxT(t)
	if _, err := c.Register(ctx, RegisterParams{AccountName: "dave"}); err != nil {
		t.Fatal(err)
	}
	before, _ := c.loadTokens(ctx)
	// 14m45s later the 15-minute token is inside the refresh margin.
	clock = clock.Add(14*time.Minute + 45*time.Second)
	if _, err := c.WhoAmI(ctx); err != nil {
		t.Fatal(err)
	}
	after, _ := c.loadTokens(ctx)
	if before.access.Equal(after.access) || before.refresh.Equal(after.refresh) {
		t.Fatal("token not refreshed near expiry")
	}
	// Spoil the refresh token: the client logs in again with its key.
	if err := c.db.WriteTx(ctx, func(tx *sql.Tx) error {
		_, err := tx.Exec(`UPDATE tokens SET access_expires = 0, refresh_token = zeroblob(32)`)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if w, err := c.WhoAmI(ctx); err != nil || w.GetAccountName() != "dave" {
		t.Fatalf("whoami after a refused refresh: %v, %v", w, err)
	}
}
