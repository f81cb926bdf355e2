package client

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/subtle"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/quicprochat/quicprochat/internal/identity"
	"github.com/quicprochat/quicprochat/internal/mls"
	"github.com/quicprochat/quicprochat/internal/secret"
	"github.com/quicprochat/quicprochat/internal/wire/qpcv1"
)

// The account identity key and device certificates (docs/protocol.md,
// "Account identity and device certificates"): the device that registers
// an account makes its identity key and keeps it; it certifies itself and
// every device it approves (qpc device approve). Each device puts its
// certificate into the LeafNode of every KeyPackage and group leaf it
// makes, as the extension identity.ExtensionType, so other members check
// it from the MLS tree itself, without asking the server.

var (
	// ErrNoIdentityKey: this device does not hold the account identity key
	// (only the device that registered the account does), so it cannot
	// certify devices.
	ErrNoIdentityKey = errors.New("client: this device does not hold the account identity key")
	// ErrLinkCode: no pending link request matches the code.
	ErrLinkCode = errors.New("client: no pending device link matches the code")
)

// leafExtensions is the certificate extension for this device's leaves
// (none for a device without a certificate).
func (id *Identity) leafExtensions() []mls.Extension {
	if len(id.certificate) == 0 {
		return nil
	}
	return []mls.Extension{{Type: mls.ExtensionType(identity.ExtensionType), Data: id.certificate}}
}

// Certificate returns this device's parsed certificate, or nil if it has none.
func (id *Identity) Certificate() *identity.Certificate {
	if len(id.certificate) == 0 {
		return nil
	}
	c, err := identity.Parse(id.certificate)
	if err != nil {
		return nil
	}
	return c
}

// loadIdentityKey returns the account identity private key, if this device holds it.
func loadIdentityKey(ctx context.Context, tx *sql.Tx) (identity.PrivateKey, bool, error) {
	var seed []byte
	err := tx.QueryRowContext(ctx, `SELECT seed FROM account_identity WHERE id = 1`).Scan(&seed)
	if errors.Is(err, sql.ErrNoRows) {
		return identity.PrivateKey{}, false, nil
	}
	if err != nil {
		return identity.PrivateKey{}, false, err
	}
	k, err := identity.PrivateKeyFromSeed(seed)
	if err != nil {
		secret.Wipe(seed)
		return identity.PrivateKey{}, false, fmt.Errorf("client: %w; the database is damaged", err)
	}
	return k, true, nil
}

func (c *Client) identityKey(ctx context.Context) (identity.PrivateKey, error) {
	var k identity.PrivateKey
	var ok bool
	err := c.db.ReadTx(ctx, func(tx *sql.Tx) error {
		var err error
		k, ok, err = loadIdentityKey(ctx, tx)
		return err
	})
	if err != nil {
		return k, fmt.Errorf("client: read identity key: %w", err)
	}
	if !ok {
		return k, fmt.Errorf("%w; approve devices from the device the account was registered with", ErrNoIdentityKey)
	}
	return k, nil
}

// OwnIdentityKey is this account's identity public key: from this device's
// certificate, or the identity key itself on the registering device.
func (c *Client) OwnIdentityKey(ctx context.Context) (identity.PublicKey, error) {
	id, err := c.Identity(ctx)
	if err != nil {
		return identity.PublicKey{}, err
	}
	id.Wipe()
	if cert := id.Certificate(); cert != nil {
		return cert.IdentityKey, nil
	}
	k, err := c.identityKey(ctx)
	if err != nil {
		return identity.PublicKey{}, fmt.Errorf("client: this account has no identity key (registered before identity keys, or this device is not certified yet): %w", err)
	}
	defer k.Wipe()
	return k.Public(), nil
}

// CertifyThisDevice makes and stores this device's certificate when this
// device holds the identity key and has none yet (done at registration;
// repeating it is harmless).
func (c *Client) CertifyThisDevice(ctx context.Context) error {
	id, err := c.Identity(ctx)
	if err != nil {
		return err
	}
	defer id.Wipe()
	k, err := c.identityKey(ctx)
	if errors.Is(err, ErrNoIdentityKey) {
		// Approved (or approved again after an identity reset) by the
		// device that holds the key: take the certificate it stored.
		return c.takeServerCertificate(ctx, id)
	}
	if err != nil {
		return err
	}
	if cert := id.Certificate(); cert != nil && cert.IdentityKey.Equal(k.Public()) {
		k.Wipe()
		return nil
	}
	defer k.Wipe()
	raw, err := c.certify(ctx, k, id.AccountName, id.DeviceID, id.PublicKey())
	if olderServer(err) {
		// A qpcd older than identity keys cannot store certificates: the
		// device works uncertified (others see it as unverifiable) and
		// KeyPackage upkeep certifies it once the server is upgraded.
		return nil
	}
	if err != nil {
		return err
	}
	return c.saveCertificate(ctx, raw)
}

// takeServerCertificate saves the certificate the server holds for this
// device when it differs from the one this device has, binds this device
// and is by the account's identity key as the key log proves it (a device
// that does not hold the identity key learns of a reset this way).
func (c *Client) takeServerCertificate(ctx context.Context, id *Identity) error {
	devs, err := c.Devices(ctx)
	if err != nil {
		return err
	}
	for _, d := range devs {
		raw := d.GetCertificate()
		if d.GetDeviceId() != id.DeviceID || len(raw) == 0 || subtle.ConstantTimeCompare(raw, id.certificate) == 1 {
			continue
		}
		ik, err := c.ownServerIdentityKey(ctx, id.AccountName)
		if err != nil {
			return err
		}
		cert, err := identity.Parse(raw)
		if err == nil {
			err = cert.Verify(identity.Expect{AccountName: id.AccountName, DeviceID: id.DeviceID, DeviceKey: id.PublicKey(), IdentityKey: &ik})
		}
		if err != nil {
			return fmt.Errorf("client: the certificate the server holds for this device does not check out: %w", err)
		}
		if err := c.saveCertificate(ctx, raw); err != nil {
			return err
		}
		if old := id.Certificate(); old != nil && !old.IdentityKey.Equal(ik) {
			// Approved again after an identity reset: the leaves in the
			// groups still carry the old certificate.
			_, err = c.rejoinAll(ctx)
			return err
		}
		return nil
	}
	return nil
}

// certify signs a certificate for a device of this account and stores it
// on the server.
func (c *Client) certify(ctx context.Context, k identity.PrivateKey, account, deviceID string, key ed25519.PublicKey) ([]byte, error) {
	cert, err := identity.Issue(k, account, deviceID, key, c.now())
	if err != nil {
		return nil, fmt.Errorf("client: certify device: %w", err)
	}
	raw, err := cert.Marshal()
	if err != nil {
		return nil, fmt.Errorf("client: certify device: %w", err)
	}
	if err := c.call(ctx, "CertifyDevice", &qpcv1.CertifyDeviceRequest{DeviceId: deviceID, Certificate: raw}, &qpcv1.CertifyDeviceResponse{}); err != nil {
		return nil, fmt.Errorf("client: store the certificate of device %s on the server: %w", deviceID, err)
	}
	return raw, nil
}

func (c *Client) saveCertificate(ctx context.Context, raw []byte) error {
	err := c.db.WriteTx(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO device_certificate (id, certificate) VALUES (1, ?)
			ON CONFLICT (id) DO UPDATE SET certificate = excluded.certificate`, raw)
		return err
	})
	if err != nil {
		return fmt.Errorf("client: save certificate: %w", err)
	}
	return nil
}

// LinkRequest is a pending request of a new device to join this account.
type LinkRequest struct {
	Code       string `json:"code"` // identity.Fingerprint of its key
	DeviceName string `json:"device_name"`
	CreatedMs  int64  `json:"created_unix_ms"`
}

// LinkRequests lists the pending link requests of this account.
func (c *Client) LinkRequests(ctx context.Context) ([]LinkRequest, error) {
	reqs, err := c.linkRequests(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]LinkRequest, 0, len(reqs))
	for _, r := range reqs {
		out = append(out, LinkRequest{Code: identity.Fingerprint(r.GetSignatureKey()), DeviceName: r.GetDeviceName(), CreatedMs: r.GetCreatedUnixMs()})
	}
	return out, nil
}

func (c *Client) linkRequests(ctx context.Context) ([]*qpcv1.LinkRequest, error) {
	var resp qpcv1.ListLinkRequestsResponse
	if err := c.call(ctx, "ListLinkRequests", &qpcv1.ListLinkRequestsRequest{}, &resp); err != nil {
		return nil, fmt.Errorf("client: link requests: %w", err)
	}
	return resp.GetRequests(), nil
}

// ApprovedDevice is what ApproveLink did.
type ApprovedDevice struct {
	DeviceID   string `json:"device_id"`
	DeviceName string `json:"device_name"`
	Code       string `json:"code"`
}

// ApproveLink adds the device whose pending link request has the code
// (its key's fingerprint, shown by qpc device link on the new device) to
// this account, re-authenticated by this device's key, and certifies it
// with the account identity key.
func (c *Client) ApproveLink(ctx context.Context, code, name string) (*ApprovedDevice, error) {
	want := identity.NormaliseCode(code)
	if want == "" {
		return nil, fmt.Errorf("%w: %q is not a link code (16 letters and digits, as qpc device link shows them)", ErrLinkCode, code)
	}
	id, err := c.Identity(ctx)
	if err != nil {
		return nil, err
	}
	id.Wipe()
	k, err := c.identityKey(ctx)
	if err != nil {
		return nil, err
	}
	defer k.Wipe()
	reqs, err := c.linkRequests(ctx)
	if err != nil {
		return nil, err
	}
	var match *qpcv1.LinkRequest
	for _, r := range reqs {
		if subtle.ConstantTimeCompare([]byte(identity.Fingerprint(r.GetSignatureKey())), []byte(want)) == 1 {
			match = r
		}
	}
	if match == nil {
		// Not a new device: perhaps one of the account's devices left
		// without a certificate by an identity reset (qpc whoami on it
		// shows its code).
		if d, err := c.recertify(ctx, k, id, want); d != nil || err != nil {
			return d, err
		}
		return nil, fmt.Errorf("%w %s; run qpc device link ACCOUNT on the new device (requests expire after 10 minutes) and check the code", ErrLinkCode, want)
	}
	if name == "" {
		name = match.GetDeviceName()
	}
	devID, err := c.AddDevice(ctx, match.GetSignatureKey(), name)
	if err != nil {
		return nil, err
	}
	if _, err := c.certify(ctx, k, id.AccountName, devID, match.GetSignatureKey()); err != nil {
		return nil, fmt.Errorf("%w (the device %s was added but is not certified: revoke it with qpc devices revoke %s and link again)", err, devID, devID)
	}
	return &ApprovedDevice{DeviceID: devID, DeviceName: name, Code: want}, nil
}

// recertify certifies the account's active, uncertified device whose key
// has the fingerprint code (nil, nil if there is none).
func (c *Client) recertify(ctx context.Context, k identity.PrivateKey, id *Identity, code string) (*ApprovedDevice, error) {
	devs, err := c.Devices(ctx)
	if err != nil {
		return nil, err
	}
	for _, d := range devs {
		if d.GetStatus() != "active" || subtle.ConstantTimeCompare([]byte(identity.Fingerprint(d.GetSignatureKey())), []byte(code)) != 1 {
			continue
		}
		if cert, err := identity.Parse(d.GetCertificate()); err == nil && cert.IdentityKey.Equal(k.Public()) {
			return nil, fmt.Errorf("%w %s: device %s is already certified by this account's identity key", ErrLinkCode, code, d.GetDeviceId())
		}
		if _, err := c.certify(ctx, k, id.AccountName, d.GetDeviceId(), d.GetSignatureKey()); err != nil {
			return nil, err
		}
		return &ApprovedDevice{DeviceID: d.GetDeviceId(), DeviceName: d.GetName(), Code: code}, nil
	}
	return nil, nil
}

// AddCertifiedDevice adds a device by its Ed25519 public key (qpc devices
// add KEY) and certifies it with the account identity key, which this
// device must hold: a device without a certificate is refused by the
// server's KeyPackage directory and by every contact, so adding one would
// only make a device nobody can reach. Accounts registered before identity
// keys have nothing to certify with and get a plain AddDevice.
func (c *Client) AddCertifiedDevice(ctx context.Context, key ed25519.PublicKey, name string) (*ApprovedDevice, error) {
	id, err := c.Identity(ctx)
	if err != nil {
		return nil, err
	}
	id.Wipe()
	code := identity.Fingerprint(key)
	k, err := c.identityKey(ctx)
	if errors.Is(err, ErrNoIdentityKey) {
		if id.Certificate() == nil {
			if _, lerr := c.ownServerIdentityKey(ctx, id.AccountName); lerr != nil && strings.Contains(lerr.Error(), "registered before identity keys") {
				devID, err := c.AddDevice(ctx, key, name)
				if err != nil {
					return nil, err
				}
				return &ApprovedDevice{DeviceID: devID, DeviceName: name, Code: code}, nil
			}
		}
		return nil, fmt.Errorf("%w, so a device added here would have no certificate and nobody could reach it; "+
			"run qpc device link %s on the new device and approve its code with qpc device approve on the device that holds the identity key "+
			"(if that device is lost: qpc identity reset)", err, id.AccountName)
	}
	if err != nil {
		return nil, err
	}
	defer k.Wipe()
	devID, err := c.AddDevice(ctx, key, name)
	if err != nil {
		return nil, err
	}
	if _, err := c.certify(ctx, k, id.AccountName, devID, key); err != nil {
		return nil, fmt.Errorf("%w (the device %s was added but is not certified: revoke it with qpc devices revoke %s and add it again)", err, devID, devID)
	}
	return &ApprovedDevice{DeviceID: devID, DeviceName: name, Code: code}, nil
}

// LinkOptions tune Link.
type LinkOptions struct {
	DeviceName  string
	DisplayName string
	// Poll is how often the server is asked whether the link was approved
	// (default 2s); Timeout how long to wait in all (default 10 minutes,
	// the life of a link request).
	Poll    time.Duration
	Timeout time.Duration
	// Code, if set, is called once with the code to show the user.
	Code func(code string)
}

// Link makes this (fresh) home a new device of an existing account: it
// makes a device key, asks the server to hold a link request, shows the
// key's fingerprint as the code through opts.Code, and waits until a
// device of the account approves it (qpc device approve CODE). Then it
// stores the identity, logs in, takes its certificate and uploads
// KeyPackages.
func (c *Client) Link(ctx context.Context, account string, opts LinkOptions) (*Identity, error) {
	if _, err := c.Identity(ctx); err == nil {
		return nil, fmt.Errorf("%w: this home already holds a device; link from a new --home", ErrAlreadyRegistered)
	} else if !errors.Is(err, ErrNotRegistered) {
		return nil, err
	}
	if opts.DeviceName == "" {
		opts.DeviceName = "qpc"
	}
	if opts.DisplayName == "" {
		opts.DisplayName = account
	}
	if opts.Poll <= 0 {
		opts.Poll = 2 * time.Second
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 10 * time.Minute
	}
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("client: generate device key: %w", err)
	}
	seed := secret.New(append([]byte(nil), priv.Seed()...))
	secret.Wipe(priv)
	defer seed.Wipe()
	ctx, cancel := context.WithTimeout(ctx, opts.Timeout)
	defer cancel()
	var st qpcv1.RequestLinkResponse
	ask := func() error {
		return c.retry(ctx, func() error {
			return c.conn.Call(ctx, "RequestLink", "", &qpcv1.RequestLinkRequest{AccountName: account, SignatureKey: pub, DeviceName: opts.DeviceName}, &st)
		})
	}
	if err := ask(); err != nil {
		return nil, fmt.Errorf("client: link request: %w", explainLookup(err, account))
	}
	if opts.Code != nil {
		opts.Code(identity.Fingerprint(pub))
	}
	t := time.NewTicker(opts.Poll)
	defer t.Stop()
	for st.GetDeviceId() == "" {
		select {
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.Canceled) {
				// Interrupted (Ctrl-C), not timed out: say so.
				return nil, fmt.Errorf("client: stopped waiting before the link was approved (%w); an approval now adds a device this home does not hold: run qpc device link again and approve the new code", ctx.Err())
			}
			return nil, fmt.Errorf("client: the link was not approved in time (%w); run qpc device link again", ctx.Err())
		case <-t.C:
		}
		if err := ask(); err != nil {
			return nil, fmt.Errorf("client: link request: %w", err)
		}
	}
	id := &Identity{AccountName: account, AccountID: st.GetAccountId(), DeviceID: st.GetDeviceId(),
		DeviceName: opts.DeviceName, DisplayName: opts.DisplayName, key: seed.Clone()}
	err = c.db.WriteTx(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO identity (id, account_name, account_id, device_id, device_name, display_name, sig_seed, created_ms)
			VALUES (1, ?, ?, ?, ?, ?, ?, ?)`, id.AccountName, id.AccountID, id.DeviceID, id.DeviceName, id.DisplayName,
			seed.Reveal(), c.now().UnixMilli())
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("client: save identity: %w", err)
	}
	if err := c.Login(ctx); err != nil {
		return id, err
	}
	// The approving device stores the certificate right after adding the
	// device; wait for it.
	for {
		devs, err := c.Devices(ctx)
		if err != nil {
			return id, err
		}
		for _, d := range devs {
			if d.GetDeviceId() != id.DeviceID || len(d.GetCertificate()) == 0 {
				continue
			}
			cert, err := identity.Parse(d.GetCertificate())
			if err == nil {
				err = cert.Verify(identity.Expect{AccountName: account, DeviceID: id.DeviceID, DeviceKey: pub})
			}
			if err != nil {
				return id, fmt.Errorf("client: the certificate the server holds for this device does not check out: %w", err)
			}
			if err := c.saveCertificate(ctx, d.GetCertificate()); err != nil {
				return id, err
			}
			id.certificate = d.GetCertificate()
			if err := c.PinKeyLog(ctx); err != nil {
				return id, err
			}
			if _, err := c.KeyPackageUpkeep(ctx); err != nil {
				return id, err
			}
			return id, nil
		}
		select {
		case <-ctx.Done():
			return id, fmt.Errorf("client: linked as device %s, but no certificate arrived (%w); approve again from the registering device", id.DeviceID, ctx.Err())
		case <-t.C:
		}
	}
}
