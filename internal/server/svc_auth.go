package server

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"

	"github.com/quicprochat/quicprochat/internal/auth"
	"github.com/quicprochat/quicprochat/internal/config"
	"github.com/quicprochat/quicprochat/internal/secret"
	"github.com/quicprochat/quicprochat/internal/wire"
	"github.com/quicprochat/quicprochat/internal/wire/qpcv1"
)

// Auth method names.
const (
	MethodRegister       = "Register"
	MethodLoginChallenge = "LoginChallenge"
	MethodLogin          = "Login"
	MethodRefresh        = "Refresh"
	MethodAddDevice      = "AddDevice"
	MethodListDevices    = "ListDevices"
	MethodRevokeDevice   = "RevokeDevice"
	MethodWhoAmI         = "WhoAmI"
	MethodLookupAccount  = "LookupAccount"
	// MethodReauthChallenge: a challenge the calling device signs to prove
	// its key for one account change (AddDevice, RevokeDevice).
	MethodReauthChallenge = "ReauthChallenge"
)

// scopeLoginChallenge is the rate-limit scope (metric label) of login
// challenges per target device and source address.
const scopeLoginChallenge = "login_challenge"

// authPart holds the auth service's state inside Server.
type authPart struct {
	// auth owns accounts, devices and tokens. Other services use
	// auth.Device to check a device's account, key and status.
	auth   *auth.Service
	limits *rateLimits
	// challengeLimits bounds login challenges per (target device, source
	// address). Not per device alone: whoever drains a device's own bucket
	// would lock its owner out again, the very attack stateless challenges
	// stop (docs/threat-model.md).
	challengeLimits *rateLimits
}

func (s *Server) initAuth(ctx context.Context) error {
	a, err := auth.New(ctx, auth.Options{
		DB:           s.db,
		Logger:       s.log,
		Audit:        s.audit,
		Now:          s.now,
		Registration: s.cfg.Auth.Registration,
		AccessTTL:    s.cfg.Auth.AccessTokenTTL,
		RefreshTTL:   s.cfg.Auth.RefreshTokenTTL,
		Events:       authEvents{s},
		KeyLog:       s.keyLog,
	})
	if err != nil {
		return err
	}
	s.auth = a
	s.limits = newRateLimits(s.cfg.Limits.RateLimit, s.cfg.Limits.RateBurst, s.now, s.metrics, s.audit)
	s.challengeLimits = newRateLimits(s.cfg.Auth.ChallengeRate, s.cfg.Auth.ChallengeBurst, s.now, s.metrics, s.audit)
	s.rpc.admit = s.admitIP
	s.rpc.authenticate = s.authenticateCall
	return nil
}

func (s *Server) closeAuth() error {
	if s.auth != nil {
		s.auth.Close()
	}
	return nil
}

func (s *Server) registerAuth(t map[string]*method) {
	register(t, MethodRegister, true, s.register)
	register(t, MethodLoginChallenge, true, s.loginChallenge)
	register(t, MethodLogin, true, s.login)
	register(t, MethodRefresh, true, s.refresh)
	register(t, MethodAddDevice, false, s.addDevice)
	register(t, MethodListDevices, false, s.listDevices)
	register(t, MethodRevokeDevice, false, s.revokeDevice)
	register(t, MethodWhoAmI, false, s.whoAmI)
	register(t, MethodLookupAccount, false, s.lookupAccount)
	register(t, MethodReauthChallenge, false, s.reauthChallenge)
	s.registerIdentity(t)
}

// callCtx carries the caller's address into auth's audit events.
func callCtx(ctx context.Context, call *Call) context.Context {
	if call.Conn == nil || call.Conn.Q == nil {
		return ctx
	}
	return auth.WithSource(ctx, call.Conn.RemoteIP())
}

// authenticateCall is the middleware for every non-public method: the token
// becomes a Principal (device status is read on every call, so a revoked
// device fails on its next RPC), then the account and device rate limits apply.
func (s *Server) authenticateCall(ctx context.Context, call *Call) error {
	id, err := s.auth.Authenticate(ctx, call.Token)
	if err != nil {
		r := authFailureReason(err)
		if r != "" {
			s.metrics.AuthFailures.WithLabelValues(r).Inc()
		}
		// Expired and missing tokens are routine; a forged token or one of a
		// revoked device or disabled account is worth an audit line.
		switch r {
		case "token_forged", "token_revoked", "account_disabled":
			attrs := []slog.Attr{slog.String("reason", r), slog.String("method", call.Method)}
			if call.Conn != nil && call.Conn.Q != nil {
				attrs = append(attrs, slog.String("ip", call.Conn.RemoteIP()))
			}
			s.audit.Event(ctx, "auth.token_rejected", attrs...)
		}
		return err
	}
	call.Principal = &Principal{AccountID: id.AccountID, DeviceID: id.DeviceID, AccountName: id.AccountName, ExpiresAt: id.ExpiresAt}
	if err := s.limits.allow(ctx, scopeAccount, id.AccountID); err != nil {
		return err
	}
	return s.limits.allow(ctx, scopeDevice, id.DeviceID)
}

// admitIP applies the per-source-IP limit to every RPC before anything else.
func (s *Server) admitIP(ctx context.Context, call *Call) error {
	if call.Conn == nil || call.Conn.Q == nil {
		return nil
	}
	return s.limits.allow(ctx, scopeIP, ipKey(call.Conn.RemoteIP()))
}

// RequireDevice fails with auth.ErrWrongDevice (PERMISSION_DENIED) unless
// the caller's token belongs to deviceID. Handlers whose request names a
// device call it.
func (c *Call) RequireDevice(deviceID string) error {
	if c.Principal == nil || c.Principal.DeviceID != deviceID {
		return fmt.Errorf("%w: the request names device %q", auth.ErrWrongDevice, deviceID)
	}
	return nil
}

// authFailureReason is the bounded metric label for an auth error.
func authFailureReason(err error) string {
	for _, r := range []struct {
		err    error
		reason string
	}{
		{auth.ErrTokenMissing, "token_missing"},
		{auth.ErrTokenMalformed, "token_malformed"},
		{auth.ErrTokenForged, "token_forged"},
		{auth.ErrTokenExpired, "token_expired"},
		{auth.ErrTokenRevoked, "token_revoked"},
		{auth.ErrWrongDevice, "wrong_device"},
		{auth.ErrAccountDisabled, "account_disabled"},
		{auth.ErrDeviceRevoked, "device_revoked"},
		{auth.ErrLoginFailed, "login_failed"},
		{auth.ErrRefreshInvalid, "refresh_invalid"},
		{auth.ErrRefreshExpired, "refresh_expired"},
		{auth.ErrRefreshReused, "refresh_reused"},
		{auth.ErrRegistrationClosed, "registration_closed"},
		{auth.ErrInviteInvalid, "invite_invalid"},
		{auth.ErrInviteRequired, "invite_missing"},
		{auth.ErrReauthRequired, "reauth_missing"},
		{auth.ErrReauthFailed, "reauth_failed"},
	} {
		if errors.Is(err, r.err) {
			return r.reason
		}
	}
	return ""
}

// countAuthFailure records a public auth RPC's failure in the metric.
func (s *Server) countAuthFailure(err error) error {
	if r := authFailureReason(err); r != "" {
		s.metrics.AuthFailures.WithLabelValues(r).Inc()
	}
	return err
}

func (s *Server) register(ctx context.Context, call *Call, req *qpcv1.RegisterRequest) (*qpcv1.RegisterResponse, error) {
	acc, dev, err := s.auth.Register(callCtx(ctx, call), auth.RegisterParams{
		AccountName:  req.GetAccountName(),
		SignatureKey: req.GetSignatureKey(),
		DeviceName:   req.GetDeviceName(),
		InviteCode:   req.GetInviteCode(),
		IdentityKey:  req.GetIdentityKey(),
	})
	if err != nil {
		return nil, s.countAuthFailure(err)
	}
	resp := &qpcv1.RegisterResponse{AccountId: acc, DeviceId: dev}
	// A code the open policy did not need is neither checked nor used:
	// say so to the client, and once to the operator, who may have meant
	// to require invites.
	if req.GetInviteCode() != "" && s.auth.Registration() != config.RegistrationInvite {
		resp.InviteCodeUnused = true
		if s.inviteUnusedLogged.CompareAndSwap(false, true) {
			s.log.Warn("a client registered with an invite code, which was not used: auth.registration is "+s.auth.Registration()+
				", so anyone may register; set auth.registration: invite (QPC_AUTH_REGISTRATION=invite) if invites are meant to be required (logged once)",
				"account_id", acc)
		}
	}
	return resp, nil
}

func (s *Server) loginChallenge(ctx context.Context, call *Call, req *qpcv1.LoginChallengeRequest) (*qpcv1.LoginChallengeResponse, error) {
	if call.Conn != nil && call.Conn.Q != nil {
		if err := s.challengeLimits.allow(ctx, scopeLoginChallenge, req.GetDeviceId()+" from "+ipKey(call.Conn.RemoteIP())); err != nil {
			return nil, err
		}
	}
	nonce, exp, err := s.auth.Challenge(callCtx(ctx, call), req.GetDeviceId())
	if err != nil {
		return nil, err
	}
	return &qpcv1.LoginChallengeResponse{Nonce: nonce, ExpiresUnixMs: exp.UnixMilli()}, nil
}

func (s *Server) login(ctx context.Context, call *Call, req *qpcv1.LoginRequest) (*qpcv1.LoginResponse, error) {
	t, err := s.auth.Login(callCtx(ctx, call), req.GetDeviceId(), req.GetNonce(), req.GetSignature())
	if err != nil {
		return nil, s.countAuthFailure(err)
	}
	return &qpcv1.LoginResponse{Tokens: tokensPB(t)}, nil
}

func (s *Server) refresh(ctx context.Context, call *Call, req *qpcv1.RefreshRequest) (*qpcv1.RefreshResponse, error) {
	rt := secret.New(append([]byte(nil), req.GetRefreshToken()...))
	defer rt.Wipe()
	secret.Wipe(req.GetRefreshToken())
	t, err := s.auth.Refresh(callCtx(ctx, call), req.GetDeviceId(), rt)
	if err != nil {
		return nil, s.countAuthFailure(err)
	}
	return &qpcv1.RefreshResponse{Tokens: tokensPB(t)}, nil
}

// tokensPB copies the tokens into the response and wipes the secret copy.
func tokensPB(t auth.Tokens) *qpcv1.Tokens {
	out := &qpcv1.Tokens{
		AccessToken:          t.AccessToken,
		AccessExpiresUnixMs:  t.AccessExpires.UnixMilli(),
		RefreshToken:         append([]byte(nil), t.RefreshToken.Reveal()...),
		RefreshExpiresUnixMs: t.RefreshExpires.UnixMilli(),
		AccountId:            t.AccountID,
		DeviceId:             t.DeviceID,
	}
	t.RefreshToken.Wipe()
	return out
}

func actorOf(call *Call) auth.Actor {
	return auth.Actor{AccountID: call.Principal.AccountID, DeviceID: call.Principal.DeviceID}
}

func reauthOf(r *qpcv1.Reauth) auth.Reauth {
	return auth.Reauth{Challenge: r.GetChallenge(), Signature: r.GetSignature()}
}

func (s *Server) reauthChallenge(ctx context.Context, call *Call, req *qpcv1.ReauthChallengeRequest) (*qpcv1.ReauthChallengeResponse, error) {
	var (
		p     auth.Purpose
		param []byte
	)
	switch req.GetPurpose() {
	case qpcv1.ReauthPurpose_REAUTH_PURPOSE_ADD_DEVICE:
		p, param = auth.PurposeAddDevice, req.GetNewSignatureKey()
	case qpcv1.ReauthPurpose_REAUTH_PURPOSE_REVOKE_DEVICE:
		p, param = auth.PurposeRevokeDevice, []byte(req.GetTargetDeviceId())
	case qpcv1.ReauthPurpose_REAUTH_PURPOSE_RESET_IDENTITY:
		p, param = auth.PurposeResetIdentity, req.GetNewIdentityKey()
	default:
		return nil, wire.Errorf(qpcv1.Status_STATUS_INVALID_ARGUMENT, "re-authentication purpose %v; want ADD_DEVICE, REVOKE_DEVICE or RESET_IDENTITY", req.GetPurpose())
	}
	c, exp, err := s.auth.ReauthChallenge(ctx, actorOf(call), p, param)
	if err != nil {
		return nil, err
	}
	return &qpcv1.ReauthChallengeResponse{Challenge: c, ExpiresUnixMs: exp.UnixMilli()}, nil
}

func (s *Server) addDevice(ctx context.Context, call *Call, req *qpcv1.AddDeviceRequest) (*qpcv1.AddDeviceResponse, error) {
	id, err := s.auth.AddDevice(callCtx(ctx, call), actorOf(call), req.GetSignatureKey(), req.GetDeviceName(), reauthOf(req.GetReauth()))
	if err != nil {
		return nil, s.countAuthFailure(err)
	}
	return &qpcv1.AddDeviceResponse{DeviceId: id}, nil
}

func (s *Server) listDevices(ctx context.Context, call *Call, _ *qpcv1.ListDevicesRequest) (*qpcv1.ListDevicesResponse, error) {
	devs, err := s.auth.ListDevices(ctx, call.Principal.AccountID)
	if err != nil {
		return nil, err
	}
	out := &qpcv1.ListDevicesResponse{}
	for _, d := range devs {
		var seen int64
		if !d.LastSeen.IsZero() {
			seen = d.LastSeen.UnixMilli()
		}
		out.Devices = append(out.Devices, &qpcv1.Device{
			DeviceId: d.ID, Name: d.Name, SignatureKey: d.SignatureKey, Status: d.Status,
			CreatedUnixMs: d.CreatedAt.UnixMilli(), LastSeenUnixMs: seen, Certificate: d.Certificate,
		})
	}
	return out, nil
}

func (s *Server) revokeDevice(ctx context.Context, call *Call, req *qpcv1.RevokeDeviceRequest) (*qpcv1.RevokeDeviceResponse, error) {
	if err := s.auth.RevokeDevice(callCtx(ctx, call), actorOf(call), req.GetDeviceId(), reauthOf(req.GetReauth())); err != nil {
		return nil, s.countAuthFailure(err)
	}
	return &qpcv1.RevokeDeviceResponse{}, nil
}

func (s *Server) whoAmI(_ context.Context, call *Call, req *qpcv1.WhoAmIRequest) (*qpcv1.WhoAmIResponse, error) {
	p := call.Principal
	if d := req.GetDeviceId(); d != "" {
		if err := call.RequireDevice(d); err != nil {
			return nil, s.countAuthFailure(err)
		}
	}
	return &qpcv1.WhoAmIResponse{AccountId: p.AccountID, AccountName: p.AccountName, DeviceId: p.DeviceID,
		TokenExpiresUnixMs: p.ExpiresAt.UnixMilli()}, nil
}

func (s *Server) lookupAccount(ctx context.Context, _ *Call, req *qpcv1.LookupAccountRequest) (*qpcv1.LookupAccountResponse, error) {
	acc, devs, err := s.auth.LookupAccount(ctx, req.GetAccountName())
	if err != nil {
		return nil, err
	}
	out := &qpcv1.LookupAccountResponse{AccountId: acc.ID, AccountName: acc.Name, IdentityKey: acc.IdentityKey}
	var ids []string
	for _, d := range devs {
		out.Devices = append(out.Devices, &qpcv1.PublicDevice{DeviceId: d.ID, SignatureKey: d.SignatureKey, Certificate: d.Certificate})
		ids = append(ids, d.ID)
	}
	if out.KeyLog, err = s.keyLogInclusion(ctx, acc.Name, ids); err != nil {
		return nil, err
	}
	return out, nil
}

// authEvents delivers auth's device events to the account's other devices
// as inbox items (kind INBOX_KIND_ACCOUNT_EVENT), the channel every device
// already fetches, in the transaction that makes the change.
type authEvents struct{ s *Server }

func (e authEvents) RecordDeviceEvent(ctx context.Context, tx *sql.Tx, ev auth.DeviceEvent) error {
	if e.s.delivery == nil {
		return errors.New("server: device event before the delivery service is up")
	}
	kind := qpcv1.AccountEventKind_ACCOUNT_EVENT_KIND_DEVICE_ADDED
	if ev.Kind == auth.DeviceRevoked {
		kind = qpcv1.AccountEventKind_ACCOUNT_EVENT_KIND_DEVICE_REVOKED
	}
	body, err := wire.Marshal(&qpcv1.AccountEvent{Kind: kind, DeviceId: ev.DeviceID, DeviceName: ev.DeviceName,
		SignatureKey: ev.SignatureKey, ByDeviceId: ev.By, TimeUnixMs: ev.At.UnixMilli()})
	if err != nil {
		return err
	}
	return e.s.delivery.RecordAccountEventTx(ctx, tx, ev.AccountID, ev.By, ev.Notify, body)
}

func (e authEvents) DeviceEventCommitted(ev auth.DeviceEvent) {
	if e.s.delivery != nil {
		e.s.delivery.WakeDevices(context.Background(), ev.AccountID, ev.Notify)
	}
}
