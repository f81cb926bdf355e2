package client

import (
	"context"
	"crypto/ed25519"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/quicprochat/quicprochat/internal/mls"
	"github.com/quicprochat/quicprochat/internal/rpcclient"
	"github.com/quicprochat/quicprochat/internal/secret"
	"github.com/quicprochat/quicprochat/internal/store"
	"github.com/quicprochat/quicprochat/internal/tracing"
	"github.com/quicprochat/quicprochat/internal/wire/qpcv1"
)

//go:embed migrations/*.sql
var migrationFiles embed.FS

// appID is PRAGMA application_id of a client database: "QPCC".
const appID = 0x51504343

// File names inside the client's home directory.
const (
	DBFile   = "client.db"
	KeyFile  = "client.key"
	SaltFile = "client.salt"
)

var (
	// ErrNotInitialised: the home directory has no client database.
	ErrNotInitialised = errors.New("client: not initialised")
	// ErrNotRegistered: no device identity yet.
	ErrNotRegistered = errors.New("client: no account on this device")
	// ErrAlreadyRegistered: this database already holds a device.
	ErrAlreadyRegistered = errors.New("client: already registered")
)

// Options configures Open and Init.
type Options struct {
	Home    string       // directory with client.db (and client.key / client.salt); created 0700
	Keys    KeySource    // zero: the key file Home/client.key
	Logger  *slog.Logger // nil: discard
	Now     func() time.Time
	Backoff Backoff
	// CallDeadlines bound every RPC (zero fields: rpcclient.DefaultDeadlines:
	// 30s, long polls their wait + 10s), so a dead connection fails a call
	// with a retryable error instead of hanging it.
	CallDeadlines rpcclient.Deadlines
	// IdleTimeout is how long a connection may stay silent before it
	// counts as dead and the client redials (moving to the next server
	// node, if it has several); keep-alives go every third of it. Default
	// DefaultIdleTimeout (10s).
	IdleTimeout time.Duration
	// KeyPackageTTL is how long the server keeps an uploaded KeyPackage;
	// default 24h (the server's keypackages.ttl).
	KeyPackageTTL time.Duration
	// KeyPackageMargin: KeyPackages are replaced this long before they
	// expire; default 2h.
	KeyPackageMargin time.Duration
	// Suites are the MLS cipher suites this device uses (stocks
	// KeyPackages of and creates groups on, with the server's allowlist);
	// default SupportedSuites. Tests narrow it to play an older client.
	Suites []mls.CipherSuiteID
	// Tracer, when set, starts a trace for each Send, Sync and Flush; its
	// context travels with every RPC so the server's spans join it (see
	// internal/tracing). nil: no tracing.
	Tracer trace.Tracer
}

func (o *Options) defaults() error {
	if o.Home == "" {
		return errors.New("client: no home directory; pass --home or set QPC_HOME")
	}
	if o.Keys.Hex.IsZero() && o.Keys.Passphrase.IsZero() && o.Keys.KeyFile == "" {
		o.Keys.KeyFile = filepath.Join(o.Home, KeyFile)
	}
	if o.Keys.SaltFile == "" {
		o.Keys.SaltFile = filepath.Join(o.Home, SaltFile)
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.KeyPackageTTL <= 0 {
		o.KeyPackageTTL = 24 * time.Hour
	}
	if o.KeyPackageMargin <= 0 {
		o.KeyPackageMargin = 2 * time.Hour
	}
	if len(o.Suites) == 0 {
		o.Suites = SupportedSuites
	}
	return nil
}

// Client is one device's SDK instance. Safe for concurrent use.
type Client struct {
	opts Options
	db   *store.DB
	log  *slog.Logger
	now  func() time.Time
	conn *Conn

	authMu sync.Mutex // serialises login and refresh
	sendMu sync.Mutex // serialises outbox flushes
	// noBatchUntil (under sendMu): the server answered EnqueueBatch with
	// "unknown method" (older than the method); until then Flush sends
	// one Enqueue per message, and asks again afterwards (it may have
	// been upgraded).
	noBatchUntil time.Time
	syncMu       sync.Mutex // serialises fetches
	// groupMu serialises changes of MLS group state within this process;
	// across processes the write transaction (BEGIN IMMEDIATE) that loads,
	// changes and saves a state does.
	groupMu sync.Mutex

	policy policyCache // the server's MLS suite policy (suites.go)
}

func openDB(ctx context.Context, o Options, create bool) (*store.DB, error) {
	path := filepath.Join(o.Home, DBFile)
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) && !create {
		return nil, fmt.Errorf("%w: %s does not exist; run qpc init --server HOST:PORT first", ErrNotInitialised, path)
	}
	if err := os.MkdirAll(o.Home, 0o700); err != nil {
		return nil, fmt.Errorf("client: create %s: %w", o.Home, err)
	}
	if o.Keys.Hex.IsZero() && o.Keys.Passphrase.IsZero() && !create {
		// A passphrase home has a salt file and no key file.
		if _, err := os.Stat(o.Keys.KeyFile); errors.Is(err, fs.ErrNotExist) {
			if _, err := os.Stat(o.Keys.SaltFile); err == nil {
				return nil, fmt.Errorf("%w: %s was created with a passphrase; set %s (or %s for a hex key) to open it", ErrNoKey, o.Home, EnvPassphrase, EnvKey)
			}
		}
	}
	key, err := o.Keys.Load(create)
	if err != nil {
		return nil, err
	}
	defer key.Wipe()
	mig, err := fs.Sub(migrationFiles, "migrations")
	if err != nil {
		return nil, fmt.Errorf("client: migrations: %w", err)
	}
	db, err := store.Open(ctx, store.Options{Path: path, Key: key, Readers: 2, Logger: o.Logger,
		App: &store.App{ID: appID, Marker: "qpc-client", Migrations: mig}})
	if errors.Is(err, store.ErrWrongKey) {
		// Not the store's own text: its advice is about qpcd's database.
		return nil, fmt.Errorf("client: %s does not open: %w (wrong passphrase or key); use the passphrase or key it was created with (%s, %s, or the key file %s)",
			path, store.ErrWrongKey, EnvPassphrase, EnvKey, o.Keys.KeyFile)
	}
	if err != nil {
		return nil, fmt.Errorf("client: open %s: %w", path, err)
	}
	return db, nil
}

// Init creates (or reopens) the client state in o.Home and records the
// server and how to trust it. It then pings the server, so a wrong address
// or pin shows up now; the settings are kept either way.
func Init(ctx context.Context, o Options, trust ServerTrust, stock int) (*Client, error) {
	if err := o.defaults(); err != nil {
		return nil, err
	}
	if stock <= 0 {
		stock = DefaultStock
	}
	if _, err := NewConn(trust, o.Backoff, o.Logger); err != nil {
		return nil, err
	}
	db, err := openDB(ctx, o, true)
	if err != nil {
		return nil, err
	}
	err = db.WriteTx(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO settings (id, server_addr, pin_sha256, ca_file, server_name, kp_stock)
			VALUES (1, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET server_addr = excluded.server_addr,
			pin_sha256 = excluded.pin_sha256, ca_file = excluded.ca_file, server_name = excluded.server_name,
			kp_stock = excluded.kp_stock`, trust.Addr, trust.PinSHA256, trust.CAFile, trust.ServerName, stock)
		return err
	})
	if err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("client: save settings: %w", err)
	}
	c, err := newClient(ctx, o, db)
	if err != nil {
		_ = db.Close()
		return nil, err
	}
	return c, nil
}

// Open opens the client state made by Init.
func Open(ctx context.Context, o Options) (*Client, error) {
	if err := o.defaults(); err != nil {
		return nil, err
	}
	db, err := openDB(ctx, o, false)
	if err != nil {
		return nil, err
	}
	c, err := newClient(ctx, o, db)
	if err != nil {
		_ = db.Close()
		return nil, err
	}
	return c, nil
}

func newClient(ctx context.Context, o Options, db *store.DB) (*Client, error) {
	s, err := loadSettings(ctx, db)
	if err != nil {
		return nil, err
	}
	conn, err := NewConn(s.Trust, o.Backoff, o.Logger)
	if err != nil {
		return nil, err
	}
	conn.SetCallDeadlines(o.CallDeadlines)
	conn.SetIdleTimeout(o.IdleTimeout)
	c := &Client{opts: o, db: db, log: o.Logger, now: o.Now, conn: conn}
	// Start from the node that worked last time, and remember each move.
	var last string
	_ = db.ReadTx(ctx, func(tx *sql.Tx) error {
		return tx.QueryRowContext(ctx, `SELECT current_node FROM settings WHERE id = 1`).Scan(&last)
	})
	conn.UseNode(last)
	conn.OnMove(c.rememberNode)
	return c, nil
}

// rememberNode records the node in use for the next run (best effort: a
// failure only costs the next run a try of the old node).
func (c *Client) rememberNode(addr string) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := c.db.WriteTx(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `UPDATE settings SET current_node = ? WHERE id = 1`, addr)
		return err
	})
	if err != nil {
		c.log.Debug("client: remember server node", "err", err)
	}
}

// Servers are the server nodes this client was given and the one in use
// (or tried next).
func (c *Client) Servers() (nodes []string, current string) {
	return c.conn.Nodes(), c.conn.Current()
}

// span starts the span of an SDK operation: a child when ctx already
// carries a recording span (Flush inside Send), else the root of a new
// trace from Options.Tracer; with no tracer it is a no-op.
func (c *Client) span(ctx context.Context, name string) (context.Context, trace.Span) {
	if parent := trace.SpanFromContext(ctx); parent.IsRecording() || c.opts.Tracer == nil {
		return tracing.Start(ctx, name)
	}
	return c.opts.Tracer.Start(ctx, name, trace.WithSpanKind(trace.SpanKindClient))
}

// Close closes the connection and the database.
func (c *Client) Close() error {
	return errors.Join(c.conn.Close(), c.db.Close())
}

// Settings is what Init recorded.
type Settings struct {
	Trust ServerTrust
	Stock int // KeyPackages kept on the server
}

func loadSettings(ctx context.Context, db *store.DB) (Settings, error) {
	var s Settings
	err := db.ReadTx(ctx, func(tx *sql.Tx) error {
		return tx.QueryRowContext(ctx, `SELECT server_addr, pin_sha256, ca_file, server_name, kp_stock FROM settings WHERE id = 1`).
			Scan(&s.Trust.Addr, &s.Trust.PinSHA256, &s.Trust.CAFile, &s.Trust.ServerName, &s.Stock)
	})
	if errors.Is(err, sql.ErrNoRows) {
		return s, fmt.Errorf("%w: no server recorded; run qpc init --server HOST:PORT", ErrNotInitialised)
	}
	if err != nil {
		return s, fmt.Errorf("client: read settings: %w", err)
	}
	return s, nil
}

// Settings returns the recorded server settings.
func (c *Client) Settings(ctx context.Context) (Settings, error) { return loadSettings(ctx, c.db) }

// Ping checks that the server answers (and that its certificate is trusted).
func (c *Client) Ping(ctx context.Context) (*qpcv1.PingResponse, error) {
	var resp qpcv1.PingResponse
	if err := c.conn.Call(ctx, "Ping", "", &qpcv1.PingRequest{Echo: "qpc"}, &resp); err != nil {
		return nil, err
	}
	return &resp, nil
}

// Identity is this device.
type Identity struct {
	AccountName string
	AccountID   string
	DeviceID    string
	DeviceName  string
	DisplayName string
	// InviteCodeUnused is set by Register only: an invite code was given
	// and the server did not use it (its registration is open to anyone).
	InviteCodeUnused bool
	key              secret.Bytes // Ed25519 seed
	certificate      []byte       // signed by the account identity key; nil if none (certs.go)
}

// Wipe zeroes the device key held by this copy of the identity.
func (id *Identity) Wipe() { id.key.Wipe() }

// Credential is the device's MLS BasicCredential identity.
func (id *Identity) Credential() string { return id.AccountName + "/" + id.DeviceID }

// PublicKey is the device's Ed25519 public key.
func (id *Identity) PublicKey() ed25519.PublicKey {
	return ed25519.NewKeyFromSeed(id.key.Reveal()).Public().(ed25519.PublicKey)
}

func (id *Identity) privateKey() ed25519.PrivateKey { return ed25519.NewKeyFromSeed(id.key.Reveal()) }

// Identity returns this device's identity, or ErrNotRegistered.
func (c *Client) Identity(ctx context.Context) (*Identity, error) {
	var id Identity
	var seed []byte
	err := c.db.ReadTx(ctx, func(tx *sql.Tx) error {
		return tx.QueryRowContext(ctx, `SELECT account_name, account_id, device_id, device_name, display_name, sig_seed,
			(SELECT certificate FROM device_certificate WHERE id = 1) FROM identity WHERE id = 1`).
			Scan(&id.AccountName, &id.AccountID, &id.DeviceID, &id.DeviceName, &id.DisplayName, &seed, &id.certificate)
	})
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("%w: run qpc register NAME (or qpc init on the right --home)", ErrNotRegistered)
	}
	if err != nil {
		return nil, fmt.Errorf("client: read identity: %w", err)
	}
	if len(seed) != ed25519.SeedSize {
		return nil, fmt.Errorf("client: stored device key is %d bytes, want %d; the database is damaged", len(seed), ed25519.SeedSize)
	}
	id.key = secret.New(seed)
	return &id, nil
}

// ProbeServer pings the server described by trust without any local state:
// qpc init uses it to refuse settings whose certificate is not trusted
// before saving them.
func ProbeServer(ctx context.Context, trust ServerTrust, o Options) (*qpcv1.PingResponse, error) {
	if err := o.defaults(); err != nil {
		return nil, err
	}
	conn, err := NewConn(trust, o.Backoff, o.Logger)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	var resp qpcv1.PingResponse
	if err := conn.Call(ctx, "Ping", "", &qpcv1.PingRequest{Echo: "qpc"}, &resp); err != nil {
		return nil, err
	}
	return &resp, nil
}

// endSpan ends an SDK operation's span, marked failed when *err is set
// (with no error text: it can name accounts).
func endSpan(span trace.Span, err *error) {
	if !span.IsRecording() {
		return
	}
	if *err != nil {
		tracing.Fail(span, "error")
	}
	span.End()
}
