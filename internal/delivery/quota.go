package delivery

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
)

// Per-account quotas.
//
// One account must not be able to fill the server's disk: without a bound,
// 60 Enqueues of 4 MB stored 228 MiB in 7.5 s, and every stored byte stays
// for the retention period. So each account's stored data is counted in
// account_usage (one row per account, updated in the same transaction as
// the write that stores or deletes the data, never by scanning) and a write
// that would take the account past a limit is refused with a QuotaError.
//
// What counts against an account is what it sent that the server still
// keeps: channel messages until the retention sweep deletes them, inbox
// items until their recipient acknowledges them or they expire (a Welcome
// held for a pending invitee counts as an inbox item from when it is
// stored until it is acknowledged after acceptance, or dropped by a
// decline, a withdrawal or the invitation's expiry), and the channels it
// created (channels are not deleted). What the server writes itself
// (membership events in a channel's log, account and membership notices
// in inboxes) is charged to nobody: it is bounded by the invitation limits
// and the request rate limit. GroupInfos (and the
// ratchet trees stored beside them) are not counted: there is one per
// channel, replaced by each commit, so they are bounded by the channel
// quota times the payload cap.
//
// On PostgreSQL the enqueue path holds the channel's row lock and then the
// account's usage row lock (SELECT ... FOR UPDATE) while it checks and
// writes, so concurrent requests of one account, on any node, queue and the
// limit is never overshot; the other writers run at SERIALIZABLE, where a
// conflicting update of the usage row aborts and retries. On SQLite the one
// writer does the same.

// ErrQuotaExceeded matches every *QuotaError (RESOURCE_EXHAUSTED).
var ErrQuotaExceeded = errors.New("delivery: account quota exceeded")

// Quota bounds what one account keeps stored. A zero field is no limit.
type Quota struct {
	MessageBytes int64 // bytes of stored channel messages the account sent
	Messages     int64 // how many
	InboxBytes   int64 // bytes of inbox items it sent, not yet acknowledged or expired
	InboxItems   int64 // how many
	Channels     int64 // channels it created, groups and DMs
}

// Usage is what an account keeps stored, in the units of Quota.
type Usage struct {
	MessageBytes int64
	Messages     int64
	InboxBytes   int64
	InboxItems   int64
	Channels     int64
}

func (u Usage) plus(d Usage) Usage {
	return Usage{
		MessageBytes: u.MessageBytes + d.MessageBytes, Messages: u.Messages + d.Messages,
		InboxBytes: u.InboxBytes + d.InboxBytes, InboxItems: u.InboxItems + d.InboxItems,
		Channels: u.Channels + d.Channels,
	}
}

// Limit names: the label values of qpcd_quota_refusals_total and
// QuotaError.Limit.
const (
	LimitMessageBytes = "message_bytes"
	LimitMessages     = "messages"
	LimitInboxBytes   = "inbox_bytes"
	LimitInboxItems   = "inbox_items"
	LimitChannels     = "channels"
	// LimitInboxCallBytes is the per-call cap on SendToInbox (payload
	// times recipients), not a stored-data quota.
	LimitInboxCallBytes = "inbox_call_bytes"
)

// quotaLimit describes one limit: how to read it, what it means, the
// option an operator raises, and what gives room back.
type quotaLimit struct {
	name   string
	what   string
	bytes  bool
	option string
	frees  string
	used   func(Usage) int64
	max    func(Quota) int64
}

var quotaLimits = []quotaLimit{
	{LimitMessageBytes, "stored message bytes", true, "quota.message_bytes (QPC_QUOTA_MESSAGE_BYTES)",
		"messages leave the quota when they expire",
		func(u Usage) int64 { return u.MessageBytes }, func(q Quota) int64 { return q.MessageBytes }},
	{LimitMessages, "stored messages", false, "quota.messages (QPC_QUOTA_MESSAGES)",
		"messages leave the quota when they expire",
		func(u Usage) int64 { return u.Messages }, func(q Quota) int64 { return q.Messages }},
	{LimitInboxBytes, "unacknowledged inbox bytes sent", true, "quota.inbox_bytes (QPC_QUOTA_INBOX_BYTES)",
		"inbox items leave the quota when their recipients fetch them or they expire",
		func(u Usage) int64 { return u.InboxBytes }, func(q Quota) int64 { return q.InboxBytes }},
	{LimitInboxItems, "unacknowledged inbox items sent", false, "quota.inbox_items (QPC_QUOTA_INBOX_ITEMS)",
		"inbox items leave the quota when their recipients fetch them or they expire",
		func(u Usage) int64 { return u.InboxItems }, func(q Quota) int64 { return q.InboxItems }},
	{LimitChannels, "channels created", false, "quota.channels (QPC_QUOTA_CHANNELS)",
		"channels are kept, so only the operator can raise it",
		func(u Usage) int64 { return u.Channels }, func(q Quota) int64 { return q.Channels }},
}

// QuotaError is a refusal by a per-account limit. Its message names the
// limit, the usage, the request and the option an operator would raise.
type QuotaError struct {
	Limit  string // LimitMessageBytes, ...
	Used   int64  // what the account keeps stored now
	Adding int64  // what the request would add
	Max    int64  // the limit
	Option string // the configuration option that sets it
	Bytes  bool   // Used, Adding and Max are bytes
	what   string
	frees  string
}

func (e *QuotaError) Error() string {
	f := func(n int64) string { return fmt.Sprint(n) }
	if e.Bytes {
		f = FormatBytes
	}
	return fmt.Sprintf("delivery: account quota exceeded: %s: %s in use + %s in this request > %s allowed per account (%s); %s, or ask the operator to raise %s",
		e.what, f(e.Used), f(e.Adding), f(e.Max), e.Limit, e.frees, e.Option)
}

// Is makes errors.Is(err, ErrQuotaExceeded) true.
func (e *QuotaError) Is(target error) bool { return target == ErrQuotaExceeded }

// FormatBytes prints a byte count in binary units (12.0 MiB), exactly below 1 KiB.
func FormatBytes(n int64) string {
	const unit = 1024
	if n < unit && n > -unit {
		return fmt.Sprintf("%d B", n)
	}
	v, i := float64(n), 0
	for (v >= unit*unit || v <= -unit*unit) && i < 4 {
		v /= unit
		i++
	}
	return fmt.Sprintf("%.1f %ciB", v/unit, "KMGTP"[i])
}

// checkQuota decides whether an account using u may store add more. It
// reads nothing and writes nothing: both engines share it, and tests drive
// it without a database. The whole request must fit (usage + add <= max),
// so concurrent requests, which the callers serialise on the usage row,
// never overshoot.
func checkQuota(u, add Usage, q Quota) error {
	for _, l := range quotaLimits {
		m, a := l.max(q), l.used(add)
		if m <= 0 || a <= 0 {
			continue
		}
		if used := max(l.used(u), 0); used+a > m {
			return &QuotaError{Limit: l.name, Used: used, Adding: a, Max: m, Option: l.option, Bytes: l.bytes, what: l.what, frees: l.frees}
		}
	}
	return nil
}

// Statements of the usage row.
const (
	usageSelect = `SELECT message_bytes, messages, inbox_bytes, inbox_items, channels FROM account_usage WHERE account_id = ?`
	usageAdd    = `INSERT INTO account_usage (account_id, message_bytes, messages, inbox_bytes, inbox_items, channels)
		VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (account_id) DO UPDATE SET
		message_bytes = account_usage.message_bytes + excluded.message_bytes,
		messages = account_usage.messages + excluded.messages,
		inbox_bytes = account_usage.inbox_bytes + excluded.inbox_bytes,
		inbox_items = account_usage.inbox_items + excluded.inbox_items,
		channels = account_usage.channels + excluded.channels`
	usageEnsurePG = `INSERT INTO account_usage (account_id) VALUES (?) ON CONFLICT (account_id) DO NOTHING`
)

// lockUsage reads an account's usage inside a write transaction. On
// PostgreSQL it locks the row (creating it first if needed), so the
// transaction's check and update are not interleaved with another
// request's of the same account. On SQLite the single writer does that.
func (s *Service) lockUsage(ctx context.Context, tx *sql.Tx, accountID string) (Usage, error) {
	var u Usage
	q := usageSelect + s.db.ForUpdate()
	for attempt := 0; ; attempt++ {
		st, err := s.db.WriteStmt(ctx, tx, q)
		if err != nil {
			return Usage{}, err
		}
		err = st.QueryRowContext(ctx, accountID).Scan(&u.MessageBytes, &u.Messages, &u.InboxBytes, &u.InboxItems, &u.Channels)
		switch {
		case err == nil:
			return u, nil
		case !errors.Is(err, sql.ErrNoRows):
			return Usage{}, err
		case s.db.ForUpdate() == "" || attempt > 0:
			return Usage{}, nil
		}
		// PostgreSQL: no row to lock yet. Create it (a concurrent creator
		// makes this wait for its commit) and lock it.
		if _, err := tx.ExecContext(ctx, usageEnsurePG, accountID); err != nil {
			return Usage{}, err
		}
	}
}

// addUsage adds d (negative fields subtract) to an account's usage row.
func (s *Service) addUsage(ctx context.Context, tx *sql.Tx, accountID string, d Usage) error {
	st, err := s.db.WriteStmt(ctx, tx, usageAdd)
	if err != nil {
		return err
	}
	_, err = st.ExecContext(ctx, accountID, d.MessageBytes, d.Messages, d.InboxBytes, d.InboxItems, d.Channels)
	return err
}

// charge checks add against the account's quota and records it, in the
// caller's write transaction. A refusal is counted by limit.
func (s *Service) charge(ctx context.Context, tx *sql.Tx, accountID string, add Usage) error {
	u, err := s.lockUsage(ctx, tx, accountID)
	if err != nil {
		return err
	}
	return s.chargeFrom(ctx, tx, accountID, u, add)
}

// chargeFrom is charge for a caller that has read the account's usage in
// tx already, with the row locked (SQLite's one writer: any read in its
// transaction).
func (s *Service) chargeFrom(ctx context.Context, tx *sql.Tx, accountID string, u, add Usage) error {
	if err := checkQuota(u, add, s.quota); err != nil {
		return err
	}
	return s.addUsage(ctx, tx, accountID, add)
}

// release subtracts what was deleted from each account's usage, accounts
// in order (a fixed lock order between transactions that update several).
func (s *Service) release(ctx context.Context, tx *sql.Tx, freed map[string]Usage) error {
	ids := make([]string, 0, len(freed))
	for id := range freed {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		f := freed[id]
		if err := s.addUsage(ctx, tx, id, Usage{
			MessageBytes: -f.MessageBytes, Messages: -f.Messages,
			InboxBytes: -f.InboxBytes, InboxItems: -f.InboxItems, Channels: -f.Channels,
		}); err != nil {
			return err
		}
	}
	return nil
}

// countQuotaRefusal counts a refusal by its limit and audits it with the
// account (the metric has no account label; the audit line names who).
func (s *Service) countQuotaRefusal(ctx context.Context, c Caller, err error) {
	var qe *QuotaError
	if errors.As(err, &qe) {
		s.metrics.quotaRefusals.WithLabelValues(qe.Limit).Inc()
		s.audit.Event(ctx, "quota.refused", slog.String("account_id", c.AccountID), slog.String("device_id", c.DeviceID),
			slog.String("limit", qe.Limit), slog.Int64("used", qe.Used), slog.Int64("adding", qe.Adding), slog.Int64("max", qe.Max))
	}
}

// AccountUsage is an account's usage and the quota it is held to.
type AccountUsage struct {
	Usage Usage
	Quota Quota
}

// Usage returns what an account keeps stored, as counted, and its quota.
func (s *Service) Usage(ctx context.Context, accountID string) (AccountUsage, error) {
	var u Usage
	err := s.db.ReadTx(ctx, func(tx *sql.Tx) error {
		u = Usage{}
		err := tx.QueryRowContext(ctx, usageSelect, accountID).Scan(&u.MessageBytes, &u.Messages, &u.InboxBytes, &u.InboxItems, &u.Channels)
		if errors.Is(err, sql.ErrNoRows) {
			return nil
		}
		return err
	})
	if err != nil {
		return AccountUsage{}, fmt.Errorf("delivery: usage: %w", err)
	}
	return AccountUsage{Usage: u, Quota: s.quota}, nil
}

// RecountUsage rebuilds an account's usage row from the stored messages,
// inbox items and channels (one scan of that account's data), for an
// operator who suspects the counters drifted. It returns the usage before
// and after.
func (s *Service) RecountUsage(ctx context.Context, accountID string) (before, after Usage, err error) {
	err = s.db.WriteTx(ctx, func(tx *sql.Tx) error {
		var e error
		if before, e = s.lockUsage(ctx, tx, accountID); e != nil {
			return e
		}
		after = Usage{}
		if e := tx.QueryRowContext(ctx, `SELECT COALESCE(SUM(LENGTH(body)), 0), COUNT(*) FROM messages WHERE sender_account = ?`, accountID).
			Scan(&after.MessageBytes, &after.Messages); e != nil {
			return e
		}
		// Inbox items it sent (not the server's notices naming it) and
		// Welcomes held for invitees until they answer.
		if e := tx.QueryRowContext(ctx, `SELECT COALESCE(SUM(b), 0), COALESCE(SUM(n), 0) FROM (
			SELECT SUM(LENGTH(body)) AS b, COUNT(*) AS n FROM inbox WHERE sender_account = ? AND `+chargedInbox+`
			UNION ALL
			SELECT SUM(LENGTH(body)), COUNT(*) FROM invitation_welcomes WHERE sender_account = ?) t`, accountID, accountID).
			Scan(&after.InboxBytes, &after.InboxItems); e != nil {
			return e
		}
		if e := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM channels WHERE created_by = ?`, accountID).Scan(&after.Channels); e != nil {
			return e
		}
		_, e = tx.ExecContext(ctx, `INSERT INTO account_usage (account_id, message_bytes, messages, inbox_bytes, inbox_items, channels)
			VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (account_id) DO UPDATE SET message_bytes = excluded.message_bytes,
			messages = excluded.messages, inbox_bytes = excluded.inbox_bytes, inbox_items = excluded.inbox_items, channels = excluded.channels`,
			accountID, after.MessageBytes, after.Messages, after.InboxBytes, after.InboxItems, after.Channels)
		return e
	})
	if err != nil {
		return Usage{}, Usage{}, fmt.Errorf("delivery: recount usage: %w", err)
	}
	if before != after {
		s.log.Info("delivery: account usage recounted", "account_id", accountID, "before", fmt.Sprintf("%+v", before), "after", fmt.Sprintf("%+v", after))
	}
	return before, after, nil
}

// QuotaOption returns the option that sets a limit ("" for an unknown name).
func QuotaOption(limit string) string {
	for _, l := range quotaLimits {
		if l.name == limit {
			return strings.SplitN(l.option, " ", 2)[0]
		}
	}
	return ""
}

// chargeChannel counts a channel the caller's account creates, inside the
// creating transaction; a refusal is counted here (a refusal ends the
// transaction, it is not retried).
func (s *Service) chargeChannel(ctx context.Context, tx *sql.Tx, c Caller) error {
	err := s.charge(ctx, tx, c.AccountID, Usage{Channels: 1})
	s.countQuotaRefusal(ctx, c, err)
	return err
}
