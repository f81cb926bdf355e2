package delivery

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	enqueued        *prometheus.CounterVec // qpcd_enqueue_total{channel_type,result}
	enqueuedBytes   *prometheus.CounterVec // qpcd_enqueue_bytes_total{channel_type}
	inboxItems      *prometheus.CounterVec // qpcd_inbox_items_total{kind}
	fetches         *prometheus.CounterVec // qpcd_fetch_total{method}
	fetchedMessages prometheus.Counter     // qpcd_fetch_messages_total
	fetchedBytes    prometheus.Counter     // qpcd_fetch_bytes_total
	depth           *prometheus.GaugeVec   // qpcd_delivery_queue_depth{channel_type}
	oldest          *prometheus.GaugeVec   // qpcd_delivery_oldest_unfetched_seconds{channel_type}
	wakeups         prometheus.Counter     // qpcd_fanout_wakeups_total
	waiters         prometheus.Gauge       // qpcd_long_poll_waiters
	unreadParks     prometheus.Counter     // qpcd_long_poll_unread_parks_total
	memoryServes    prometheus.Counter     // qpcd_long_poll_memory_answers_total
	viewAnswers     prometheus.Counter     // qpcd_long_poll_view_answers_total
	denied          *prometheus.CounterVec // qpcd_delivery_denied_total{operation}
	expired         *prometheus.CounterVec // qpcd_delivery_expired_total{kind}
	quotaRefusals   *prometheus.CounterVec // qpcd_quota_refusals_total{limit}
	// qpcd_membership_events_total{type}
	membership *prometheus.CounterVec
	// qpcd_invitations_refused_total{reason}
	invitationsRefused *prometheus.CounterVec
	// qpcd_group_infos_stored_total{tree}
	groupInfos *prometheus.CounterVec
}

func newMetrics() *metrics {
	m := &metrics{
		enqueued: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "qpcd_enqueue_total", Help: "Enqueue requests by channel type (group, dm) and result (ok, duplicate, stale_epoch, denied, invalid, quota, error).",
		}, []string{"channel_type", "result"}),
		enqueuedBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "qpcd_enqueue_bytes_total", Help: "Bytes of MLS messages stored, by channel type (group, dm, inbox).",
		}, []string{"channel_type"}),
		inboxItems: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "qpcd_inbox_items_total", Help: "Items put into device inboxes, by kind (welcome, other).",
		}, []string{"kind"}),
		fetches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "qpcd_fetch_total", Help: "Fetches answered, by method (fetch, fetch_wait).",
		}, []string{"method"}),
		fetchedMessages: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "qpcd_fetch_messages_total", Help: "Messages and inbox items returned by fetches.",
		}),
		fetchedBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "qpcd_fetch_bytes_total", Help: "Payload bytes returned by fetches.",
		}),
		depth: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "qpcd_delivery_queue_depth", Help: "Stored messages not yet acknowledged by every device reading them, by channel type (group, dm, inbox); refreshed by the sweeper.",
		}, []string{"channel_type"}),
		oldest: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "qpcd_delivery_oldest_unfetched_seconds", Help: "Age of the oldest unacknowledged message, by channel type (group, dm, inbox); refreshed by the sweeper.",
		}, []string{"channel_type"}),
		wakeups: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "qpcd_fanout_wakeups_total", Help: "Long-polling fetchers woken by an enqueue, an inbox item or a membership change.",
		}),
		unreadParks: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "qpcd_long_poll_unread_parks_total", Help: "Long polls parked without a database read, the device's last read showing nothing could be new.",
		}),
		memoryServes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "qpcd_long_poll_memory_answers_total", Help: "Woken long polls answered from the messages this node had just committed, without a database read.",
		}),
		viewAnswers: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "qpcd_long_poll_view_answers_total", Help: "Long polls answered on arrival from the messages this node had just committed, by the device's last read, without a database read.",
		}),
		waiters: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "qpcd_long_poll_waiters", Help: "FetchWait calls in progress.",
		}),
		denied: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "qpcd_delivery_denied_total", Help: "Delivery requests refused because the caller is not a member of the channel, by operation.",
		}, []string{"operation"}),
		expired: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "qpcd_delivery_expired_total", Help: "Messages, inbox items and invitations deleted by the retention sweep, by kind (message, inbox, invitation).",
		}, []string{"kind"}),
		quotaRefusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "qpcd_quota_refusals_total", Help: "Writes refused by a per-account quota, by limit (message_bytes, messages, inbox_bytes, inbox_items, channels, inbox_call_bytes).",
		}, []string{"limit"}),
		membership: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "qpcd_membership_events_total", Help: "Server-side membership changes announced to channels, by type (invited, joined, declined, left, removed, cancelled).",
		}, []string{"type"}),
		invitationsRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "qpcd_invitations_refused_total", Help: "Invitations and DMs refused, by reason (blocked, per_inviter, per_invitee).",
		}, []string{"reason"}),
		groupInfos: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "qpcd_group_infos_stored_total", Help: "GroupInfos stored with a commit, by where the ratchet tree is (beside: sent separately, embedded: in the GroupInfo, missing: neither).",
		}, []string{"tree"}),
	}
	for _, p := range []string{"beside", "embedded", "missing"} {
		m.groupInfos.WithLabelValues(p)
	}
	for _, t := range []string{"invited", "joined", "declined", "left", "removed", "cancelled"} {
		m.membership.WithLabelValues(t)
	}
	for _, r := range []string{"blocked", "per_inviter", "per_invitee"} {
		m.invitationsRefused.WithLabelValues(r)
	}
	for _, l := range quotaLimits {
		m.quotaRefusals.WithLabelValues(l.name)
	}
	m.quotaRefusals.WithLabelValues(LimitInboxCallBytes)
	for _, t := range []string{"group", "dm"} {
		for _, r := range []string{"ok", "duplicate", "stale_epoch", "denied", "invalid", "quota", "error"} {
			m.enqueued.WithLabelValues(t, r)
		}
	}
	for _, t := range []string{"group", "dm", "inbox"} {
		m.enqueuedBytes.WithLabelValues(t)
		m.depth.WithLabelValues(t)
		m.oldest.WithLabelValues(t)
	}
	for _, k := range []string{"welcome", "other"} {
		m.inboxItems.WithLabelValues(k)
	}
	for _, k := range []string{"fetch", "fetch_wait"} {
		m.fetches.WithLabelValues(k)
	}
	for _, o := range []string{"enqueue", "send_to_inbox", "add_members", "remove_members", "ack", "group_info"} {
		m.denied.WithLabelValues(o)
	}
	for _, k := range []string{"message", "inbox", "invitation"} {
		m.expired.WithLabelValues(k)
	}
	return m
}

func (m *metrics) register(r prometheus.Registerer) error {
	var errs []error
	for _, c := range []prometheus.Collector{m.enqueued, m.enqueuedBytes, m.inboxItems, m.fetches, m.fetchedMessages,
		m.fetchedBytes, m.depth, m.oldest, m.wakeups, m.unreadParks, m.memoryServes, m.viewAnswers, m.waiters, m.denied, m.expired, m.quotaRefusals,
		m.membership, m.invitationsRefused, m.groupInfos} {
		if err := r.Register(c); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("delivery: registering metrics: %w", errors.Join(errs...))
	}
	return nil
}
