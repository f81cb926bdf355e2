package client

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"

	"github.com/quicprochat/quicprochat/internal/identity"
	"github.com/quicprochat/quicprochat/internal/mls"
	"github.com/quicprochat/quicprochat/internal/wire/qpcv1"
)

// Trust on first use and verification (docs/client.md, "Verifying
// contacts"). The client pins each account's identity key the first time
// it sees one, remembers the devices that key certified, and checks every
// device it adds or finds in a group against that pin itself: the server
// runs the KeyPackage directory and could otherwise hand out a device it
// made.

var (
	// ErrUntrustedDevice is the root of the trust errors below.
	ErrUntrustedDevice = errors.New("client: untrusted device")
	// ErrUncertifiedDevice: the device carries no valid certificate by the
	// identity key pinned for its account.
	ErrUncertifiedDevice = fmt.Errorf("%w: not certified by the account's identity key", ErrUntrustedDevice)
	// ErrIdentityChanged: the device is certified by another identity key
	// than the one pinned for its account.
	ErrIdentityChanged = fmt.Errorf("%w: the account's identity key changed", ErrUntrustedDevice)
	// ErrUnverifiedDevice: a new device of a verified contact that the
	// user has not confirmed.
	ErrUnverifiedDevice = fmt.Errorf("%w: a new device of a verified contact", ErrUntrustedDevice)
	// ErrSafetyNumberMismatch: the number typed is not the safety number.
	ErrSafetyNumberMismatch = errors.New("client: safety number does not match")
)

// Trust statuses of a device, as Members and the notices show them.
const (
	TrustSelf            = "self"             // a device of this account, certified by its identity key
	TrustVerified        = "verified"         // certified by the identity key the user verified
	TrustCertified       = "certified"        // certified by the pinned (first-seen, not verified) identity key
	TrustNewDevice       = "new-device"       // certified by a verified key, but new and not confirmed
	TrustIdentityChanged = "identity-changed" // certified by another identity key than the pinned one
	TrustUncertified     = "uncertified"      // no valid certificate although the account has an identity key
	TrustUnverifiable    = "unverifiable"     // no certificate, account never seen with an identity key (registered before them)
)

type allowUnverifiedKey struct{}

// AllowUnverified returns a context under which adding (or sending to a
// group with) untrusted devices goes ahead: the user confirmed it (qpc
// --allow-unverified). A changed identity key is re-pinned (unverified)
// and new devices are marked confirmed.
func AllowUnverified(ctx context.Context) context.Context {
	return context.WithValue(ctx, allowUnverifiedKey{}, true)
}

func allowed(ctx context.Context) bool { v, _ := ctx.Value(allowUnverifiedKey{}).(bool); return v }

// assessment is what the client concludes about one device.
type assessment struct {
	status   string
	verified bool               // the account is a verified contact
	certKey  identity.PublicKey // the identity key that certified it (valid certificate only)
	pinned   identity.PublicKey // the pinned key (zero if none)
	reason   string
}

func certificateOf(leaf *mls.LeafNode) []byte {
	for _, x := range leaf.Extensions {
		if uint16(x.Type) == identity.ExtensionType {
			return x.Data
		}
	}
	return nil
}

// assess decides the trust status of a device from its leaf, pinning the
// account's identity key on first sight and remembering certified devices.
// New findings are recorded as trust events (shown once by recv/watch).
func (c *Client) assess(ctx context.Context, tx *sql.Tx, own *Identity, ownKey identity.PublicKey, account, deviceID string, leaf *mls.LeafNode, group string) (assessment, error) {
	var a assessment
	now := c.now().UnixMilli()
	var cert *identity.Certificate
	if raw := certificateOf(leaf); raw != nil {
		p, err := identity.Parse(raw)
		if err == nil {
			err = p.Verify(identity.Expect{AccountName: account, DeviceID: deviceID, DeviceKey: leaf.SignatureKey})
		}
		if err != nil {
			a.reason = err.Error()
		} else {
			cert = p
			a.certKey = p.IdentityKey
		}
	} else {
		a.reason = "no certificate"
	}
	// Findings inside a group are kept for recv/watch; on the add path
	// (no group) the user gets the refusal itself.
	event := func(kind, fp string) error {
		if group == "" {
			return nil
		}
		_, err := tx.ExecContext(ctx, `INSERT INTO trust_events (kind, account, device_id, key_fp, grp, created_ms) VALUES (?, ?, ?, ?, ?, ?)
			ON CONFLICT DO NOTHING`, kind, account, deviceID, fp, group, now)
		return err
	}
	if account == own.AccountName {
		a.pinned, a.verified = ownKey, true
		switch {
		case ownKey.IsZero() && cert == nil:
			a.status = TrustUnverifiable
		case cert != nil && cert.IdentityKey.Equal(ownKey):
			a.status = TrustSelf
		case cert != nil:
			a.status = TrustIdentityChanged
			return a, event("identity_changed", identity.Fingerprint(cert.IdentityKey[:]))
		default:
			a.status = TrustUncertified
			return a, event("uncertified", "")
		}
		return a, nil
	}
	var pinnedRaw []byte
	var verified int
	err := tx.QueryRowContext(ctx, `SELECT identity_key, verified FROM contacts WHERE account = ?`, account).Scan(&pinnedRaw, &verified)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		if cert == nil {
			a.status = TrustUnverifiable
			return a, nil
		}
		// Trust on first use.
		if _, err := tx.ExecContext(ctx, `INSERT INTO contacts (account, identity_key, first_seen_ms) VALUES (?, ?, ?)`, account, cert.IdentityKey.Bytes(), now); err != nil {
			return a, err
		}
		pinnedRaw = cert.IdentityKey.Bytes()
	case err != nil:
		return a, err
	}
	if a.pinned, err = identity.ParsePublicKey(pinnedRaw); err != nil {
		return a, err
	}
	a.verified = verified == 1
	switch {
	case cert == nil:
		a.status = TrustUncertified
		return a, event("uncertified", "")
	case !cert.IdentityKey.Equal(a.pinned):
		a.status = TrustIdentityChanged
		if _, err := tx.ExecContext(ctx, `UPDATE contacts SET changed_key = ? WHERE account = ?`, cert.IdentityKey.Bytes(), account); err != nil {
			return a, err
		}
		return a, event("identity_changed", identity.Fingerprint(cert.IdentityKey[:]))
	}
	var confirmed int
	err = tx.QueryRowContext(ctx, `SELECT confirmed FROM contact_devices WHERE account = ? AND device_id = ? AND device_key = ?`,
		account, deviceID, []byte(leaf.SignatureKey)).Scan(&confirmed)
	if errors.Is(err, sql.ErrNoRows) {
		// A device seen for the first time: confirmed unless the contact
		// was verified before it appeared.
		confirmed = 1 - verified
		if _, err := tx.ExecContext(ctx, `INSERT INTO contact_devices (account, device_id, device_key, first_seen_ms, confirmed) VALUES (?, ?, ?, ?, ?)
			ON CONFLICT (account, device_id) DO UPDATE SET device_key = excluded.device_key, confirmed = excluded.confirmed`,
			account, deviceID, []byte(leaf.SignatureKey), now, confirmed); err != nil {
			return a, err
		}
		if confirmed == 0 {
			if err := event("new_device", identity.Fingerprint(leaf.SignatureKey)); err != nil {
				return a, err
			}
		}
	} else if err != nil {
		return a, err
	}
	switch {
	case confirmed == 0:
		a.status = TrustNewDevice
	case a.verified:
		a.status = TrustVerified
	default:
		a.status = TrustCertified
	}
	return a, nil
}

// trustContext loads this device and its account's identity key once.
func (c *Client) trustContext(ctx context.Context) (*Identity, identity.PublicKey, error) {
	id, err := c.Identity(ctx)
	if err != nil {
		return nil, identity.PublicKey{}, err
	}
	id.Wipe()
	var own identity.PublicKey
	if cert := id.Certificate(); cert != nil {
		own = cert.IdentityKey
	} else if k, err := c.identityKey(ctx); err == nil {
		own = k.Public()
		k.Wipe()
	}
	return id, own, nil
}

// refuse turns an assessment into the add/send policy's error, or nil.
// Verified contacts' untrusted devices are always refused; for others a
// changed identity key or a missing certificate is refused on add.
func refusal(a assessment, account, deviceID string, adding bool) error {
	who := account + "/" + deviceID
	switch a.status {
	case TrustNewDevice:
		return fmt.Errorf("%w: %s is a new device of %s, whom you verified; check with %s that it is theirs (qpc verify @%s), or pass --allow-unverified",
			ErrUnverifiedDevice, who, account, account, account)
	case TrustIdentityChanged:
		if !a.verified && !adding {
			return nil
		}
		v := ""
		if a.verified {
			v = ", which you verified,"
		}
		return fmt.Errorf("%w: %s is certified by identity key %s, but %s's identity key%s is %s; the server may be serving a device it made. Compare safety numbers with %s (qpc verify @%s); only if they really changed their identity, pass --allow-unverified",
			ErrIdentityChanged, who, identity.Fingerprint(a.certKey[:]), account, v, identity.Fingerprint(a.pinned[:]), account, account)
	case TrustUncertified:
		if !a.verified && !adding {
			return nil
		}
		return fmt.Errorf("%w: %s (%s) is not certified by %s's identity key %s; the server may be serving a device it made. Ask %s to approve the device from their first device (qpc device approve), or pass --allow-unverified",
			ErrUncertifiedDevice, who, a.reason, account, identity.Fingerprint(a.pinned[:]), account)
	}
	return nil
}

// accept records the user's --allow-unverified decision for a device.
func accept(ctx context.Context, tx *sql.Tx, a assessment, account, deviceID string, key []byte, nowMs int64) error {
	switch a.status {
	case TrustIdentityChanged:
		if _, err := tx.ExecContext(ctx, `UPDATE contacts SET identity_key = ?, verified = 0, verified_ms = 0, changed_key = NULL WHERE account = ?`,
			a.certKey.Bytes(), account); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM contact_devices WHERE account = ?`, account); err != nil {
			return err
		}
		_, err := tx.ExecContext(ctx, `INSERT INTO contact_devices (account, device_id, device_key, first_seen_ms, confirmed) VALUES (?, ?, ?, ?, 1)`,
			account, deviceID, key, nowMs)
		return err
	case TrustNewDevice:
		_, err := tx.ExecContext(ctx, `UPDATE contact_devices SET confirmed = 1 WHERE account = ? AND device_id = ?`, account, deviceID)
		return err
	}
	return nil
}

// checkKeyPackageTrust is the add path's check of a fetched KeyPackage's
// device: it must be certified by the identity key pinned for the account
// (pinned now if this is the first sight), and a new device of a verified
// contact needs the user's confirmation (AllowUnverified).
func (c *Client) checkKeyPackageTrust(ctx context.Context, account, deviceID string, leaf *mls.LeafNode) error {
	own, ownKey, err := c.trustContext(ctx)
	if err != nil {
		return err
	}
	var refused error
	err = c.db.WriteTx(ctx, func(tx *sql.Tx) error {
		a, err := c.assess(ctx, tx, own, ownKey, account, deviceID, leaf, "")
		if err != nil {
			return err
		}
		if refused = refusal(a, account, deviceID, true); refused != nil && allowed(ctx) {
			refused = nil
			return accept(ctx, tx, a, account, deviceID, leaf.SignatureKey, c.now().UnixMilli())
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("client: check device %s/%s: %w", account, deviceID, err)
	}
	return refused
}

// MemberTrust is one device of a group with its trust status.
type MemberTrust struct {
	Account string `json:"account"`
	Device  string `json:"device"`
	Trust   string `json:"trust"`
	// IdentityKey is the fingerprint of the identity key that certified
	// the device ("" without a valid certificate).
	IdentityKey string `json:"identity_key,omitempty"`
}

// MembersTrust lists the group's devices with what this client knows of
// each (checking their certificates from the group's own tree).
func (c *Client) MembersTrust(ctx context.Context, name string) ([]MemberTrust, error) {
	own, ownKey, err := c.trustContext(ctx)
	if err != nil {
		return nil, err
	}
	var out []MemberTrust
	err = c.assessMembers(ctx, name, own, ownKey, func(_ *sql.Tx, _ mls.Member, acc, dev string, a assessment) error {
		mt := MemberTrust{Account: acc, Device: dev, Trust: a.status}
		if !a.certKey.IsZero() {
			mt.IdentityKey = identity.Fingerprint(a.certKey[:])
		}
		out = append(out, mt)
		return nil
	})
	return out, err
}

// assessMembers runs fn with the trust assessment of every member of the
// group, in one write transaction (fn may record what it accepts).
func (c *Client) assessMembers(ctx context.Context, name string, own *Identity, ownKey identity.PublicKey,
	fn func(tx *sql.Tx, m mls.Member, acc, dev string, a assessment) error) error {
	return c.db.WriteTx(ctx, func(tx *sql.Tx) error {
		_, g, err := openGroup(ctx, tx, name, nil)
		if err != nil {
			return err
		}
		for _, m := range g.Members() {
			acc, dev, _ := strings.Cut(string(m.Identity), "/")
			a, err := c.assess(ctx, tx, own, ownKey, acc, dev, m.LeafNode, name)
			if err != nil {
				return err
			}
			if err := fn(tx, m, acc, dev, a); err != nil {
				return err
			}
		}
		return nil
	})
}

// CheckGroupTrust returns an error when the group holds a device the user
// must confirm before sending to it: a new device of a verified contact,
// or one certified by another identity key than a verified contact's (or
// none). Under AllowUnverified it accepts them instead.
func (c *Client) CheckGroupTrust(ctx context.Context, name string) error {
	own, ownKey, err := c.trustContext(ctx)
	if err != nil {
		return err
	}
	var refused error
	err = c.assessMembers(ctx, name, own, ownKey, func(tx *sql.Tx, m mls.Member, acc, dev string, a assessment) error {
		r := refusal(a, acc, dev, false)
		if r == nil || acc == own.AccountName {
			return nil
		}
		if !allowed(ctx) {
			if refused == nil {
				refused = fmt.Errorf("%w (in %s)", r, name)
			}
			return nil
		}
		return accept(ctx, tx, a, acc, dev, m.SignatureKey, c.now().UnixMilli())
	})
	if err != nil {
		return err
	}
	return refused
}

// SendChecked is Send after CheckGroupTrust: a message is not encrypted to
// an unconfirmed new device of a verified contact unless ctx allows it.
func (c *Client) SendChecked(ctx context.Context, channel, text, replyTo string) (string, error) {
	if err := c.CheckGroupTrust(ctx, channel); err != nil {
		return "", err
	}
	return c.Send(ctx, channel, text, replyTo)
}

// TrustNotice is a finding shown once by recv/watch.
type TrustNotice struct {
	Kind     string `json:"kind"` // identity_changed, new_device, uncertified
	Account  string `json:"account"`
	Device   string `json:"device,omitempty"`
	KeyFP    string `json:"key_fingerprint,omitempty"`
	Group    string `json:"group,omitempty"`
	Verified bool   `json:"verified"` // the account is a verified contact
	AtMs     int64  `json:"unix_ms"`
}

// TrustNotices checks the devices of every active group (new leaves come
// with Welcomes and commits) and returns the findings not shown yet,
// marking them shown.
func (c *Client) TrustNotices(ctx context.Context) ([]TrustNotice, error) {
	var names []string
	err := c.db.ReadTx(ctx, func(tx *sql.Tx) error {
		rows, err := tx.QueryContext(ctx, `SELECT name FROM groups WHERE status = ? AND state IS NOT NULL ORDER BY name`, statusActive)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var n string
			if err := rows.Scan(&n); err != nil {
				return err
			}
			names = append(names, n)
		}
		return rows.Err()
	})
	if err != nil {
		return nil, fmt.Errorf("client: list groups: %w", err)
	}
	for _, n := range names {
		if _, err := c.MembersTrust(ctx, n); err != nil {
			return nil, err
		}
	}
	var out []TrustNotice
	err = c.db.WriteTx(ctx, func(tx *sql.Tx) error {
		rows, err := tx.QueryContext(ctx, `SELECT e.kind, e.account, e.device_id, e.key_fp, e.grp, e.created_ms, COALESCE(ct.verified, 0)
			FROM trust_events e LEFT JOIN contacts ct ON ct.account = e.account WHERE e.shown = 0 ORDER BY e.id`)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var n TrustNotice
			var v int
			if err := rows.Scan(&n.Kind, &n.Account, &n.Device, &n.KeyFP, &n.Group, &n.AtMs, &v); err != nil {
				return err
			}
			n.Verified = v == 1
			out = append(out, n)
		}
		if err := rows.Err(); err != nil {
			return err
		}
		_, err = tx.ExecContext(ctx, `UPDATE trust_events SET shown = 1 WHERE shown = 0`)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("client: trust notices: %w", err)
	}
	return out, nil
}

// SafetyNumber is what qpc verify shows.
type SafetyNumber struct {
	Account  string `json:"account"`
	Number   string `json:"number"` // 60 digits, over the pinned identity key
	OwnKey   string `json:"own_identity_key"`
	TheirKey string `json:"their_identity_key"`
	Verified bool   `json:"verified"`
	// A different identity key was seen for the account since it was
	// pinned (a device certified by it): ChangedNumber is the safety number
	// over that key. If the other person's screen shows ChangedNumber they
	// really changed their identity; if it shows Number, the changed key
	// was not theirs.
	ChangedKey    string `json:"changed_identity_key,omitempty"`
	ChangedNumber string `json:"changed_number,omitempty"`
	FirstSeenMs   int64  `json:"first_seen_unix_ms"`
}

// contactKeys returns the pinned key of an account (pinning the one the
// server states if there is none yet) and the changed key if one was seen.
func (c *Client) contactKeys(ctx context.Context, account string) (pinned identity.PublicKey, changed *identity.PublicKey, sn *SafetyNumber, err error) {
	sn = &SafetyNumber{Account: account}
	var pinnedRaw, changedRaw []byte
	var verified int
	err = c.db.ReadTx(ctx, func(tx *sql.Tx) error {
		return tx.QueryRowContext(ctx, `SELECT identity_key, verified, changed_key, first_seen_ms FROM contacts WHERE account = ?`, account).
			Scan(&pinnedRaw, &verified, &changedRaw, &sn.FirstSeenMs)
	})
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return pinned, nil, nil, fmt.Errorf("client: read contact: %w", err)
	}
	if pinnedRaw == nil {
		var resp qpcv1.LookupAccountResponse
		if err := c.call(ctx, "LookupAccount", &qpcv1.LookupAccountRequest{AccountName: account}, &resp); err != nil {
			return pinned, nil, nil, fmt.Errorf("client: look up %s: %w", account, explainLookup(err, account))
		}
		if len(resp.GetIdentityKey()) == 0 {
			return pinned, nil, nil, fmt.Errorf("client: %s has no identity key (registered before identity keys); nothing to verify", account)
		}
		k, err := identity.ParsePublicKey(resp.GetIdentityKey())
		if err != nil {
			return pinned, nil, nil, err
		}
		// Pinned only once the key log proves it (keylog.go).
		if err := c.proveKeys(ctx, resp.GetKeyLog(), account, k.Bytes(), nil); err != nil {
			return pinned, nil, nil, err
		}
		sn.FirstSeenMs = c.now().UnixMilli()
		err = c.db.WriteTx(ctx, func(tx *sql.Tx) error {
			_, err := tx.ExecContext(ctx, `INSERT INTO contacts (account, identity_key, first_seen_ms) VALUES (?, ?, ?) ON CONFLICT DO NOTHING`,
				account, k.Bytes(), sn.FirstSeenMs)
			return err
		})
		if err != nil {
			return pinned, nil, nil, fmt.Errorf("client: pin %s: %w", account, err)
		}
		pinnedRaw = k.Bytes()
	}
	if pinned, err = identity.ParsePublicKey(pinnedRaw); err != nil {
		return pinned, nil, nil, err
	}
	if changedRaw != nil {
		k, err := identity.ParsePublicKey(changedRaw)
		if err != nil {
			return pinned, nil, nil, err
		}
		changed = &k
	}
	sn.Verified = verified == 1
	return pinned, changed, sn, nil
}

// SafetyNumber computes the safety number with an account: over this
// account's and their identity keys (identity.SafetyNumber), the same
// number on both sides.
func (c *Client) SafetyNumber(ctx context.Context, account string) (*SafetyNumber, error) {
	account = strings.TrimPrefix(account, "@")
	id, own, err := c.trustContext(ctx)
	if err != nil {
		return nil, err
	}
	if own.IsZero() {
		return nil, errors.New("client: this account has no identity key (registered before identity keys, or this device is not certified yet)")
	}
	if account == id.AccountName {
		return nil, errors.New("client: a safety number is between two accounts; name the other one")
	}
	pinned, changed, sn, err := c.contactKeys(ctx, account)
	if err != nil {
		return nil, err
	}
	me := identity.Party{Name: id.AccountName, Key: own}
	if sn.Number, err = identity.SafetyNumber(me, identity.Party{Name: account, Key: pinned}); err != nil {
		return nil, err
	}
	sn.OwnKey, sn.TheirKey = identity.Fingerprint(own[:]), identity.Fingerprint(pinned[:])
	if changed != nil {
		if sn.ChangedNumber, err = identity.SafetyNumber(me, identity.Party{Name: account, Key: *changed}); err != nil {
			return nil, err
		}
		sn.ChangedKey = identity.Fingerprint(changed[:])
	}
	return sn, nil
}

// ConfirmSafetyNumber marks the account verified when typed is the safety
// number (as the other person's screen shows it). Devices known now are
// confirmed. If typed is the number over a changed identity key, that key
// becomes the pinned one (they really changed it); if it is the number
// over the pinned key, the changed key is forgotten (it was not theirs).
func (c *Client) ConfirmSafetyNumber(ctx context.Context, account, typed string) (*SafetyNumber, error) {
	account = strings.TrimPrefix(account, "@")
	sn, err := c.SafetyNumber(ctx, account)
	if err != nil {
		return nil, err
	}
	pinned, changed, _, err := c.contactKeys(ctx, account)
	if err != nil {
		return nil, err
	}
	var key identity.PublicKey
	switch {
	case identity.SameSafetyNumber(typed, sn.Number):
		key = pinned
	case changed != nil && identity.SameSafetyNumber(typed, sn.ChangedNumber):
		key = *changed
	default:
		return sn, fmt.Errorf("%w: the number you entered is not the safety number with %s; do not mark them verified: someone may be in between (or a digit was mistyped)", ErrSafetyNumberMismatch, account)
	}
	now := c.now().UnixMilli()
	err = c.db.WriteTx(ctx, func(tx *sql.Tx) error {
		if !key.Equal(pinned) {
			// Verified a new key: the old key's devices mean nothing now.
			if _, err := tx.ExecContext(ctx, `DELETE FROM contact_devices WHERE account = ?`, account); err != nil {
				return err
			}
		}
		if _, err := tx.ExecContext(ctx, `UPDATE contacts SET identity_key = ?, verified = 1, verified_ms = ?, changed_key = NULL WHERE account = ?`,
			key.Bytes(), now, account); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `UPDATE contact_devices SET confirmed = 1 WHERE account = ?`, account); err != nil {
			return err
		}
		if key.Equal(pinned) {
			return nil
		}
		// The devices the user saw certified by the new key are the ones
		// they just confirmed (an identity reset: docs/client.md).
		return confirmDevicesCertifiedBy(ctx, tx, account, key, now)
	})
	if err != nil {
		return nil, fmt.Errorf("client: mark %s verified: %w", account, err)
	}
	return c.SafetyNumber(ctx, account)
}

// confirmDevicesCertifiedBy records as confirmed every device of account
// in this client's active groups whose leaf is certified by key.
func confirmDevicesCertifiedBy(ctx context.Context, tx *sql.Tx, account string, key identity.PublicKey, nowMs int64) error {
	rows, err := tx.QueryContext(ctx, `SELECT channel_id FROM groups WHERE status = ? AND state IS NOT NULL`, statusActive)
	if err != nil {
		return err
	}
	var chans [][]byte
	for rows.Next() {
		var ch []byte
		if err := rows.Scan(&ch); err != nil {
			rows.Close()
			return err
		}
		chans = append(chans, ch)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	for _, ch := range chans {
		_, g, err := openGroup(ctx, tx, "", ch)
		if err != nil {
			return err
		}
		for _, m := range g.Members() {
			acc, dev, _ := strings.Cut(string(m.Identity), "/")
			if acc != account {
				continue
			}
			raw := certificateOf(m.LeafNode)
			if raw == nil {
				continue
			}
			cert, err := identity.Parse(raw)
			if err != nil || !cert.IdentityKey.Equal(key) ||
				cert.Verify(identity.Expect{AccountName: account, DeviceID: dev, DeviceKey: m.LeafNode.SignatureKey}) != nil {
				continue
			}
			if _, err := tx.ExecContext(ctx, `INSERT INTO contact_devices (account, device_id, device_key, first_seen_ms, confirmed) VALUES (?, ?, ?, ?, 1)
				ON CONFLICT (account, device_id) DO UPDATE SET device_key = excluded.device_key, confirmed = 1`,
				account, dev, []byte(m.LeafNode.SignatureKey), nowMs); err != nil {
				return err
			}
		}
	}
	return nil
}
