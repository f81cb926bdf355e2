package auth

import (
	"context"
	"crypto/ed25519"
	"database/sql"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"
)

// Issue 23, "login lockout": any number of challenges asked for a device
// (device ids are public) must leave the device's own pending challenge
// answerable. Before challenges were stateless, the ninth request evicted it.
func TestChallengeFloodDoesNotEvictPendingChallenge(t *testing.T) {
	e := newEnv(t, nil)
	ctx := context.Background()
	a := e.register(t, "alice")
	nonce, _, err := e.s.Challenge(ctx, a.id)
	if err != nil {
		t.Fatal(err)
	}
	for range 1000 {
		if _, _, err := e.s.Challenge(ctx, a.id); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := e.s.Login(ctx, a.id, nonce, ed25519.Sign(a.priv, LoginMessage(a.id, nonce))); err != nil {
		t.Fatalf("login after a flood of challenges for the device: %v", err)
	}
}

func TestChallengeIsBoundAndAuthenticated(t *testing.T) {
	e := newEnv(t, nil)
	ctx := context.Background()
	a := e.register(t, "alice")
	login := func(n []byte) error {
		_, err := e.s.Login(ctx, a.id, n, ed25519.Sign(a.priv, LoginMessage(a.id, n)))
		return err
	}
	nonce, _, _ := e.s.Challenge(ctx, a.id)
	// Any changed byte (version, hint, expiry, random, tag) is refused,
	// even though the device signs the changed bytes.
	for i := range nonce {
		bad := append([]byte(nil), nonce...)
		bad[i] ^= 0x01
		if err := login(bad); !errors.Is(err, ErrLoginFailed) {
			t.Fatalf("byte %d changed: %v", i, err)
		}
	}
	// Nothing was used up by those refusals.
	if err := login(nonce); err != nil {
		t.Fatal(err)
	}
	// A re-authentication challenge does not log in (purpose is in the MAC).
	pub, _ := genKey(t)
	rc, _, err := e.s.ReauthChallenge(ctx, Actor{AccountID: a.account, DeviceID: a.id}, PurposeAddDevice, pub)
	if err != nil {
		t.Fatal(err)
	}
	if err := login(rc); !errors.Is(err, ErrLoginFailed) {
		t.Fatalf("re-authentication challenge used to log in: %v", err)
	}
	// Expiry is in the MAC'd bytes and follows the injected clock.
	nonce, exp, _ := e.s.Challenge(ctx, a.id)
	e.clk.Advance(exp.Sub(e.clk.Now()) - time.Millisecond)
	if err := login(nonce); err != nil {
		t.Fatalf("just before expiry: %v", err)
	}
	nonce, exp, _ = e.s.Challenge(ctx, a.id)
	e.clk.Advance(exp.Sub(e.clk.Now()))
	if err := login(nonce); !errors.Is(err, ErrLoginFailed) {
		t.Fatalf("at expiry: %v", err)
	}
	// Used records are pruned once expired.
	nonce, _, _ = e.s.Challenge(ctx, a.id)
	if err := login(nonce); err != nil {
		t.Fatal(err)
	}
	var n int
	_ = e.db.ReadTx(ctx, func(tx *sql.Tx) error {
		return tx.QueryRowContext(ctx, "SELECT count(*) FROM used_challenges").Scan(&n)
	})
	if n != 1 {
		t.Fatalf("%d used challenges recorded, want only the unexpired one", n)
	}
}

// A rotation keeps challenges already handed out answerable (the previous
// key's challenge key is kept), a second rotation ends them, and another
// node on the same database verifies challenges this one made.
func TestChallengeKeysRotateAndAreShared(t *testing.T) {
	e := newEnv(t, nil)
	ctx := context.Background()
	a := e.register(t, "alice")
	login := func(s *Service, n []byte) error {
		_, err := s.Login(ctx, a.id, n, ed25519.Sign(a.priv, LoginMessage(a.id, n)))
		return err
	}
	other, err := New(ctx, Options{DB: e.db, Now: e.clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	n1, _, _ := e.s.Challenge(ctx, a.id)
	if err := login(other, n1); err != nil {
		t.Fatalf("challenge of one node answered at another: %v", err)
	}
	n2, _, _ := e.s.Challenge(ctx, a.id)
	n3, _, _ := e.s.Challenge(ctx, a.id)
	if _, err := e.s.RotateSigningKey(ctx); err != nil {
		t.Fatal(err)
	}
	if err := login(e.s, n2); err != nil {
		t.Fatalf("challenge from before one rotation: %v", err)
	}
	// The other node learns the rotation on first sight of the new hint.
	e.clk.Advance(keyReloadEvery)
	n4, _, _ := e.s.Challenge(ctx, a.id)
	if err := login(other, n4); err != nil {
		t.Fatalf("challenge of a key rotated at another node: %v", err)
	}
	if _, err := e.s.RotateSigningKey(ctx); err != nil {
		t.Fatal(err)
	}
	if err := login(e.s, n3); !errors.Is(err, ErrLoginFailed) {
		t.Fatalf("challenge from before two rotations: %v", err)
	}
}

// Single use holds under concurrency: of many logins with one challenge,
// exactly one succeeds.
func TestChallengeSingleUseUnderConcurrency(t *testing.T) {
	e := newEnv(t, nil)
	ctx := context.Background()
	a := e.register(t, "alice")
	nonce, _, _ := e.s.Challenge(ctx, a.id)
	sig := ed25519.Sign(a.priv, LoginMessage(a.id, nonce))
	var (
		wg sync.WaitGroup
		mu sync.Mutex
		ok int
	)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := e.s.Login(ctx, a.id, nonce, sig); err == nil {
				mu.Lock()
				ok++
				mu.Unlock()
			} else if !errors.Is(err, ErrLoginFailed) {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if ok != 1 {
		t.Fatalf("%d logins with one challenge", ok)
	}
}

// Many devices logging in at once all succeed: on PostgreSQL each login's
// challenge bookkeeping (prune expired, insert this one) made concurrent
// SERIALIZABLE logins conflict until their retries ran out.
func TestConcurrentLoginsOfManyDevicesSucceed(t *testing.T) {
	e := newEnv(t, nil)
	ctx := context.Background()
	type dev struct {
		id   string
		priv ed25519.PrivateKey
	}
	var devs []dev
	for i := range 24 {
		a := e.register(t, fmt.Sprintf("user%d", i))
		devs = append(devs, dev{a.id, a.priv})
	}
	for round := range 3 {
		var wg sync.WaitGroup
		for _, d := range devs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				nonce, _, err := e.s.Challenge(ctx, d.id)
				if err != nil {
					t.Error(err)
					return
				}
				if _, err := e.s.Login(ctx, d.id, nonce, ed25519.Sign(d.priv, LoginMessage(d.id, nonce))); err != nil {
					t.Errorf("round %d: login of %s: %v", round, d.id, err)
				}
			}()
		}
		wg.Wait()
	}
}

// recordingSink keeps the device events it is given.
type recordingSink struct {
	mu        sync.Mutex
	recorded  []DeviceEvent
	committed []DeviceEvent
	fail      error
}

func (r *recordingSink) RecordDeviceEvent(_ context.Context, _ *sql.Tx, ev DeviceEvent) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.fail != nil {
		return r.fail
	}
	r.recorded = append(r.recorded, ev)
	return nil
}

func (r *recordingSink) DeviceEventCommitted(ev DeviceEvent) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.committed = append(r.committed, ev)
}

// Issue 23, "a stolen access token becomes a permanent account takeover":
// a token is not enough to add or revoke a device; the device key must sign
// a challenge bound to that very change.
func TestReauthRequiredForDeviceChanges(t *testing.T) {
	sink := &recordingSink{}
	e := newEnv(t, func(o *Options) { o.Events = sink })
	ctx := context.Background()
	a := e.register(t, "alice")
	actor := Actor{AccountID: a.account, DeviceID: a.id}
	thiefPub, thiefPriv := genKey(t)

	// No proof (an old client, or a thief with only the token).
	if _, err := e.s.AddDevice(ctx, actor, thiefPub, "thief", Reauth{}); !errors.Is(err, ErrReauthRequired) {
		t.Fatalf("add without proof: %v", err)
	}
	if err := e.s.RevokeDevice(ctx, actor, a.id, Reauth{}); !errors.Is(err, ErrReauthRequired) {
		t.Fatalf("revoke without proof: %v", err)
	}
	// A challenge signed by a key that is not the device's.
	c, _, err := e.s.ReauthChallenge(ctx, actor, PurposeAddDevice, thiefPub)
	if err != nil {
		t.Fatal(err)
	}
	forged := Reauth{Challenge: c, Signature: ed25519.Sign(thiefPriv, ReauthMessage(PurposeAddDevice, a.account, a.id, ReauthBinding(thiefPub), c))}
	if _, err := e.s.AddDevice(ctx, actor, thiefPub, "thief", forged); !errors.Is(err, ErrReauthFailed) {
		t.Fatalf("add with a proof by another key: %v", err)
	}
	// A proof for one key does not add another.
	pub, _ := genKey(t)
	r := e.reauth(t, a, PurposeAddDevice, pub)
	if _, err := e.s.AddDevice(ctx, actor, thiefPub, "thief", r); !errors.Is(err, ErrReauthFailed) {
		t.Fatalf("proof for another key: %v", err)
	}
	// An add-device proof does not revoke.
	if err := e.s.RevokeDevice(ctx, actor, a.id, r); !errors.Is(err, ErrReauthFailed) {
		t.Fatalf("add-device proof used to revoke: %v", err)
	}
	// Another account's device cannot answer for this one.
	b := e.register(t, "bob")
	rb := e.reauth(t, b, PurposeAddDevice, pub)
	if _, err := e.s.AddDevice(ctx, actor, pub, "phone", rb); !errors.Is(err, ErrReauthFailed) {
		t.Fatalf("proof of another account's device: %v", err)
	}
	if n := len(sink.recorded); n != 0 {
		t.Fatalf("%d events for refused changes", n)
	}
	// The proper proof works once.
	d2, err := e.s.AddDevice(ctx, actor, pub, "phone", r)
	if err != nil {
		t.Fatal(err)
	}
	pub3, _ := genKey(t)
	if _, err := e.s.AddDevice(ctx, actor, pub3, "again", r); !errors.Is(err, ErrReauthFailed) {
		t.Fatalf("proof reused: %v", err)
	}
	// An expired proof is refused.
	r3 := e.reauth(t, a, PurposeAddDevice, pub3)
	e.clk.Advance(DefaultChallengeTTL)
	if _, err := e.s.AddDevice(ctx, actor, pub3, "late", r3); !errors.Is(err, ErrReauthFailed) {
		t.Fatalf("expired proof: %v", err)
	}
	// The add was recorded for the account's other devices: the first
	// device made it, so nobody else is told... until there is a third.
	if len(sink.recorded) != 0 {
		t.Fatalf("events %+v; the only other device made the change", sink.recorded)
	}
	d3, err := e.addDevice(a, pub3, "tablet", t)
	if err != nil {
		t.Fatal(err)
	}
	if len(sink.recorded) != 1 || len(sink.committed) != 1 {
		t.Fatalf("recorded %d, committed %d events", len(sink.recorded), len(sink.committed))
	}
	ev := sink.recorded[0]
	if ev.Kind != DeviceAdded || ev.DeviceID != d3 || ev.By != a.id || ev.DeviceName != "tablet" ||
		len(ev.Notify) != 1 || ev.Notify[0] != d2 || string(ev.SignatureKey) != string(pub3) {
		t.Fatalf("event %+v", ev)
	}
	// Revoking tells the remaining devices, not the revoked one.
	if err := e.revoke(t, a, d3); err != nil {
		t.Fatal(err)
	}
	ev = sink.recorded[1]
	if ev.Kind != DeviceRevoked || ev.DeviceID != d3 || ev.By != a.id || len(ev.Notify) != 1 || ev.Notify[0] != d2 {
		t.Fatalf("revoke event %+v", ev)
	}
	// A revoked device cannot re-authenticate anything.
	if err := e.s.AdminRevokeDevice(ctx, d2); err != nil {
		t.Fatal(err)
	}
	if ev := sink.recorded[2]; ev.By != "" || ev.DeviceID != d2 || len(ev.Notify) != 1 || ev.Notify[0] != a.id {
		t.Fatalf("admin revoke event %+v", ev)
	}
	if err := e.revoke(t, a, a.id); err != nil {
		t.Fatal(err)
	}
	if err := e.revoke(t, a, a.id); !errors.Is(err, ErrReauthFailed) {
		t.Fatalf("revoked device re-authenticated: %v", err)
	}
}

// The notice is part of the change: if it cannot be stored, the device is
// not added either.
func TestDeviceEventIsAtomicWithTheChange(t *testing.T) {
	sink := &recordingSink{}
	e := newEnv(t, func(o *Options) { o.Events = sink })
	a := e.register(t, "alice")
	pub, _ := genKey(t)
	if _, err := e.addDevice(a, pub, "phone", t); err != nil {
		t.Fatal(err)
	}
	sink.fail = errors.New("inbox unavailable")
	pub2, _ := genKey(t)
	if _, err := e.addDevice(a, pub2, "tablet", t); err == nil {
		t.Fatal("device added although its notice failed")
	}
	devs, err := e.s.ListDevices(context.Background(), a.account)
	if err != nil || len(devs) != 2 {
		t.Fatalf("%d devices, %v; the failed add must leave nothing", len(devs), err)
	}
}
