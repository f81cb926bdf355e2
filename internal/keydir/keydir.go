// Package keydir stores MLS KeyPackages: verified batch uploads per device, single-use fetch with a last-resort fallback, expiry.
//
// It is the storage half of the MLS Authentication Service: it checks that a
// KeyPackage is well-formed, signed, of an allowed cipher suite, within its
// lifetime and bound to the uploading account and device, and hands each
// pool KeyPackage out at most once (the fetch consumes it in the same write
// transaction that reads it, on the store's single writer).
package keydir

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/quicprochat/quicprochat/internal/mls"
	"github.com/quicprochat/quicprochat/internal/obs"
	"github.com/quicprochat/quicprochat/internal/store"
)

// Sentinel errors; the server maps them to wire statuses.
var (
	// ErrInvalidKeyPackage: a KeyPackage does not decode, verify or is
	// outside its lifetime (INVALID_ARGUMENT).
	ErrInvalidKeyPackage = errors.New("keydir: invalid KeyPackage")
	// ErrUnsupportedSuite: the KeyPackage's cipher suite is not in the
	// allowlist (INVALID_ARGUMENT).
	ErrUnsupportedSuite = errors.New("keydir: cipher suite not allowed")
	// ErrNotOwner: the KeyPackage's credential or signature key is not the
	// uploading device's (PERMISSION_DENIED).
	ErrNotOwner = errors.New("keydir: KeyPackage is not bound to the uploading device")
	// ErrCapExceeded: the account already holds its maximum of KeyPackages
	// (RESOURCE_EXHAUSTED).
	ErrCapExceeded = errors.New("keydir: KeyPackage cap reached")
	// ErrUnknownAccount: no such (active) account (NOT_FOUND).
	ErrUnknownAccount = errors.New("keydir: unknown account")
	// ErrUncertified: the account has an identity key and the KeyPackage
	// carries no valid certificate by it for this device (PERMISSION_DENIED).
	ErrUncertified = errors.New("keydir: device not certified by the account identity key")
	// ErrUnknownDevice: no such active device (NOT_FOUND).
	ErrUnknownDevice = errors.New("keydir: unknown device")
)

// Device is what the directory needs to know about a device; internal/auth
// provides it.
type Device struct {
	ID           string
	AccountID    string
	AccountName  string
	SignatureKey []byte // Ed25519 public key, 32 bytes
	Active       bool
	// IdentityKey is the account's identity key (nil for accounts without
	// one): when set, the device's KeyPackages must carry a certificate it signed.
	IdentityKey []byte
}

// Account is an account as the directory sees it.
type Account struct {
	ID     string
	Name   string
	Active bool
}

// Devices looks up accounts and devices (internal/auth). Lookups of unknown
// ids or names return an error wrapping ErrUnknownDevice / ErrUnknownAccount.
type Devices interface {
	Device(ctx context.Context, deviceID string) (Device, error)
	// Account returns the named account and its active devices.
	Account(ctx context.Context, name string) (Account, []Device, error)
}

// DefaultSuites is the default cipher-suite allowlist: suite 1 only.
var DefaultSuites = []mls.CipherSuiteID{mls.MLS128DHKEMX25519AES128GCMSHA256Ed25519}

// Options configures New.
type Options struct {
	DB      *store.DB
	Devices Devices
	Logger  *slog.Logger     // nil: discard
	Audit   *obs.Audit       // nil: no audit events
	Now     func() time.Time // nil: time.Now
	// TTL is the longest a KeyPackage is kept after upload; default 24h.
	TTL time.Duration
	// MaxPerAccount caps the unused pool KeyPackages of an account (last-resort
	// ones do not count); default 100.
	MaxPerAccount int
	// Suites is the cipher-suite allowlist, most preferred first (clients
	// learn it from Policy); default DefaultSuites ({1}).
	Suites []mls.CipherSuiteID
	// SweepInterval is how often expired KeyPackages are deleted and the
	// stock gauges refreshed; default 1m. Negative: no background sweeper
	// (tests call Sweep).
	SweepInterval time.Duration
	// FetchLimits bound fetches of one account's KeyPackages (zero fields:
	// the defaults, see FetchLimits).
	FetchLimits FetchLimits
	// Registry receives the directory's metrics when not nil.
	Registry prometheus.Registerer
}

// Directory is the KeyPackage directory. It is safe for concurrent use.
type Directory struct {
	db      *store.DB
	devices Devices
	log     *slog.Logger
	audit   *obs.Audit
	now     func() time.Time
	ttl     time.Duration
	max     int
	suites  map[mls.CipherSuiteID]bool
	order   []mls.CipherSuiteID // the allowlist in preference order
	metrics *metrics
	limiter *fetchLimiter
	refill  refillSignals

	stop     chan struct{}
	stopOnce sync.Once
	done     chan struct{}
}

// New builds the directory and starts its sweeper (unless SweepInterval < 0).
func New(o Options) (*Directory, error) {
	if o.DB == nil || o.Devices == nil {
		return nil, errors.New("keydir: Options.DB and Options.Devices are required")
	}
	d := &Directory{
		db: o.DB, devices: o.Devices, log: o.Logger, audit: o.Audit, now: o.Now,
		ttl: o.TTL, max: o.MaxPerAccount, suites: map[mls.CipherSuiteID]bool{},
		limiter: newFetchLimiter(o.FetchLimits), refill: refillSignals{m: map[string]time.Time{}},
		stop: make(chan struct{}), done: make(chan struct{}),
	}
	if d.log == nil {
		d.log = slog.New(slog.DiscardHandler)
	}
	if d.now == nil {
		d.now = time.Now
	}
	if d.ttl <= 0 {
		d.ttl = 24 * time.Hour
	}
	if d.max <= 0 {
		d.max = 100
	}
	suites := o.Suites
	if len(suites) == 0 {
		suites = DefaultSuites
	}
	for _, s := range suites {
		if _, err := mls.Suite(s); err != nil {
			return nil, fmt.Errorf("keydir: allowlist: %w", err)
		}
		if !d.suites[s] {
			d.order = append(d.order, s)
		}
		d.suites[s] = true
	}
	d.metrics = newMetrics()
	if o.Registry != nil {
		if err := d.metrics.register(o.Registry); err != nil {
			return nil, err
		}
	}
	interval := o.SweepInterval
	if interval == 0 {
		interval = time.Minute
	}
	if interval > 0 {
		go d.sweeper(interval)
	} else {
		close(d.done)
	}
	return d, nil
}

// Close stops the sweeper. It does not close the store.
func (d *Directory) Close() error {
	d.stopOnce.Do(func() { close(d.stop) })
	<-d.done
	return nil
}

func (d *Directory) sweeper(interval time.Duration) {
	defer close(d.done)
	t := time.NewTicker(interval)
	defer t.Stop()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-d.stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	d.runSweep(ctx)
	for {
		select {
		case <-d.stop:
			return
		case <-t.C:
			d.runSweep(ctx)
		}
	}
}

func (d *Directory) runSweep(ctx context.Context) {
	n, err := d.Sweep(ctx)
	if err != nil {
		if ctx.Err() == nil && !errors.Is(err, store.ErrClosed) {
			d.log.Warn("keydir: sweep failed", "err", err)
		}
		return
	}
	if n > 0 {
		d.log.Debug("keydir: expired KeyPackages deleted", "count", n)
	}
	d.refill.forgetBefore(d.now().Add(-d.ttl))
	if err := d.RefreshStats(ctx); err != nil && ctx.Err() == nil && !errors.Is(err, store.ErrClosed) {
		d.log.Warn("keydir: stock gauges not refreshed", "err", err)
	}
}

// sweepBatch bounds one delete so the writer is never held long.
const sweepBatch = 1000

// Sweep deletes every KeyPackage whose expiry has passed (by the injected
// clock) and returns how many it deleted.
func (d *Directory) Sweep(ctx context.Context) (int64, error) {
	var total int64
	for {
		now := d.now().UnixMilli()
		var n int64
		err := d.db.WriteTx(ctx, func(tx *sql.Tx) error {
			// With several nodes on one PostgreSQL database one sweeps at a time.
			if ok, err := d.db.TryJobLock(ctx, tx, "keydir.sweep"); err != nil || !ok {
				n = 0
				return err
			}
			res, err := tx.ExecContext(ctx, `DELETE FROM keypackages WHERE id IN
				(SELECT id FROM keypackages WHERE expires_at <= ? LIMIT ?)`, now, sweepBatch)
			if err != nil {
				return err
			}
			n, err = res.RowsAffected()
			return err
		})
		if err != nil {
			return total, fmt.Errorf("keydir: sweep: %w", err)
		}
		total += n
		d.metrics.expired.Add(float64(n))
		if n < sweepBatch {
			return total, nil
		}
	}
}

// RefreshStats recomputes the stock gauges.
func (d *Directory) RefreshStats(ctx context.Context) error {
	now := d.now().UnixMilli()
	var pool, lastResort, accounts int64
	err := d.db.ReadTx(ctx, func(tx *sql.Tx) error {
		return tx.QueryRowContext(ctx, `SELECT
			COUNT(CASE WHEN last_resort = 0 THEN 1 END), COUNT(CASE WHEN last_resort = 1 THEN 1 END),
			COUNT(DISTINCT CASE WHEN last_resort = 0 THEN account_id END)
			FROM keypackages WHERE expires_at > ?`, now).Scan(&pool, &lastResort, &accounts)
	})
	if err != nil {
		return fmt.Errorf("keydir: stats: %w", err)
	}
	d.metrics.stock.WithLabelValues(kindPool).Set(float64(pool))
	d.metrics.stock.WithLabelValues(kindLastResort).Set(float64(lastResort))
	d.metrics.accounts.Set(float64(accounts))
	return d.refreshSuiteStats(ctx, now)
}
