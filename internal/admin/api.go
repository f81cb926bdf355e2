// Package admin is qpcd's admin API (HTTP/JSON on a Unix socket, no network listener), its client for qpcctl, and the offline backup, verify and restore work qpcctl does on files.
package admin

import (
	"context"
	"errors"
	"time"
)

// API paths (all under the Unix socket; the host part of URLs is ignored).
const (
	PathStatus         = "/v1/status"
	PathBackup         = "/v1/backup"
	PathBackupComplete = "/v1/backup/complete"
	PathRotateDBKey    = "/v1/rotate/db-key"
	PathRotateTLS      = "/v1/rotate/tls"
	PathRotateTokenKey = "/v1/rotate/token-key"
	PathDrain          = "/v1/drain"
	PathAccounts       = "/v1/accounts"
	PathDevices        = "/v1/devices"
	PathInvites        = "/v1/invites"
	PathChannels       = "/v1/channels"
	PathKeyLog         = "/v1/keylog"
)

// Error kinds carried in ErrorBody.Kind; the client maps them back to these sentinels.
var (
	ErrNotFound    = errors.New("admin: not found")
	ErrInvalid     = errors.New("admin: invalid request")
	ErrConflict    = errors.New("admin: conflict")
	ErrUnavailable = errors.New("admin: unavailable")
	ErrInternal    = errors.New("admin: internal error")
	// ErrNoSpace: the operation needs disk space that is not there; nothing
	// was changed. HTTP 507 Insufficient Storage.
	ErrNoSpace = errors.New("admin: no space left on disk")
	// ErrNotRunning: nothing answers on the admin socket.
	ErrNotRunning = errors.New("admin: qpcd is not running or not reachable on its admin socket")
)

var kinds = map[string]error{
	"not_found":   ErrNotFound,
	"invalid":     ErrInvalid,
	"conflict":    ErrConflict,
	"unavailable": ErrUnavailable,
	"internal":    ErrInternal,
	"no_space":    ErrNoSpace,
}

// ErrorBody is the JSON body of every non-2xx response.
type ErrorBody struct {
	Error string `json:"error"` // one line, names the fix
	Kind  string `json:"kind"`  // not_found, invalid, conflict, unavailable, internal, no_space
}

// Status is GET /v1/status.
type Status struct {
	Version       string    `json:"version"`
	Commit        string    `json:"commit"`
	StartedAt     time.Time `json:"started_at"`
	UptimeSeconds float64   `json:"uptime_seconds"`
	Ready         bool      `json:"ready"`
	Readiness     string    `json:"readiness"` // "ready", or why not
	Connections   int       `json:"connections"`
	Counts        Counts    `json:"counts"`
	DBBytes       int64     `json:"db_bytes"`
	DBPath        string    `json:"db_path"`
	DBKeyID       string    `json:"db_key_id"`
	SchemaVersion int       `json:"schema_version"`
	// Backend is the storage engine: sqlcipher (this node's own file) or
	// postgres (a database every node of the deployment shares). Empty
	// from a qpcd older than the field.
	Backend        string         `json:"backend,omitempty"`
	KeyPackages    KeyPackageInfo `json:"keypackages"`
	LastBackup     *BackupRecord  `json:"last_backup,omitempty"`
	TLSNotAfter    time.Time      `json:"tls_not_after"`
	TLSFingerprint string         `json:"tls_cert_sha256"`
	TokenKeyID     string         `json:"token_key_id,omitempty"`
	TokenKeySince  time.Time      `json:"token_key_created_at,omitzero"`
	// SigningKeyID is the token key this node signs with now: on several
	// nodes it follows TokenKeyID (the database's) within the auth.keys
	// broadcast's delivery time after a rotation.
	SigningKeyID string `json:"signing_key_id,omitempty"`
	// NodeID names this node in the node registry.
	NodeID string `json:"node_id,omitempty"`
	// Nodes is the node registry: every node of the deployment that runs,
	// stopped answering (stale) or stopped within the last day.
	Nodes []Node `json:"nodes,omitempty"`
}

// Node is one row of the node registry.
type Node struct {
	ID               string    `json:"id"`
	Hostname         string    `json:"hostname"`
	Address          string    `json:"address"` // QUIC, as bound
	OpsAddress       string    `json:"ops_address,omitempty"`
	Version          string    `json:"version"`
	StartedAt        time.Time `json:"started_at"`
	LastSeen         time.Time `json:"last_seen"`
	HeartbeatSeconds float64   `json:"heartbeat_seconds"`
	StoppedAt        time.Time `json:"stopped_at,omitzero"`
	// State is running, stale (more than three heartbeats late: killed,
	// hung or cut off from the database) or stopped (shut down cleanly).
	State string `json:"state"`
	Self  bool   `json:"self,omitempty"` // the node that answered
}

// Counts are row counts; -1 when the table does not exist in this build.
type Counts struct {
	Accounts       int64 `json:"accounts"`
	ActiveAccounts int64 `json:"active_accounts"`
	Devices        int64 `json:"devices"`
	ActiveDevices  int64 `json:"active_devices"`
	Channels       int64 `json:"channels"`
	Invites        int64 `json:"open_invites"`
}

// KeyPackageInfo is the KeyPackage stock.
type KeyPackageInfo struct {
	Pool       int64 `json:"pool"`        // unexpired single-use KeyPackages
	LastResort int64 `json:"last_resort"` // unexpired last-resort KeyPackages
	// Suites is the same per MLS cipher suite: the allowlist in the
	// server's preference order, then suites stored but no longer allowed.
	Suites []KeyPackageSuite `json:"suites,omitempty"`
}

// KeyPackageSuite is the KeyPackage stock of one cipher suite.
type KeyPackageSuite struct {
	Suite      string `json:"suite"` // name, e.g. MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519
	ID         uint16 `json:"id"`
	Allowed    bool   `json:"allowed"` // in mls.allowed_suites
	Pool       int64  `json:"pool"`
	LastResort int64  `json:"last_resort"`
}

// MetaLastBackup is the meta row that holds the last BackupRecord (JSON):
// written by qpcd when qpcctl confirms a SQLCipher backup, by qpcctl itself
// for a PostgreSQL backup.
const MetaLastBackup = "admin.last_backup"

// BackupRecord is the last backup qpcctl confirmed as written.
type BackupRecord struct {
	At       time.Time `json:"at"`
	Bytes    int64     `json:"bytes"`
	DBSHA256 string    `json:"db_sha256"`
	File     string    `json:"file"`
}

// BackupComplete is POSTed by qpcctl after it wrote and synced the file.
type BackupComplete struct {
	DBSHA256 string `json:"db_sha256"`
	Bytes    int64  `json:"bytes"`
	File     string `json:"file"`
}

// RotateDBKeyResult is POST /v1/rotate/db-key.
type RotateDBKeyResult struct {
	OldKeyID      string           `json:"old_key_id"`
	NewKeyID      string           `json:"new_key_id"`
	KeyFile       string           `json:"key_file"`
	DBBytes       int64            `json:"db_bytes"`
	Tables        map[string]int64 `json:"tables"`
	TookSeconds   float64          `json:"took_seconds"`
	PausedSeconds float64          `json:"writes_paused_seconds"`
}

// RotateTLSResult is POST /v1/rotate/tls.
type RotateTLSResult struct {
	OldFingerprint string    `json:"old_cert_sha256"`
	Fingerprint    string    `json:"cert_sha256"`
	NotAfter       time.Time `json:"not_after"`
	CertFile       string    `json:"cert_file"`
	Connections    int       `json:"connections_kept"`
}

// RotateTokenKeyResult is POST /v1/rotate/token-key.
type RotateTokenKeyResult struct {
	KeyID        string    `json:"key_id"`
	OldKeysUntil time.Time `json:"old_keys_verify_until"`
}

// DrainResult is POST /v1/drain.
type DrainResult struct {
	Connections  int     `json:"connections"`
	TimeoutSecs  float64 `json:"drain_timeout_seconds"`
	AlreadyGoing bool    `json:"already_draining"`
}

// Account is an account as the admin API shows it.
type Account struct {
	ID        string    `json:"id"`
	Name      string    `json:"name"`
	Status    string    `json:"status"`
	CreatedAt time.Time `json:"created_at"`
	Devices   []Device  `json:"devices,omitempty"`
	// Usage is what the account keeps stored against its quotas (shown
	// by GET /v1/accounts/{id}, not by the list).
	Usage []UsageLimit `json:"usage,omitempty"`
}

// UsageLimit is one per-account quota: what the account uses and the
// limit (0: none), in bytes or a count, and the option that sets it.
type UsageLimit struct {
	Limit  string `json:"limit"` // message_bytes, messages, inbox_bytes, inbox_items, channels
	Unit   string `json:"unit"`  // bytes or count
	Used   int64  `json:"used"`
	Quota  int64  `json:"quota"` // 0: no limit
	Option string `json:"option"`
}

// Device is a device as the admin API shows it.
type Device struct {
	ID           string    `json:"id"`
	AccountID    string    `json:"account_id"`
	AccountName  string    `json:"account_name"`
	Name         string    `json:"name"`
	Status       string    `json:"status"`
	SignatureKey string    `json:"signature_key"` // hex
	CreatedAt    time.Time `json:"created_at"`
	LastSeen     time.Time `json:"last_seen,omitzero"`
}

// Invite is an invite as the admin API shows it (the code only on creation).
type Invite struct {
	ID         string    `json:"id"`
	Code       string    `json:"code,omitempty"`
	CreatedBy  string    `json:"created_by"`
	CreatedAt  time.Time `json:"created_at"`
	ExpiresAt  time.Time `json:"expires_at"`
	UsedBy     string    `json:"used_by,omitempty"`      // account id
	UsedByName string    `json:"used_by_name,omitempty"` // that account's name
	UsedAt     time.Time `json:"used_at,omitzero"`
	Revoked    bool      `json:"revoked"`
	State      string    `json:"state"` // open, used, revoked, expired
	// Warning, on creation only: why the invite will not do what it is
	// for (registration is not by invite).
	Warning string `json:"warning,omitempty"`
}

// CreateInviteRequest is POST /v1/invites.
type CreateInviteRequest struct {
	TTLSeconds float64 `json:"ttl_seconds"`
	CreatedBy  string  `json:"created_by"`
}

// Snapshot is a consistent database copy the backend made for a backup.
type Snapshot struct {
	Manifest Manifest
	Path     string // file to send; removed by Release
	Release  func()
}

// Backend is what the admin API needs from qpcd (internal/server implements it).
// Channel is a delivery channel as the admin API shows it (GET
// /v1/channels/{id}?commits=N): its state and its latest commits, newest
// first, so an operator can see who moved the epoch.
type Channel struct {
	ID             string          `json:"id"`       // hex
	Kind           string          `json:"kind"`     // group or dm
	GroupID        string          `json:"group_id"` // hex
	Epoch          uint64          `json:"epoch"`    // the next commit must carry this epoch
	HeadSeq        uint64          `json:"head_seq"`
	GroupInfoEpoch *uint64         `json:"group_info_epoch,omitempty"`
	Members        []ChannelMember `json:"members"`
	Commits        []ChannelCommit `json:"commits"`
}

// ChannelMember is an account (DeviceID "": all its devices) or one device.
type ChannelMember struct {
	AccountID   string `json:"account_id"`
	AccountName string `json:"account_name"`
	DeviceID    string `json:"device_id,omitempty"`
}

// ChannelCommit is one commit in a channel's log.
type ChannelCommit struct {
	Seq         uint64    `json:"seq"`
	Epoch       uint64    `json:"epoch"` // made in this epoch; it started Epoch+1
	AccountID   string    `json:"account_id"`
	AccountName string    `json:"account_name"`
	DeviceID    string    `json:"device_id"`
	Time        time.Time `json:"time"`
}

// RevertEpochRequest is POST /v1/channels/{id}/revert-epoch.
type RevertEpochRequest struct {
	To            uint64 `json:"to"`                       // the last epoch the honest members share
	RemoveAccount string `json:"remove_account,omitempty"` // id or name of the member who wedged the group
}

// RevertEpochResult says what RevertEpoch changed.
type RevertEpochResult struct {
	ChannelID          string `json:"channel_id"`
	From               uint64 `json:"from_epoch"`
	To                 uint64 `json:"to_epoch"`
	GroupInfoCleared   bool   `json:"group_info_cleared"`
	RemovedAccount     string `json:"removed_account,omitempty"`
	RemovedMemberships int    `json:"removed_memberships"`
}

type Backend interface {
	Status(ctx context.Context) (Status, error)
	Snapshot(ctx context.Context) (Snapshot, error)
	BackupCompleted(ctx context.Context, c BackupComplete) error
	RotateDBKey(ctx context.Context) (RotateDBKeyResult, error)
	RotateTLS(ctx context.Context) (RotateTLSResult, error)
	RotateTokenKey(ctx context.Context) (RotateTokenKeyResult, error)
	Drain(ctx context.Context) (DrainResult, error)

	ListAccounts(ctx context.Context, after string, limit int) ([]Account, error)
	GetAccount(ctx context.Context, idOrName string) (Account, error)
	SetAccountDisabled(ctx context.Context, idOrName string, disabled bool) (Account, error)
	// RecountUsage rebuilds the account's usage counters from its stored
	// data and returns the account as GetAccount does.
	RecountUsage(ctx context.Context, idOrName string) (Account, error)
	ListDevices(ctx context.Context, account string) ([]Device, error)
	RevokeDevice(ctx context.Context, deviceID string) error
	CreateInvite(ctx context.Context, r CreateInviteRequest) (Invite, error)
	ListInvites(ctx context.Context) ([]Invite, error)
	RevokeInvite(ctx context.Context, id string) error
	GetChannel(ctx context.Context, id string, commits int) (Channel, error)
	RevertEpoch(ctx context.Context, id string, r RevertEpochRequest) (RevertEpochResult, error)
	KeyLogStatus(ctx context.Context) (KeyLogStatus, error)
	// KeyLogVerify recomputes the key log from its entries and checks
	// every stored head against it.
	KeyLogVerify(ctx context.Context) (KeyLogReport, error)
}

// KeyLogStatus is the key log's latest signed head (qpcctl keylog status).
type KeyLogStatus struct {
	Size       uint64    `json:"size"`
	Root       string    `json:"root"`
	KeyID      string    `json:"key_id"`
	PublicKey  string    `json:"public_key"`
	LastHeadAt time.Time `json:"last_head_at"`
	Heads      int64     `json:"heads"`
}

// KeyLogReport is the outcome of a full re-check (qpcctl keylog verify).
type KeyLogReport struct {
	OK         bool      `json:"ok"`
	Entries    uint64    `json:"entries"`
	Heads      int       `json:"heads"`
	Root       string    `json:"root"`
	LastHeadAt time.Time `json:"last_head_at"`
	Problems   []string  `json:"problems,omitempty"`
	Took       string    `json:"took"`
}
