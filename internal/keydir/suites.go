package keydir

import (
	"context"
	"database/sql"
	"fmt"
	"slices"

	"github.com/quicprochat/quicprochat/internal/mls"
)

// Policy is the directory's cipher-suite policy as clients see it
// (PingResponse.mls_policy): the allowlist in preference order and its
// weakest suite, below which a group is a downgrade.
type Policy struct {
	Allowed []mls.CipherSuiteID
	Minimum mls.CipherSuiteID
}

// Policy returns the allowlist in preference order and its weakest suite
// (the first listed of the lowest mls.SuiteStrength).
func (d *Directory) Policy() Policy {
	p := Policy{Allowed: slices.Clone(d.order)}
	for _, s := range d.order {
		if p.Minimum == 0 || mls.SuiteStrength(s) < mls.SuiteStrength(p.Minimum) {
			p.Minimum = s
		}
	}
	return p
}

// Allows reports whether suite may be used: allowlisted, and not weaker
// than the policy's minimum.
func (p Policy) Allows(suite mls.CipherSuiteID) bool {
	return slices.Contains(p.Allowed, suite) && mls.SuiteStrength(suite) >= mls.SuiteStrength(p.Minimum)
}

// SuiteCount is a device's stock of one cipher suite.
type SuiteCount struct {
	Suite         mls.CipherSuiteID
	Device        int // unused, unexpired pool KeyPackages
	HasLastResort bool
}

// suiteCounts returns dev's stock per suite (suites with none are absent),
// in the policy's preference order, then any others by id.
func (d *Directory) suiteCounts(ctx context.Context, tx *sql.Tx, accountID, deviceID string, now int64) ([]SuiteCount, error) {
	rows, err := tx.QueryContext(ctx, `SELECT suite,
		COUNT(CASE WHEN last_resort = 0 THEN 1 END), COUNT(CASE WHEN last_resort = 1 THEN 1 END)
		FROM keypackages WHERE account_id = ? AND device_id = ? AND expires_at > ? GROUP BY suite`, accountID, deviceID, now)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []SuiteCount
	for rows.Next() {
		var suite, pool, lr int
		if err := rows.Scan(&suite, &pool, &lr); err != nil {
			return nil, err
		}
		out = append(out, SuiteCount{Suite: mls.CipherSuiteID(suite), Device: pool, HasLastResort: lr > 0})
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	rank := func(s mls.CipherSuiteID) int {
		if i := slices.Index(d.order, s); i >= 0 {
			return i
		}
		return len(d.order) + int(s)
	}
	slices.SortFunc(out, func(a, b SuiteCount) int { return rank(a.Suite) - rank(b.Suite) })
	return out, nil
}

// chooseSuite picks, from want (preference order), the first suite that
// every target device holds a KeyPackage of (pool or last resort); if none
// covers all, the first of want. Suites outside the allowlist are dropped
// first; none left wraps ErrUnsupportedSuite.
func (d *Directory) chooseSuite(ctx context.Context, tx *sql.Tx, accountID string, targets []string, want []mls.CipherSuiteID, now int64) (mls.CipherSuiteID, error) {
	var candidates []mls.CipherSuiteID
	for _, s := range want {
		if d.suites[s] && !slices.Contains(candidates, s) {
			candidates = append(candidates, s)
		}
	}
	if len(candidates) == 0 {
		return 0, fmt.Errorf("%w: none of the requested suites %v is allowed (allowed: %v)", ErrUnsupportedSuite, want, d.order)
	}
	held := map[mls.CipherSuiteID]int{} // suite -> target devices holding one
	for _, dev := range targets {
		counts, err := d.suiteCounts(ctx, tx, accountID, dev, now)
		if err != nil {
			return 0, err
		}
		for _, c := range counts {
			if c.Device > 0 || c.HasLastResort {
				held[c.Suite]++
			}
		}
	}
	for _, s := range candidates {
		if held[s] == len(targets) {
			return s, nil
		}
	}
	return candidates[0], nil
}

// refreshSuiteStats sets the per-suite stock gauges (every allowlisted
// suite has a series, zero when it holds nothing).
func (d *Directory) refreshSuiteStats(ctx context.Context, _ int64) error {
	stock, err := d.StockBySuite(ctx)
	if err != nil {
		return err
	}
	for _, x := range stock {
		d.metrics.suiteStock.WithLabelValues(x.Suite.String(), kindPool).Set(float64(x.Pool))
		d.metrics.suiteStock.WithLabelValues(x.Suite.String(), kindLastResort).Set(float64(x.LastResort))
	}
	return nil
}

// SuiteStock is the directory's unexpired KeyPackages of one suite.
type SuiteStock struct {
	Suite            mls.CipherSuiteID
	Allowed          bool
	Pool, LastResort int64
}

// StockBySuite returns the stock per suite for the admin status: every
// allowlisted suite in preference order (zero when empty), then suites
// still stored but no longer allowed.
func (d *Directory) StockBySuite(ctx context.Context) ([]SuiteStock, error) {
	now := d.now().UnixMilli()
	got := map[mls.CipherSuiteID]SuiteStock{}
	err := d.db.ReadTx(ctx, func(tx *sql.Tx) error {
		rs, err := tx.QueryContext(ctx, `SELECT suite, COUNT(CASE WHEN last_resort = 0 THEN 1 END), COUNT(CASE WHEN last_resort = 1 THEN 1 END)
			FROM keypackages WHERE expires_at > ? GROUP BY suite`, now)
		if err != nil {
			return err
		}
		defer rs.Close()
		for rs.Next() {
			var suite int
			var x SuiteStock
			if err := rs.Scan(&suite, &x.Pool, &x.LastResort); err != nil {
				return err
			}
			x.Suite = mls.CipherSuiteID(suite)
			got[x.Suite] = x
		}
		return rs.Err()
	})
	if err != nil {
		return nil, fmt.Errorf("keydir: stock by suite: %w", err)
	}
	var out []SuiteStock
	for _, s := range d.order {
		x := got[s]
		x.Suite, x.Allowed = s, true
		out = append(out, x)
		delete(got, s)
	}
	var rest []SuiteStock
	for _, x := range got {
		rest = append(rest, x)
	}
	slices.SortFunc(rest, func(a, b SuiteStock) int { return int(a.Suite) - int(b.Suite) })
	return append(out, rest...), nil
}
