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
		if err := tx.QueryRowContext(ctx, `SELECT COALESCE(SUM(LENGTH(body)), 0), COUNT(*) FROM inbox WHERE sender_account = ?`, accountID).
			Scan(&scanned.InboxBytes, &scanned.InboxItems); err != nil {
			return err
		}
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
	if n, err := e.svc.Sweep(ctx); err != nil || n != int64(stored)+1 {
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
	if err := e.svc.Ack(ctx, victims[0].Caller, nil, 2); err != nil {
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
