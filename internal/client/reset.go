package client

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"

	"github.com/quicprochat/quicprochat/internal/identity"
	"github.com/quicprochat/quicprochat/internal/wire"
	"github.com/quicprochat/quicprochat/internal/wire/qpcv1"
)

// Resetting a lost identity key (docs/client.md, "Losing the identity
// key"): when the device that held the account identity key is gone, any
// still-active device of the account makes a new identity key, has the
// server replace the account's key (re-authenticated by this device's
// key; the server appends it to the key log), certifies itself with it,
// uploads fresh KeyPackages and rejoins its groups so that its leaf
// carries the new certificate. Every contact then sees a changed identity
// key: a loud warning, never a silent change.

// ErrIdentityResetTooSoon: the server allows one identity reset per
// account per 24 hours.
var ErrIdentityResetTooSoon = errors.New("client: the account's identity key was reset less than 24 hours ago")

// IdentityReset is what ResetIdentity did.
type IdentityReset struct {
	Account     string `json:"account"`
	OldIdentity string `json:"old_identity_key"` // fingerprint
	NewIdentity string `json:"new_identity_key"` // fingerprint
	// Resumed: an earlier reset from this device reached the server but
	// did not finish here; this run only finished it.
	Resumed bool `json:"resumed"`
	// Uncertified lists the account's other active devices: they need
	// approving again (qpc device approve on this device) or revoking.
	Uncertified        []string `json:"uncertified_devices"`
	KeyPackagesDeleted uint32   `json:"key_packages_deleted"`
	GroupsRejoined     []string `json:"groups_rejoined"`
}

// ResetIdentity gives the account a new identity key from this device.
// Every contact's client then warns that the account's identity key
// changed; contacts who had verified the account must verify it again.
func (c *Client) ResetIdentity(ctx context.Context) (*IdentityReset, error) {
	id, err := c.Identity(ctx)
	if err != nil {
		return nil, err
	}
	id.Wipe()
	out := &IdentityReset{Account: id.AccountName}
	serverKey, err := c.ownServerIdentityKey(ctx, id.AccountName)
	if err != nil {
		return nil, err
	}
	out.OldIdentity = identity.Fingerprint(serverKey[:])
	var held identity.PrivateKey
	var holds bool
	if err := c.db.ReadTx(ctx, func(tx *sql.Tx) error {
		var err error
		held, holds, err = loadIdentityKey(ctx, tx)
		return err
	}); err != nil {
		return nil, fmt.Errorf("client: read identity key: %w", err)
	}
	cert := id.Certificate()
	if holds && held.Public().Equal(serverKey) && (cert == nil || !cert.IdentityKey.Equal(serverKey)) {
		// A reset from this device reached the server, then this device
		// stopped before certifying itself: finish that one (a second
		// reset would be refused for a day anyway).
		held.Wipe()
		out.Resumed = true
		out.NewIdentity = out.OldIdentity
		if cert != nil {
			out.OldIdentity = identity.Fingerprint(cert.IdentityKey[:])
		}
		return out, c.finishReset(ctx, out)
	}
	var previous []byte // the seed this device held before, restored if the server refuses
	if holds {
		previous = held.Seed()
		held.Wipe()
	}
	k, err := identity.Generate()
	if err != nil {
		return nil, err
	}
	defer k.Wipe()
	pub := k.Public()
	// Stored before the server is asked, so a reply lost in transit cannot
	// leave the account with a key that no device holds.
	if err := c.storeIdentityKey(ctx, k.Seed(), pub.Bytes()); err != nil {
		return nil, err
	}
	var resp qpcv1.ResetIdentityKeyResponse
	err = c.retryStatus(ctx, func() error {
		r, err := c.reauth(ctx, &qpcv1.ReauthChallengeRequest{Purpose: qpcv1.ReauthPurpose_REAUTH_PURPOSE_RESET_IDENTITY, NewIdentityKey: pub.Bytes()})
		if err != nil {
			return err
		}
		return c.call(ctx, "ResetIdentityKey", &qpcv1.ResetIdentityKeyRequest{IdentityKey: pub.Bytes(), Reauth: r}, &resp)
	})
	if err != nil {
		var se *wire.StatusError
		if errors.As(err, &se) {
			// The server refused: the account keeps its old key.
			if rerr := c.restoreIdentityKey(ctx, previous); rerr != nil {
				return nil, errors.Join(err, rerr)
			}
			return nil, explainReset(se, err)
		}
		return nil, fmt.Errorf("client: reset identity key: %w; the outcome is unknown: run qpc identity reset again (it finishes a reset the server made)", err)
	}
	out.NewIdentity = identity.Fingerprint(pub[:])
	out.KeyPackagesDeleted = resp.GetKeyPackagesDeleted()
	for _, d := range resp.GetUncertifiedDeviceIds() {
		if d != id.DeviceID {
			out.Uncertified = append(out.Uncertified, d)
		}
	}
	return out, c.finishReset(ctx, out)
}

func explainReset(se *wire.StatusError, err error) error {
	switch {
	case se.Code == qpcv1.Status_STATUS_RESOURCE_EXHAUSTED && strings.Contains(se.Message, "reset recently"):
		return fmt.Errorf("%w: %w", ErrIdentityResetTooSoon, err)
	case se.Code == qpcv1.Status_STATUS_NOT_FOUND && strings.Contains(se.Message, "unknown method"):
		return fmt.Errorf("client: reset identity key: %w; the server is older than this client (ask the operator to upgrade qpcd)", err)
	}
	return explainDeviceChange("reset identity key", err)
}

// ownServerIdentityKey is the account's identity key as the server states
// it, proven by the key log like any contact's.
func (c *Client) ownServerIdentityKey(ctx context.Context, account string) (identity.PublicKey, error) {
	var resp qpcv1.LookupAccountResponse
	if err := c.call(ctx, "LookupAccount", &qpcv1.LookupAccountRequest{AccountName: account}, &resp); err != nil {
		return identity.PublicKey{}, fmt.Errorf("client: look up own account: %w", err)
	}
	if len(resp.GetIdentityKey()) == 0 {
		return identity.PublicKey{}, errors.New("client: this account was registered before identity keys: there is no identity key to reset")
	}
	k, err := identity.ParsePublicKey(resp.GetIdentityKey())
	if err != nil {
		return k, err
	}
	if err := c.proveKeys(ctx, resp.GetKeyLog(), account, k.Bytes(), nil); err != nil {
		return k, err
	}
	return k, nil
}

func (c *Client) storeIdentityKey(ctx context.Context, seed, pub []byte) error {
	err := c.db.WriteTx(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO account_identity (id, seed, public_key, created_ms) VALUES (1, ?, ?, ?)
			ON CONFLICT (id) DO UPDATE SET seed = excluded.seed, public_key = excluded.public_key, created_ms = excluded.created_ms`,
			seed, pub, c.now().UnixMilli())
		return err
	})
	if err != nil {
		return fmt.Errorf("client: save the new identity key: %w", err)
	}
	return nil
}

// restoreIdentityKey puts back what this device held before a refused reset.
func (c *Client) restoreIdentityKey(ctx context.Context, previous []byte) error {
	if previous != nil {
		k, err := identity.PrivateKeyFromSeed(previous)
		if err != nil {
			return err
		}
		defer k.Wipe()
		pub := k.Public()
		return c.storeIdentityKey(ctx, previous, pub.Bytes())
	}
	err := c.db.WriteTx(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `DELETE FROM account_identity WHERE id = 1`)
		return err
	})
	if err != nil {
		return fmt.Errorf("client: forget the refused identity key: %w", err)
	}
	return nil
}

// finishReset certifies this device with the new key, uploads KeyPackages
// certified by it and rejoins every group, so that this device's leaf
// carries the new certificate: members see the changed identity key in the
// group's own tree.
func (c *Client) finishReset(ctx context.Context, out *IdentityReset) error {
	if err := c.db.WriteTx(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `DELETE FROM device_certificate WHERE id = 1`)
		return err
	}); err != nil {
		return fmt.Errorf("client: drop the old certificate: %w", err)
	}
	if err := c.CertifyThisDevice(ctx); err != nil {
		return fmt.Errorf("client: certify this device with the new identity key: %w (run qpc identity reset again to finish)", err)
	}
	// Read what is waiting before the rejoins skip past it.
	if _, err := c.Sync(ctx, 0); err != nil {
		return fmt.Errorf("client: sync before rejoining: %w (run qpc identity reset again to finish)", err)
	}
	if _, err := c.KeyPackageUpkeep(ctx); err != nil {
		return err
	}
	var err error
	if out.GroupsRejoined, err = c.rejoinAll(ctx); err != nil {
		return err
	}
	return c.DropRevokedDevices(ctx)
}

// rejoinAll rejoins every active group by external commit, so that this
// device's leaf carries its current certificate.
func (c *Client) rejoinAll(ctx context.Context) ([]string, error) {
	groups, err := c.Groups(ctx)
	if err != nil {
		return nil, err
	}
	var done []string
	for _, g := range groups {
		if g.Status != statusActive {
			continue
		}
		if err := c.Rejoin(ctx, g.Name); err != nil {
			return done, fmt.Errorf("client: rejoin %s with the new certificate: %w (run qpc group rejoin %s)", g.Name, err, g.Name)
		}
		done = append(done, g.Name)
	}
	return done, nil
}

// DropRevokedDevices removes from every group the leaves of this account's
// devices that are no longer active (a lost device revoked with qpc devices
// revoke): their certificates are by the old identity key, and contacts
// would otherwise keep seeing them.
func (c *Client) DropRevokedDevices(ctx context.Context) error {
	id, err := c.Identity(ctx)
	if err != nil {
		return err
	}
	id.Wipe()
	devs, err := c.Devices(ctx)
	if err != nil {
		return err
	}
	active := map[string]bool{}
	for _, d := range devs {
		if d.GetStatus() == "active" {
			active[d.GetDeviceId()] = true
		}
	}
	groups, err := c.Groups(ctx)
	if err != nil {
		return err
	}
	queued := false
	for _, g := range groups {
		if g.Status != statusActive {
			continue
		}
		ms, err := c.Members(ctx, g.Name)
		if err != nil {
			return err
		}
		var drop []string
		for _, m := range ms {
			if m.Account == id.AccountName && !active[m.Device] {
				drop = append(drop, m.Account+"/"+m.Device)
			}
		}
		if len(drop) == 0 {
			continue
		}
		ch, err := c.channelOf(ctx, g.Name)
		if err != nil {
			return err
		}
		if err := c.queueCommit(ctx, ch, commitIntent{Op: "drop-devices", Devices: drop}); err != nil {
			return fmt.Errorf("client: remove revoked devices from %s: %w", g.Name, err)
		}
		queued = true
	}
	if queued {
		_, err = c.Flush(ctx)
	}
	return err
}
