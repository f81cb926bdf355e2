package client

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/quicprochat/quicprochat/internal/identity"
	"github.com/quicprochat/quicprochat/internal/safetext"
	"github.com/quicprochat/quicprochat/internal/secret"
	"github.com/quicprochat/quicprochat/internal/wire"
	"github.com/quicprochat/quicprochat/internal/wire/qpcv1"
)

// loginContext prefixes the signed login message (docs/protocol.md, Login).
const loginContext = "qpc-login-v1\x00"

// loginMessage is "qpc-login-v1" || 0x00 || device_id (ASCII hex) || nonce.
func loginMessage(deviceID string, nonce []byte) []byte {
	m := make([]byte, 0, len(loginContext)+len(deviceID)+len(nonce))
	m = append(m, loginContext...)
	m = append(m, deviceID...)
	return append(m, nonce...)
}

// refreshMargin: the access token is renewed when it has less than this left.
const refreshMargin = 30 * time.Second

// RegisterParams is what Register needs.
type RegisterParams struct {
	AccountName string
	DeviceName  string // default "qpc"
	DisplayName string // shown to others in messages; default the account name
	InviteCode  string
}

// Register creates the account with this device as its first device,
// stores the device key, logs in and uploads the first KeyPackages.
func (c *Client) Register(ctx context.Context, p RegisterParams) (*Identity, error) {
	if _, err := c.Identity(ctx); err == nil {
		return nil, fmt.Errorf("%w: this home already holds a device; use another --home for another account", ErrAlreadyRegistered)
	} else if !errors.Is(err, ErrNotRegistered) {
		return nil, err
	}
	if p.DeviceName == "" {
		p.DeviceName = "qpc"
	}
	if p.DisplayName == "" {
		p.DisplayName = p.AccountName
	}
	for _, n := range []struct{ what, v string }{{"display name", p.DisplayName}, {"device name", p.DeviceName}} {
		if err := safetext.Check(n.what, n.v); err != nil {
			return nil, fmt.Errorf("client: %w", err)
		}
	}
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("client: generate device key: %w", err)
	}
	seed := secret.New(append([]byte(nil), priv.Seed()...))
	secret.Wipe(priv)
	defer seed.Wipe()
	// The account identity key certifies this and every later device
	// (certs.go); it stays on this device.
	idKey, err := identity.Generate()
	if err != nil {
		return nil, err
	}
	defer idKey.Wipe()
	idPub := idKey.Public()
	var resp qpcv1.RegisterResponse
	// Repeated only when the server answered with a transient status (it
	// did nothing): after a lost reply a repeat would say the name is taken.
	err = c.retryStatus(ctx, func() error {
		return c.conn.Once(ctx, "Register", "", &qpcv1.RegisterRequest{
			AccountName: p.AccountName, SignatureKey: pub, DeviceName: p.DeviceName, InviteCode: p.InviteCode,
			IdentityKey: idPub.Bytes(),
		}, &resp)
	})
	if err != nil {
		return nil, explainRegister(err)
	}
	id := &Identity{AccountName: p.AccountName, AccountID: resp.GetAccountId(), DeviceID: resp.GetDeviceId(),
		DeviceName: p.DeviceName, DisplayName: p.DisplayName, InviteCodeUnused: resp.GetInviteCodeUnused(), key: seed.Clone()}
	err = c.db.WriteTx(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO identity (id, account_name, account_id, device_id, device_name, display_name, sig_seed, created_ms)
			VALUES (1, ?, ?, ?, ?, ?, ?, ?)`, id.AccountName, id.AccountID, id.DeviceID, id.DeviceName, id.DisplayName,
			seed.Reveal(), c.now().UnixMilli())
		if err != nil {
			return err
		}
		_, err = tx.ExecContext(ctx, `INSERT INTO account_identity (id, seed, public_key, created_ms) VALUES (1, ?, ?, ?)`,
			idKey.Seed(), idPub.Bytes(), c.now().UnixMilli())
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("client: save identity (the account %q exists on the server but this device lost its key; register another name): %w", p.AccountName, err)
	}
	if err := c.Login(ctx); err != nil {
		return id, err
	}
	if err := c.CertifyThisDevice(ctx); err != nil {
		return id, err
	}
	// The key log's key is pinned now, like the TLS pin at init.
	if err := c.PinKeyLog(ctx); err != nil {
		return id, err
	}
	if _, err := c.KeyPackageUpkeep(ctx); err != nil {
		return id, err
	}
	now := c.now().UnixMilli()
	_ = c.db.WriteTx(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO kv (key, value) VALUES ('kp_checked_ms', ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value`, now)
		return err
	})
	return id, nil
}

func explainRegister(err error) error {
	var se *wire.StatusError
	if errors.As(err, &se) {
		switch se.Code {
		case qpcv1.Status_STATUS_ALREADY_EXISTS:
			return fmt.Errorf("client: register: %w; choose another name", err)
		case qpcv1.Status_STATUS_PERMISSION_DENIED:
			return fmt.Errorf("client: register: %w; ask the operator for an invite and pass --invite CODE", err)
		case qpcv1.Status_STATUS_INVALID_ARGUMENT:
			return fmt.Errorf("client: register: %w; names are 1-32 of a-z 0-9 . _ - starting with a letter or digit", err)
		}
	}
	return fmt.Errorf("client: register: %w", err)
}

// Login proves the device key to the server and stores fresh tokens.
func (c *Client) Login(ctx context.Context) error {
	c.authMu.Lock()
	defer c.authMu.Unlock()
	_, err := c.loginLocked(ctx)
	return err
}

func (c *Client) loginLocked(ctx context.Context) (string, error) {
	id, err := c.Identity(ctx)
	if err != nil {
		return "", err
	}
	defer id.key.Wipe()
	// Challenge and login are repeated together: a nonce is good for one try.
	var toks *qpcv1.Tokens
	err = c.retry(ctx, func() error {
		var ch qpcv1.LoginChallengeResponse
		if err := c.conn.Once(ctx, "LoginChallenge", "", &qpcv1.LoginChallengeRequest{DeviceId: id.DeviceID}, &ch); err != nil {
			return err
		}
		priv := id.privateKey()
		sig := ed25519.Sign(priv, loginMessage(id.DeviceID, ch.GetNonce()))
		secret.Wipe(priv)
		var lr qpcv1.LoginResponse
		if err := c.conn.Once(ctx, "Login", "", &qpcv1.LoginRequest{DeviceId: id.DeviceID, Nonce: ch.GetNonce(), Signature: sig}, &lr); err != nil {
			return err
		}
		toks = lr.GetTokens()
		return nil
	})
	if err != nil {
		var se *wire.StatusError
		if errors.As(err, &se) && se.Code == qpcv1.Status_STATUS_UNAUTHENTICATED {
			return "", fmt.Errorf("client: login refused: %w; the device may have been revoked or the account disabled (ask the operator, or register a new device)", err)
		}
		return "", fmt.Errorf("client: login: %w", err)
	}
	if err := c.saveTokens(ctx, toks); err != nil {
		return "", err
	}
	return toks.GetAccessToken(), nil
}

// retry runs fn under the connection's backoff policy.
func (c *Client) retry(ctx context.Context, fn func() error) error {
	return c.retryIf(ctx, fn, Retryable)
}

// retryStatus retries fn only when the server answered with a transient
// status (so the call had no effect), never after a lost connection.
func (c *Client) retryStatus(ctx context.Context, fn func() error) error {
	return c.retryIf(ctx, fn, func(err error) bool {
		var se *wire.StatusError
		return errors.As(err, &se) && Retryable(err)
	})
}

func (c *Client) retryIf(ctx context.Context, fn func() error, ok func(error) bool) error {
	b := c.conn.backoff
	for n := 0; ; n++ {
		err := fn()
		if err == nil || !ok(err) || ctx.Err() != nil || n+1 >= b.MaxAttempts {
			return err
		}
		if serr := b.Sleep(ctx, b.Delay(n, retryAfterOf(err))); serr != nil {
			return err
		}
	}
}

func (c *Client) saveTokens(ctx context.Context, t *qpcv1.Tokens) error {
	if t == nil || t.GetAccessToken() == "" || len(t.GetRefreshToken()) == 0 {
		return errors.New("client: the server returned no tokens")
	}
	err := c.db.WriteTx(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO tokens (id, access_token, access_expires, refresh_token, refresh_expires)
			VALUES (1, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET access_token = excluded.access_token,
			access_expires = excluded.access_expires, refresh_token = excluded.refresh_token,
			refresh_expires = excluded.refresh_expires`,
			t.GetAccessToken(), t.GetAccessExpiresUnixMs(), t.GetRefreshToken(), t.GetRefreshExpiresUnixMs())
		return err
	})
	if err != nil {
		return fmt.Errorf("client: save tokens: %w", err)
	}
	return nil
}

type storedTokens struct {
	access         secret.Bytes
	accessExpires  time.Time
	refresh        secret.Bytes
	refreshExpires time.Time
}

func (c *Client) loadTokens(ctx context.Context) (*storedTokens, error) {
	var (
		access              string
		refresh             []byte
		accessMs, refreshMs int64
	)
	err := c.db.ReadTx(ctx, func(tx *sql.Tx) error {
		return tx.QueryRowContext(ctx, `SELECT access_token, access_expires, refresh_token, refresh_expires FROM tokens WHERE id = 1`).
			Scan(&access, &accessMs, &refresh, &refreshMs)
	})
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("client: read tokens: %w", err)
	}
	return &storedTokens{access: secret.New([]byte(access)), accessExpires: time.UnixMilli(accessMs),
		refresh: secret.New(refresh), refreshExpires: time.UnixMilli(refreshMs)}, nil
}

// token returns a usable access token: the stored one, a refreshed one, or
// one from a new login. force discards the stored access token (the server
// refused it).
func (c *Client) token(ctx context.Context, force bool) (string, error) {
	c.authMu.Lock()
	defer c.authMu.Unlock()
	t, err := c.loadTokens(ctx)
	if err != nil {
		return "", err
	}
	now := c.now()
	if t != nil && !force && now.Add(refreshMargin).Before(t.accessExpires) {
		return string(t.access.Reveal()), nil
	}
	if t != nil && now.Before(t.refreshExpires) {
		id, err := c.Identity(ctx)
		if err != nil {
			return "", err
		}
		id.key.Wipe()
		var rr qpcv1.RefreshResponse
		// Once: a Refresh whose reply was lost must not be repeated (the
		// server would see a reused token and revoke the device's tokens);
		// a new login is the safe fallback.
		err = c.retryStatus(ctx, func() error {
			return c.conn.Once(ctx, "Refresh", "", &qpcv1.RefreshRequest{DeviceId: id.DeviceID, RefreshToken: t.refresh.Reveal()}, &rr)
		})
		if err == nil {
			if err := c.saveTokens(ctx, rr.GetTokens()); err != nil {
				return "", err
			}
			return rr.GetTokens().GetAccessToken(), nil
		}
		c.log.Debug("client: refresh failed; logging in", "err", err)
	}
	return c.loginLocked(ctx)
}

// call is an authenticated call with retries. Every attempt asks for the
// token afresh (a retry after a long backoff renews one that expired
// meanwhile); a token the server refuses is renewed once per call.
func (c *Client) call(ctx context.Context, method string, req, resp proto.Message) error {
	return c.conn.CallAuth(ctx, method, c.token, req, resp)
}

// WhoAmI asks the server who the current token belongs to.
func (c *Client) WhoAmI(ctx context.Context) (*qpcv1.WhoAmIResponse, error) {
	var resp qpcv1.WhoAmIResponse
	if err := c.call(ctx, "WhoAmI", &qpcv1.WhoAmIRequest{}, &resp); err != nil {
		return nil, fmt.Errorf("client: whoami: %w", err)
	}
	return &resp, nil
}

// Devices lists the account's devices.
func (c *Client) Devices(ctx context.Context) ([]*qpcv1.Device, error) {
	var resp qpcv1.ListDevicesResponse
	if err := c.call(ctx, "ListDevices", &qpcv1.ListDevicesRequest{}, &resp); err != nil {
		return nil, fmt.Errorf("client: devices: %w", err)
	}
	return resp.GetDevices(), nil
}
