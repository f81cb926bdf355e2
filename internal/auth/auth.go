// Package auth keeps accounts, devices, login challenges, access and refresh
// tokens, invites and the token-signing keys, all in the store.
package auth

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/quicprochat/quicprochat/internal/config"
	"github.com/quicprochat/quicprochat/internal/keylog"
	"github.com/quicprochat/quicprochat/internal/obs"
	"github.com/quicprochat/quicprochat/internal/store"
)

// Errors. The server maps each to a wire status in one place
// (internal/server/rpc.go, serviceErrors).
var (
	ErrInvalidName        = errors.New("auth: invalid account name")
	ErrInvalidKey         = errors.New("auth: invalid signature key")
	ErrInvalidID          = errors.New("auth: invalid id")
	ErrNameTaken          = errors.New("auth: account name taken")
	ErrKeyInUse           = errors.New("auth: signature key already registered")
	ErrRegistrationClosed = errors.New("auth: registration is closed")
	ErrInviteInvalid      = errors.New("auth: invite code invalid, used, revoked or expired")
	// ErrInviteRequired: an invite-only server and no code was given (not
	// the same as a bad code: the user has to ask the operator for one).
	ErrInviteRequired  = errors.New("auth: this server registers by invite only: ask its operator for an invite code (qpcctl invites create) and register with --invite CODE")
	ErrLoginFailed     = errors.New("auth: login failed")
	ErrDeviceRevoked   = errors.New("auth: device revoked")
	ErrAccountDisabled = errors.New("auth: account disabled")
	ErrNotFound        = errors.New("auth: not found")
	ErrTooManyDevices  = errors.New("auth: too many devices on this account")

	ErrTokenMissing   = errors.New("auth: access token missing")
	ErrTokenMalformed = errors.New("auth: access token malformed")
	ErrTokenForged    = errors.New("auth: access token signature invalid or key unknown")
	ErrTokenExpired   = errors.New("auth: access token expired")
	ErrTokenRevoked   = errors.New("auth: access token revoked")
	ErrWrongDevice    = errors.New("auth: token belongs to another device")

	ErrRefreshInvalid = errors.New("auth: refresh token unknown")
	ErrRefreshExpired = errors.New("auth: refresh token expired")
	ErrRefreshReused  = errors.New("auth: refresh token reused; every token of the device is revoked, log in again")
)

// Defaults for Options fields left zero.
const (
	DefaultAccessTTL     = 15 * time.Minute
	DefaultRefreshTTL    = 30 * 24 * time.Hour
	DefaultChallengeTTL  = time.Minute
	DefaultMaxDevices    = 32
	DefaultLastSeenEvery = 5 * time.Minute
	// keyReloadEvery bounds how often an unknown key id makes the service
	// re-read token_keys (another node may have rotated).
	keyReloadEvery = time.Second
)

// Options configures New.
type Options struct {
	DB           *store.DB
	Logger       *slog.Logger     // nil: discard
	Audit        *obs.Audit       // nil: no audit events
	Now          func() time.Time // nil: time.Now
	Registration string           // config.RegistrationOpen|Invite|Closed; "" = open
	AccessTTL    time.Duration    // default 15m
	RefreshTTL   time.Duration    // default 720h
	ChallengeTTL time.Duration    // default 1m
	MaxDevices   int              // active devices per account, default 32
	// LastSeenEvery is how stale a device's last-seen time may get while
	// it makes authenticated calls: Authenticate writes it at most once
	// per this interval per device (a write per request would cost more
	// than the answer is worth). Default 5m.
	LastSeenEvery time.Duration
	// Events receives device added/revoked notices for the account's other
	// devices; nil: none are sent.
	Events EventSink
	// KeyLog records identity keys and device certificates in the key
	// transparency log, inside the transaction that stores them; nil: not
	// logged (tests of auth alone).
	KeyLog KeyLog
}

// KeyLog appends to the key transparency log (internal/keylog/logstore).
type KeyLog interface {
	AppendTx(ctx context.Context, tx *sql.Tx, e keylog.Entry, deviceID string) error
}

// Service is safe for concurrent use.
type Service struct {
	db           *store.DB
	log          *slog.Logger
	audit        *obs.Audit
	now          func() time.Time
	registration string
	accessTTL    time.Duration
	refreshTTL   time.Duration
	challengeTTL time.Duration
	maxDevices   int
	events       EventSink
	keyLog       KeyLog
	seenEvery    time.Duration

	seen lastSeen

	keys keyring

	verified verifiedTokens
	devices  deviceStates
}

// New opens the service and makes sure an active signing key exists.
func New(ctx context.Context, o Options) (*Service, error) {
	if o.DB == nil {
		return nil, errors.New("auth: Options.DB is nil")
	}
	s := &Service{
		db:           o.DB,
		log:          o.Logger,
		audit:        o.Audit,
		now:          o.Now,
		registration: o.Registration,
		accessTTL:    o.AccessTTL,
		refreshTTL:   o.RefreshTTL,
		challengeTTL: o.ChallengeTTL,
		maxDevices:   o.MaxDevices,
		events:       o.Events,
		keyLog:       o.KeyLog,
		seenEvery:    o.LastSeenEvery,
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.registration == "" {
		s.registration = config.RegistrationOpen
	}
	switch s.registration {
	case config.RegistrationOpen, config.RegistrationInvite, config.RegistrationClosed:
	default:
		return nil, fmt.Errorf("auth: registration policy %q; want open, invite or closed", s.registration)
	}
	if s.accessTTL <= 0 {
		s.accessTTL = DefaultAccessTTL
	}
	if s.refreshTTL <= 0 {
		s.refreshTTL = DefaultRefreshTTL
	}
	if s.challengeTTL <= 0 {
		s.challengeTTL = DefaultChallengeTTL
	}
	if s.maxDevices <= 0 {
		s.maxDevices = DefaultMaxDevices
	}
	if s.seenEvery <= 0 {
		s.seenEvery = DefaultLastSeenEvery
	}
	if err := s.ensureSigningKey(ctx); err != nil {
		return nil, err
	}
	// Several nodes on one PostgreSQL database: a device or account change
	// made on another node drops this node's cached states at once, and a
	// token-key rotation there makes this node load the keys (so it stops
	// signing with the retired one). A resync (broadcasts possibly missed)
	// does both.
	o.DB.Subscribe(topicDevices, func(string, bool) { s.devices.invalidate() })
	o.DB.Subscribe(topicKeys, func(_ string, resync bool) {
		if resync {
			s.devices.invalidate()
		}
		go func() {
			if err := s.loadKeys(context.Background()); err != nil {
				s.log.Warn("auth: reload token keys after another node's rotation", "error", err)
			}
		}()
	})
	return s, nil
}

// Broadcast topics between the nodes of a deployment.
const (
	topicDevices = "auth.devices"
	topicKeys    = "auth.keys"
)

// devicesChanged is called after a transaction that changed a device's or
// an account's state or a device's token generation.
func (s *Service) devicesChanged() {
	s.devices.invalidate()
	s.db.Broadcast(topicDevices, "")
}

// Close wipes the in-memory signing keys.
func (s *Service) Close() {
	s.keys.wipe()
}

// source is the context key for the caller's network address.
type sourceKey struct{}

// WithSource returns ctx carrying the caller's address for audit events.
func WithSource(ctx context.Context, ip string) context.Context {
	return context.WithValue(ctx, sourceKey{}, ip)
}

func (s *Service) event(ctx context.Context, name string, attrs ...slog.Attr) {
	if ip, ok := ctx.Value(sourceKey{}).(string); ok && ip != "" {
		attrs = append(attrs, slog.String("ip", ip))
	}
	s.audit.Event(ctx, name, attrs...)
}

// newID returns n random bytes, hex-encoded.
func newID(n int) (string, error) {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("auth: random: %w", err)
	}
	return hex.EncodeToString(b), nil
}

// idLen is the length of account and device ids: 16 random bytes in hex.
const idLen = 32

// ValidID reports whether id looks like an account or device id: 32
// lower-case hex characters.
func ValidID(id string) bool {
	if len(id) != idLen {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// MaxNameLen is the longest account name.
const MaxNameLen = 32

// ValidAccountName reports whether name is 1-32 characters of [a-z0-9._-]
// starting with a letter or digit.
func ValidAccountName(name string) bool {
	if len(name) == 0 || len(name) > MaxNameLen {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		alnum := c >= 'a' && c <= 'z' || c >= '0' && c <= '9'
		if !alnum && (i == 0 || c != '.' && c != '_' && c != '-') {
			return false
		}
	}
	return true
}

// checkKey accepts a 32-byte Ed25519 public key that is not all zeros.
func checkKey(k []byte) error {
	if len(k) != ed25519.PublicKeySize {
		return fmt.Errorf("%w: %d bytes, want %d", ErrInvalidKey, len(k), ed25519.PublicKeySize)
	}
	var or byte
	for _, b := range k {
		or |= b
	}
	if or == 0 {
		return fmt.Errorf("%w: all zeros", ErrInvalidKey)
	}
	return nil
}

func hash(b []byte) []byte {
	h := sha256.Sum256(b)
	return h[:]
}

func ms(t time.Time) int64 { return t.UnixMilli() }

func fromMS(v int64) time.Time {
	if v == 0 {
		return time.Time{}
	}
	return time.UnixMilli(v)
}

// keyring holds the token-signing keys in memory.
type keyring struct {
	mu         sync.RWMutex
	byID       map[string]*signingKey
	active     *signingKey
	lastReload time.Time
}
