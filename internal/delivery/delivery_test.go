package delivery

import (
	"bytes"
	"context"
	"crypto/rand"
	"database/sql"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	dt "github.com/quicprochat/quicprochat/internal/delivery/deliverytest"
	"github.com/quicprochat/quicprochat/internal/mls"
	"github.com/quicprochat/quicprochat/internal/store"
	"github.com/quicprochat/quicprochat/internal/store/storetest"
	waitutil "github.com/quicprochat/quicprochat/internal/testutil"
	"github.com/quicprochat/quicprochat/internal/wire/qpcv1"
	"google.golang.org/protobuf/proto"
)

type fakeDir struct {
	mu       sync.Mutex
	accounts map[string]Account
	devices  map[string]Device
}

func (f *fakeDir) AccountByName(_ context.Context, name string) (Account, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	a, ok := f.accounts[name]
	if !ok {
		return Account{}, fmt.Errorf("%w: %s", ErrUnknownAccount, name)
	}
	return a, nil
}

func (f *fakeDir) AccountByID(_ context.Context, id string) (Account, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, a := range f.accounts {
		if a.ID == id {
			return a, nil
		}
	}
	return Account{}, fmt.Errorf("%w: %s", ErrUnknownAccount, id)
}

func (f *fakeDir) Devices(_ context.Context, accountID string) ([]Device, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []Device
	for _, d := range f.devices {
		if d.AccountID == accountID {
			out = append(out, d)
		}
	}
	return out, nil
}

func (f *fakeDir) Device(_ context.Context, id string) (Device, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	d, ok := f.devices[id]
	if !ok {
		return Device{}, fmt.Errorf("%w: device %s", ErrUnknownAccount, id)
	}
	return d, nil
}

// user is one device of an account.
type user struct {
	Caller
	name string
}

func (f *fakeDir) add(name, device string) user {
	f.mu.Lock()
	defer f.mu.Unlock()
	a, ok := f.accounts[name]
	if !ok {
		a = Account{ID: "acct-" + name, Name: name, Active: true}
		f.accounts[name] = a
	}
	f.devices[device] = Device{ID: device, AccountID: a.ID, Active: true}
	return user{Caller: Caller{AccountID: a.ID, DeviceID: device}, name: name}
}

type clock struct{ ns atomic.Int64 }

func newClock() *clock {
	c := &clock{}
	c.ns.Store(time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC).UnixNano())
	return c
}
func (c *clock) Now() time.Time          { return time.Unix(0, c.ns.Load()) }
func (c *clock) Advance(d time.Duration) { c.ns.Add(int64(d)) }

type env struct {
	svc   *Service
	db    *store.DB
	dir   *fakeDir
	clock *clock
	reg   *prometheus.Registry
}

func newEnv(t *testing.T, mut func(*Options)) *env {
	t.Helper()
	return newEnvOn(t, storetest.Open(t), mut)
}

// newEnvOn is newEnv on an open database (the caller closes it).
func newEnvOn(t *testing.T, db *store.DB, mut func(*Options)) *env {
	t.Helper()
	e := &env{db: db, dir: &fakeDir{accounts: map[string]Account{}, devices: map[string]Device{}}, clock: newClock(), reg: prometheus.NewRegistry()}
	o := Options{DB: db, Directory: e.dir, Now: e.clock.Now, EpochsBehind: 2, SweepInterval: -1, Registry: e.reg, MaxPayload: 64 << 10}
	if mut != nil {
		mut(&o)
	}
	var err error
	e.svc, err = New(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.svc.Close() })
	return e
}

var ctx = context.Background()

func groupID() []byte {
	g := make([]byte, GroupIDSize)
	_, _ = rand.Read(g)
	return g
}

var msgN atomic.Int64

func newMsgID() string { return fmt.Sprintf("msg-%d", msgN.Add(1)) }

// group creates a group channel owned by owner with the others added.
func (e *env) group(t *testing.T, owner user, others ...user) (Channel, []byte) {
	t.Helper()
	g := groupID()
	ch, created, err := e.svc.CreateGroup(ctx, owner.Caller, g, 0)
	if err != nil || !created {
		t.Fatalf("create group: %v %v", created, err)
	}
	var refs []MemberRef
	for _, o := range others {
		refs = append(refs, MemberRef{AccountName: o.name})
	}
	if len(refs) > 0 {
		if _, err = e.svc.AddMembers(ctx, owner.Caller, ch.ID, refs); err != nil {
			t.Fatal(err)
		}
		for _, o := range others {
			e.accept(t, o, ch.ID)
		}
		if ch, err = e.svc.channel(ctx, owner.Caller, ch.ID); err != nil {
			t.Fatal(err)
		}
		// The membership events and invitation notices are read and
		// acknowledged: tests start from a quiet channel at ch.HeadSeq.
		e.drainAll(t, append([]user{owner}, others...)...)
	}
	return ch, g
}

// accept accepts u's pending invitation to channel id.
func (e *env) accept(t *testing.T, u user, id []byte) {
	t.Helper()
	invs, err := e.svc.ListInvitations(ctx, u.Caller)
	if err != nil {
		t.Fatal(err)
	}
	for _, inv := range invs {
		if bytes.Equal(inv.ChannelID, id) {
			if _, _, err := e.svc.AcceptInvitation(ctx, u.Caller, inv.ID); err != nil {
				t.Fatal(err)
			}
			return
		}
	}
	t.Fatalf("%s has no invitation to the channel", u.name)
}

// drainAll fetches and acknowledges everything waiting for every device of
// the users' accounts.
func (e *env) drainAll(t *testing.T, us ...user) {
	t.Helper()
	for _, u := range us {
		devs, _ := e.dir.Devices(ctx, u.AccountID)
		for _, d := range devs {
			c := Caller{AccountID: u.AccountID, DeviceID: d.ID}
			for {
				b, err := e.svc.Fetch(ctx, c, MaxFetchLimit, After{})
				if err != nil {
					t.Fatal(err)
				}
				if b.empty() {
					break
				}
				top := map[string]uint64{}
				var inbox uint64
				for _, m := range b.Messages {
					top[string(m.ChannelID)] = max(top[string(m.ChannelID)], m.Seq)
				}
				for _, it := range b.Inbox {
					inbox = max(inbox, it.Seq)
				}
				var cs []Cursor
				for id, seq := range top {
					cs = append(cs, Cursor{ChannelID: []byte(id), Seq: seq})
				}
				if err := e.svc.Ack(ctx, c, cs, inbox); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
}

func (e *env) send(t *testing.T, u user, ch []byte, body []byte) Enqueued {
	t.Helper()
	r, err := e.svc.Enqueue(ctx, u.Caller, ch, newMsgID(), body, nil)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestGroupChannelEnqueueFetchAck(t *testing.T) {
	e := newEnv(t, nil)
	alice, bob := e.dir.add("alice", "a1"), e.dir.add("bob", "b1")
	bob2 := e.dir.add("bob", "b2")
	ch, g := e.group(t, alice, bob)
	if len(ch.Members) != 2 || ch.Kind != KindGroup || !bytes.Equal(ch.GroupID, g) {
		t.Fatalf("channel %+v", ch)
	}
	// A second create by a member returns the same channel.
	again, created, err := e.svc.CreateGroup(ctx, bob.Caller, g, 0)
	if err != nil || created || !bytes.Equal(again.ID, ch.ID) {
		t.Fatalf("second create: %v %v", created, err)
	}
	base := ch.HeadSeq // the membership events
	for i := range 3 {
		if r := e.send(t, alice, ch.ID, dt.Application(g, 0, 100+i)); r.Seq != base+uint64(i+1) || r.Duplicate {
			t.Fatalf("enqueue %d: %+v", i, r)
		}
	}
	for _, dev := range []user{bob, bob2} {
		b, err := e.svc.Fetch(ctx, dev.Caller, 0, After{})
		if err != nil || len(b.Messages) != 3 || b.More {
			t.Fatalf("fetch %s: %+v %v", dev.DeviceID, b, err)
		}
		for i, m := range b.Messages {
			if m.Seq != base+uint64(i+1) || m.SenderAccount != alice.AccountID || m.SenderDevice != "a1" || len(m.Body) == 0 {
				t.Fatalf("message %d: %+v", i, m)
			}
		}
	}
	// Limit and More.
	b, _ := e.svc.Fetch(ctx, bob.Caller, 2, After{})
	if len(b.Messages) != 2 || !b.More {
		t.Fatalf("limited fetch: %d more=%v", len(b.Messages), b.More)
	}
	// Ack moves only bob's b1 cursor; b2 still sees everything.
	if err := e.svc.Ack(ctx, bob.Caller, []Cursor{{ChannelID: ch.ID, Seq: base + 2}}, 0); err != nil {
		t.Fatal(err)
	}
	if b, _ := e.svc.Fetch(ctx, bob.Caller, 0, After{}); len(b.Messages) != 1 || b.Messages[0].Seq != base+3 {
		t.Fatalf("after ack: %+v", b)
	}
	if b, _ := e.svc.Fetch(ctx, bob2.Caller, 0, After{}); len(b.Messages) != 3 {
		t.Fatalf("other device: %d", len(b.Messages))
	}
	// Cursors never go back and never pass the head.
	if err := e.svc.Ack(ctx, bob.Caller, []Cursor{{ChannelID: ch.ID, Seq: base + 1}}, 0); err != nil {
		t.Fatal(err)
	}
	if err := e.svc.Ack(ctx, bob.Caller, []Cursor{{ChannelID: ch.ID, Seq: 1000}}, 0); err != nil {
		t.Fatal(err)
	}
	e.send(t, alice, ch.ID, dt.Application(g, 0, 10))
	if b, _ := e.svc.Fetch(ctx, bob.Caller, 0, After{}); len(b.Messages) != 1 || b.Messages[0].Seq != base+4 {
		t.Fatalf("ack past head skipped a later message: %+v", b)
	}
	// Read-ahead positions: bob2 holds 1..3 without acknowledging them.
	if b, _ := e.svc.Fetch(ctx, bob2.Caller, 0, After{Channels: map[string]uint64{string(ch.ID): base + 3}}); len(b.Messages) != 1 || b.Messages[0].Seq != base+4 {
		t.Fatalf("fetch after 3: %+v", b)
	}
	if b, _ := e.svc.Fetch(ctx, bob2.Caller, 0, After{Channels: map[string]uint64{string(ch.ID): 1 << 63}}); len(b.Messages) != 0 {
		t.Fatalf("a position beyond the head wrapped around: %+v", b)
	}
	list, err := e.svc.ListChannels(ctx, bob2.Caller)
	if err != nil || len(list) != 1 || list[0].HeadSeq != base+4 {
		t.Fatalf("list %+v %v", list, err)
	}
}

func TestOneRowPerMessageHoweverManyMembers(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.InvitationsPerHour = 1000 })
	owner := e.dir.add("owner", "o1")
	var members []user
	for i := range 1000 {
		members = append(members, e.dir.add(fmt.Sprintf("m%d", i), fmt.Sprintf("d%d", i)))
	}
	g := groupID()
	ch, _, err := e.svc.CreateGroup(ctx, owner.Caller, g, 0)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < len(members); i += 100 {
		var refs []MemberRef
		for _, m := range members[i : i+100] {
			refs = append(refs, MemberRef{AccountName: m.name})
		}
		if _, err := e.svc.AddMembers(ctx, owner.Caller, ch.ID, refs); err != nil {
			t.Fatal(err)
		}
	}
	for _, m := range members {
		e.accept(t, m, ch.ID)
	}
	var before int
	if err := e.db.ReadTx(ctx, func(tx *sql.Tx) error {
		return tx.QueryRow(`SELECT COUNT(*) FROM messages`).Scan(&before)
	}); err != nil {
		t.Fatal(err)
	}
	e.send(t, owner, ch.ID, dt.Application(g, 0, 1024))
	var rows int
	if err := e.db.ReadTx(ctx, func(tx *sql.Tx) error {
		return tx.QueryRow(`SELECT COUNT(*) FROM messages`).Scan(&rows)
	}); err != nil || rows != before+1 {
		t.Fatalf("messages rows = %d (%v), want 1", rows, err)
	}
	if b, _ := e.svc.Fetch(ctx, members[999].Caller, 0, After{Channels: map[string]uint64{string(ch.ID): uint64(before)}}); len(b.Messages) != 1 {
		t.Fatal("member 999 does not see the message")
	}
}

func TestDMChannel(t *testing.T) {
	e := newEnv(t, nil)
	alice, bob, carol := e.dir.add("alice", "a1"), e.dir.add("bob", "b1"), e.dir.add("carol", "c1")
	g := groupID()
	ch, created, err := e.svc.CreateDM(ctx, alice.Caller, "bob", g, time.Hour)
	if err != nil || !created || ch.Kind != KindDM || ch.TTL != time.Hour || len(ch.Members) != 1 || len(ch.Invited) != 1 || ch.Invited[0].AccountID != bob.AccountID {
		t.Fatalf("create DM: %+v %v %v", ch, created, err)
	}
	if !bytes.Equal(ch.ID, DMChannelID(bob.AccountID, alice.AccountID)) {
		t.Fatal("DM id is not derived from the two accounts")
	}
	// The peer is invited: it reads nothing until it accepts, and its own
	// create points it at the invitation.
	if _, _, err := e.svc.CreateDM(ctx, bob.Caller, "alice", groupID(), 0); !errors.Is(err, ErrChannelExists) {
		t.Fatalf("invitee's create: %v", err)
	}
	e.send(t, alice, ch.ID, dt.Application(g, 0, 10))
	if b, _ := e.svc.Fetch(ctx, bob.Caller, 0, After{}); len(b.Messages) != 0 {
		t.Fatalf("the DM's invitee read it: %+v", b)
	}
	e.accept(t, bob, ch.ID)
	e.drainAll(t, alice, bob)
	// A second create, from either side, returns the same channel.
	ch2, created, err := e.svc.CreateDM(ctx, bob.Caller, "alice", groupID(), 0)
	if err != nil || created || !bytes.Equal(ch2.ID, ch.ID) || !bytes.Equal(ch2.GroupID, g) {
		t.Fatalf("second create: %+v %v %v", ch2, created, err)
	}
	if _, _, err := e.svc.CreateDM(ctx, alice.Caller, "alice", groupID(), 0); !errors.Is(err, ErrInvalidRequest) {
		t.Fatalf("DM with self: %v", err)
	}
	if _, _, err := e.svc.CreateDM(ctx, alice.Caller, "nobody", groupID(), 0); !errors.Is(err, ErrUnknownAccount) {
		t.Fatalf("DM with unknown: %v", err)
	}
	if _, err := e.svc.AddMembers(ctx, alice.Caller, ch.ID, []MemberRef{{AccountName: "carol"}}); !errors.Is(err, ErrInvalidRequest) {
		t.Fatalf("add to DM: %v", err)
	}
	if _, err := e.svc.Enqueue(ctx, carol.Caller, ch.ID, newMsgID(), dt.Application(g, 0, 10), nil); !errors.Is(err, ErrNotMember) {
		t.Fatalf("carol posting in a DM: %v", err)
	}
	// The DM's TTL (1 h) bounds its messages, below the 7-day retention.
	e.send(t, alice, ch.ID, dt.Application(g, 0, 10))
	e.clock.Advance(59 * time.Minute)
	if b, _ := e.svc.Fetch(ctx, bob.Caller, 0, After{}); len(b.Messages) != 1 {
		t.Fatal("DM message missing before its TTL")
	}
	e.clock.Advance(2 * time.Minute)
	if b, _ := e.svc.Fetch(ctx, bob.Caller, 0, After{}); len(b.Messages) != 0 {
		t.Fatal("DM message returned after its TTL")
	}
	// The message and the two membership events before it.
	if n, err := e.svc.Sweep(ctx); err != nil || n != 4 {
		t.Fatalf("sweep: %d %v", n, err)
	}
}

func TestIdempotentEnqueue(t *testing.T) {
	e := newEnv(t, nil)
	alice, bob := e.dir.add("alice", "a1"), e.dir.add("bob", "b1")
	ch, g := e.group(t, alice, bob)
	body := dt.Application(g, 0, 50)
	first, err := e.svc.Enqueue(ctx, alice.Caller, ch.ID, "uuid-1", body, nil)
	if err != nil {
		t.Fatal(err)
	}
	e.send(t, alice, ch.ID, dt.Application(g, 0, 50))
	again, err := e.svc.Enqueue(ctx, alice.Caller, ch.ID, "uuid-1", body, nil)
	if err != nil || !again.Duplicate || again.Seq != first.Seq {
		t.Fatalf("replay: %+v %v", again, err)
	}
	if b, _ := e.svc.Fetch(ctx, bob.Caller, 0, After{}); len(b.Messages) != 2 {
		t.Fatalf("stored twice: %d messages", len(b.Messages))
	}
	if _, err := e.svc.Enqueue(ctx, bob.Caller, ch.ID, "uuid-1", body, nil); !errors.Is(err, ErrMessageIDConflict) {
		t.Fatalf("another sender reusing the id: %v", err)
	}
	// A replayed commit whose first attempt won is a duplicate, not stale.
	c1, err := e.svc.Enqueue(ctx, alice.Caller, ch.ID, "commit-1", dt.Commit(g, 0), nil)
	if err != nil {
		t.Fatal(err)
	}
	c2, err := e.svc.Enqueue(ctx, alice.Caller, ch.ID, "commit-1", dt.Commit(g, 0), nil)
	if err != nil || !c2.Duplicate || c2.Seq != c1.Seq || c2.Epoch != 1 {
		t.Fatalf("replayed commit: %+v %v", c2, err)
	}
}

func TestNonMember(t *testing.T) {
	e := newEnv(t, nil)
	alice, mallory := e.dir.add("alice", "a1"), e.dir.add("mallory", "m1")
	ch, g := e.group(t, alice)
	e.send(t, alice, ch.ID, dt.Application(g, 0, 10))
	if _, err := e.svc.Enqueue(ctx, mallory.Caller, ch.ID, newMsgID(), dt.Application(g, 0, 10), nil); !errors.Is(err, ErrNotMember) {
		t.Fatalf("post: %v", err)
	}
	if b, err := e.svc.Fetch(ctx, mallory.Caller, 0, After{}); err != nil || !b.empty() {
		t.Fatalf("read: %+v %v", b, err)
	}
	if err := e.svc.Ack(ctx, mallory.Caller, []Cursor{{ChannelID: ch.ID, Seq: 1}}, 0); !errors.Is(err, ErrNotMember) {
		t.Fatalf("ack: %v", err)
	}
	if _, _, err := e.svc.GroupInfo(ctx, mallory.Caller, ch.ID); !errors.Is(err, ErrNotMember) {
		t.Fatalf("group info: %v", err)
	}
	if _, err := e.svc.AddMembers(ctx, mallory.Caller, ch.ID, []MemberRef{{AccountName: "mallory"}}); !errors.Is(err, ErrNotMember) {
		t.Fatalf("self-add: %v", err)
	}
	if _, _, err := e.svc.CreateGroup(ctx, mallory.Caller, g, 0); !errors.Is(err, ErrChannelExists) {
		t.Fatalf("create over an existing group: %v", err)
	}
	unknown := make([]byte, ChannelIDSize)
	// An unknown channel looks the same as one the caller is not in.
	if _, err := e.svc.Enqueue(ctx, alice.Caller, unknown, newMsgID(), dt.Application(g, 0, 10), nil); !errors.Is(err, ErrNotMember) {
		t.Fatalf("unknown channel: %v", err)
	}
	if v := testutil.ToFloat64(e.svc.metrics.denied.WithLabelValues("enqueue")); v != 2 {
		t.Fatalf("denied{enqueue} = %v", v)
	}
}

func TestMembershipChanges(t *testing.T) {
	e := newEnv(t, nil)
	alice, bob, carol := e.dir.add("alice", "a1"), e.dir.add("bob", "b1"), e.dir.add("carol", "c1")
	carol2 := e.dir.add("carol", "c2")
	ch, g := e.group(t, alice, bob)
	e.send(t, alice, ch.ID, dt.Application(g, 0, 10))
	// Any member invites; the invitee reads nothing until it accepts, then
	// from the point it was invited on.
	if _, err := e.svc.AddMembers(ctx, bob.Caller, ch.ID, []MemberRef{{AccountName: "carol", DeviceID: "c1"}}); err != nil {
		t.Fatal(err)
	}
	if b, _ := e.svc.Fetch(ctx, carol.Caller, 0, After{}); len(b.Messages) != 0 || len(b.Inbox) != 1 || b.Inbox[0].Kind != InboxMembership {
		t.Fatalf("invitee: %+v", b)
	}
	e.accept(t, carol, ch.ID)
	sent := e.send(t, alice, ch.ID, dt.Application(g, 0, 10))
	b, _ := e.svc.Fetch(ctx, carol.Caller, 0, After{})
	if len(b.Messages) != 3 || !b.Messages[0].IsEvent() || !b.Messages[1].IsEvent() || b.Messages[2].Seq != sent.Seq {
		t.Fatalf("carol (invited, joined, then the message): %+v", b)
	}
	// Device membership: carol's other device is not a member.
	if _, err := e.svc.Enqueue(ctx, carol2.Caller, ch.ID, newMsgID(), dt.Application(g, 0, 10), nil); !errors.Is(err, ErrNotMember) {
		t.Fatalf("carol's second device: %v", err)
	}
	if _, err := e.svc.AddMembers(ctx, bob.Caller, ch.ID, []MemberRef{{AccountName: "carol", DeviceID: "b1"}}); !errors.Is(err, ErrUnknownAccount) {
		t.Fatalf("adding another account's device: %v", err)
	}
	// A plain member cannot remove another; the admin (the creator) can; a
	// member may leave.
	if _, err := e.svc.RemoveMembers(ctx, bob.Caller, ch.ID, []MemberRef{{AccountName: "carol"}}); !errors.Is(err, ErrNotAllowed) {
		t.Fatalf("bob removes carol: %v", err)
	}
	if n, err := e.svc.RemoveMembers(ctx, alice.Caller, ch.ID, []MemberRef{{AccountName: "carol"}}); err != nil || n != 1 {
		t.Fatalf("remove carol: %d %v", n, err)
	}
	if _, err := e.svc.Enqueue(ctx, carol.Caller, ch.ID, newMsgID(), dt.Application(g, 0, 10), nil); !errors.Is(err, ErrNotMember) {
		t.Fatalf("removed member posting: %v", err)
	}
	if n, err := e.svc.RemoveMembers(ctx, bob.Caller, ch.ID, []MemberRef{{AccountName: "bob"}}); err != nil || n != 1 {
		t.Fatalf("leave: %d %v", n, err)
	}
	if b, _ := e.svc.Fetch(ctx, bob.Caller, 0, After{}); len(b.Messages) != 0 {
		t.Fatal("a member that left still reads")
	}
	if _, err := e.svc.RemoveMembers(ctx, alice.Caller, ch.ID, []MemberRef{{AccountName: "bob"}}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("removing a non-member: %v", err)
	}
}

func TestEpochFencing(t *testing.T) {
	e := newEnv(t, nil)
	alice, bob := e.dir.add("alice", "a1"), e.dir.add("bob", "b1")
	ch, g := e.group(t, alice, bob)
	r, err := e.svc.Enqueue(ctx, alice.Caller, ch.ID, newMsgID(), dt.Commit(g, 0), dt.GroupInfo(g, 1))
	if err != nil || r.Epoch != 1 {
		t.Fatalf("commit at 0: %+v %v", r, err)
	}
	if _, err := e.svc.Enqueue(ctx, bob.Caller, ch.ID, newMsgID(), dt.Commit(g, 0), nil); !errors.Is(err, ErrStaleEpoch) {
		t.Fatalf("second commit for epoch 0: %v", err)
	}
	if _, err := e.svc.Enqueue(ctx, bob.Caller, ch.ID, newMsgID(), dt.Commit(g, 5), nil); !errors.Is(err, ErrStaleEpoch) {
		t.Fatalf("commit from the future: %v", err)
	}
	gi, epoch, err := e.svc.GroupInfo(ctx, bob.Caller, ch.ID)
	if err != nil || epoch != 1 || !bytes.Equal(gi, dt.GroupInfo(g, 1)) {
		t.Fatalf("group info: %v %d", err, epoch)
	}
	// Private commits count too.
	for ep := uint64(1); ep < 4; ep++ {
		if _, err := e.svc.Enqueue(ctx, alice.Caller, ch.ID, newMsgID(), dt.Private(g, ep, mls.ContentTypeCommit, 50), nil); err != nil {
			t.Fatalf("commit at %d: %v", ep, err)
		}
	}
	// Now at epoch 4: application messages for 2..4 pass, 1 and 5 do not.
	for _, c := range []struct {
		epoch uint64
		ok    bool
	}{{4, true}, {3, true}, {2, true}, {1, false}, {5, false}} {
		_, err := e.svc.Enqueue(ctx, bob.Caller, ch.ID, newMsgID(), dt.Application(g, c.epoch, 10), nil)
		if c.ok != (err == nil) || (!c.ok && !errors.Is(err, ErrStaleEpoch)) {
			t.Fatalf("application at epoch %d: %v", c.epoch, err)
		}
	}
	if _, err := e.svc.Enqueue(ctx, bob.Caller, ch.ID, newMsgID(), dt.Private(g, 3, mls.ContentTypeProposal, 10), nil); err != nil {
		t.Fatalf("proposal one epoch behind: %v", err)
	}
}

func TestConcurrentCommitsExactlyOneWins(t *testing.T) {
	e := newEnv(t, nil)
	owner := e.dir.add("owner", "o0")
	var users []user
	for i := range 8 {
		users = append(users, e.dir.add(fmt.Sprintf("u%d", i), fmt.Sprintf("d%d", i)))
	}
	ch, g := e.group(t, owner, users...)
	for round := uint64(0); round < 3; round++ {
		var wins, stale atomic.Int32
		var wg sync.WaitGroup
		start := make(chan struct{})
		for _, u := range users {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				_, err := e.svc.Enqueue(ctx, u.Caller, ch.ID, newMsgID(), dt.Commit(g, round), nil)
				switch {
				case err == nil:
					wins.Add(1)
				case errors.Is(err, ErrStaleEpoch):
					stale.Add(1)
				default:
					t.Errorf("unexpected: %v", err)
				}
			}()
		}
		close(start)
		wg.Wait()
		if wins.Load() != 1 || stale.Load() != int32(len(users)-1) {
			t.Fatalf("round %d: %d winners, %d stale", round, wins.Load(), stale.Load())
		}
	}
}

func TestInvalidMessages(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.MaxPayload = 4096 })
	alice := e.dir.add("alice", "a1")
	ch, g := e.group(t, alice)
	cases := []struct {
		name     string
		msg, gi  []byte
		want     error
		wantKind string
	}{
		{"garbage", []byte{1, 2, 3}, nil, ErrInvalidMessage, ""},
		{"truncated", dt.Application(g, 0, 10)[:20], nil, ErrInvalidMessage, ""},
		{"other group", dt.Application(groupID(), 0, 10), nil, ErrInvalidMessage, ""},
		{"welcome on a channel", dt.Welcome(), nil, ErrInvalidMessage, ""},
		{"group info on a channel", dt.GroupInfo(g, 0), nil, ErrInvalidMessage, ""},
		{"group info without commit", dt.Application(g, 0, 10), dt.GroupInfo(g, 0), ErrInvalidRequest, ""},
		{"group info for the wrong epoch", dt.Commit(g, 0), dt.GroupInfo(g, 0), ErrInvalidMessage, ""},
		{"group info of another group", dt.Commit(g, 0), dt.GroupInfo(groupID(), 1), ErrInvalidMessage, ""},
		{"oversized", dt.Application(g, 0, 5000), nil, ErrTooLarge, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if _, err := e.svc.Enqueue(ctx, alice.Caller, ch.ID, newMsgID(), c.msg, c.gi); !errors.Is(err, c.want) {
				t.Fatalf("got %v, want %v", err, c.want)
			}
		})
	}
	// Nothing was stored and the epoch did not move.
	if r := e.send(t, alice, ch.ID, dt.Commit(g, 0)); r.Seq != 1 || r.Epoch != 1 {
		t.Fatalf("after refusals: %+v", r)
	}
}

func TestInbox(t *testing.T) {
	e := newEnv(t, nil)
	alice, bob, mallory := e.dir.add("alice", "a1"), e.dir.add("bob", "b1"), e.dir.add("mallory", "m1")
	bob2 := e.dir.add("bob", "b2")
	ch, _ := e.group(t, alice, bob)
	welcome := dt.Welcome()
	n, err := e.svc.SendToInbox(ctx, alice.Caller, ch.ID, InboxWelcome, welcome,
		[]InboxRecipient{{"bob", "b1"}, {"bob", "b2"}, {"bob", "b1"}})
	if err != nil || n != 2 {
		t.Fatalf("send: %d %v", n, err)
	}
	e.svc.SendToInbox(ctx, alice.Caller, ch.ID, InboxOther, []byte("x"), []InboxRecipient{{"bob", "b1"}})
	b, err := e.svc.Fetch(ctx, bob.Caller, 0, After{})
	// Each inbox started with the invitation notice (acknowledged by e.group).
	if err != nil || len(b.Inbox) != 2 || b.Inbox[1].Seq != b.Inbox[0].Seq+1 || b.Inbox[0].Kind != InboxWelcome || !bytes.Equal(b.Inbox[0].Body, welcome) {
		t.Fatalf("bob's inbox: %+v %v", b, err)
	}
	first := b.Inbox[0].Seq
	if b, _ := e.svc.Fetch(ctx, bob.Caller, 1, After{}); len(b.Inbox) != 1 || !b.More {
		t.Fatalf("limited inbox fetch: %+v", b)
	}
	if err := e.svc.Ack(ctx, bob.Caller, nil, first); err != nil {
		t.Fatal(err)
	}
	if b, _ := e.svc.Fetch(ctx, bob.Caller, 0, After{}); len(b.Inbox) != 1 || b.Inbox[0].Seq != first+1 {
		t.Fatalf("after ack: %+v", b)
	}
	b2, _ := e.svc.Fetch(ctx, bob2.Caller, 0, After{})
	if len(b2.Inbox) != 1 {
		t.Fatal("b2's inbox is separate")
	}
	if b, _ := e.svc.Fetch(ctx, bob2.Caller, 0, After{Inbox: b2.Inbox[0].Seq}); len(b.Inbox) != 0 {
		t.Fatal("inbox read-ahead position ignored")
	}
	// Refusals: a non-member sender, a non-member recipient, a device of
	// another account, a WELCOME that is not one.
	if _, err := e.svc.SendToInbox(ctx, mallory.Caller, ch.ID, InboxOther, []byte("x"), []InboxRecipient{{"bob", "b1"}}); !errors.Is(err, ErrNotMember) {
		t.Fatalf("non-member sender: %v", err)
	}
	if _, err := e.svc.SendToInbox(ctx, alice.Caller, ch.ID, InboxOther, []byte("x"), []InboxRecipient{{"mallory", "m1"}}); !errors.Is(err, ErrNotMember) {
		t.Fatalf("non-member recipient: %v", err)
	}
	if _, err := e.svc.SendToInbox(ctx, alice.Caller, ch.ID, InboxOther, []byte("x"), []InboxRecipient{{"bob", "m1"}}); !errors.Is(err, ErrUnknownAccount) {
		t.Fatalf("another account's device: %v", err)
	}
	if _, err := e.svc.SendToInbox(ctx, alice.Caller, ch.ID, InboxWelcome, []byte("x"), []InboxRecipient{{"bob", "b1"}}); !errors.Is(err, ErrInvalidMessage) {
		t.Fatalf("fake welcome: %v", err)
	}
	// Inbox items expire with the retention.
	e.clock.Advance(8 * 24 * time.Hour)
	if b, _ := e.svc.Fetch(ctx, bob2.Caller, 0, After{}); len(b.Inbox) != 0 {
		t.Fatal("expired inbox item returned")
	}
}

func TestFetchWait(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.LongPollMax = time.Minute })
	alice, bob := e.dir.add("alice", "a1"), e.dir.add("bob", "b1")
	ch, g := e.group(t, alice, bob)
	type result struct {
		b   Batch
		err error
	}
	wait := func(u user) chan result {
		out := make(chan result, 1)
		go func() {
			b, err := e.svc.FetchWait(ctx, u.Caller, time.Minute, 0, After{}, nil)
			out <- result{b, err}
		}()
		return out
	}
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		waitutil.WaitFor(t, 10*time.Second, 2*time.Millisecond, what, cond)
	}
	// Many waiters, woken by one enqueue.
	var outs []chan result
	for range 5 {
		outs = append(outs, wait(bob))
	}
	waitFor("5 waiters", func() bool { return e.svc.hub.watching(channelKey(ch.ID)) == 5 })
	e.send(t, alice, ch.ID, dt.Application(g, 0, 10))
	for _, o := range outs {
		select {
		case r := <-o:
			if r.err != nil || len(r.b.Messages) != 1 {
				t.Fatalf("woken fetch: %+v %v", r.b, r.err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("waiter not woken by enqueue")
		}
	}
	// Something already waiting returns at once.
	if r := <-wait(bob); len(r.b.Messages) != 1 {
		t.Fatal("pending message not returned at once")
	}
	if err := e.svc.Ack(ctx, bob.Caller, []Cursor{{ChannelID: ch.ID, Seq: ch.HeadSeq + 1}}, 0); err != nil {
		t.Fatal(err)
	}
	// An inbox item wakes the device; a new channel wakes the account.
	o := wait(bob)
	waitFor("inbox waiter", func() bool { return e.svc.hub.watching(deviceKey(bob.DeviceID)) == 1 })
	if _, err := e.svc.SendToInbox(ctx, alice.Caller, ch.ID, InboxOther, []byte("hi"), []InboxRecipient{{"bob", "b1"}}); err != nil {
		t.Fatal(err)
	}
	r := <-o
	if len(r.b.Inbox) != 1 {
		t.Fatalf("inbox wake: %+v", r.b)
	}
	if err := e.svc.Ack(ctx, bob.Caller, nil, r.b.Inbox[0].Seq); err != nil {
		t.Fatal(err)
	}
	o = wait(bob)
	waitFor("channel-list waiter", func() bool { return e.svc.hub.watching(accountKey(bob.AccountID)) == 1 })
	ch2, g2 := e.group(t, alice, bob) // bob is added: his waiter learns the channel
	e.send(t, alice, ch2.ID, dt.Application(g2, 0, 10))
	if r := <-o; r.err != nil {
		t.Fatal(r.err)
	}
	if testutil.ToFloat64(e.svc.metrics.wakeups) < 7 {
		t.Fatalf("wakeups %v", testutil.ToFloat64(e.svc.metrics.wakeups))
	}
}

func TestFetchWaitTimeoutClipAndDrain(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.LongPollMax = 50 * time.Millisecond })
	bob := e.dir.add("bob", "b1")
	start := time.Now()
	b, err := e.svc.FetchWait(ctx, bob.Caller, time.Hour, 0, After{}, nil)
	if err != nil || !b.empty() {
		t.Fatalf("%+v %v", b, err)
	}
	if time.Since(start) > 10*time.Second {
		t.Fatal("the requested hour was not clipped to the cap")
	}
	e2 := newEnv(t, func(o *Options) { o.LongPollMax = time.Hour })
	bob = e2.dir.add("bob", "b1")
	drain := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		_, err := e2.svc.FetchWait(ctx, bob.Caller, time.Hour, 0, After{}, drain)
		done <- err
	}()
	close(drain)
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("draining did not end the long poll")
	}
	cctx, cancel := context.WithCancel(ctx)
	go func() {
		_, err := e2.svc.FetchWait(cctx, bob.Caller, time.Hour, 0, After{}, nil)
		done <- err
	}()
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled: %v", err)
	}
}

func TestRetention(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.Retention = 7 * 24 * time.Hour })
	alice, bob := e.dir.add("alice", "a1"), e.dir.add("bob", "b1")
	ch, g := e.group(t, alice, bob)
	e.send(t, alice, ch.ID, dt.Application(g, 0, 10))
	e.clock.Advance(6 * 24 * time.Hour)
	e.send(t, alice, ch.ID, dt.Application(g, 0, 10))
	if err := e.svc.Ack(ctx, alice.Caller, []Cursor{{ChannelID: ch.ID, Seq: 2}}, 0); err != nil {
		t.Fatal(err)
	}
	if err := e.svc.Ack(ctx, bob.Caller, []Cursor{{ChannelID: ch.ID, Seq: 0}}, 0); err != nil {
		t.Fatal(err)
	}
	if err := e.svc.RefreshStats(ctx); err != nil {
		t.Fatal(err)
	}
	if d := testutil.ToFloat64(e.svc.metrics.depth.WithLabelValues("group")); d != 2 {
		t.Fatalf("queue depth %v", d)
	}
	if a := testutil.ToFloat64(e.svc.metrics.oldest.WithLabelValues("group")); a != 6*24*3600 {
		t.Fatalf("oldest unfetched %v", a)
	}
	e.clock.Advance(24*time.Hour + time.Second)
	// Expired before the sweep: never returned; the gap in seq shows it.
	b, _ := e.svc.Fetch(ctx, bob.Caller, 0, After{})
	if len(b.Messages) != 1 || b.Messages[0].Seq != ch.HeadSeq+2 {
		t.Fatalf("after retention: %+v", b)
	}
	// The expired message and the membership events before it.
	if n, err := e.svc.Sweep(ctx); err != nil || n != int64(ch.HeadSeq)+1 {
		t.Fatalf("sweep: %d %v", n, err)
	}
	if v := testutil.ToFloat64(e.svc.metrics.expired.WithLabelValues("message")); v != float64(ch.HeadSeq)+1 {
		t.Fatalf("expired metric %v", v)
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
	if err := e.svc.Close(); err != nil {
		t.Fatal(err)
	}
}

// A fetch whose limit is filled by channel messages still says More when
// inbox items wait.
func TestMoreWhenInboxWaitsBehindMessages(t *testing.T) {
	e := newEnv(t, nil)
	alice, bob := e.dir.add("alice", "a1"), e.dir.add("bob", "b1")
	ch, g := e.group(t, alice, bob)
	e.send(t, alice, ch.ID, dt.Application(g, 0, 10))
	if _, err := e.svc.SendToInbox(ctx, alice.Caller, ch.ID, InboxOther, []byte("x"), []InboxRecipient{{"bob", "b1"}}); err != nil {
		t.Fatal(err)
	}
	b, err := e.svc.Fetch(ctx, bob.Caller, 1, After{})
	if err != nil || len(b.Messages) != 1 || len(b.Inbox) != 0 || !b.More {
		t.Fatalf("%+v %v", b, err)
	}
}

// v7ID makes a time-ordered message id created at t, as qpc does.
func v7ID(t *testing.T, at time.Time) string {
	t.Helper()
	u, err := uuid.NewV7FromReader(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ms := uint64(at.UnixMilli())
	for i := range 6 {
		u[i] = byte(ms >> (40 - 8*i))
	}
	return u.String()
}

// A message id replayed after its original was swept is not stored again
// when the id is time-ordered (UUIDv7): its age shows it. A fresh id for the
// same body is fine; an id of another form is only deduplicated while its
// original is stored (documented).
func TestExpiredMessageIDRefused(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.Retention = 7 * 24 * time.Hour })
	alice, bob := e.dir.add("alice", "a1"), e.dir.add("bob", "b1")
	ch, g := e.group(t, alice, bob)
	body := dt.Application(g, 0, 10)
	id := v7ID(t, e.clock.Now())
	first, err := e.svc.Enqueue(ctx, alice.Caller, ch.ID, id, body, nil)
	if err != nil {
		t.Fatal(err)
	}
	// Within the lifetime a replay is a duplicate.
	e.clock.Advance(3 * 24 * time.Hour)
	if again, err := e.svc.Enqueue(ctx, alice.Caller, ch.ID, id, body, nil); err != nil || !again.Duplicate || again.Seq != first.Seq {
		t.Fatalf("replay within the lifetime: %+v %v", again, err)
	}
	e.clock.Advance(4*24*time.Hour + time.Second)
	if n, err := e.svc.Sweep(ctx); err != nil || n != int64(ch.HeadSeq)+1 { // with the membership events
		t.Fatalf("sweep: %d %v", n, err)
	}
	if _, err := e.svc.Enqueue(ctx, alice.Caller, ch.ID, id, body, nil); !errors.Is(err, ErrMessageIDExpired) {
		t.Fatalf("replay after the original was swept: %v, want ErrMessageIDExpired", err)
	}
	// A sender whose clock lags by less than the allowance is not refused.
	if _, err := e.svc.Enqueue(ctx, alice.Caller, ch.ID, v7ID(t, e.clock.Now().Add(-7*24*time.Hour+2*idClockSkew)), body, nil); err != nil {
		t.Fatalf("id from a lagging clock: %v", err)
	}
	if _, err := e.svc.Enqueue(ctx, alice.Caller, ch.ID, v7ID(t, e.clock.Now()), body, nil); err != nil {
		t.Fatalf("fresh id: %v", err)
	}
	if b, _ := e.svc.Fetch(ctx, bob.Caller, 0, After{}); len(b.Messages) != 2 {
		t.Fatalf("bob sees %d messages, want the 2 new ones", len(b.Messages))
	}

	// A DM with a TTL shorter than the skew margin: fresh ids (and ones
	// from a clock lagging by less than half the TTL) are accepted; a replay
	// after the original expired is still refused.
	e.dir.add("carol", "c1")
	dm, _, err := e.svc.CreateDM(ctx, alice.Caller, "carol", groupID(), 20*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	dmBody := dt.Application(dm.GroupID, 0, 10)
	fresh := v7ID(t, e.clock.Now())
	for _, id := range []string{fresh, v7ID(t, e.clock.Now().Add(-9*time.Minute))} {
		if _, err := e.svc.Enqueue(ctx, alice.Caller, dm.ID, id, dmBody, nil); err != nil {
			t.Fatalf("v7 id on a 20-minute DM: %v", err)
		}
	}
	e.clock.Advance(21 * time.Minute)
	if _, err := e.svc.Sweep(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.Enqueue(ctx, alice.Caller, dm.ID, fresh, dmBody, nil); !errors.Is(err, ErrMessageIDExpired) {
		t.Fatalf("replay on the DM after expiry: %v, want ErrMessageIDExpired", err)
	}
}

// A member wedges the group with commits nobody else can process; the
// operator reverts the channel to the last shared epoch and takes the
// offender off it; an honest member's commit is accepted again and the
// offender can no longer post or read.
func TestRevertEpochRecoversAWedgedGroup(t *testing.T) {
	e := newEnv(t, nil)
	alice, bob, mallory := e.dir.add("alice", "a1"), e.dir.add("bob", "b1"), e.dir.add("mallory", "m1")
	ch, g := e.group(t, alice, bob, mallory)
	if _, err := e.svc.Enqueue(ctx, alice.Caller, ch.ID, newMsgID(), dt.Commit(g, 0), dt.GroupInfo(g, 1)); err != nil {
		t.Fatal(err)
	}
	// Mallory's bogus commits at epochs 1 and 2 are accepted (the server
	// cannot tell), with a GroupInfo for epoch 3.
	for epoch := uint64(1); epoch <= 2; epoch++ {
		if _, err := e.svc.Enqueue(ctx, mallory.Caller, ch.ID, newMsgID(), dt.Commit(g, epoch), dt.GroupInfo(g, epoch+1)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := e.svc.Enqueue(ctx, bob.Caller, ch.ID, newMsgID(), dt.Commit(g, 1), nil); !errors.Is(err, ErrStaleEpoch) {
		t.Fatalf("bob's commit at the shared epoch before the revert: %v, want ErrStaleEpoch", err)
	}

	info, err := e.svc.ChannelForAdmin(ctx, ch.ID, 10)
	if err != nil {
		t.Fatal(err)
	}
	if info.Epoch != 3 || len(info.Commits) != 3 || info.Commits[0].SenderAccount != mallory.AccountID ||
		info.Commits[0].Epoch != 2 || info.Commits[2].SenderAccount != alice.AccountID || info.GroupInfoEpoch == nil || *info.GroupInfoEpoch != 3 {
		t.Fatalf("channel as the operator sees it: %+v", info)
	}

	for _, bad := range []uint64{3, 4} {
		if _, err := e.svc.RevertEpoch(ctx, ch.ID, bad, "", "test"); !errors.Is(err, ErrInvalidRequest) {
			t.Fatalf("revert to %d (not earlier): %v", bad, err)
		}
	}
	if _, err := e.svc.RevertEpoch(ctx, make([]byte, ChannelIDSize), 0, "", "test"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("revert of an unknown channel: %v", err)
	}
	if got, _ := e.svc.ChannelForAdmin(ctx, ch.ID, 0); got.Epoch != 3 {
		t.Fatalf("a refused revert changed the epoch to %d", got.Epoch)
	}

	r, err := e.svc.RevertEpoch(ctx, ch.ID, 1, mallory.AccountID, "test")
	if err != nil {
		t.Fatal(err)
	}
	if r.From != 3 || r.To != 1 || !r.GroupInfoCleared || r.Removed != 1 {
		t.Fatalf("revert: %+v", r)
	}
	if _, _, err := e.svc.GroupInfo(ctx, bob.Caller, ch.ID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("the reverted commits' GroupInfo is still served: %v", err)
	}
	won, err := e.svc.Enqueue(ctx, bob.Caller, ch.ID, newMsgID(), dt.Commit(g, 1), dt.GroupInfo(g, 2))
	if err != nil || won.Epoch != 2 {
		t.Fatalf("bob's commit after the revert: %+v %v", won, err)
	}
	if _, err := e.svc.Enqueue(ctx, mallory.Caller, ch.ID, newMsgID(), dt.Application(g, 2, 10), nil); !errors.Is(err, ErrNotMember) {
		t.Fatalf("mallory posting after removal: %v", err)
	}
	// Mallory reads no message, only the notice of the removal.
	b, err := e.svc.Fetch(ctx, mallory.Caller, 0, After{})
	if err != nil || len(b.Messages) != 0 || len(b.Inbox) != 1 || b.Inbox[0].Kind != InboxMembership {
		t.Fatalf("mallory reading after removal: %d messages, inbox %+v, %v", len(b.Messages), b.Inbox, err)
	}
	var notice qpcv1.MembershipEvent
	if err := proto.Unmarshal(b.Inbox[0].Body, &notice); err != nil || notice.GetType() != qpcv1.MembershipEventType_MEMBERSHIP_EVENT_TYPE_REMOVED ||
		notice.GetSubjectAccountId() != mallory.AccountID || notice.GetSubjectAccountName() != "mallory" || notice.GetActorAccountName() != OperatorActor || notice.GetActorAccountId() != "" {
		t.Fatalf("mallory's notice: %v %v", &notice, err)
	}
	// Alice still reads everything, the skipped commits included (her
	// client drops them), and the removal, which holds the seq between
	// mallory's last commit and bob's.
	b, _ = e.svc.Fetch(ctx, alice.Caller, 0, After{})
	if len(b.Messages) != 5 || b.Messages[3].SenderDevice != EventSender || b.Messages[4].Seq != won.Seq || b.Messages[3].Seq != won.Seq-1 {
		t.Fatalf("alice reads %d messages, want 4 and the removal before bob's commit: %+v", len(b.Messages), b.Messages)
	}
	var ev qpcv1.MembershipEvent
	if err := proto.Unmarshal(b.Messages[3].Body, &ev); err != nil || ev.GetType() != qpcv1.MembershipEventType_MEMBERSHIP_EVENT_TYPE_REMOVED || ev.GetSubjectAccountId() != mallory.AccountID {
		t.Fatalf("the removal in the log: %v %v", &ev, err)
	}
	// A revert that removes nobody writes no event.
	if r, err := e.svc.RevertEpoch(ctx, ch.ID, 1, mallory.AccountID, "test"); err != nil || r.Removed != 0 {
		t.Fatalf("second revert: %+v %v", r, err)
	}
	if b, _ := e.svc.Fetch(ctx, alice.Caller, 0, After{}); len(b.Messages) != 5 {
		t.Fatalf("after a revert removing nobody alice reads %d messages, want 5", len(b.Messages))
	}
}

// The byte budget of a fetch cuts each channel at the first message that
// does not fit and goes on with the next channel; the first item always
// fits. On PostgreSQL this loop runs in qpc_fetch (migration 0013), so this
// holds the two engines to one rule.
func TestFetchBudgetAcrossChannels(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.MaxPayload = 4096 })
	alice, bob := e.dir.add("alice", "a1"), e.dir.add("bob", "b1")
	chA, gA := e.group(t, alice, bob)
	chB, gB := e.group(t, alice, bob)
	if bytes.Compare(chA.ID, chB.ID) > 0 { // A is read first
		chA, gA, chB, gB = chB, gB, chA, gA
	}
	a1 := e.send(t, alice, chA.ID, dt.Application(gA, 0, 1000))
	a2 := e.send(t, alice, chA.ID, dt.Application(gA, 0, 3500))
	b1 := e.send(t, alice, chB.ID, dt.Application(gB, 0, 500))
	b, err := e.svc.Fetch(ctx, bob.Caller, 0, After{})
	if err != nil || len(b.Messages) != 2 || !b.More ||
		!bytes.Equal(b.Messages[0].ChannelID, chA.ID) || b.Messages[0].Seq != a1.Seq ||
		!bytes.Equal(b.Messages[1].ChannelID, chB.ID) || b.Messages[1].Seq != b1.Seq {
		t.Fatalf("first fetch: %+v %v", b, err)
	}
	after := After{Channels: map[string]uint64{string(chA.ID): a1.Seq, string(chB.ID): b1.Seq}}
	b, err = e.svc.Fetch(ctx, bob.Caller, 0, after)
	if err != nil || len(b.Messages) != 1 || b.More || b.Messages[0].Seq != a2.Seq || len(b.Messages[0].Body) < 3500 {
		t.Fatalf("second fetch: %+v %v", b, err)
	}
	// A read-ahead position past the head reads nothing, rather than wrapping.
	after.Channels[string(chA.ID)] = 1 << 63
	after.Channels[string(chB.ID)] = b1.Seq
	if b, err = e.svc.Fetch(ctx, bob.Caller, 0, after); err != nil || len(b.Messages) != 0 || b.More {
		t.Fatalf("past the head: %+v %v", b, err)
	}
	// The limit counts across channels.
	if b, err = e.svc.Fetch(ctx, bob.Caller, 1, After{}); err != nil || len(b.Messages) != 1 || !b.More || b.Messages[0].Seq != a1.Seq {
		t.Fatalf("limit 1: %+v %v", b, err)
	}
}
