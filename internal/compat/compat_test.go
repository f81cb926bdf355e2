package compat

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/quicprochat/quicprochat/internal/rpcclient"
	"github.com/quicprochat/quicprochat/internal/testutil"
	"github.com/quicprochat/quicprochat/internal/transport"
	"github.com/quicprochat/quicprochat/internal/wire/qpcv1"
)

// accessTTL is short so that the lifecycle sees access tokens expire and
// refreshed within the run (both releases know auth.access_token_ttl).
const accessTTL = "3s"

// TestCompatLifecycle runs the whole client lifecycle across versions:
// register, login, whoami, device list, KeyPackages, a group with a member
// added, group messages both ways, a DM both ways, history, a token
// refresh after the access token expired and a fresh login; with the old
// qpc against the new qpcd and the new qpc against the old qpcd, and with
// an old and a new client in the same group. Every binary is a real
// process over QUIC on loopback.
func TestCompatLifecycle(t *testing.T) {
	needOld(t)
	type combo struct{ server, alice, bob release }
	combos := []combo{{newRel, oldRel, oldRel}, {oldRel, newRel, newRel}}
	if full() {
		combos = append(combos, combo{newRel, oldRel, newRel}, combo{oldRel, newRel, oldRel})
	}
	for _, backend := range backends(t) {
		for _, c := range combos {
			name := fmt.Sprintf("%s/qpcd=%s,alice=%s,bob=%s", backend, short(c.server), short(c.alice), short(c.bob))
			t.Run(name, func(t *testing.T) {
				begin := time.Now()
				s := newServer(t, backend, "QPC_AUTH_ACCESS_TOKEN_TTL="+accessTTL)
				s.start(c.server)
				alice, bob := newUser(t, "alice", c.alice), newUser(t, "bob", c.bob)
				refreshes := lifecycle(t, s, alice, bob)
				s.stop()
				figure(t, "lifecycle passed in %s (%.0f token refreshes counted by qpcd)", time.Since(begin).Round(100*time.Millisecond), refreshes)
			})
		}
	}
}

// short names a release in subtest names: old or new.
func short(r release) string { return strings.Fields(r.name)[0] }

// lifecycle runs the client lifecycle between alice and bob through s and
// returns how many Refresh calls qpcd counted.
func lifecycle(t *testing.T, s *server, alice, bob *user) float64 {
	t.Helper()
	for _, u := range []*user{alice, bob} {
		u.ok("init", "--server", s.listen, "--pin", s.pin)
		if out := u.ok("register", u.name); !strings.Contains(out, "registered "+u.name) {
			t.Fatalf("%s qpc register %s: %q", u.rel.name, u.name, out)
		}
	}
	if l := alice.jsonOK("login"); len(l) != 1 || l[0]["logged_in"] != true || l[0]["account"] != "alice" {
		t.Fatalf("%s qpc login: %v", alice.rel.name, l)
	}
	if w := bob.jsonOK("whoami"); len(w) != 1 || w[0]["account"] != "bob" {
		t.Fatalf("%s qpc whoami: %v", bob.rel.name, w)
	}
	for _, u := range []*user{alice, bob} {
		devs := u.jsonOK("devices")
		if len(devs) != 1 || devs[0]["this_device"] != true || devs[0]["status"] != "active" {
			t.Fatalf("%s qpc devices (%s): %v", u.rel.name, u.name, devs)
		}
		if k := u.jsonOK("keys"); len(k) != 1 || k[0]["last_resort"] != true {
			t.Fatalf("%s qpc keys (%s): %v", u.rel.name, u.name, k)
		}
	}

	// A group: alice creates it and adds bob; messages both ways. On the
	// new qpcd joining is by consent: bob is invited and must accept, which
	// the old qpc cannot do (docs/protocol.md, "Compatibility"). The old
	// qpc meets the invitation without failing and reads nothing; bob then
	// upgrades his qpc (the new one opens his home) and accepts.
	consent := s.rel.name == newRel.name
	alice.ok("group", "create", "team")
	alice.ok("group", "add", "team", "bob")
	if consent && bob.rel.name != newRel.name {
		r := bob.run("--json", "recv")
		if r.code != 0 {
			t.Fatalf("%s qpc recv with an invitation waiting: exit %d, stderr %q", bob.rel.name, r.code, r.stderr)
		}
		if tx := texts(jsonLines(t, r.stdout)); len(tx) != 0 {
			t.Fatalf("%s qpc recv printed %q before accepting", bob.rel.name, tx)
		}
		bob.rel = newRel
	}
	if consent {
		bob.acceptInvitations()
	}
	fromAlice := "hello bob from " + alice.rel.name
	alice.ok("send", "team", fromAlice)
	bob.recvUntil(fromAlice)
	fromBob := "hello alice from " + bob.rel.name
	bob.ok("send", "team", fromBob)
	alice.recvUntil(fromBob)
	for _, u := range []*user{alice, bob} {
		if ms := u.jsonOK("group", "members", "team"); len(ms) != 2 {
			t.Fatalf("%s qpc group members (%s): %v", u.rel.name, u.name, ms)
		}
	}

	// A DM both ways.
	if d := alice.jsonOK("dm", "bob"); len(d) != 1 || d[0]["channel"] != "@bob" {
		t.Fatalf("%s qpc dm bob: %v", alice.rel.name, d)
	}
	alice.ok("send", "@bob", "just us")
	if consent {
		bob.acceptInvitations() // the DM is an invitation too
	}
	bob.recvUntil("just us")
	bob.ok("send", "@alice", "just us, back")
	alice.recvUntil("just us, back")

	// History: every message once, on both sides.
	for _, u := range []*user{alice, bob} {
		h := texts(u.jsonOK("history", "team"))
		if count(h, fromAlice) != 1 || count(h, fromBob) != 1 {
			t.Fatalf("%s qpc history team (%s): %q", u.rel.name, u.name, h)
		}
	}
	if h := texts(alice.jsonOK("history", "@bob")); count(h, "just us") != 1 || count(h, "just us, back") != 1 {
		t.Fatalf("%s qpc history @bob: %q", alice.rel.name, h)
	}

	// Token refresh: once bob's access token has expired (its TTL is
	// accessTTL), his next command refreshes it, which qpcd counts; then a
	// fresh login.
	bob.ok("login")
	loggedIn := time.Now()
	ttl, err := time.ParseDuration(accessTTL)
	if err != nil {
		t.Fatal(err)
	}
	before := s.rpcCount(t, "Refresh")
	testutil.WaitFor(t, time.Minute, 500*time.Millisecond, "bob's access token refreshed after "+accessTTL, func() bool {
		bob.ok("whoami")
		return time.Since(loggedIn) > ttl && s.rpcCount(t, "Refresh") > before
	})
	bob.ok("login")
	bob.ok("send", "team", "after refresh")
	alice.recvUntil("after refresh")
	return s.rpcCount(t, "Refresh")
}

// TestCompatNewClientDeviceChangeOnOldServer: adding a device needs the
// ReauthChallenge method, which the old qpcd does not have. The new qpc
// fails at once with a typed error naming the method (NOT_FOUND "unknown
// method"), exit 1, no hang; the account is unchanged.
func TestCompatNewClientDeviceChangeOnOldServer(t *testing.T) {
	needOld(t)
	s := newServer(t, backends(t)[0])
	s.start(oldRel)
	alice := newUser(t, "alice", newRel)
	alice.ok("init", "--server", s.listen, "--pin", s.pin)
	alice.ok("register", "alice")
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	r := alice.run("--timeout", "30s", "devices", "add", hex.EncodeToString(pub), "--name", "laptop")
	if r.code != 1 || !strings.Contains(r.stderr, `unknown method "ReauthChallenge"`) || !strings.Contains(r.stderr, "server is older than this client") || r.took > 20*time.Second {
		t.Fatalf("new qpc devices add on the old qpcd: exit %d after %s, stderr %q; want exit 1 at once naming the unknown method", r.code, r.took, r.stderr)
	}
	if devs := alice.jsonOK("devices"); len(devs) != 1 {
		t.Fatalf("devices after the refused add: %v", devs)
	}
	figure(t, "refused in %s: %s", r.took.Round(time.Millisecond), strings.TrimSpace(r.stderr))
	s.stop()
}

// TestCompatOldClientAccountEvent: the new qpcd writes a device event
// (inbox kind ACCOUNT_EVENT, unknown to the old client) into the inbox of
// the account's other devices when a device is added or revoked. The old
// qpc, which cannot add devices itself, must take such an item in its
// stride: recv succeeds, and messages keep flowing.
//
// The old device's home is copied and opened with the new qpc (the same
// device, upgraded on another terminal), which adds a second device with
// re-authentication; the operator then revokes that device with qpcctl,
// which notifies the old device.
func TestCompatOldClientAccountEvent(t *testing.T) {
	needOld(t)
	s := newServer(t, backends(t)[0])
	s.start(newRel)
	// Bob uses the new qpc: joining is by consent on the new qpcd, and only
	// the new qpc accepts (the old client under test is alice's).
	alice, bob := newUser(t, "alice", oldRel), newUser(t, "bob", newRel)
	for _, u := range []*user{alice, bob} {
		u.ok("init", "--server", s.listen, "--pin", s.pin)
		u.ok("register", u.name)
	}
	alice.ok("group", "create", "team")
	alice.ok("group", "add", "team", "bob")
	bob.acceptInvitations()
	alice.ok("send", "team", "welcome")
	bob.recvUntil("welcome")

	upgraded := newUser(t, "alice-upgraded", newRel)
	copyDir(t, alice.home, upgraded.home)
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	added := upgraded.jsonOK("devices", "add", hex.EncodeToString(pub), "--name", "tablet")
	if len(added) != 1 || added[0]["device_id"] == nil {
		t.Fatalf("new qpc devices add: %v", added)
	}
	s.qpcctl(t, newRel, "devices", "revoke", fmt.Sprint(added[0]["device_id"]))

	// The old client meets the event: recv exits 0 and prints no message.
	r := alice.run("--json", "recv")
	if r.code != 0 {
		t.Fatalf("old qpc recv with a device event waiting: exit %d, stderr %q", r.code, r.stderr)
	}
	if tx := texts(jsonLines(t, r.stdout)); len(tx) != 0 {
		t.Fatalf("old qpc recv printed %q for a device event", tx)
	}
	devs := alice.jsonOK("devices")
	if len(devs) != 2 {
		t.Fatalf("old qpc devices after add and revoke: %v (want alice's device and the revoked one)", devs)
	}
	bob.ok("send", "team", "still here")
	alice.recvUntil("still here")
	alice.ok("send", "team", "me too")
	bob.recvUntil("me too")
	s.stop()
}

// TestCompatNewClientBatchOnOldServer: the new qpc flushes messages that
// waited in its outbox with EnqueueBatch. The old qpcd does not know the
// method (NOT_FOUND "unknown method"); the new qpc then sends each message
// with Enqueue, and every one arrives once, in order. Against the new qpcd
// the same flush is one EnqueueBatch and no Enqueue, so the test sees
// which path was taken. (The old qpc never calls the method: its side is
// TestCompatLifecycle.)
func TestCompatNewClientBatchOnOldServer(t *testing.T) {
	needOld(t)
	for _, srvRel := range []release{oldRel, newRel} {
		t.Run("qpcd="+short(srvRel), func(t *testing.T) {
			s := newServer(t, backends(t)[0])
			s.start(srvRel)
			alice, bob := newUser(t, "alice", newRel), newUser(t, "bob", newRel)
			for _, u := range []*user{alice, bob} {
				u.ok("init", "--server", s.listen, "--pin", s.pin)
				u.ok("register", u.name)
			}
			alice.ok("group", "create", "team")
			alice.ok("group", "add", "team", "bob")
			if srvRel.name == newRel.name {
				bob.acceptInvitations()
			}
			alice.ok("send", "team", "before")
			bob.recvUntil("before")

			s.stop()
			want := []string{"queued 1", "queued 2", "queued 3", "queued 4"}
			for _, text := range want {
				alice.run("--timeout", "3s", "send", "team", text)
			}
			pending := 0
			for _, e := range alice.jsonOK("outbox") {
				if e["status"] == "pending" {
					pending++
				}
			}
			if pending != len(want) {
				t.Fatalf("%d messages pending in the outbox after %d sends with qpcd stopped, want all of them", pending, len(want))
			}
			s.start(srvRel)
			enq0, batch0 := s.rpcCount(t, "Enqueue"), s.rpcCount(t, "EnqueueBatch")
			alice.ok("send", "team", "after")
			want = append(want, "after")
			got := bob.recvUntil(want...)
			last := -1
			for _, w := range want {
				i := indexOf(got, w)
				if count(got, w) != 1 || i < last {
					t.Fatalf("bob received %q; want each of %q once, in order", got, want)
				}
				last = i
			}
			enq, batch := s.rpcCount(t, "Enqueue")-enq0, s.rpcCount(t, "EnqueueBatch")-batch0
			if srvRel.name == newRel.name && (batch != 1 || enq != 0) {
				t.Fatalf("new qpcd: the flush of 5 pending messages made %v EnqueueBatch and %v Enqueue calls; want one batch", batch, enq)
			}
			if srvRel.name == oldRel.name && enq != 5 {
				t.Fatalf("old qpcd: the flush of 5 pending messages made %v Enqueue calls; want 5 (one each, after the unknown method)", enq)
			}
			figure(t, "qpcd=%s: 5 pending messages flushed with %v EnqueueBatch and %v Enqueue calls", short(srvRel), batch, enq)
			s.stop()
		})
	}
}

func indexOf(list []string, s string) int {
	for i, v := range list {
		if v == s {
			return i
		}
	}
	return -1
}

// TestCompatKeptStreams: a current client asks every call to keep its
// stream (Request.keep_stream). The old qpcd ignores the field, answers
// and closes its side as it always did; the client then closes its own,
// stops asking on that connection, and every call still succeeds. The
// new qpcd keeps the stream and the calls reuse it.
func TestCompatKeptStreams(t *testing.T) {
	needOld(t)
	for _, srvRel := range []release{oldRel, newRel} {
		t.Run("qpcd="+short(srvRel), func(t *testing.T) {
			s := newServer(t, backends(t)[0])
			s.start(srvRel)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			c, err := rpcclient.Dial(ctx, s.listen, transport.DialOptions{PinSHA256: s.pin})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			for i := range 5 {
				echo := fmt.Sprintf("call %d", i)
				var pong qpcv1.PingResponse
				if err := c.Call(ctx, "Ping", "", &qpcv1.PingRequest{Echo: echo}, &pong); err != nil || pong.GetEcho() != echo {
					t.Fatalf("Ping %d: %v (echo %q)", i, err, pong.GetEcho())
				}
			}
			if want := srvRel.name == newRel.name; c.StreamsKept() != want {
				t.Fatalf("streams kept = %v against qpcd %s, want %v", c.StreamsKept(), short(srvRel), want)
			}
			figure(t, "qpcd=%s: 5 calls, streams kept: %v", short(srvRel), c.StreamsKept())
			s.stop()
		})
	}
}
