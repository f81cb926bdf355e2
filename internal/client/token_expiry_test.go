package client

import (
	"context"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/quicprochat/quicprochat/internal/server/servertest"
)

// skewedClock is a server clock the test moves forward.
type skewedClock struct {
	mu  sync.Mutex
	off time.Duration
}

func (s *skewedClock) now() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return time.Now().Add(s.off)
}

func (s *skewedClock) advance(d time.Duration) {
	s.mu.Lock()
	s.off += d
	s.mu.Unlock()
}

// The soak's defect: an access token that expires while an operation runs
// (here: between two operations, as the server sees it, while the client's
// clock still calls it fresh) must not fail the operation: the SDK
// refreshes the token and repeats the call once. A group add whose
// KeyPackage fetch meets the expired token succeeds.
func TestExpiredTokenDuringGroupAddIsRefreshed(t *testing.T) {
	clock := &skewedClock{}
	cfg := servertest.Config(t)
	cfg.Auth.AccessTokenTTL = time.Minute
	srv := servertest.StartWith(t, cfg, clock.now)
	alice := registered(t, srv, "alice")
	bob := registered(t, srv, "bob")
	carol := registered(t, srv, "carol")
	ctx := ctxT(t)
	if err := alice.CreateGroup(ctx, "g"); err != nil {
		t.Fatal(err)
	}
	// On the server's clock every token issued so far has expired; the
	// clients' clocks say they have most of a minute left.
	clock.advance(2 * time.Minute)
	if err := alice.AddMembers(ctx, "g", []string{"bob"}); err != nil {
		t.Fatalf("add with an access token the server saw expire: %v", err)
	}
	clock.advance(2 * time.Minute)
	if err := alice.AddMembers(ctx, "g", []string{"carol"}); err != nil {
		t.Fatalf("second add after another expiry: %v", err)
	}
	acceptAll(t, bob, carol)
	clock.advance(2 * time.Minute)
	if _, err := alice.Send(ctx, "g", "after expiry", ""); err != nil {
		t.Fatalf("send after expiry: %v", err)
	}
}

// The soak's defect itself: a call whose retries wait longer than the
// access token lives. Here bob's KeyPackages may be fetched by alice once
// per hour; her second add meets RESOURCE_EXHAUSTED, and every backoff
// wait moves both clocks 10 minutes on (an access token lives 1 minute),
// until the hour is over. Before the fix the retries carried the token
// obtained before the first attempt: the server refused it as expired, the
// SDK renewed it once, the next wait expired the new one too, and the add
// failed with "access token expired". Now each attempt takes a token that
// is fresh by the client's clock.
func TestTokenExpiringDuringRetriesIsRenewed(t *testing.T) {
	clock := &skewedClock{}
	cfg := servertest.Config(t)
	cfg.Auth.AccessTokenTTL = time.Minute
	cfg.KeyPackages.FetchPerPair, cfg.KeyPackages.FetchWindow = 1, time.Hour
	srv := servertest.StartWith(t, cfg, clock.now)
	var sleeps int
	b := Backoff{Base: time.Millisecond, Max: time.Second, MaxAttempts: 10,
		Sleep: func(ctx context.Context, d time.Duration) error {
			sleeps++
			clock.advance(10 * time.Minute)
			return ctx.Err()
		}}
	newClient := func(name string) *Client {
		o := Options{Home: filepath.Join(t.TempDir(), name), Keys: testKey(t), Backoff: b, Now: clock.now}
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
	alice, bob := newClient("alice"), newClient("bob")
	ctx := ctxT(t)
	for _, g := range []string{"g1", "g2"} {
		if err := alice.CreateGroup(ctx, g); err != nil {
			t.Fatal(err)
		}
	}
	if err := alice.AddMembers(ctx, "g1", []string{"bob"}); err != nil {
		t.Fatal(err)
	}
	sleeps = 0
	if err := alice.AddMembers(ctx, "g2", []string{"bob"}); err != nil {
		t.Fatalf("add whose retries outlived two access tokens: %v", err)
	}
	if sleeps < 2 {
		t.Fatalf("the add waited %d times; the test needs at least two token lifetimes of waiting", sleeps)
	}
	acceptAll(t, bob)
	t.Logf("the add succeeded after %d backoff waits of 10 minutes (access tokens live 1 minute)", sleeps)
}
