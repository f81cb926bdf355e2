package client

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/quicprochat/quicprochat/internal/mls"
	"github.com/quicprochat/quicprochat/internal/secret"
	"github.com/quicprochat/quicprochat/internal/wire/qpcv1"
)

// DefaultStock is how many KeyPackages a device keeps on the server.
const DefaultStock = 10

// Suite is the project's baseline MLS cipher suite, the one a server that
// advertises no policy allows (suites.go negotiates the others).
const Suite = mls.MLS128DHKEMX25519AES128GCMSHA256Ed25519

// keyPackageLifetime is the lifetime written into a KeyPackage: long
// enough for a fetched one to be used in a commit and its Welcome to wait
// in the inbox for the server's retention; the server keeps it only for
// its TTL (24 h) anyway.
const keyPackageLifetime = 8 * 24 * time.Hour

// privateKeyRetention: a KeyPackage's private keys are kept this long after
// the server dropped it, for a Welcome made from it that is still in the
// inbox (the server's retention is 7 days).
const privateKeyRetention = 7 * 24 * time.Hour

// StockReport is what KeyPackageUpkeep found and did: totals over the
// suites the device stocks, and each suite's own report.
type StockReport struct {
	Target        int  `json:"target"`       // per suite
	ServerStock   int  `json:"server_stock"` // unused pool KeyPackages of this device on the server, after upkeep
	Uploaded      int  `json:"uploaded"`
	RejectedOver  int  `json:"rejected_over_cap"`
	LastResort    bool `json:"last_resort"` // every stocked suite has one
	NewLastResort bool `json:"new_last_resort"`
	AccountStock  int  `json:"account_stock"`
	AccountCap    int  `json:"account_cap"`
	Purged        int  `json:"purged"` // local private keys dropped (long expired)
	// Suites is the stock of each suite this device and the server both
	// allow, in the server's preference order.
	Suites []SuiteStockReport `json:"suites"`
}

// SuiteStockReport is one suite's part of a StockReport.
type SuiteStockReport struct {
	Suite         string `json:"suite"`
	ID            uint16 `json:"id"`
	ServerStock   int    `json:"server_stock"`
	Uploaded      int    `json:"uploaded"`
	RejectedOver  int    `json:"rejected_over_cap"`
	LastResort    bool   `json:"last_resort"`
	NewLastResort bool   `json:"new_last_resort"`
}

// generated is a new KeyPackage with its private keys.
type generated struct {
	msg    []byte       // MLSMessage(KeyPackage)
	ref    []byte       // KeyPackageRef
	bundle secret.Bytes // mls.KeyPackageBundle.Marshal: the KeyPackage and its private keys
}

func (g *generated) wipe() { g.bundle.Wipe() }

// newKeyPackage builds a KeyPackage of the given suite for the device with
// internal/mls: BasicCredential "<account_name>/<device_id>", signature
// key = the device's Ed25519 key, fresh init and encryption keys.
func newKeyPackage(id *Identity, suiteID mls.CipherSuiteID, now time.Time, lastResort bool) (*generated, error) {
	suite, err := mls.Suite(suiteID)
	if err != nil {
		return nil, err
	}
	sk, _, err := suite.SignaturePrivateKeyFromBytes(id.key.Reveal())
	if err != nil {
		return nil, fmt.Errorf("client: device key: %w", err)
	}
	b, err := mls.GenerateKeyPackage(suiteID, mls.BasicIdentity(id.AccountName, id.DeviceID), sk,
		mls.KeyPackageOptions{Now: now, Lifetime: keyPackageLifetime, LastResort: lastResort, LeafExtensions: id.leafExtensions(),
			Capabilities: leafCapabilities()})
	if err != nil {
		sk.Wipe()
		return nil, fmt.Errorf("client: generate KeyPackage: %w", err)
	}
	defer b.Wipe() // also wipes sk
	ref, err := b.Ref()
	if err != nil {
		return nil, fmt.Errorf("client: KeyPackage ref: %w", err)
	}
	msg, err := (&mls.MLSMessage{Version: mls.ProtocolVersionMLS10, WireFormat: mls.WireFormatKeyPackage, KeyPackage: &b.KeyPackage}).Marshal()
	if err != nil {
		return nil, fmt.Errorf("client: encode KeyPackage: %w", err)
	}
	raw, err := b.Marshal()
	if err != nil {
		return nil, fmt.Errorf("client: encode KeyPackage keys: %w", err)
	}
	return &generated{msg: msg, ref: ref, bundle: secret.New(raw)}, nil
}

// KeyPackageStock asks the server for this device's stock.
func (c *Client) KeyPackageStock(ctx context.Context) (*qpcv1.CountKeyPackagesResponse, error) {
	var resp qpcv1.CountKeyPackagesResponse
	if err := c.call(ctx, "CountKeyPackages", &qpcv1.CountKeyPackagesRequest{}, &resp); err != nil {
		return nil, fmt.Errorf("client: count KeyPackages: %w", err)
	}
	return &resp, nil
}

// KeyPackageUpkeep keeps, for every cipher suite that this device and the
// server both allow, the configured stock of KeyPackages on the server
// plus a last-resort one, replacing those that the server drops within the
// margin (KeyPackageMargin before the TTL), and forgets private keys no
// Welcome can need any more.
func (c *Client) KeyPackageUpkeep(ctx context.Context) (*StockReport, error) {
	id, err := c.Identity(ctx)
	if err != nil {
		return nil, err
	}
	defer id.key.Wipe()
	// Certify now if this device has no certificate (registered against a
	// server older than identity keys), or take a new one the device
	// holding the identity key stored (approved again after an identity
	// reset), so the KeyPackages below carry the current certificate.
	if err := c.CertifyThisDevice(ctx); err != nil && !errors.Is(err, ErrNoIdentityKey) {
		return nil, err
	}
	if id, err = c.Identity(ctx); err != nil {
		return nil, err
	}
	defer id.key.Wipe()
	s, err := c.Settings(ctx)
	if err != nil {
		return nil, err
	}
	suites, err := c.stockSuites(ctx)
	if err != nil {
		return nil, err
	}
	count, err := c.KeyPackageStock(ctx)
	if err != nil {
		return nil, err
	}
	rep := &StockReport{Target: s.Stock, AccountCap: int(count.GetMaxPerAccount()), LastResort: true}
	for _, suite := range suites {
		sr, err := c.upkeepSuite(ctx, id, suite, s.Stock, serverSuiteStock(count, suite))
		if err != nil {
			return nil, err
		}
		rep.Suites = append(rep.Suites, *sr)
		rep.ServerStock += sr.ServerStock
		rep.Uploaded += sr.Uploaded
		rep.RejectedOver += sr.RejectedOver
		rep.LastResort = rep.LastResort && sr.LastResort
		rep.NewLastResort = rep.NewLastResort || sr.NewLastResort
	}
	rep.AccountStock = int(count.GetAccountCount()) + rep.Uploaded
	// Private keys of KeyPackages the server dropped long enough ago that no
	// Welcome made from them can still arrive.
	err = c.db.WriteTx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `DELETE FROM key_packages WHERE expires_ms < ?`, c.now().Add(-privateKeyRetention).UnixMilli())
		if err != nil {
			return err
		}
		n, _ := res.RowsAffected()
		rep.Purged = int(n)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("client: purge KeyPackage keys: %w", err)
	}
	return rep, nil
}

// serverSuiteStock is the server's count of one suite (a server without
// per-suite counts holds suite 1 only).
func serverSuiteStock(count *qpcv1.CountKeyPackagesResponse, suite mls.CipherSuiteID) *qpcv1.SuiteStock {
	if len(count.GetSuites()) == 0 {
		if suite == mls.MLS128DHKEMX25519AES128GCMSHA256Ed25519 {
			return &qpcv1.SuiteStock{CipherSuite: uint32(suite), DeviceCount: count.GetDeviceCount(), HasLastResort: count.GetHasLastResort()}
		}
		return &qpcv1.SuiteStock{CipherSuite: uint32(suite)}
	}
	for _, st := range count.GetSuites() {
		if st.GetCipherSuite() == uint32(suite) {
			return st
		}
	}
	return &qpcv1.SuiteStock{CipherSuite: uint32(suite)}
}

// upkeepSuite tops up one suite's stock and last resort (one upload).
func (c *Client) upkeepSuite(ctx context.Context, id *Identity, suite mls.CipherSuiteID, target int, count *qpcv1.SuiteStock) (*SuiteStockReport, error) {
	now := c.now()
	soon := now.Add(c.opts.KeyPackageMargin).UnixMilli()
	var expiring, lrFresh int
	err := c.db.ReadTx(ctx, func(tx *sql.Tx) error {
		if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM key_packages WHERE suite = ? AND uploaded = 1 AND last_resort = 0 AND expires_ms > ? AND expires_ms <= ?`,
			int(suite), now.UnixMilli(), soon).Scan(&expiring); err != nil {
			return err
		}
		return tx.QueryRowContext(ctx, `SELECT count(*) FROM key_packages WHERE suite = ? AND uploaded = 1 AND last_resort = 1 AND expires_ms > ?`, int(suite), soon).Scan(&lrFresh)
	})
	if err != nil {
		return nil, fmt.Errorf("client: read KeyPackages: %w", err)
	}
	rep := &SuiteStockReport{Suite: suite.String(), ID: uint16(suite)}
	// Those about to expire may still be unused on the server; count them
	// out so replacements are ready before they go.
	fresh := max(int(count.GetDeviceCount())-expiring, 0)
	need := max(target-fresh, 0)
	needLR := !count.GetHasLastResort() || lrFresh == 0
	var batch []*generated
	var lr *generated
	defer func() {
		for _, g := range batch {
			g.wipe()
		}
		if lr != nil {
			lr.wipe()
		}
	}()
	for range need {
		g, err := newKeyPackage(id, suite, now, false)
		if err != nil {
			return nil, err
		}
		batch = append(batch, g)
	}
	if needLR {
		if lr, err = newKeyPackage(id, suite, now, true); err != nil {
			return nil, err
		}
	}
	if len(batch) == 0 && lr == nil {
		rep.ServerStock = int(count.GetDeviceCount())
		rep.LastResort = count.GetHasLastResort()
		return rep, nil
	}
	// The private keys are stored before the upload: a crash after the
	// server took them must not leave KeyPackages nobody can open.
	expires := now.Add(c.opts.KeyPackageTTL).UnixMilli()
	err = c.db.WriteTx(ctx, func(tx *sql.Tx) error {
		ins := func(g *generated, last int) error {
			_, err := tx.ExecContext(ctx, `INSERT INTO key_packages (ref, key_package, bundle, last_resort, created_ms, expires_ms, uploaded, suite)
				VALUES (?, ?, ?, ?, ?, ?, 0, ?)`, g.ref, g.msg, g.bundle.Reveal(), last, now.UnixMilli(), expires, int(suite))
			return err
		}
		for _, g := range batch {
			if err := ins(g, 0); err != nil {
				return err
			}
		}
		if lr != nil {
			return ins(lr, 1)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("client: store KeyPackage keys: %w", err)
	}
	req := &qpcv1.UploadKeyPackagesRequest{}
	for _, g := range batch {
		req.KeyPackages = append(req.KeyPackages, g.msg)
	}
	if lr != nil {
		req.LastResort = lr.msg
	}
	var up qpcv1.UploadKeyPackagesResponse
	if err := c.call(ctx, "UploadKeyPackages", req, &up); err != nil {
		return nil, fmt.Errorf("client: upload %v KeyPackages: %w", suite, err)
	}
	err = c.db.WriteTx(ctx, func(tx *sql.Tx) error {
		mark := func(g *generated) error {
			_, err := tx.ExecContext(ctx, `UPDATE key_packages SET uploaded = 1 WHERE ref = ?`, g.ref)
			return err
		}
		for _, g := range batch {
			if err := mark(g); err != nil {
				return err
			}
		}
		if lr != nil {
			// The server keeps one last resort per device and suite: the
			// new one replaces the old one of this suite.
			if _, err := tx.ExecContext(ctx, `UPDATE key_packages SET expires_ms = min(expires_ms, ?) WHERE last_resort = 1 AND suite = ? AND ref != ?`,
				now.UnixMilli(), int(suite), lr.ref); err != nil {
				return err
			}
			return mark(lr)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("client: mark KeyPackages uploaded: %w", err)
	}
	rep.Uploaded = int(up.GetAccepted())
	rep.RejectedOver = int(up.GetRejectedOverCap())
	rep.NewLastResort = lr != nil && up.GetLastResortSet()
	// The upload reports the device's whole pool; this suite's is what the
	// server counted plus what it took now.
	rep.ServerStock = int(count.GetDeviceCount()) + rep.Uploaded
	rep.LastResort = up.GetLastResortSet() || count.GetHasLastResort()
	return rep, nil
}

// keyPackageBundle returns one of this device's KeyPackages with its
// private keys (by KeyPackageRef), for joining from a Welcome. ok is false
// when it is unknown (used, purged, never ours).
func keyPackageBundle(ctx context.Context, tx *sql.Tx, ref []byte) (b *mls.KeyPackageBundle, ok bool, err error) {
	var raw []byte
	err = tx.QueryRowContext(ctx, `SELECT bundle FROM key_packages WHERE ref = ?`, ref).Scan(&raw)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	defer secret.Wipe(raw)
	b, err = mls.UnmarshalKeyPackageBundle(raw)
	if err != nil {
		return nil, false, fmt.Errorf("client: stored KeyPackage keys: %w", err)
	}
	return b, true, nil
}

// consumeKeyPackage deletes a used KeyPackage's keys (in the transaction
// that stores the group state it produced). A last-resort KeyPackage stays:
// the server may hand it out again.
func consumeKeyPackage(ctx context.Context, tx *sql.Tx, ref []byte) error {
	_, err := tx.ExecContext(ctx, `DELETE FROM key_packages WHERE ref = ? AND last_resort = 0`, ref)
	return err
}
