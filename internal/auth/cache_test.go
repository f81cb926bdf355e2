package auth

import (
	"context"
	"errors"
	"testing"
	"time"
)

// Every state change must reach Authenticate at once, even with the caches
// warm: each step authenticates first so the cached state is the old one.
func TestCachesNeverServeStaleState(t *testing.T) {
	e := newEnv(t, nil)
	ctx := context.Background()
	a := e.register(t, "alice")
	tok := e.login(t, a)
	auth := func() error { _, err := e.s.Authenticate(ctx, tok.AccessToken); return err }

	if err := auth(); err != nil {
		t.Fatal(err)
	}
	if err := e.s.DisableAccount(ctx, a.account); err != nil {
		t.Fatal(err)
	}
	if err := auth(); !errors.Is(err, ErrAccountDisabled) && !errors.Is(err, ErrTokenRevoked) {
		t.Fatalf("disabled account still authenticates: %v", err)
	}
	if err := e.s.EnableAccount(ctx, a.account); err != nil {
		t.Fatal(err)
	}
	// Disabling bumped the token generation: the old token stays dead, a new login works.
	if err := auth(); !errors.Is(err, ErrTokenRevoked) {
		t.Fatalf("token from before the disable: %v", err)
	}
	tok = e.login(t, a)
	if err := auth(); err != nil {
		t.Fatalf("after enable and login: %v", err)
	}

	// Refresh-token reuse revokes the device's tokens.
	next, err := e.s.Refresh(ctx, a.id, tok.RefreshToken.Clone())
	if err != nil {
		t.Fatal(err)
	}
	tok2 := next.AccessToken
	if _, err := e.s.Authenticate(ctx, tok2); err != nil {
		t.Fatal(err)
	}
	if _, err := e.s.Refresh(ctx, a.id, tok.RefreshToken.Clone()); !errors.Is(err, ErrRefreshReused) {
		t.Fatalf("reuse: %v", err)
	}
	if _, err := e.s.Authenticate(ctx, tok2); !errors.Is(err, ErrTokenRevoked) {
		t.Fatalf("token after refresh reuse: %v", err)
	}

	// Revocation.
	tok = e.login(t, a)
	if err := auth(); err != nil {
		t.Fatal(err)
	}
	if err := e.revoke(t, a, a.id); err != nil {
		t.Fatal(err)
	}
	if err := auth(); !errors.Is(err, ErrTokenRevoked) {
		t.Fatalf("revoked device still authenticates: %v", err)
	}
}

// A cached verification never outlives the token's expiry.
func TestVerifiedTokenCacheHonoursExpiry(t *testing.T) {
	e := newEnv(t, nil)
	a := e.register(t, "bob")
	tok := e.login(t, a)
	if _, err := e.s.Authenticate(context.Background(), tok.AccessToken); err != nil {
		t.Fatal(err)
	}
	e.clk.Advance(DefaultAccessTTL + time.Second)
	if _, err := e.s.Authenticate(context.Background(), tok.AccessToken); !errors.Is(err, ErrTokenExpired) {
		t.Fatalf("expired token served from cache: %v", err)
	}
}

// A read that started before an invalidation must not put its (possibly
// stale) result back afterwards.
func TestDeviceStateEpochGuard(t *testing.T) {
	var d deviceStates
	now := time.Now()
	_, epoch, ok := d.lookup("dev", now)
	if ok {
		t.Fatal("empty cache hit")
	}
	d.invalidate() // a revocation commits while the read is in flight
	d.store("dev", deviceState{deviceActive: true, fetched: now}, epoch)
	if _, _, ok := d.lookup("dev", now); ok {
		t.Fatal("stale state stored after an invalidation")
	}
	_, epoch, _ = d.lookup("dev", now)
	d.store("dev", deviceState{deviceActive: true, fetched: now}, epoch)
	if _, _, ok := d.lookup("dev", now); !ok {
		t.Fatal("fresh state not cached")
	}
	if _, _, ok := d.lookup("dev", now.Add(deviceStateTTL)); ok {
		t.Fatal("state trusted past its TTL")
	}
}
