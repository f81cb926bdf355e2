package server

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/quicprochat/quicprochat/internal/delivery"
	dt "github.com/quicprochat/quicprochat/internal/delivery/deliverytest"
	"github.com/quicprochat/quicprochat/internal/obs"
	"github.com/quicprochat/quicprochat/internal/wire"
	"github.com/quicprochat/quicprochat/internal/wire/qpcv1"
)

// counter sums the series of a metric with label=value from the server's registry.
func (ts *testServer) counter(t *testing.T, name, label, value string) float64 {
	t.Helper()
	mfs, err := ts.metrics.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	found := false
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == label && l.GetValue() == value {
					sum += metricValue(m)
					found = true
				}
			}
		}
	}
	if !found {
		t.Fatalf("no series %s{%s=%q}", name, label, value)
	}
	return sum
}

// The attack: 60 Enqueues of 4 MB stored 228 MiB in 7.5 s with no rate
// limit hit. With the default limits the account's byte bucket (32 MiB
// burst, 1 MiB/s) refuses once the burst is spent, with a retry-after that
// lets the bucket refill; over 7.5 s about 40 MiB get through.
func TestByteRateLimitStopsEnqueueFlood(t *testing.T) {
	clk := newFakeClock()
	cfg := testConfig(t)
	ts := startServerWith(t, cfg, clk.Now)
	mallory, bob := ts.newDevice(t, "mallory"), ts.newDevice(t, "bob")
	ch, g := groupChannel(t, mallory, bob)
	body := dt.Application(g, 0, 4_000_000)
	var stored, limited int
	var last *wire.StatusError
	for range 60 {
		_, err := enqueue(t, mallory, ch, newMessageID(), body, nil)
		var se *wire.StatusError
		switch {
		case err == nil:
			stored++
		case errors.As(err, &se) && se.Code == qpcv1.Status_STATUS_RESOURCE_EXHAUSTED:
			limited++
			last = se
		default:
			t.Fatal(err)
		}
		clk.Advance(125 * time.Millisecond) // 60 calls in 7.5 s, as in the attack
	}
	budget := float64(cfg.Limits.ByteBurst) + 7.5*float64(cfg.Limits.ByteRate)
	if max := int(budget) / len(body); stored > max || stored < 8 {
		t.Fatalf("stored %d messages of 4 MB in 7.5 s; the byte limit allows at most %d", stored, max)
	}
	if last == nil || last.RetryAfter <= 0 || last.RetryAfter > 5*time.Second ||
		!strings.Contains(last.Message, "limits.byte_rate") || !strings.Contains(last.Message, "retry in") {
		t.Fatalf("refusal %v: want RESOURCE_EXHAUSTED with a retry-after and the option named", last)
	}
	if v := ts.counter(t, "qpcd_rate_limited_total", "scope", obs.ScopeAccountBytes); v != float64(limited) {
		t.Fatalf("qpcd_rate_limited_total{scope=account_bytes} = %v, want %d", v, limited)
	}
	// Another account has its own bucket.
	mustEnqueue(t, bob, ch, body)
	// After the advertised wait the sender may go on.
	_, err := enqueue(t, mallory, ch, newMessageID(), body, nil)
	se := wantStatus(t, "still over", err, qpcv1.Status_STATUS_RESOURCE_EXHAUSTED)
	clk.Advance(se.RetryAfter)
	if _, err := enqueue(t, mallory, ch, newMessageID(), body, nil); err != nil {
		t.Fatalf("after retry-after: %v", err)
	}
}

// A quota refusal is RESOURCE_EXHAUSTED without a retry-after (waiting a
// moment does not help; clients do not retry it) and names the limit, the
// usage and the option.
func TestQuotaRefusalOverRPC(t *testing.T) {
	cfg := svcConfig(t)
	cfg.Quota.MessageBytes = 10 << 20
	cfg.Limits.ByteBurst = 1 << 30
	ts := startServer(t, cfg)
	alice := ts.newDevice(t, "alice")
	ch, g := groupChannel(t, alice)
	body := dt.Application(g, 0, 3_000_000)
	for range 3 {
		mustEnqueue(t, alice, ch, body)
	}
	_, err := enqueue(t, alice, ch, newMessageID(), body, nil)
	se := wantStatus(t, "fourth 3 MB message", err, qpcv1.Status_STATUS_RESOURCE_EXHAUSTED)
	for _, want := range []string{"quota", "stored message bytes", "8.6 MiB in use", "10.0 MiB allowed", "quota.message_bytes", "QPC_QUOTA_MESSAGE_BYTES"} {
		if !strings.Contains(se.Message, want) {
			t.Errorf("%q does not say %q", se.Message, want)
		}
	}
	if se.RetryAfter != 0 {
		t.Errorf("retry-after %v on a quota refusal", se.RetryAfter)
	}
	if v := ts.counter(t, "qpcd_quota_refusals_total", "limit", delivery.LimitMessageBytes); v != 1 {
		t.Fatalf("qpcd_quota_refusals_total{limit=message_bytes} = %v", v)
	}
	if v := ts.counter(t, "qpcd_enqueue_total", "result", "quota"); v != 1 {
		t.Fatalf("qpcd_enqueue_total{result=quota} = %v", v)
	}
}

// The attack: 240 channels created in 2.8 s.
func TestChannelQuotaOverRPC(t *testing.T) {
	cfg := svcConfig(t)
	cfg.Quota.Channels = 25
	ts := startServer(t, cfg)
	mallory := ts.newDevice(t, "mallory")
	var created, refused int
	for range 240 {
		var cr qpcv1.CreateGroupChannelResponse
		err := mallory.call(t, MethodCreateGroupChannel, &qpcv1.CreateGroupChannelRequest{GroupId: newGroupID()}, &cr)
		var se *wire.StatusError
		switch {
		case err == nil:
			created++
		case errors.As(err, &se) && se.Code == qpcv1.Status_STATUS_RESOURCE_EXHAUSTED && strings.Contains(se.Message, "quota.channels"):
			refused++
		default:
			t.Fatal(err)
		}
	}
	if created != 25 || refused != 215 {
		t.Fatalf("created %d, refused %d; want 25 created", created, refused)
	}
	if v := ts.counter(t, "qpcd_quota_refusals_total", "limit", delivery.LimitChannels); v != 215 {
		t.Fatalf("qpcd_quota_refusals_total{limit=channels} = %v", v)
	}
}

// The attack: SendToInbox of 5 MiB to 4 devices stored 20 MiB in
// strangers' inboxes per call (5 calls: 100 MiB).
func TestSendToInboxAmplificationOverRPC(t *testing.T) {
	clk := newFakeClock()
	cfg := testConfig(t)
	ts := startServerWith(t, cfg, clk.Now)
	mallory, victim := ts.newDevice(t, "mallory"), ts.newDevice(t, "victim")
	devs := []*testDevice{victim, ts.addDevice(t, victim), ts.addDevice(t, victim), ts.addDevice(t, victim)}
	ch, _ := groupChannel(t, mallory, victim)
	var to []*qpcv1.InboxRecipient
	for _, d := range devs {
		to = append(to, &qpcv1.InboxRecipient{AccountName: victim.AccountName, DeviceId: d.DeviceID})
	}
	payload := make([]byte, cfg.Limits.MaxPayloadBytes-1024)
	for i := range 5 {
		err := mallory.call(t, MethodSendToInbox, &qpcv1.SendToInboxRequest{ChannelId: ch, Kind: qpcv1.InboxKind_INBOX_KIND_OTHER, Payload: payload, Recipients: to}, &qpcv1.SendToInboxResponse{})
		se := wantStatus(t, fmt.Sprintf("call %d", i), err, qpcv1.Status_STATUS_RESOURCE_EXHAUSTED)
		if !strings.Contains(se.Message, "limits.max_inbox_call_bytes") && !strings.Contains(se.Message, "limits.byte_rate") {
			t.Fatalf("call %d: %q names neither the per-call cap nor the byte rate", i, se.Message)
		}
		clk.Advance(30 * time.Second) // the byte bucket refills: the per-call cap is what refuses
	}
	for _, d := range devs {
		// Only mallory's items count: the invitation notices and
		// account events are the server's.
		for _, it := range fetch(t, d).GetInbox() {
			if it.GetKind() == qpcv1.InboxKind_INBOX_KIND_OTHER {
				t.Fatalf("device %s holds an inbox item of mallory's: %v", d.DeviceID, it)
			}
		}
	}
	// One recipient per call fits the cap; payload x recipients is what
	// the byte bucket is charged.
	err := mallory.call(t, MethodSendToInbox, &qpcv1.SendToInboxRequest{ChannelId: ch, Kind: qpcv1.InboxKind_INBOX_KIND_OTHER, Payload: payload, Recipients: to[:1]}, &qpcv1.SendToInboxResponse{})
	if err != nil {
		t.Fatal(err)
	}
	others := 0
	for _, it := range fetch(t, devs[0]).GetInbox() {
		if it.GetKind() == qpcv1.InboxKind_INBOX_KIND_OTHER {
			others++
		}
	}
	if others != 1 {
		t.Fatalf("inbox holds %d of mallory's items, want 1", others)
	}
	if v := ts.counter(t, "qpcd_quota_refusals_total", "limit", delivery.LimitInboxCallBytes); v < 1 {
		t.Fatalf("qpcd_quota_refusals_total{limit=inbox_call_bytes} = %v", v)
	}
}
