package client

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/quicprochat/quicprochat/internal/mls"
	"github.com/quicprochat/quicprochat/internal/server/servertest"
	"github.com/quicprochat/quicprochat/internal/wire/qpcv1"
)

// texts syncs c and returns the texts of its history of channel.
func texts(t *testing.T, c *Client, channel string) []string {
	t.Helper()
	if _, err := c.Sync(ctxT(t), 0); err != nil {
		t.Fatalf("sync: %v", err)
	}
	ms, err := c.History(ctxT(t), channel, 1000)
	if err != nil {
		t.Fatalf("history %s: %v", channel, err)
	}
	var out []string
	for _, m := range ms {
		if m.Event == nil { // membership events: see events()
			out = append(out, m.Text)
		}
	}
	return out
}

// events syncs c and returns the membership events in its history of channel.
func events(t *testing.T, c *Client, channel string) []string {
	t.Helper()
	if _, err := c.Sync(ctxT(t), 0); err != nil {
		t.Fatalf("sync: %v", err)
	}
	ms, err := c.History(ctxT(t), channel, 1000)
	if err != nil {
		t.Fatalf("history %s: %v", channel, err)
	}
	var out []string
	for _, m := range ms {
		if m.Event != nil {
			out = append(out, m.Text)
		}
	}
	return out
}

// team makes the group "team" owned by owner and invites each member
// (acceptAll accepts for them).
func team(t *testing.T, owner *Client, members ...string) {
	t.Helper()
	ctx := ctxT(t)
	if err := owner.CreateGroup(ctx, "team"); err != nil {
		t.Fatal(err)
	}
	if err := owner.AddMembers(ctx, "team", members); err != nil {
		t.Fatal(err)
	}
}

func send(t *testing.T, c *Client, channel, text string) {
	t.Helper()
	if _, err := c.Send(ctxT(t), channel, text, ""); err != nil {
		t.Fatalf("send %q to %s: %v", text, channel, err)
	}
}

func epochOf(t *testing.T, c *Client, name string) uint64 {
	t.Helper()
	gs, err := c.Groups(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range gs {
		if g.Name == name {
			return g.Epoch
		}
	}
	t.Fatalf("no group %s", name)
	return 0
}

// TestGroupLifecycle: create, invite, join, messages both ways, remove
// (the removed member reads nothing sent afterwards), leave.
func TestGroupLifecycle(t *testing.T) {
	srv := servertest.Start(t, servertest.Config(t))
	alice := registered(t, srv, "alice")
	bob := registered(t, srv, "bob")
	carol := registered(t, srv, "carol")
	ctx := ctxT(t)

	if err := alice.CreateGroup(ctx, "team"); err != nil {
		t.Fatal(err)
	}
	if err := alice.AddMembers(ctx, "team", []string{"bob", "carol"}); err != nil {
		t.Fatal(err)
	}
	acceptAll(t, bob, carol)
	send(t, alice, "team", "hello team")
	// Bob and carol join from the Welcome; the group takes alice's name
	// from her first message.
	if got := texts(t, bob, "team"); strings.Join(got, "|") != "hello team" {
		t.Fatalf("bob's history %q", got)
	}
	if got := texts(t, carol, "team"); strings.Join(got, "|") != "hello team" {
		t.Fatalf("carol's history %q", got)
	}
	send(t, bob, "team", "hi alice")
	send(t, carol, "team", "hi both")
	if got := texts(t, alice, "team"); strings.Join(got, "|") != "hello team|hi alice|hi both" {
		t.Fatalf("alice's history %q", got)
	}
	ms, err := alice.Members(ctx, "team")
	if err != nil || len(ms) != 3 {
		t.Fatalf("members %v, %v", ms, err)
	}

	// Remove carol: she reads nothing sent after, neither through the
	// server (it dropped her from the channel) nor with her old keys.
	var carolState []byte
	if err := carol.db.ReadTx(ctx, func(tx *sql.Tx) error {
		return tx.QueryRow(`SELECT state FROM groups WHERE name = 'team'`).Scan(&carolState)
	}); err != nil {
		t.Fatal(err)
	}
	if err := alice.RemoveMember(ctx, "team", "carol"); err != nil {
		t.Fatal(err)
	}
	mid := func() string {
		id, err := alice.Send(ctx, "team", "carol is gone", "")
		if err != nil {
			t.Fatal(err)
		}
		return id
	}()
	var ciphertext []byte
	if err := alice.db.ReadTx(ctx, func(tx *sql.Tx) error {
		return tx.QueryRow(`SELECT mls_message FROM outbox WHERE message_id = ?`, mid).Scan(&ciphertext)
	}); err != nil {
		t.Fatal(err)
	}
	old, err := mls.ImportGroup(mlsConfig, carolState)
	if err != nil {
		t.Fatal(err)
	}
	if p, err := old.ProcessMessage(ciphertext); err == nil {
		t.Fatalf("carol's old group state decrypted a message sent after her removal: %q", p.ApplicationData)
	}
	if got := texts(t, bob, "team"); strings.Join(got, "|") != "hello team|hi alice|hi both|carol is gone" {
		t.Fatalf("bob after remove %q", got)
	}
	if _, err := carol.Sync(ctx, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := carol.Send(ctx, "team", "still here?", ""); !errors.Is(err, ErrNotMember) {
		t.Fatalf("removed member sends: %v", err)
	}
	hist, _ := carol.History(ctx, "team", 100)
	for _, m := range hist {
		if m.Text == "carol is gone" {
			t.Fatal("the removed member read a message sent after her removal")
		}
	}

	// Bob leaves: alice (lowest remaining leaf) commits his removal.
	if err := bob.Leave(ctx, "team"); err != nil {
		t.Fatal(err)
	}
	if _, err := alice.Sync(ctx, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := alice.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	ms, err = alice.Members(ctx, "team")
	if err != nil || len(ms) != 1 || ms[0].Account != "alice" {
		t.Fatalf("members after leave %v, %v", ms, err)
	}
}

// TestDM: a DM between two accounts, both ways; opening it from the other
// side finds the same channel.
func TestDM(t *testing.T) {
	srv := servertest.Start(t, servertest.Config(t))
	alice := registered(t, srv, "alice")
	bob := registered(t, srv, "bob")
	ctx := ctxT(t)
	name, err := alice.DM(ctx, "bob")
	if err != nil || name != "@bob" {
		t.Fatalf("dm: %q, %v", name, err)
	}
	send(t, alice, "@bob", "psst")
	if n, err := bob.DM(ctx, "alice"); err != nil || n != "@alice" {
		t.Fatalf("bob's dm: %q, %v", n, err)
	}
	if got := texts(t, bob, "@alice"); strings.Join(got, "|") != "psst" {
		t.Fatalf("bob's DM %q", got)
	}
	send(t, bob, "@alice", "hi")
	if got := texts(t, alice, "@bob"); strings.Join(got, "|") != "psst|hi" {
		t.Fatalf("alice's DM %q", got)
	}
}

// TestConcurrentCommitsConverge: two members commit in the same epoch; the
// server takes one, the other processes it, redoes its own change, and
// everyone ends on the same epoch with both changes.
func TestConcurrentCommitsConverge(t *testing.T) {
	srv := servertest.Start(t, servertest.Config(t))
	alice := registered(t, srv, "alice")
	bob := registered(t, srv, "bob")
	registered(t, srv, "carol")
	registered(t, srv, "dave")
	ctx := ctxT(t)
	if err := alice.CreateGroup(ctx, "team"); err != nil {
		t.Fatal(err)
	}
	if err := alice.AddMembers(ctx, "team", []string{"bob"}); err != nil {
		t.Fatal(err)
	}
	acceptAll(t, bob)
	send(t, alice, "team", "x")
	texts(t, bob, "team")
	// Both queue a commit at the same epoch before either is sent.
	for _, p := range []struct {
		c    *Client
		name string
	}{{alice, "carol"}, {bob, "dave"}} {
		kps, _, err := p.c.fetchKeyPackages(ctx, p.name, Suite)
		if err != nil {
			t.Fatal(err)
		}
		ch, _ := p.c.channelOf(ctx, "team")
		if err := p.c.call(ctx, "AddMembers", addReq(ch, p.name), &qpcv1.AddMembersResponse{}); err != nil {
			t.Fatal(err)
		}
		if err := p.c.queueCommit(ctx, ch, commitIntent{Op: "add", Accounts: []string{p.name}, KeyPackages: kps}); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	reps := make([]FlushReport, 2)
	errs := make([]error, 2)
	for i, c := range []*Client{alice, bob} {
		wg.Add(1)
		go func() { defer wg.Done(); reps[i], errs[i] = c.Flush(ctx) }()
	}
	wg.Wait()
	if errs[0] != nil || errs[1] != nil {
		t.Fatalf("flush: %v, %v", errs[0], errs[1])
	}
	if reps[0].Redone+reps[1].Redone != 1 {
		t.Fatalf("expected exactly one redo after STALE_EPOCH: %+v %+v", reps[0], reps[1])
	}
	for _, c := range []*Client{alice, bob} {
		if _, err := c.Sync(ctx, 0); err != nil {
			t.Fatal(err)
		}
	}
	if ea, eb := epochOf(t, alice, "team"), epochOf(t, bob, "team"); ea != eb || ea != 3 {
		t.Fatalf("epochs alice %d, bob %d; want both 3", ea, eb)
	}
	ma, _ := alice.Members(ctx, "team")
	mb, _ := bob.Members(ctx, "team")
	if len(ma) != 4 || fmt.Sprint(accounts(ma)) != fmt.Sprint(accounts(mb)) {
		t.Fatalf("members differ: %v vs %v", accounts(ma), accounts(mb))
	}
	send(t, bob, "team", "converged")
	if got := texts(t, alice, "team"); got[len(got)-1] != "converged" {
		t.Fatalf("alice %q", got)
	}
}

func accounts(ms []Member) []string {
	var out []string
	for _, m := range ms {
		out = append(out, m.Account)
	}
	sort.Strings(out)
	return out
}

// TestFiftyMembers: a 50-member group in which everyone receives every
// message.
func TestFiftyMembers(t *testing.T) {
	if testing.Short() {
		t.Skip("50 clients")
	}
	const n = 50
	cfg := servertest.Config(t)
	// All 50 clients share 127.0.0.1, so the per-IP rate limit and the
	// per-address connection cap (meant for distinct hosts) are raised.
	cfg.Limits.RateLimit, cfg.Limits.RateBurst = 2000, 2000
	cfg.Limits.MaxConnectionsPerAddress = 2 * n
	cfg.Invitations.MaxPerHour = 2 * n // one account invites 49
	srv := servertest.Start(t, cfg)
	cs := make([]*Client, n)
	names := make([]string, n)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	sem := make(chan struct{}, 4)
	start := time.Now()
	for i := range n {
		names[i] = fmt.Sprintf("user%02d", i)
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			c, _ := newTestClient(t, srv, testKey(t))
			c.opts.Backoff = fastBackoff
			if _, err := c.Register(context.Background(), RegisterParams{AccountName: names[i]}); err != nil {
				mu.Lock()
				firstErr = errors.Join(firstErr, err)
				mu.Unlock()
			}
			cs[i] = c
		}()
	}
	wg.Wait()
	if firstErr != nil {
		t.Fatal(firstErr)
	}
	t.Logf("registered %d clients (11 KeyPackages each) in %s", n, time.Since(start).Round(time.Millisecond))
	ctx := ctxT(t)
	phase := time.Now()
	if err := cs[0].CreateGroup(ctx, "big"); err != nil {
		t.Fatal(err)
	}
	if err := cs[0].AddMembers(ctx, "big", names[1:]); err != nil {
		t.Fatal(err)
	}
	t.Logf("one commit adding %d members, with the Welcome: %s", n-1, time.Since(phase).Round(time.Millisecond))
	send(t, cs[0], "big", "from user00")
	phase = time.Now()
	// Every member joins and sends one message.
	for i := 1; i < n; i++ {
		acceptAll(t, cs[i])
		send(t, cs[i], "big", "from "+names[i])
	}
	t.Logf("%d joins from the Welcome and %d sends: %s", n-1, n-1, time.Since(phase).Round(time.Millisecond))
	phase = time.Now()
	defer func() {
		t.Logf("%d members each fetched and decrypted the rest of the %d messages: %s", n, n, time.Since(phase).Round(time.Millisecond))
	}()
	for i := range n {
		got := texts(t, cs[i], "big")
		if len(got) != n {
			t.Fatalf("%s has %d messages, want %d", names[i], len(got), n)
		}
		seen := map[string]bool{}
		for _, s := range got {
			seen[s] = true
		}
		for _, nm := range names {
			if !seen["from "+nm] {
				t.Fatalf("%s missed the message from %s", names[i], nm)
			}
		}
	}
}

func addReq(ch []byte, account string) *qpcv1.AddMembersRequest {
	return &qpcv1.AddMembersRequest{ChannelId: ch, Members: []*qpcv1.MemberRef{{AccountName: account}}}
}

// TestRestartMidConversation: qpcd stops mid-conversation; messages sent
// meanwhile wait in the outboxes (one client is even closed and reopened
// from its database) and are delivered exactly once when it is back.
func TestRestartMidConversation(t *testing.T) {
	srv := servertest.Start(t, servertest.Config(t))
	alice, aliceOpts := newTestClient(t, srv, testKey(t))
	if _, err := alice.Register(ctxT(t), RegisterParams{AccountName: "alice"}); err != nil {
		t.Fatal(err)
	}
	bob := registered(t, srv, "bob")
	ctx := ctxT(t)
	team(t, alice, "bob")
	acceptAll(t, bob)
	send(t, alice, "team", "before")
	texts(t, bob, "team")

	srv.Stop(t)
	down := func(c *Client, text string) {
		t.Helper()
		short, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		id, err := c.Send(short, "team", text, "")
		if id == "" || err == nil {
			t.Fatalf("send while down: id %q, err %v; want a queued message and an error", id, err)
		}
	}
	down(alice, "during 1")
	down(bob, "during 2")
	down(alice, "during 3")
	// Alice's process "crashes": her state is reopened from disk.
	if err := alice.Close(); err != nil {
		t.Fatal(err)
	}
	srv.Start(t)
	alice2, err := Open(ctx, aliceOpts)
	if err != nil {
		t.Fatal(err)
	}
	defer alice2.Close()
	for _, c := range []*Client{alice2, bob} {
		if rep, err := c.Flush(ctx); err != nil || rep.Pending != 0 {
			t.Fatalf("flush after restart: %+v, %v", rep, err)
		}
	}
	send(t, bob, "team", "after")
	want := "before|during 1|during 3|during 2|after"
	if got := strings.Join(texts(t, bob, "team"), "|"); got != want {
		t.Fatalf("bob: %q, want %q", got, want)
	}
	if got := strings.Join(texts(t, alice2, "team"), "|"); got != "before|during 1|during 3|during 2|after" {
		t.Fatalf("alice: %q", got)
	}
	// Nothing more arrives: each was delivered once.
	for _, c := range []*Client{alice2, bob} {
		if rep, err := c.Sync(ctx, 0); err != nil || rep.Messages != 0 {
			t.Fatalf("extra messages: %+v, %v", rep, err)
		}
	}
}

// TestRejoinAfterRetention: a member offline past retention finds a gap
// (a commit expired unread), rejoins by external commit from the
// GroupInfo the server keeps, and reads what is sent afterwards.
func TestRejoinAfterRetention(t *testing.T) {
	var mu sync.Mutex
	now := time.Now()
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	srv := servertest.StartWith(t, servertest.Config(t), clock)
	// The clients share the server's clock: their message ids carry their
	// time, and the server refuses ids older than the retention.
	alice := registeredAt(t, srv, "alice", clock)
	bob := registeredAt(t, srv, "bob", clock)
	registeredAt(t, srv, "carol", clock)
	ctx := ctxT(t)
	if err := alice.CreateGroup(ctx, "team"); err != nil {
		t.Fatal(err)
	}
	if err := alice.AddMembers(ctx, "team", []string{"bob"}); err != nil {
		t.Fatal(err)
	}
	acceptAll(t, bob)
	send(t, alice, "team", "m1")
	texts(t, bob, "team")
	// Bob is offline; the group moves on (carol joins) and a week passes.
	if err := alice.AddMembers(ctx, "team", []string{"carol"}); err != nil {
		t.Fatal(err)
	}
	send(t, alice, "team", "m2")
	mu.Lock()
	now = now.Add(8 * 24 * time.Hour)
	mu.Unlock()
	send(t, alice, "team", "m3")

	rep, err := bob.Sync(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Gaps) != 1 || rep.Rejoined != 1 {
		t.Fatalf("bob's sync after retention: %+v", rep)
	}
	if _, err := alice.Sync(ctx, 0); err != nil {
		t.Fatal(err)
	}
	if ea, eb := epochOf(t, alice, "team"), epochOf(t, bob, "team"); ea != eb {
		t.Fatalf("epochs after rejoin: alice %d, bob %d", ea, eb)
	}
	ms, _ := alice.Members(ctx, "team")
	if got := fmt.Sprint(accounts(ms)); got != "[alice bob carol]" {
		t.Fatalf("members after rejoin %s (the old leaf must be replaced)", got)
	}
	send(t, alice, "team", "m4")
	send(t, bob, "team", "back")
	if got := strings.Join(texts(t, bob, "team"), "|"); got != "m1|m4|back" {
		t.Fatalf("bob: %q", got)
	}
	if got := texts(t, alice, "team"); got[len(got)-1] != "back" {
		t.Fatalf("alice: %q", got)
	}
}

// TestCommitAcceptedReplyLost: the server took alice's Add commit but she
// never saw the answer (a crash, a lost reply). The next Flush sends it
// again, gets the original seq back (duplicate), merges it then, and only
// then sends the Welcome: bob joins at the right epoch.
func TestCommitAcceptedReplyLost(t *testing.T) {
	srv := servertest.Start(t, servertest.Config(t))
	alice := registered(t, srv, "alice")
	bob := registered(t, srv, "bob")
	ctx := ctxT(t)
	if err := alice.CreateGroup(ctx, "team"); err != nil {
		t.Fatal(err)
	}
	kps, _, err := alice.fetchKeyPackages(ctx, "bob", Suite)
	if err != nil {
		t.Fatal(err)
	}
	ch, _ := alice.channelOf(ctx, "team")
	if err := alice.call(ctx, "AddMembers", addReq(ch, "bob"), &qpcv1.AddMembersResponse{}); err != nil {
		t.Fatal(err)
	}
	if _, err := bob.Sync(ctx, 0); err != nil { // the invitation notice
		t.Fatal(err)
	}
	if err := alice.queueCommit(ctx, ch, commitIntent{Op: "add", Accounts: []string{"bob"}, KeyPackages: kps}); err != nil {
		t.Fatal(err)
	}
	pending, err := alice.outboxWhere(ctx, "status = ?", OutboxPending)
	if err != nil || len(pending) != 1 {
		t.Fatalf("outbox %v, %v", pending, err)
	}
	e := pending[0]
	var first qpcv1.EnqueueResponse
	if err := alice.call(ctx, "Enqueue", &qpcv1.EnqueueRequest{ChannelId: ch, MessageId: e.MessageID, MlsMessage: e.mls, GroupInfo: e.gi, RatchetTree: e.tree}, &first); err != nil {
		t.Fatal(err)
	}
	// No Welcome yet: the commit is not recorded as accepted.
	if rep, err := bob.Sync(ctx, 0); err != nil || rep.Inbox != 0 {
		t.Fatalf("bob got a Welcome before alice recorded the commit: %+v, %v", rep, err)
	}
	if epochOf(t, alice, "team") != 0 {
		t.Fatal("commit merged before acceptance was recorded")
	}
	rep, err := alice.Flush(ctx)
	if err != nil || rep.Sent != 1 || rep.Welcomes != 1 {
		t.Fatalf("flush: %+v, %v", rep, err)
	}
	ob, _ := alice.Outbox(ctx)
	if ob[0].Seq != first.GetSeq() {
		t.Fatalf("commit stored twice: seq %d then %d", first.GetSeq(), ob[0].Seq)
	}
	acceptAll(t, bob)
	send(t, alice, "team", "welcome bob")
	if got := strings.Join(texts(t, bob, "team"), "|"); got != "welcome bob" {
		t.Fatalf("bob: %q", got)
	}
	if ea, eb := epochOf(t, alice, "team"), epochOf(t, bob, "team"); ea != 1 || eb != 1 {
		t.Fatalf("epochs alice %d bob %d, want 1", ea, eb)
	}
}

// TestInvitationConsent: adding someone makes an invitation; nothing
// reaches them until they accept (then the Welcome held for them joins
// them, and they read from the point they were invited); a decline makes
// the group drop their leaves; a blocked account cannot invite; a member
// cannot remove another unnoticed (only the admin may, and everyone sees it).
func TestInvitationConsent(t *testing.T) {
	srv := servertest.Start(t, servertest.Config(t))
	alice := registered(t, srv, "alice")
	bob := registered(t, srv, "bob")
	carol := registered(t, srv, "carol")
	dave := registered(t, srv, "dave")
	mallory := registered(t, srv, "mallory")
	ctx := ctxT(t)
	if err := alice.CreateGroup(ctx, "team"); err != nil {
		t.Fatal(err)
	}
	if err := alice.AddMembers(ctx, "team", []string{"bob", "carol"}); err != nil {
		t.Fatal(err)
	}
	send(t, alice, "team", "before bob answers")
	if _, err := bob.Sync(ctx, 0); err != nil {
		t.Fatal(err)
	}
	if gs, _ := bob.Groups(ctx); len(gs) != 0 {
		t.Fatalf("bob joined without accepting: %v", gs)
	}
	invs, err := bob.NewInvitations(ctx)
	if err != nil || len(invs) != 1 || invs[0].Inviter != "alice" || invs[0].Kind != "group" {
		t.Fatalf("bob's new invitations: %v %v", invs, err)
	}
	if again, _ := bob.NewInvitations(ctx); len(again) != 0 {
		t.Fatal("an invitation was announced twice")
	}
	name, err := bob.AcceptInvitation(ctx, invs[0].ID)
	if err != nil || name == "" {
		t.Fatalf("accept: %q %v", name, err)
	}
	if got := strings.Join(texts(t, bob, name), "|"); got != "before bob answers" {
		t.Fatalf("bob after accepting: %q", got)
	}

	// carol declines: alice's client drops her leaf by commit.
	cinv, err := carol.Invitations(ctx)
	if err != nil || len(cinv) != 1 || !cinv[0].WelcomeHeld {
		t.Fatalf("carol's invitations: %v %v", cinv, err)
	}
	if err := carol.DeclineInvitation(ctx, cinv[0].ID); err != nil {
		t.Fatal(err)
	}
	if _, err := alice.Sync(ctx, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := alice.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if ms, _ := alice.Members(ctx, "team"); fmt.Sprint(accounts(ms)) != "[alice bob]" {
		t.Fatalf("members after carol declined: %v", accounts(ms))
	}
	if got := events(t, bob, name); !contains(got, "carol declined the invitation") {
		t.Fatalf("bob's events: %q", got)
	}
	send(t, alice, "team", "after the decline")
	if got := texts(t, bob, name); got[len(got)-1] != "after the decline" {
		t.Fatalf("bob: %q", got)
	}

	// bob blocks mallory: her invitations are refused.
	if _, err := bob.Block(ctx, "mallory"); err != nil {
		t.Fatal(err)
	}
	if err := mallory.CreateGroup(ctx, "spam"); err != nil {
		t.Fatal(err)
	}
	if err := mallory.AddMembers(ctx, "spam", []string{"bob"}); err == nil || !strings.Contains(err.Error(), "permission_denied") {
		t.Fatalf("a blocked account's invitation: %v", err)
	}
	if bl, err := bob.Blocked(ctx); err != nil || len(bl) != 1 || bl[0].Account != "mallory" {
		t.Fatalf("blocked: %v %v", bl, err)
	}

	// dave joins; bob (a plain member) cannot remove him; alice can, and
	// bob and dave both see it.
	if err := alice.AddMembers(ctx, "team", []string{"dave"}); err != nil {
		t.Fatal(err)
	}
	acceptAll(t, dave)
	if _, err := bob.Sync(ctx, 0); err != nil {
		t.Fatal(err)
	}
	if err := bob.RemoveMember(ctx, name, "dave"); err == nil || !strings.Contains(err.Error(), "permission_denied") {
		t.Fatalf("a plain member removed another: %v", err)
	}
	if err := alice.RemoveMember(ctx, "team", "dave"); err != nil {
		t.Fatal(err)
	}
	if got := events(t, bob, name); !contains(got, "alice removed dave") {
		t.Fatalf("bob did not see dave's removal: %q", got)
	}
	if _, err := dave.Sync(ctx, 0); err != nil {
		t.Fatal(err)
	}
	gs, _ := dave.Groups(ctx)
	if len(gs) != 1 || gs[0].Status != statusRemoved {
		t.Fatalf("dave's group after his removal: %v", gs)
	}
	if got := events(t, dave, gs[0].Name); !contains(got, "alice removed dave") {
		t.Fatalf("dave was not told: %q", got)
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
