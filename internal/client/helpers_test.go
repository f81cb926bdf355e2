package client

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"path/filepath"
	"testing"
	"time"

	"github.com/quicprochat/quicprochat/internal/secret"
	"github.com/quicprochat/quicprochat/internal/server/servertest"
)

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// testKey is a random database key given as QPC_CLIENT_KEY would give it.
func testKey(t testing.TB) KeySource {
	b := make([]byte, KeySize)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return KeySource{Hex: secret.New([]byte(hex.EncodeToString(b)))}
}

// fastBackoff retries quickly so tests of outages finish fast.
var fastBackoff = Backoff{Base: 5 * time.Millisecond, Max: 200 * time.Millisecond, MaxAttempts: 6}

// newTestClient initialises a client home for srv (pinned) and opens it.
func newTestClient(t testing.TB, srv *servertest.Server, keys KeySource) (*Client, Options) {
	t.Helper()
	return newTestClientAt(t, srv, keys, nil)
}

// newTestClientAt is newTestClient on a given clock (nil: the real one).
func newTestClientAt(t testing.TB, srv *servertest.Server, keys KeySource, now func() time.Time) (*Client, Options) {
	t.Helper()
	o := Options{Home: filepath.Join(t.TempDir(), "home"), Keys: keys, Backoff: fastBackoff, Now: now}
	c, err := Init(ctxT(t), o, ServerTrust{Addr: srv.Addr(), PinSHA256: srv.Pin()}, 0)
	if err != nil {
		t.Fatalf("Init: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c, o
}

// registered is a client with a registered, logged-in device.
func registered(t testing.TB, srv *servertest.Server, name string) *Client {
	t.Helper()
	return registeredAt(t, srv, name, nil)
}

// registeredAt is registered on a given clock (nil: the real one).
func registeredAt(t testing.TB, srv *servertest.Server, name string, now func() time.Time) *Client {
	t.Helper()
	c, _ := newTestClientAt(t, srv, testKey(t), now)
	if _, err := c.Register(ctxT(t), RegisterParams{AccountName: name}); err != nil {
		t.Fatalf("register %s: %v", name, err)
	}
	return c
}

// acceptAll accepts every pending invitation of each client (joining the
// groups whose Welcomes arrived).
func acceptAll(t testing.TB, cs ...*Client) {
	t.Helper()
	for _, c := range cs {
		invs, err := c.Invitations(ctxT(t))
		if err != nil {
			t.Fatal(err)
		}
		for _, in := range invs {
			if _, err := c.AcceptInvitation(ctxT(t), in.ID); err != nil {
				t.Fatalf("accept %s: %v", in.ID, err)
			}
		}
	}
}
