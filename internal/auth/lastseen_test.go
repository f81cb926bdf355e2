package auth

import (
	"context"
	"sync/atomic"
	"testing"
	"time"
)

// TestLastSeenFollowsCalls: a device's last-seen time moves with its
// authenticated calls (not only at login), and a busy device costs at most
// one write per interval, not one per call.
func TestLastSeenFollowsCalls(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.LastSeenEvery = 5 * time.Minute })
	ctx := context.Background()
	a := e.register(t, "alice")
	tok := e.login(t, a)
	seen := func() time.Time {
		t.Helper()
		d, err := e.s.Device(ctx, a.id)
		if err != nil {
			t.Fatal(err)
		}
		return d.LastSeen
	}
	loggedIn := seen()
	if !loggedIn.Equal(e.clk.Now()) {
		t.Fatalf("last seen %v after login at %v", loggedIn, e.clk.Now())
	}
	call := func() {
		t.Helper()
		if _, err := e.s.Authenticate(ctx, tok.AccessToken); err != nil {
			t.Fatal(err)
		}
	}
	e.clk.Advance(2 * time.Minute)
	call()
	if got, want := seen(), e.clk.Now(); !got.Equal(want) {
		t.Fatalf("last seen %v after a call at %v", got, want)
	}
	first := e.clk.Now()

	// Many calls within the interval: no write at all.
	// (The commit observer sees every committed write on both backends.)
	var writes atomic.Int64
	e.db.SetCommitObserver(func(n int, _ time.Duration) { writes.Add(int64(n)) })
	defer e.db.SetCommitObserver(nil)
	for range 100 {
		e.clk.Advance(2 * time.Second)
		call()
	}
	if n := writes.Load(); n != 0 {
		t.Fatalf("%d writes for 100 calls within the interval; want none", n)
	}
	if got := seen(); !got.Equal(first) {
		t.Fatalf("last seen moved to %v within the interval", got)
	}
	// Past the interval, the next call writes once.
	e.clk.Advance(5 * time.Minute)
	call()
	call()
	if got, want := seen(), e.clk.Now(); !got.Equal(want) {
		t.Fatalf("last seen %v after a call past the interval at %v", got, want)
	}
	if n := writes.Load(); n != 1 {
		t.Fatalf("%d writes past the interval; want 1", n)
	}
	// The time never goes back (another node, or a clock step back).
	e.clk.Advance(-time.Hour)
	call()
	if got := seen(); got.Before(first) {
		t.Fatalf("last seen went back to %v", got)
	}
}
