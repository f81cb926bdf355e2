package keydir

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/quicprochat/quicprochat/internal/mls"
)

// UploadResult reports an upload.
type UploadResult struct {
	Accepted        int // stored (or already stored: re-uploads are idempotent)
	RejectedOverCap int // valid, but beyond the account's cap
	DeviceStock     int // the device's unused pool KeyPackages afterwards
	LastResortSet   bool
}

// Upload validates and stores pool KeyPackages and, if lastResort is not
// empty, the device's last-resort KeyPackage (replacing the previous one of
// the same cipher suite).
// Any invalid KeyPackage refuses the whole upload. Pool KeyPackages beyond
// the account's cap are not stored; if none fit, the error wraps
// ErrCapExceeded.
func (d *Directory) Upload(ctx context.Context, deviceID string, pool [][]byte, lastResort []byte) (UploadResult, error) {
	dev, err := d.devices.Device(ctx, deviceID)
	if err != nil {
		return UploadResult{}, err
	}
	if !dev.Active {
		return UploadResult{}, fmt.Errorf("%w: device is not active", ErrUnknownDevice)
	}
	now := d.now()
	if len(pool) == 0 && len(lastResort) == 0 {
		return UploadResult{}, fmt.Errorf("%w: no KeyPackages in the request", ErrInvalidKeyPackage)
	}
	kps := make([]checked, 0, len(pool))
	for i, raw := range pool {
		c, err := d.validate(raw, dev, now)
		if err != nil {
			d.rejected(ctx, dev, err)
			return UploadResult{}, fmt.Errorf("key_packages[%d]: %w", i, err)
		}
		kps = append(kps, c)
	}
	var lr *checked
	if len(lastResort) > 0 {
		c, err := d.validate(lastResort, dev, now)
		if err != nil {
			d.rejected(ctx, dev, err)
			return UploadResult{}, fmt.Errorf("last_resort: %w", err)
		}
		c.lastResort = true
		lr = &c
	}

	var res UploadResult
	nowMS := now.UnixMilli()
	err = d.db.WriteTx(ctx, func(tx *sql.Tx) error {
		res = UploadResult{}
		var stock int
		if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM keypackages
			WHERE account_id = ? AND last_resort = 0 AND expires_at > ?`, dev.AccountID, nowMS).Scan(&stock); err != nil {
			return err
		}
		room := max(d.max-stock, 0)
		for _, c := range kps {
			if room == 0 {
				res.RejectedOverCap++
				continue
			}
			r, err := tx.ExecContext(ctx, `INSERT INTO keypackages
				(account_id, device_id, ref, suite, last_resort, uploaded_at, expires_at, data)
				VALUES (?, ?, ?, ?, 0, ?, ?, ?) ON CONFLICT DO NOTHING`,
				dev.AccountID, dev.ID, c.ref, int(c.suite), nowMS, d.expiry(now, c.notAfter), c.raw)
			if err != nil {
				return err
			}
			if n, _ := r.RowsAffected(); n > 0 {
				room--
			}
			res.Accepted++
		}
		if lr != nil {
			// One last resort per device and suite: a device stocking
			// several suites keeps one of each.
			if _, err := tx.ExecContext(ctx, `DELETE FROM keypackages WHERE device_id = ? AND ((last_resort = 1 AND suite = ?) OR ref = ?)`,
				dev.ID, int(lr.suite), lr.ref); err != nil {
				return err
			}
			if _, err := tx.ExecContext(ctx, `INSERT INTO keypackages
				(account_id, device_id, ref, suite, last_resort, uploaded_at, expires_at, data)
				VALUES (?, ?, ?, ?, 1, ?, ?, ?)`,
				dev.AccountID, dev.ID, lr.ref, int(lr.suite), nowMS, d.expiry(now, lr.notAfter), lr.raw); err != nil {
				return err
			}
			res.LastResortSet = true
		}
		return tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM keypackages
			WHERE device_id = ? AND last_resort = 0 AND expires_at > ?`, dev.ID, nowMS).Scan(&res.DeviceStock)
	})
	if err != nil {
		return UploadResult{}, fmt.Errorf("keydir: upload: %w", err)
	}
	d.refill.clear(dev.ID)
	d.metrics.uploaded.Add(float64(res.Accepted))
	if res.LastResortSet {
		d.metrics.uploadedLastResort.Inc()
	}
	d.audit.Event(ctx, "keypackage.upload",
		slog.String("account_id", dev.AccountID), slog.String("device_id", dev.ID),
		slog.Int("accepted", res.Accepted), slog.Int("rejected_over_cap", res.RejectedOverCap),
		slog.Bool("last_resort", res.LastResortSet), slog.Int("device_stock", res.DeviceStock))
	if res.Accepted == 0 && res.RejectedOverCap > 0 && !res.LastResortSet {
		return res, fmt.Errorf("%w: the account holds %d unused KeyPackages already", ErrCapExceeded, d.max)
	}
	return res, nil
}

// expiry is min(lifetime.not_after, now + TTL) in Unix milliseconds.
func (d *Directory) expiry(now, notAfter time.Time) int64 {
	return min(now.Add(d.ttl).UnixMilli(), notAfter.UnixMilli())
}

// rejected counts and audits a refused upload.
func (d *Directory) rejected(ctx context.Context, dev Device, err error) {
	reason := rejectReason(err)
	d.metrics.rejected.WithLabelValues(reason).Inc()
	d.audit.Event(ctx, "keypackage.upload_rejected", slog.String("account_id", dev.AccountID),
		slog.String("device_id", dev.ID), slog.String("reason", reason))
}

func rejectReason(err error) string {
	switch {
	case errors.Is(err, ErrUnsupportedSuite):
		return "suite"
	case errors.Is(err, ErrNotOwner):
		return "not_owner"
	case errors.Is(err, ErrUncertified):
		return "uncertified"
	default:
		return "invalid"
	}
}

// Fetched is one KeyPackage handed out.
type Fetched struct {
	DeviceID   string
	Data       []byte
	LastResort bool
}

// FetchResult is what a fetch returns for one account.
type FetchResult struct {
	AccountID string
	Packages  []Fetched
	Missing   []string // active devices with neither a pool nor a last-resort KeyPackage
	// Suite is the cipher suite chosen from the fetch's suites (0 when the
	// fetch named none).
	Suite mls.CipherSuiteID
}

// Fetch consumes one pool KeyPackage of each active device of the account
// named accountName (or only of deviceID when it is not empty), falling back
// to the device's last-resort KeyPackage (returned, flagged, not consumed)
// when its pool is empty. Consuming happens in the transaction that reads,
// so two fetchers never receive the same pool KeyPackage. suites, when not
// empty, are the acceptable cipher suites in preference order: the
// KeyPackages are of the first one every target device holds (see
// chooseSuite), and only that suite's are consumed.
func (d *Directory) Fetch(ctx context.Context, byAccountID, byDeviceID, accountName, deviceID string, suites ...mls.CipherSuiteID) (FetchResult, error) {
	acct, devs, err := d.devices.Account(ctx, accountName)
	if err != nil {
		return FetchResult{}, err
	}
	if !acct.Active {
		return FetchResult{}, fmt.Errorf("%w: %q is disabled", ErrUnknownAccount, accountName)
	}
	var targets []string
	for _, dv := range devs {
		if dv.Active && (deviceID == "" || dv.ID == deviceID) {
			targets = append(targets, dv.ID)
		}
	}
	if deviceID != "" && len(targets) == 0 {
		return FetchResult{}, fmt.Errorf("%w: %q has no active device %q", ErrUnknownDevice, accountName, deviceID)
	}
	if lerr, first := d.limiter.admit(d.now(), byAccountID, acct.ID, acct.Name); lerr != nil {
		d.fetchRefused(ctx, lerr, first, byAccountID, byDeviceID, acct.ID)
		return FetchResult{}, lerr
	}
	now := d.now().UnixMilli()
	var res FetchResult
	// Single use across nodes: on PostgreSQL the oldest KeyPackage is
	// locked with SKIP LOCKED, so concurrent fetchers each take a different
	// one without waiting for or retrying after each other; the DELETE in the
	// same transaction consumes it. (SQLite's one writer serialises fetches.)
	// suite = ? or, without a suite, any: (? = 0 OR suite = ?).
	pick := `SELECT id, data FROM keypackages
				WHERE device_id = ? AND account_id = ? AND last_resort = 0 AND expires_at > ? AND (? = 0 OR suite = ?)
				ORDER BY id LIMIT 1` + d.db.ForUpdateSkipLocked()
	err = d.db.WriteTxLocked(ctx, func(tx *sql.Tx) error {
		res = FetchResult{AccountID: acct.ID}
		if len(suites) > 0 {
			s, err := d.chooseSuite(ctx, tx, acct.ID, targets, suites, now)
			if err != nil {
				return err
			}
			res.Suite = s
		}
		want := int(res.Suite)
		for _, dev := range targets {
			var id int64
			var data []byte
			err := tx.QueryRowContext(ctx, pick, dev, acct.ID, now, want, want).Scan(&id, &data)
			switch {
			case err == nil:
				if _, err := tx.ExecContext(ctx, `DELETE FROM keypackages WHERE id = ?`, id); err != nil {
					return err
				}
				res.Packages = append(res.Packages, Fetched{DeviceID: dev, Data: data})
				continue
			case !errors.Is(err, sql.ErrNoRows):
				return err
			}
			err = tx.QueryRowContext(ctx, `SELECT data FROM keypackages
				WHERE device_id = ? AND account_id = ? AND last_resort = 1 AND expires_at > ? AND (? = 0 OR suite = ?)
				ORDER BY id LIMIT 1`, dev, acct.ID, now, want, want).Scan(&data)
			switch {
			case err == nil:
				res.Packages = append(res.Packages, Fetched{DeviceID: dev, Data: data, LastResort: true})
			case errors.Is(err, sql.ErrNoRows):
				res.Missing = append(res.Missing, dev)
			default:
				return err
			}
		}
		return nil
	})
	if err != nil {
		return FetchResult{}, fmt.Errorf("keydir: fetch: %w", err)
	}
	pool, lr := 0, 0
	taken := make([]string, 0, len(res.Packages))
	for _, p := range res.Packages {
		if p.LastResort {
			lr++
		} else {
			pool++
		}
		taken = append(taken, p.DeviceID)
	}
	d.refill.mark(d.now(), taken)
	d.metrics.fetched.WithLabelValues(kindPool).Add(float64(pool))
	d.metrics.fetched.WithLabelValues(kindLastResort).Add(float64(lr))
	d.metrics.missing.Add(float64(len(res.Missing)))
	d.audit.Event(ctx, "keypackage.fetch",
		slog.String("account_id", byAccountID), slog.String("device_id", byDeviceID),
		slog.String("target_account_id", acct.ID), slog.String("target_device_id", deviceID),
		slog.Int("pool", pool), slog.Int("last_resort", lr), slog.Int("missing", len(res.Missing)))
	return res, nil
}

// fetchRefused counts a refused fetch and, once per run of refusals of the
// same bucket, audits it; a drain of one target by many accounts is also
// logged, as the operator will want to know who is behind it.
func (d *Directory) fetchRefused(ctx context.Context, e *FetchLimitError, first bool, byAccountID, byDeviceID, targetID string) {
	d.metrics.fetchRefused.WithLabelValues(e.Reason).Inc()
	if !first {
		return
	}
	d.audit.Event(ctx, "keypackage.fetch_refused", slog.String("reason", e.Reason),
		slog.String("account_id", byAccountID), slog.String("device_id", byDeviceID),
		slog.String("target_account_id", targetID), slog.Int64("retry_after_ms", e.RetryAfter.Milliseconds()))
	if e.Reason == ReasonTarget {
		d.log.Warn("keydir: KeyPackages of an account fetched beyond keypackages.fetch_per_target; fetches refused until it refills",
			"target_account_id", targetID, "last_fetcher_account_id", byAccountID, "limit", e.Limit, "window", e.Window)
	}
}

// Count is a device's view of its stock.
type Count struct {
	Device, Account int
	MaxPerAccount   int
	HasLastResort   bool // of any suite
	// Suites is the device's stock per cipher suite it holds, in the
	// policy's preference order.
	Suites []SuiteCount
}

// Count returns the calling device's and its account's unused, unexpired
// pool KeyPackages and whether the device has a last-resort one.
func (d *Directory) Count(ctx context.Context, accountID, deviceID string) (Count, error) {
	now := d.now().UnixMilli()
	c := Count{MaxPerAccount: d.max}
	var lastResorts int
	err := d.db.ReadTx(ctx, func(tx *sql.Tx) error {
		if err := tx.QueryRowContext(ctx, `SELECT
			COUNT(CASE WHEN last_resort = 0 AND device_id = ? THEN 1 END),
			COUNT(CASE WHEN last_resort = 0 THEN 1 END),
			COUNT(CASE WHEN last_resort = 1 AND device_id = ? THEN 1 END)
			FROM keypackages WHERE account_id = ? AND expires_at > ?`,
			deviceID, deviceID, accountID, now).Scan(&c.Device, &c.Account, &lastResorts); err != nil {
			return err
		}
		c.HasLastResort = lastResorts > 0 // one per suite the device stocks
		var err error
		c.Suites, err = d.suiteCounts(ctx, tx, accountID, deviceID, now)
		return err
	})
	if err != nil {
		return Count{}, fmt.Errorf("keydir: count: %w", err)
	}
	d.refill.clear(deviceID) // the device is looking: it refills now if it needs to
	return c, nil
}
