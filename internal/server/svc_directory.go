package server

import (
	"context"
	"errors"
	"fmt"

	"github.com/quicprochat/quicprochat/internal/auth"
	"github.com/quicprochat/quicprochat/internal/keydir"
	"github.com/quicprochat/quicprochat/internal/mls"
	"github.com/quicprochat/quicprochat/internal/tracing"
	"github.com/quicprochat/quicprochat/internal/wire"
	"github.com/quicprochat/quicprochat/internal/wire/qpcv1"
)

// KeyPackage directory method names.
const (
	MethodUploadKeyPackages = "UploadKeyPackages"
	MethodFetchKeyPackages  = "FetchKeyPackages"
	MethodCountKeyPackages  = "CountKeyPackages"
)

// directoryPart holds the directory service's state inside Server.
type directoryPart struct {
	keydir *keydir.Directory
}

func (s *Server) initDirectory(ctx context.Context) error {
	suites, err := s.cfg.MLSSuites()
	if err != nil {
		return err
	}
	d, err := keydir.New(keydir.Options{
		Suites:        suites,
		DB:            s.db,
		Devices:       keydirDevices{s.auth},
		Logger:        s.log,
		Audit:         s.audit,
		Now:           s.now,
		TTL:           s.cfg.KeyPackages.TTL,
		MaxPerAccount: s.cfg.KeyPackages.MaxPerAccount,
		FetchLimits: keydir.FetchLimits{
			PerPair:   s.cfg.KeyPackages.FetchPerPair,
			PerTarget: s.cfg.KeyPackages.FetchPerTarget,
			Window:    s.cfg.KeyPackages.FetchWindow,
		},
		Registry: s.metrics.Registry,
	})
	if err != nil {
		return err
	}
	s.keydir = d
	return nil
}

func (s *Server) closeDirectory() error {
	if s.keydir != nil {
		return s.keydir.Close()
	}
	return nil
}

func (s *Server) registerDirectory(t map[string]*method) {
	register(t, MethodUploadKeyPackages, false, s.uploadKeyPackages)
	register(t, MethodFetchKeyPackages, false, s.fetchKeyPackages)
	register(t, MethodCountKeyPackages, false, s.countKeyPackages)
}

// principal returns the authenticated caller; every directory and delivery
// method needs one.
func principal(call *Call) (*Principal, error) {
	if call.Principal == nil {
		return nil, wire.Errorf(qpcv1.Status_STATUS_UNAUTHENTICATED, "this method needs an access token")
	}
	return call.Principal, nil
}

func (s *Server) uploadKeyPackages(ctx context.Context, call *Call, req *qpcv1.UploadKeyPackagesRequest) (*qpcv1.UploadKeyPackagesResponse, error) {
	p, err := principal(call)
	if err != nil {
		return nil, err
	}
	kctx, span := tracing.Start(ctx, "keydir.upload")
	res, err := s.keydir.Upload(kctx, p.DeviceID, req.GetKeyPackages(), req.GetLastResort())
	if err != nil {
		tracing.Fail(span, "error")
		span.End()
		return nil, err
	}
	tracing.Set(span, tracing.Int(tracing.KeyKeyPackages, res.Accepted))
	span.End()
	return &qpcv1.UploadKeyPackagesResponse{
		Accepted: uint32(res.Accepted), RejectedOverCap: uint32(res.RejectedOverCap),
		DeviceStock: uint32(res.DeviceStock), LastResortSet: res.LastResortSet,
	}, nil
}

func (s *Server) fetchKeyPackages(ctx context.Context, call *Call, req *qpcv1.FetchKeyPackagesRequest) (*qpcv1.FetchKeyPackagesResponse, error) {
	p, err := principal(call)
	if err != nil {
		return nil, err
	}
	var suites []mls.CipherSuiteID
	for _, id := range req.GetCipherSuites() {
		if id > 0xffff {
			return nil, wire.Errorf(qpcv1.Status_STATUS_INVALID_ARGUMENT, "cipher_suites: %d is not a 16-bit suite id", id)
		}
		suites = append(suites, mls.CipherSuiteID(id))
	}
	kctx, span := tracing.Start(ctx, "keydir.fetch")
	res, err := s.keydir.Fetch(kctx, p.AccountID, p.DeviceID, req.GetAccountName(), req.GetDeviceId(), suites...)
	if err != nil {
		tracing.Fail(span, "error")
	}
	tracing.Set(span, tracing.Int(tracing.KeyKeyPackages, len(res.Packages)))
	span.End()
	var limited *keydir.FetchLimitError
	if errors.As(err, &limited) {
		st := wire.Errorf(qpcv1.Status_STATUS_RESOURCE_EXHAUSTED, "%v", err)
		st.RetryAfter = limited.RetryAfter
		return nil, st
	}
	if err != nil {
		return nil, err
	}
	out := &qpcv1.FetchKeyPackagesResponse{AccountId: res.AccountID, MissingDeviceIds: res.Missing, CipherSuite: uint32(res.Suite)}
	var ids []string
	for _, k := range res.Packages {
		out.KeyPackages = append(out.KeyPackages, &qpcv1.FetchedKeyPackage{DeviceId: k.DeviceID, KeyPackage: k.Data, LastResort: k.LastResort})
		ids = append(ids, k.DeviceID)
	}
	if out.KeyLog, err = s.keyLogInclusion(ctx, req.GetAccountName(), ids); err != nil {
		return nil, err
	}
	return out, nil
}

func (s *Server) countKeyPackages(ctx context.Context, call *Call, _ *qpcv1.CountKeyPackagesRequest) (*qpcv1.CountKeyPackagesResponse, error) {
	p, err := principal(call)
	if err != nil {
		return nil, err
	}
	c, err := s.keydir.Count(ctx, p.AccountID, p.DeviceID)
	if err != nil {
		return nil, err
	}
	out := &qpcv1.CountKeyPackagesResponse{
		DeviceCount: uint32(c.Device), AccountCount: uint32(c.Account),
		MaxPerAccount: uint32(c.MaxPerAccount), HasLastResort: c.HasLastResort,
	}
	for _, sc := range c.Suites {
		out.Suites = append(out.Suites, &qpcv1.SuiteStock{CipherSuite: uint32(sc.Suite), DeviceCount: uint32(sc.Device), HasLastResort: sc.HasLastResort})
	}
	return out, nil
}

// withRefillSignal tells a fetching device that others took its KeyPackages
// (keydir.NeedsRefill), so it refills at once: the answer to a drain.
func (s *Server) withRefillSignal(resp *qpcv1.FetchResponse, deviceID string) *qpcv1.FetchResponse {
	resp.RefillKeyPackages = s.keydir.NeedsRefill(deviceID)
	return resp
}

// keydirDevices adapts internal/auth to keydir.Devices.
type keydirDevices struct{ a *auth.Service }

func (k keydirDevices) Device(ctx context.Context, id string) (keydir.Device, error) {
	d, err := k.a.Device(ctx, id)
	if err != nil {
		return keydir.Device{}, lookupErr(keydir.ErrUnknownDevice, err)
	}
	return keydir.Device{ID: d.ID, AccountID: d.AccountID, AccountName: d.AccountName, SignatureKey: d.SignatureKey, Active: d.Active(),
		IdentityKey: d.IdentityKey}, nil
}

func (k keydirDevices) Account(ctx context.Context, name string) (keydir.Account, []keydir.Device, error) {
	a, devs, err := k.a.LookupAccount(ctx, name)
	if err != nil {
		return keydir.Account{}, nil, lookupErr(keydir.ErrUnknownAccount, err)
	}
	out := make([]keydir.Device, 0, len(devs))
	for _, d := range devs {
		out = append(out, keydir.Device{ID: d.ID, AccountID: d.AccountID, AccountName: d.AccountName, SignatureKey: d.SignatureKey, Active: d.Active(),
			IdentityKey: d.IdentityKey})
	}
	return keydir.Account{ID: a.ID, Name: a.Name, Active: a.Status == "active"}, out, nil
}

// lookupErr wraps an auth lookup failure in the service's own sentinel when
// it means "no such account or device".
func lookupErr(sentinel, err error) error {
	if errors.Is(err, auth.ErrNotFound) || errors.Is(err, auth.ErrInvalidID) {
		return fmt.Errorf("%w: %w", sentinel, err)
	}
	return err
}
