package client

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"

	"google.golang.org/protobuf/proto"

	"github.com/quicprochat/quicprochat/internal/secret"
	"github.com/quicprochat/quicprochat/internal/wire"
	"github.com/quicprochat/quicprochat/internal/wire/qpcv1"
)

// Re-authentication (docs/protocol.md, "Re-authentication"): adding or
// revoking a device needs this device's key to sign a server challenge
// bound to the change, not just the access token.

const reauthContext = "qpc-reauth-v1\x00"

// reauthMessage is "qpc-reauth-v1" || 0x00 || purpose || 0x00 ||
// account_id || device_id || SHA-256(param) || challenge.
func reauthMessage(purpose, accountID, deviceID string, param, challenge []byte) []byte {
	binding := sha256.Sum256(param)
	m := make([]byte, 0, len(reauthContext)+len(purpose)+1+len(accountID)+len(deviceID)+len(binding)+len(challenge))
	m = append(m, reauthContext...)
	m = append(m, purpose...)
	m = append(m, 0)
	m = append(m, accountID...)
	m = append(m, deviceID...)
	m = append(m, binding[:]...)
	return append(m, challenge...)
}

// reauth asks the server for a challenge for one change and signs it.
func (c *Client) reauth(ctx context.Context, req *qpcv1.ReauthChallengeRequest) (*qpcv1.Reauth, error) {
	purpose, param := "add-device", req.GetNewSignatureKey()
	switch req.GetPurpose() {
	case qpcv1.ReauthPurpose_REAUTH_PURPOSE_REVOKE_DEVICE:
		purpose, param = "revoke-device", []byte(req.GetTargetDeviceId())
	case qpcv1.ReauthPurpose_REAUTH_PURPOSE_RESET_IDENTITY:
		purpose, param = "reset-identity", req.GetNewIdentityKey()
	}
	id, err := c.Identity(ctx)
	if err != nil {
		return nil, err
	}
	defer id.key.Wipe()
	var ch qpcv1.ReauthChallengeResponse
	if err := c.call(ctx, "ReauthChallenge", req, &ch); err != nil {
		return nil, err
	}
	priv := id.privateKey()
	sig := ed25519.Sign(priv, reauthMessage(purpose, id.AccountID, id.DeviceID, param, ch.GetChallenge()))
	secret.Wipe(priv)
	return &qpcv1.Reauth{Challenge: ch.GetChallenge(), Signature: sig}, nil
}

// AddDevice adds a device with the Ed25519 public key to this account,
// signed off by this device's key, and returns its device id. The
// account's other devices are told.
func (c *Client) AddDevice(ctx context.Context, key ed25519.PublicKey, name string) (string, error) {
	if len(key) != ed25519.PublicKeySize {
		return "", fmt.Errorf("client: add device: the key has %d bytes, want %d (an Ed25519 public key)", len(key), ed25519.PublicKeySize)
	}
	var resp qpcv1.AddDeviceResponse
	// A challenge is good for one try: a retry asks for a new one.
	err := c.retryStatus(ctx, func() error {
		r, err := c.reauth(ctx, &qpcv1.ReauthChallengeRequest{Purpose: qpcv1.ReauthPurpose_REAUTH_PURPOSE_ADD_DEVICE, NewSignatureKey: key})
		if err != nil {
			return err
		}
		return c.call(ctx, "AddDevice", &qpcv1.AddDeviceRequest{SignatureKey: key, DeviceName: name, Reauth: r}, &resp)
	})
	if err != nil {
		return "", explainDeviceChange("add device", err)
	}
	return resp.GetDeviceId(), nil
}

// RevokeDevice revokes one of this account's devices (this one included),
// signed off by this device's key. The account's other devices are told.
func (c *Client) RevokeDevice(ctx context.Context, deviceID string) error {
	err := c.retryStatus(ctx, func() error {
		r, err := c.reauth(ctx, &qpcv1.ReauthChallengeRequest{Purpose: qpcv1.ReauthPurpose_REAUTH_PURPOSE_REVOKE_DEVICE, TargetDeviceId: deviceID})
		if err != nil {
			return err
		}
		return c.call(ctx, "RevokeDevice", &qpcv1.RevokeDeviceRequest{DeviceId: deviceID, Reauth: r}, &qpcv1.RevokeDeviceResponse{})
	})
	if err != nil {
		return explainDeviceChange("revoke device", err)
	}
	return nil
}

func explainDeviceChange(op string, err error) error {
	var se *wire.StatusError
	if errors.As(err, &se) {
		switch se.Code {
		case qpcv1.Status_STATUS_NOT_FOUND:
			// A server older than this client does not know the
			// re-authentication call at all: say so, not "no such device".
			if strings.Contains(se.Message, "unknown method") {
				return fmt.Errorf("client: %s: %w; the server is older than this client and cannot make this change safely (ask the operator to upgrade qpcd)", op, err)
			}
			return fmt.Errorf("client: %s: %w; list the account's devices with qpc devices", op, err)
		case qpcv1.Status_STATUS_ALREADY_EXISTS:
			return fmt.Errorf("client: %s: %w; every device needs its own key", op, err)
		case qpcv1.Status_STATUS_PERMISSION_DENIED:
			return fmt.Errorf("client: %s: %w; this device's key must sign the change (is this device still active?)", op, err)
		}
	}
	return fmt.Errorf("client: %s: %w", op, err)
}

// AccountEvent is a server notice about this account's devices.
type AccountEvent struct {
	Kind       string `json:"kind"` // "device_added" or "device_revoked"
	DeviceID   string `json:"device_id"`
	DeviceName string `json:"device_name"`
	KeySHA256  string `json:"key_sha256"` // hex SHA-256 of the device's signature key
	ByDeviceID string `json:"by_device_id"`
	ServerMs   int64  `json:"server_unix_ms"`
}

// decodeAccountEvent reads an INBOX_KIND_ACCOUNT_EVENT payload; anything
// malformed is an error, never a panic.
func decodeAccountEvent(payload []byte) (AccountEvent, error) {
	var pb qpcv1.AccountEvent
	if err := proto.Unmarshal(payload, &pb); err != nil {
		return AccountEvent{}, fmt.Errorf("client: account event: %w", err)
	}
	ev := AccountEvent{DeviceID: pb.GetDeviceId(), DeviceName: pb.GetDeviceName(), ByDeviceID: pb.GetByDeviceId(), ServerMs: pb.GetTimeUnixMs()}
	switch pb.GetKind() {
	case qpcv1.AccountEventKind_ACCOUNT_EVENT_KIND_DEVICE_ADDED:
		ev.Kind = "device_added"
	case qpcv1.AccountEventKind_ACCOUNT_EVENT_KIND_DEVICE_REVOKED:
		ev.Kind = "device_revoked"
	default:
		return AccountEvent{}, fmt.Errorf("client: account event of kind %v", pb.GetKind())
	}
	if !validHexID(ev.DeviceID) || ev.ByDeviceID != "" && !validHexID(ev.ByDeviceID) ||
		len(ev.DeviceName) > 64 || !utf8.ValidString(ev.DeviceName) || len(pb.GetSignatureKey()) != ed25519.PublicKeySize {
		return AccountEvent{}, errors.New("client: account event with a malformed device id, name or key")
	}
	sum := sha256.Sum256(pb.GetSignatureKey())
	ev.KeySHA256 = hex.EncodeToString(sum[:])
	return ev, nil
}

func validHexID(s string) bool {
	if len(s) != 32 {
		return false
	}
	_, err := hex.DecodeString(s)
	return err == nil
}

// storeAccountEvent keeps an account event from the inbox (inside the
// transaction that deletes the inbox item). A malformed one is logged and
// dropped.
func (c *Client) storeAccountEvent(ctx context.Context, tx *sql.Tx, seq int64, payload []byte) error {
	ev, err := decodeAccountEvent(payload)
	if err != nil {
		c.log.Warn("client: account event dropped", "err", err)
		return nil
	}
	_, err = tx.ExecContext(ctx, `INSERT INTO account_events (seq, kind, device_id, device_name, key_sha256, by_device_id, server_ms)
		VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING`, seq, ev.Kind, ev.DeviceID, ev.DeviceName, ev.KeySHA256, ev.ByDeviceID, ev.ServerMs)
	return err
}

// AccountEvents returns the account events not shown yet and marks them shown.
func (c *Client) AccountEvents(ctx context.Context) ([]AccountEvent, error) {
	var out []AccountEvent
	err := c.db.WriteTx(ctx, func(tx *sql.Tx) error {
		rows, err := tx.QueryContext(ctx, `SELECT kind, device_id, device_name, key_sha256, by_device_id, server_ms
			FROM account_events WHERE shown = 0 ORDER BY seq`)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var ev AccountEvent
			if err := rows.Scan(&ev.Kind, &ev.DeviceID, &ev.DeviceName, &ev.KeySHA256, &ev.ByDeviceID, &ev.ServerMs); err != nil {
				return err
			}
			out = append(out, ev)
		}
		if err := rows.Err(); err != nil {
			return err
		}
		_, err = tx.ExecContext(ctx, `UPDATE account_events SET shown = 1 WHERE shown = 0`)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("client: read account events: %w", err)
	}
	return out, nil
}
