package delivery

import (
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	dt "github.com/quicprochat/quicprochat/internal/delivery/deliverytest"
	"github.com/quicprochat/quicprochat/internal/wire/qpcv1"
)

func TestCheckQuota(t *testing.T) {
	q := Quota{MessageBytes: 100, Messages: 3, InboxBytes: 50, InboxItems: 2, Channels: 1}
	for _, c := range []struct {
		name  string
		used  Usage
		add   Usage
		limit string // "" = allowed
	}{
		{"fits exactly", Usage{MessageBytes: 60, Messages: 2}, Usage{MessageBytes: 40, Messages: 1}, ""},
		{"one byte over", Usage{MessageBytes: 61}, Usage{MessageBytes: 40, Messages: 1}, LimitMessageBytes},
		{"rows", Usage{Messages: 3}, Usage{MessageBytes: 1, Messages: 1}, LimitMessages},
		{"inbox bytes", Usage{InboxBytes: 20}, Usage{InboxBytes: 40, InboxItems: 1}, LimitInboxBytes},
		{"inbox items", Usage{InboxItems: 1}, Usage{InboxBytes: 1, InboxItems: 2}, LimitInboxItems},
		{"channels", Usage{Channels: 1}, Usage{Channels: 1}, LimitChannels},
		// A full message quota does not stop a channel creation.
		{"other limit full", Usage{MessageBytes: 100, Messages: 3}, Usage{Channels: 1}, ""},
		// A drifted negative counter counts as zero, never as extra room.
		{"negative usage", Usage{MessageBytes: -500}, Usage{MessageBytes: 101}, LimitMessageBytes},
	} {
		err := checkQuota(c.used, c.add, q)
		var qe *QuotaError
		switch {
		case c.limit == "" && err != nil:
			t.Errorf("%s: refused: %v", c.name, err)
		case c.limit != "" && (!errors.As(err, &qe) || qe.Limit != c.limit || !errors.Is(err, ErrQuotaExceeded)):
			t.Errorf("%s: %v, want a %s refusal", c.name, err, c.limit)
		}
	}
	// No limits: everything fits.
	if err := checkQuota(Usage{MessageBytes: 1 << 40}, Usage{MessageBytes: 1 << 40, Messages: 1}, Quota{}); err != nil {
		t.Fatal(err)
	}
}

func TestQuotaErrorTellsWhatToDo(t *testing.T) {
	err := checkQuota(Usage{MessageBytes: 1000 << 20}, Usage{MessageBytes: 30 << 20, Messages: 1}, Quota{MessageBytes: 1 << 30})
	msg := err.Error()
	for _, want := range []string{"stored message bytes", "1000.0 MiB in use", "30.0 MiB in this request", "1.0 GiB allowed", "quota.message_bytes", "QPC_QUOTA_MESSAGE_BYTES", "expire"} {
		if !strings.Contains(msg, want) {
			t.Errorf("%q does not say %q", msg, want)
		}
	}
}

// usageOf reads the usage row and also counts the account's data with a
// scan, so tests check the counters against the truth.
func (e *env) usageOf(t *testing.T, accountID string) (counted, scanned Usage) {
	t.Helper()
	au, err := e.svc.Usage(ctx, accountID)
	if err != nil {
		t.Fatal(err)
	}
	err = e.db.ReadTx(ctx, func(tx *sql.Tx) error {
		if err := tx.QueryRowContext(ctx, `SELECT COALESCE(SUM(LENGTH(body)), 0), COUNT(*) FROM messages WHERE sender_account = ?`, accountID).
			Scan(&scanned.MessageBytes, &scanned.Messages); err != nil {
			return err
		}
		// Inbox items the account sent (not server notices naming it)
		// and Welcomes held for invitees.
		var hb, hn int64
		if err := tx.QueryRowContext(ctx, `SELECT COALESCE(SUM(LENGTH(body)), 0), COUNT(*) FROM inbox WHERE sender_account = ? AND kind IN (?, ?)`,
			accountID, InboxWelcome, InboxOther).Scan(&scanned.InboxBytes, &scanned.InboxItems); err != nil {
			return err
		}
		if err := tx.QueryRowContext(ctx, `SELECT COALESCE(SUM(LENGTH(body)), 0), COUNT(*) FROM invitation_welcomes WHERE sender_account = ?`, accountID).
			Scan(&hb, &hn); err != nil {
			return err
		}
		scanned.InboxBytes, scanned.InboxItems = scanned.InboxBytes+hb, scanned.InboxItems+hn
		return tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM channels WHERE created_by = ?`, accountID).Scan(&scanned.Channels)
	})
	if err != nil {
		t.Fatal(err)
	}
	return au.Usage, scanned
}

func (e *env) checkUsage(t *testing.T, accountID string) Usage {
	t.Helper()
	counted, scanned := e.usageOf(t, accountID)
	if counted != scanned {
		t.Fatalf("usage row %+v, the tables hold %+v", counted, scanned)
	}
	return counted
}

// The attack: 60 Enqueues of 4 MB by one account stored 228 MiB. With a
// 20 MiB quota the sixth is refused and nothing past the quota is stored;
// messages leave the quota when the retention sweep deletes them.
func TestQuotaStopsEnqueueStorageExhaustion(t *testing.T) {
	e := newEnv(t, func(o *Options) {
		o.MaxPayload = 5 << 20
		o.Quota = Quota{MessageBytes: 20 << 20}
	})
	mallory, bob := e.dir.add("mallory", "m1"), e.dir.add("bob", "b1")
	ch, g := e.group(t, mallory, bob)
	body := dt.Application(g, 0, 4_000_000)
	var stored, refused int
	for range 60 {
		_, err := e.svc.Enqueue(ctx, mallory.Caller, ch.ID, newMsgID(), body, nil)
		switch {
		case err == nil:
			stored++
		case errors.Is(err, ErrQuotaExceeded):
			refused++
		default:
			t.Fatal(err)
		}
	}
	if want := (20 << 20) / len(body); stored != want || refused != 60-want {
		t.Fatalf("stored %d, refused %d; want %d stored", stored, refused, want)
	}
	u := e.checkUsage(t, mallory.AccountID)
	if u.MessageBytes > 20<<20 || u.Messages != int64(stored) {
		t.Fatalf("usage %+v", u)
	}
	if v := testutil.ToFloat64(e.svc.metrics.quotaRefusals.WithLabelValues(LimitMessageBytes)); v != float64(refused) {
		t.Fatalf("qpcd_quota_refusals_total{limit=message_bytes} = %v, want %d", v, refused)
	}
	if v := testutil.ToFloat64(e.svc.metrics.enqueued.WithLabelValues("group", "quota")); v != float64(refused) {
		t.Fatalf("qpcd_enqueue_total{result=quota} = %v", v)
	}
	// Another account is not affected.
	e.send(t, bob, ch.ID, dt.Application(g, 0, 1000))
	// A replayed id is answered from the stored original and costs nothing.
	id := newMsgID()
	e.clock.Advance(8 * 24 * time.Hour)
	// The channel's log also holds the membership events of the setup
	// (up to ch.HeadSeq).
	if n, err := e.svc.Sweep(ctx); err != nil || n != int64(ch.HeadSeq)+int64(stored)+1 {
		t.Fatalf("sweep: %d %v", n, err)
	}
	if u := e.checkUsage(t, mallory.AccountID); u != (Usage{Channels: 1}) {
		t.Fatalf("after the sweep: %+v", u)
	}
	for range 2 {
		if _, err := e.svc.Enqueue(ctx, mallory.Caller, ch.ID, id, body, nil); err != nil {
			t.Fatalf("after the sweep the quota has room again: %v", err)
		}
	}
	if u := e.checkUsage(t, mallory.AccountID); u.Messages != 1 {
		t.Fatalf("a duplicate was charged: %+v", u)
	}
}

func TestQuotaMessageRows(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.Quota = Quota{Messages: 5} })
	alice := e.dir.add("alice", "a1")
	ch, g := e.group(t, alice)
	for range 5 {
		e.send(t, alice, ch.ID, dt.Application(g, 0, 10))
	}
	_, err := e.svc.Enqueue(ctx, alice.Caller, ch.ID, newMsgID(), dt.Application(g, 0, 10), nil)
	var qe *QuotaError
	if !errors.As(err, &qe) || qe.Limit != LimitMessages || qe.Used != 5 || qe.Max != 5 || !strings.Contains(err.Error(), "QPC_QUOTA_MESSAGES") {
		t.Fatalf("sixth message: %v", err)
	}
}

// The attack: 240 channels created in 2.8 s. Groups and DMs both count.
func TestQuotaBoundsChannelsCreated(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.Quota = Quota{Channels: 20} })
	mallory := e.dir.add("mallory", "m1")
	var created, refused int
	for i := range 240 {
		var err error
		if i%2 == 0 {
			_, _, err = e.svc.CreateGroup(ctx, mallory.Caller, groupID(), 0)
		} else {
			peer := e.dir.add(fmt.Sprintf("peer%d", i), fmt.Sprintf("p%d", i))
			_, _, err = e.svc.CreateDM(ctx, mallory.Caller, peer.name, groupID(), 0)
		}
		switch {
		case err == nil:
			created++
		case errors.Is(err, ErrQuotaExceeded):
			refused++
			if !strings.Contains(err.Error(), "quota.channels") {
				t.Fatalf("refusal does not name the option: %v", err)
			}
		default:
			t.Fatal(err)
		}
	}
	if created != 20 || refused != 220 {
		t.Fatalf("created %d, refused %d", created, refused)
	}
	if u := e.checkUsage(t, mallory.AccountID); u.Channels != 20 {
		t.Fatalf("usage %+v", u)
	}
	// Returning an existing channel creates nothing and is not refused.
	bob := e.dir.add("bob", "b1")
	alice := e.dir.add("alice", "a1")
	_, g := e.group(t, alice, bob)
	if _, _, err := e.svc.CreateGroup(ctx, bob.Caller, g, 0); err != nil {
		t.Fatal(err)
	}
	if v := testutil.ToFloat64(e.svc.metrics.quotaRefusals.WithLabelValues(LimitChannels)); v != 220 {
		t.Fatalf("qpcd_quota_refusals_total{limit=channels} = %v", v)
	}
}

// The attack: SendToInbox of 5 MiB to 4 devices stored 20 MiB per call in
// strangers' inboxes. One call now stores at most MaxInboxCallBytes, and
// payload x recipients counts against the sender's inbox quota until the
// recipients acknowledge the items or they expire.
func TestSendToInboxAmplification(t *testing.T) {
	e := newEnv(t, func(o *Options) {
		o.MaxPayload = 5 << 20
		o.Quota = Quota{InboxBytes: 3 << 20, InboxItems: 100}
	})
	mallory := e.dir.add("mallory", "m1")
	var victims []user
	var to []InboxRecipient
	for i := range 4 {
		v := e.dir.add("victim", fmt.Sprintf("v%d", i))
		victims = append(victims, v)
		to = append(to, InboxRecipient{"victim", v.DeviceID})
	}
	ch, _ := e.group(t, mallory, victims[0])
	big := make([]byte, 5<<20)
	_, err := e.svc.SendToInbox(ctx, mallory.Caller, ch.ID, InboxOther, big, to)
	if !errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), "limits.max_inbox_call_bytes") {
		t.Fatalf("5 MiB to 4 devices: %v", err)
	}
	if v := testutil.ToFloat64(e.svc.metrics.quotaRefusals.WithLabelValues(LimitInboxCallBytes)); v != 1 {
		t.Fatalf("qpcd_quota_refusals_total{limit=inbox_call_bytes} = %v", v)
	}
	// 1 MiB to 4 devices is 4 MiB stored: above the 3 MiB quota.
	mib := make([]byte, 1<<20)
	_, err = e.svc.SendToInbox(ctx, mallory.Caller, ch.ID, InboxOther, mib, to)
	var qe *QuotaError
	if !errors.As(err, &qe) || qe.Limit != LimitInboxBytes || qe.Adding != 4<<20 {
		t.Fatalf("payload x recipients not counted: %v", err)
	}
	if u := e.checkUsage(t, mallory.AccountID); u.InboxBytes != 0 {
		t.Fatalf("a refused call stored something: %+v", u)
	}
	// Three calls of 1 MiB to one device fit; the fourth does not.
	for i := range 4 {
		_, err := e.svc.SendToInbox(ctx, mallory.Caller, ch.ID, InboxOther, mib, to[:1])
		if (i < 3) != (err == nil) {
			t.Fatalf("call %d: %v", i, err)
		}
	}
	if u := e.checkUsage(t, mallory.AccountID); u.InboxBytes != 3<<20 || u.InboxItems != 3 {
		t.Fatalf("usage %+v", u)
	}
	// The recipient fetches and acknowledges two: they leave the quota.
	b, err := e.svc.Fetch(ctx, victims[0].Caller, MaxFetchLimit, After{})
	if err != nil || len(b.Inbox) != 3 {
		t.Fatalf("victim's inbox %v, %v", b.Inbox, err)
	}
	if err := e.svc.Ack(ctx, victims[0].Caller, nil, b.Inbox[1].Seq); err != nil {
		t.Fatal(err)
	}
	if u := e.checkUsage(t, mallory.AccountID); u.InboxBytes != 1<<20 || u.InboxItems != 1 {
		t.Fatalf("after ack: %+v", u)
	}
	// The last one expires and the sweep releases it.
	e.clock.Advance(8 * 24 * time.Hour)
	if _, err := e.svc.Sweep(ctx); err != nil {
		t.Fatal(err)
	}
	if u := e.checkUsage(t, mallory.AccountID); u.InboxBytes != 0 || u.InboxItems != 0 {
		t.Fatalf("after the sweep: %+v", u)
	}
}

// Concurrent enqueues of one account into several channels: the usage row
// serialises them, so exactly the quota is stored (on PostgreSQL several
// connections race; the channel and usage row locks queue them).
func TestQuotaConcurrentEnqueuesDoNotOvershoot(t *testing.T) {
	const quota, attempts, channels = 20, 60, 4
	e := newEnv(t, func(o *Options) { o.Quota = Quota{Messages: quota} })
	alice := e.dir.add("alice", "a1")
	type chg struct {
		ch Channel
		g  []byte
	}
	var chs []chg
	for range channels {
		ch, g := e.group(t, alice)
		chs = append(chs, chg{ch, g})
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var ok, refused int
	for i := range attempts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := chs[i%channels]
			_, err := e.svc.Enqueue(ctx, alice.Caller, c.ch.ID, newMsgID(), dt.Application(c.g, 0, 100), nil)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				ok++
			case errors.Is(err, ErrQuotaExceeded):
				refused++
			default:
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if ok != quota || refused != attempts-quota {
		t.Fatalf("stored %d, refused %d; want %d stored", ok, refused, quota)
	}
	if u := e.checkUsage(t, alice.AccountID); u.Messages != quota {
		t.Fatalf("usage %+v", u)
	}
}

func TestRecountUsageRepairsDrift(t *testing.T) {
	e := newEnv(t, nil)
	alice, bob := e.dir.add("alice", "a1"), e.dir.add("bob", "b1")
	ch, g := e.group(t, alice, bob)
	e.send(t, alice, ch.ID, dt.Application(g, 0, 300))
	if _, err := e.svc.SendToInbox(ctx, alice.Caller, ch.ID, InboxOther, []byte("hello"), []InboxRecipient{{"bob", "b1"}}); err != nil {
		t.Fatal(err)
	}
	want := e.checkUsage(t, alice.AccountID)
	if err := e.db.WriteTx(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `UPDATE account_usage SET message_bytes = 5, messages = 99, inbox_items = 0, channels = 7 WHERE account_id = ?`, alice.AccountID)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	before, after, err := e.svc.RecountUsage(ctx, alice.AccountID)
	if err != nil || before.Messages != 99 || after != want {
		t.Fatalf("recount: before %+v after %+v (want %+v) %v", before, after, want, err)
	}
	e.checkUsage(t, alice.AccountID)
	// An account without a row gets one with zeros.
	if _, after, err := e.svc.RecountUsage(ctx, "acct-nobody"); err != nil || after != (Usage{}) {
		t.Fatalf("recount of an empty account: %+v %v", after, err)
	}
}

// A Welcome held for a pending invitee is stored, so it is charged to its
// sender like an inbox item: from when it is stored, through its move into
// the inbox when the invitee accepts, until the invitee acknowledges it; a
// replacement Welcome, a decline, a withdrawal and the invitation's expiry
// give the room back. A Welcome for an invitee who already answered is
// dropped and charged nothing. The quota bounds what invitations park.
func TestHeldWelcomeCharged(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.Quota = Quota{InboxBytes: 64 << 10, InboxItems: 3} })
	alice := e.dir.add("alice", "a1")
	bob := e.dir.add("bob", "b1")
	bob2 := e.dir.add("bob", "b2")
	carol := e.dir.add("carol", "c1")
	dave := e.dir.add("dave", "d1")
	ch, _ := e.group(t, alice)
	if _, err := e.svc.AddMembers(ctx, alice.Caller, ch.ID, []MemberRef{{AccountName: "bob"}, {AccountName: "carol"}, {AccountName: "dave"}}); err != nil {
		t.Fatal(err)
	}
	w := dt.SizedWelcome(1000)
	toBob := []InboxRecipient{{"bob", bob.DeviceID}, {"bob", bob2.DeviceID}}
	if _, err := e.svc.SendToInbox(ctx, alice.Caller, ch.ID, InboxWelcome, w, toBob); err != nil {
		t.Fatal(err)
	}
	if u := e.checkUsage(t, alice.AccountID); u.InboxItems != 2 || u.InboxBytes != 2*int64(len(w)) {
		t.Fatalf("after holding two Welcomes: %+v", u)
	}
	// A newer Welcome for the same device replaces the held one: charged once.
	w2 := dt.SizedWelcome(2000)
	if _, err := e.svc.SendToInbox(ctx, alice.Caller, ch.ID, InboxWelcome, w2, toBob[:1]); err != nil {
		t.Fatal(err)
	}
	if u := e.checkUsage(t, alice.AccountID); u.InboxItems != 2 || u.InboxBytes != int64(len(w)+len(w2)) {
		t.Fatalf("after replacing one: %+v", u)
	}
	// Held Welcomes count against the quota: two held, one more fits,
	// the next is refused.
	if _, err := e.svc.SendToInbox(ctx, alice.Caller, ch.ID, InboxWelcome, w, []InboxRecipient{{"carol", carol.DeviceID}}); err != nil {
		t.Fatal(err)
	}
	var qe *QuotaError
	if _, err := e.svc.SendToInbox(ctx, alice.Caller, ch.ID, InboxWelcome, w, []InboxRecipient{{"dave", dave.DeviceID}}); !errors.As(err, &qe) || qe.Limit != LimitInboxItems {
		t.Fatalf("a fourth held Welcome: %v; want an inbox_items refusal", err)
	}
	// Bob accepts: the Welcomes move into his inboxes and stay charged
	// until he acknowledges them.
	e.accept(t, bob, ch.ID)
	if u := e.checkUsage(t, alice.AccountID); u.InboxItems != 3 {
		t.Fatalf("after bob accepted: %+v", u)
	}
	e.drainAll(t, bob)
	if u := e.checkUsage(t, alice.AccountID); u.InboxItems != 1 || u.InboxBytes != int64(len(w)) {
		t.Fatalf("after bob acknowledged: %+v", u)
	}
	// Carol declines: her held Welcome is dropped and released; a Welcome
	// sent to her afterwards is dropped and charged nothing.
	invs, err := e.svc.ListInvitations(ctx, carol.Caller)
	if err != nil || len(invs) != 1 {
		t.Fatalf("carol's invitations %v, %v", invs, err)
	}
	if err := e.svc.DeclineInvitation(ctx, carol.Caller, invs[0].ID); err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.SendToInbox(ctx, alice.Caller, ch.ID, InboxWelcome, w, []InboxRecipient{{"carol", carol.DeviceID}}); err != nil {
		t.Fatal(err)
	}
	if u := e.checkUsage(t, alice.AccountID); u.InboxItems != 0 || u.InboxBytes != 0 {
		t.Fatalf("after carol declined: %+v", u)
	}
	// Dave's Welcome is held, then alice withdraws the invitation.
	if _, err := e.svc.SendToInbox(ctx, alice.Caller, ch.ID, InboxWelcome, w, []InboxRecipient{{"dave", dave.DeviceID}}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.RemoveMembers(ctx, alice.Caller, ch.ID, []MemberRef{{AccountName: "dave"}}); err != nil {
		t.Fatal(err)
	}
	if u := e.checkUsage(t, alice.AccountID); u.InboxItems != 0 {
		t.Fatalf("after the withdrawal: %+v", u)
	}
	// Invited again, a Welcome held, and the invitation expires unanswered.
	if _, err := e.svc.AddMembers(ctx, alice.Caller, ch.ID, []MemberRef{{AccountName: "dave"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.SendToInbox(ctx, alice.Caller, ch.ID, InboxWelcome, w, []InboxRecipient{{"dave", dave.DeviceID}}); err != nil {
		t.Fatal(err)
	}
	e.clock.Advance(DefaultInvitationTTL + time.Hour)
	if _, err := e.svc.Sweep(ctx); err != nil {
		t.Fatal(err)
	}
	if u := e.checkUsage(t, alice.AccountID); u.InboxItems != 0 || u.InboxBytes != 0 {
		t.Fatalf("after the invitation expired: %+v", u)
	}
	// A recount agrees with the counters.
	if before, after, err := e.svc.RecountUsage(ctx, alice.AccountID); err != nil || before != after {
		t.Fatalf("recount: %+v -> %+v, %v", before, after, err)
	}
}

// The server's own notices (membership events in the log and in inboxes,
// account events) are charged to nobody. Before, acknowledging one released
// its "sender" (the inviter, the remover, the account whose device changed)
// from usage it had never been charged, so an account could push its usage
// below zero and then store more than its quota.
func TestServerNoticesChargeNobody(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.Quota = Quota{InboxBytes: 1 << 20, InboxItems: 2} })
	alice := e.dir.add("alice", "a1")
	bob := e.dir.add("bob", "b1")
	alice2 := e.dir.add("alice", "a2")
	ch, _ := e.group(t, alice)
	// Invitations and withdrawals: each puts a notice into bob's inbox
	// naming alice as the sender.
	for range 3 {
		if _, err := e.svc.AddMembers(ctx, alice.Caller, ch.ID, []MemberRef{{AccountName: "bob"}}); err != nil {
			t.Fatal(err)
		}
		if _, err := e.svc.RemoveMembers(ctx, alice.Caller, ch.ID, []MemberRef{{AccountName: "bob"}}); err != nil {
			t.Fatal(err)
		}
	}
	// An account event for alice's other device, as the auth service writes one.
	err := e.db.WriteTx(ctx, func(tx *sql.Tx) error {
		return e.svc.RecordAccountEventTx(ctx, tx, alice.AccountID, alice.DeviceID, []string{alice2.DeviceID}, []byte("device added"))
	})
	if err != nil {
		t.Fatal(err)
	}
	e.drainAll(t, bob, alice)
	if u := e.checkUsage(t, alice.AccountID); u != (Usage{Channels: 1}) {
		t.Fatalf("alice's usage after her notices were acknowledged: %+v; want only her channel", u)
	}
	// So the quota is still the quota: two items, not more.
	ch2, _ := e.group(t, alice)
	if _, err := e.svc.AddMembers(ctx, alice.Caller, ch2.ID, []MemberRef{{AccountName: "alice", DeviceID: alice2.DeviceID}}); err != nil {
		t.Fatal(err)
	}
	to := []InboxRecipient{{"alice", alice2.DeviceID}}
	for i := range 3 {
		_, err := e.svc.SendToInbox(ctx, alice.Caller, ch2.ID, InboxOther, []byte("x"), to)
		if (i < 2) != (err == nil) {
			t.Fatalf("inbox item %d: %v", i, err)
		}
	}
	// Expired notices leave nothing behind either.
	if _, err := e.svc.AddMembers(ctx, alice.Caller, ch.ID, []MemberRef{{AccountName: "bob"}}); err != nil {
		t.Fatal(err)
	}
	e.clock.Advance(8 * 24 * time.Hour)
	if _, err := e.svc.Sweep(ctx); err != nil {
		t.Fatal(err)
	}
	if u := e.checkUsage(t, alice.AccountID); u != (Usage{Channels: 2}) {
		t.Fatalf("alice's usage after the sweep: %+v", u)
	}
	au, err := e.svc.Usage(ctx, "")
	if err != nil || au.Usage != (Usage{}) {
		t.Fatalf("usage of the empty account (server events): %+v, %v", au.Usage, err)
	}
}

// The stored inbox kinds are the wire's: the server-written kinds must not
// share a number (each side of a merge once took 3).
func TestInboxKindsMatchTheWire(t *testing.T) {
	for _, c := range []struct {
		stored int
		wire   qpcv1.InboxKind
	}{
		{InboxWelcome, qpcv1.InboxKind_INBOX_KIND_WELCOME},
		{InboxOther, qpcv1.InboxKind_INBOX_KIND_OTHER},
		{InboxAccountEvent, qpcv1.InboxKind_INBOX_KIND_ACCOUNT_EVENT},
		{InboxMembership, qpcv1.InboxKind_INBOX_KIND_MEMBERSHIP},
	} {
		if c.stored != int(c.wire) {
			t.Errorf("%v is %d on the wire, %d when stored", c.wire, c.wire, c.stored)
		}
	}
	if InboxAccountEvent == InboxMembership {
		t.Fatal("account and membership events share an inbox kind")
	}
}
