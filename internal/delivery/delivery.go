// Package delivery is the MLS Delivery Service: channels as append-only logs with epoch fencing, device inboxes, fetch and long-poll, retention.
//
// A channel (16-byte id) is bound to one MLS group. Group channels get a
// random id; a DM channel's id is derived from its two accounts, so a second
// create returns the same channel. A message is stored once per channel and
// fanned out on read: every member device reads the log after its own
// cursor. The server reads only the cleartext MLS framing (group id, epoch,
// content type) to fence commits: a commit must carry the channel's current
// epoch and advances it, so of two concurrent commits exactly one wins.
//
// Who may change membership (members.go): any member may invite; joining
// another account takes its consent (a pending invitation it accepts); a
// member removes itself, the channel's admin removes anyone; every change
// is announced in the channel's log. A DM's membership is its two
// accounts, the peer joining by accepting.
package delivery

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/quicprochat/quicprochat/internal/obs"
	"github.com/quicprochat/quicprochat/internal/store"
)

// Sentinel errors; the server maps them to wire statuses.
var (
	// ErrNotFound: something a member asked for does not exist (a GroupInfo
	// not stored yet) (NOT_FOUND).
	ErrNotFound = errors.New("delivery: not found")
	// ErrNotMember: the caller is not a member of the channel, or there is
	// no such channel (PERMISSION_DENIED). The two are one error so that a
	// non-member cannot probe which channel ids exist (a DM's id is derived
	// from two account ids).
	ErrNotMember = errors.New("delivery: not a member of the channel (or no such channel)")
	// ErrStaleEpoch: a commit for an epoch other than the channel's current
	// one, or a message for an epoch outside the accepted window (STALE_EPOCH).
	ErrStaleEpoch = errors.New("delivery: stale epoch")
	// ErrInvalidMessage: the MLS message does not decode, belongs to another
	// group or is of a kind a channel does not carry (INVALID_ARGUMENT).
	ErrInvalidMessage = errors.New("delivery: invalid MLS message")
	// ErrInvalidRequest: a request that cannot be served as asked
	// (INVALID_ARGUMENT).
	ErrInvalidRequest = errors.New("delivery: invalid request")
	// ErrMessageIDConflict: the message id was used by another sender in
	// this channel (ALREADY_EXISTS).
	ErrMessageIDConflict = errors.New("delivery: message id already used by another sender")
	// ErrMessageIDExpired: a time-ordered (UUIDv7) message id older than the
	// channel's message lifetime, less an hour for clock skew. Its original
	// may already have been swept, and storing it again would hand the same
	// message out twice (INVALID_ARGUMENT; send it under a new id).
	ErrMessageIDExpired = errors.New("delivery: message id is older than the channel's message lifetime")
	// ErrChannelExists: the group id is bound to a channel the caller is not
	// a member of (ALREADY_EXISTS).
	ErrChannelExists = errors.New("delivery: a channel for this group id exists")
	// ErrTooLarge: the payload is above limits.max_payload_bytes, or a
	// SendToInbox's payload times its recipients is above
	// limits.max_inbox_call_bytes (RESOURCE_EXHAUSTED).
	ErrTooLarge = errors.New("delivery: payload too large")
	// ErrUnknownAccount: no such active account or device (NOT_FOUND).
	ErrUnknownAccount = errors.New("delivery: unknown account or device")
)

// Account is an account as the delivery service sees it.
type Account struct {
	ID     string
	Name   string
	Active bool
}

// Device is a device as the delivery service sees it.
type Device struct {
	ID        string
	AccountID string
	Active    bool
}

// Directory resolves account names and devices (internal/auth). Unknown
// names or ids return an error wrapping ErrUnknownAccount.
type Directory interface {
	AccountByName(ctx context.Context, name string) (Account, error)
	AccountByID(ctx context.Context, id string) (Account, error)
	Device(ctx context.Context, deviceID string) (Device, error)
	// Devices lists an account's devices (revoked ones included).
	Devices(ctx context.Context, accountID string) ([]Device, error)
}

// Caller is the authenticated device making a request.
type Caller struct {
	AccountID string
	DeviceID  string
}

// Options configures New.
type Options struct {
	DB        *store.DB
	Directory Directory
	Logger    *slog.Logger     // nil: discard
	Audit     *obs.Audit       // nil: no audit events
	Now       func() time.Time // nil: time.Now
	// Retention is how long messages and inbox items are kept; default 168h.
	Retention time.Duration
	// EpochsBehind: application and proposal messages are accepted for the
	// current epoch and this many earlier ones; default 0 (the config's
	// default is 2 and is passed in by the server).
	EpochsBehind int
	// MaxPayload caps an MLS message, GroupInfo or inbox payload; default 5 MiB.
	MaxPayload int
	// MaxInboxCallBytes caps what one SendToInbox stores: the payload
	// times its recipient devices; default 8 MiB.
	MaxInboxCallBytes int
	// Quota bounds what each account keeps stored (quota.go); the zero
	// value is no limit (the server passes the configured defaults).
	Quota Quota
	// LongPollMax caps FetchWait; default 5m.
	LongPollMax time.Duration
	// FetchLinger is how long a woken FetchWait waits for more messages
	// before it reads, so that under load one read serves several
	// messages; default 2ms, negative: none.
	FetchLinger time.Duration
	// SweepInterval is how often expired messages are deleted and the queue
	// gauges refreshed; default 30s. Negative: no background sweeper (tests
	// call Sweep and RefreshStats).
	SweepInterval time.Duration
	// InvitationTTL is how long an invitation waits for an answer; default
	// DefaultInvitationTTL.
	InvitationTTL time.Duration
	// InvitationsPerHour caps the invitations one account sends per hour;
	// default DefaultInvitationsPerHour.
	InvitationsPerHour int
	// MaxPendingInvitations caps the unanswered invitations one account
	// holds; default DefaultMaxPendingPerInvitee.
	MaxPendingInvitations int
	// MaxHeldWelcome caps a Welcome held for a pending invitee; default
	// DefaultMaxHeldWelcome.
	MaxHeldWelcome int
	// Registry receives the service's metrics when not nil.
	Registry prometheus.Registerer
}

// Service is the delivery service. It is safe for concurrent use.
type Service struct {
	db          *store.DB
	dir         Directory
	log         *slog.Logger
	audit       *obs.Audit
	now         func() time.Time
	retention   time.Duration
	behind      uint64
	maxPayload  int
	maxInbox    int
	quota       Quota
	longPollMax time.Duration
	linger      time.Duration
	hub         *hub
	deadlines   *pollDeadlines // long-poll timeouts (deadlines.go)
	metrics     *metrics
	batcher     enqueueBatcher // PostgreSQL: enqueues queued per channel (enqueue_pg.go)

	inviteTTL      time.Duration
	invitesPerHour int
	maxPending     int
	maxHeldWelcome int

	stop     chan struct{}
	stopOnce sync.Once
	done     chan struct{}
}

// New builds the service and starts its sweeper (unless SweepInterval < 0).
func New(o Options) (*Service, error) {
	if o.DB == nil || o.Directory == nil {
		return nil, errors.New("delivery: Options.DB and Options.Directory are required")
	}
	s := &Service{
		db: o.DB, dir: o.Directory, log: o.Logger, audit: o.Audit, now: o.Now,
		retention: o.Retention, behind: uint64(max(o.EpochsBehind, 0)), maxPayload: o.MaxPayload,
		maxInbox: o.MaxInboxCallBytes, quota: o.Quota, longPollMax: o.LongPollMax,
		stop: make(chan struct{}), done: make(chan struct{}),
		inviteTTL: o.InvitationTTL, invitesPerHour: o.InvitationsPerHour, maxPending: o.MaxPendingInvitations,
		maxHeldWelcome: o.MaxHeldWelcome,
		batcher:        enqueueBatcher{queues: map[string][]*pgEnqueue{}},
	}
	if s.inviteTTL <= 0 {
		s.inviteTTL = DefaultInvitationTTL
	}
	if s.invitesPerHour <= 0 {
		s.invitesPerHour = DefaultInvitationsPerHour
	}
	if s.maxPending <= 0 {
		s.maxPending = DefaultMaxPendingPerInvitee
	}
	if s.maxHeldWelcome <= 0 {
		s.maxHeldWelcome = DefaultMaxHeldWelcome
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.retention <= 0 {
		s.retention = 7 * 24 * time.Hour
	}
	if s.maxPayload <= 0 {
		s.maxPayload = 5 << 20
	}
	if s.maxInbox <= 0 {
		s.maxInbox = 8 << 20
	}
	if s.longPollMax <= 0 {
		s.longPollMax = 5 * time.Minute
	}
	switch {
	case o.FetchLinger == 0:
		s.linger = 2 * time.Millisecond
	case o.FetchLinger > 0:
		s.linger = o.FetchLinger
	}
	s.metrics = newMetrics()
	s.hub = newHub(s.metrics)
	s.deadlines = newPollDeadlines()
	s.hub.listen = o.DB.ListenState
	// A woken long poll may be answered from the messages this node
	// committed (hubrecent.go).
	s.hub.memoryServe = true
	if o.DB.Backend() == store.BackendPostgres {
		// Several nodes: wake-ups cross them through the database's
		// LISTEN/NOTIFY (store.Broadcast/Subscribe).
		s.hub.broadcast = o.DB.Broadcast
		o.DB.Subscribe(topicChannel, func(p string, resync bool) { s.hub.applyRemote(topicChannel, p, resync) })
		o.DB.Subscribe(topicKey, func(p string, resync bool) { s.hub.applyRemote(topicKey, p, resync) })
	}
	if o.Registry != nil {
		if err := s.metrics.register(o.Registry); err != nil {
			return nil, err
		}
	}
	interval := o.SweepInterval
	if interval == 0 {
		interval = 30 * time.Second
	}
	if interval > 0 {
		go s.sweeper(interval)
	} else {
		close(s.done)
	}
	return s, nil
}

// Close stops the sweeper. It does not close the store.
func (s *Service) Close() error {
	s.stopOnce.Do(func() { close(s.stop) })
	<-s.done
	return nil
}

// Channel types as stored (channels.kind) and on the wire.
const (
	KindGroup = 1
	KindDM    = 2
)

// Inbox kinds as stored (inbox.kind) and on the wire.
const (
	InboxWelcome = 1
	InboxOther   = 2
	// InboxAccountEvent (3, events.go) is the other server-written kind.
	// InboxMembership: a server-written MembershipEvent for an account
	// that cannot read the channel's log (an invitee, a removed member).
	InboxMembership = 4
)

// chargedInbox selects the inbox kinds a sender's quota pays for: those a
// client sends (SendToInbox). The server's own notices (account and
// membership events) are charged to nobody, so acknowledging or expiring
// them must not give room back to the account named as their sender.
const chargedInbox = `kind IN (1, 2)`

func kindLabel(kind int) string {
	if kind == KindDM {
		return "dm"
	}
	return "group"
}
