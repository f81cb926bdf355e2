package server

import (
	"context"

	"github.com/quicprochat/quicprochat/internal/wire/qpcv1"
)

// Identity methods (issue 19): device certificates and device links.
const (
	MethodCertifyDevice    = "CertifyDevice"
	MethodRequestLink      = "RequestLink"
	MethodListLinkRequests = "ListLinkRequests"
	// MethodResetIdentityKey replaces a lost account identity key
	// (re-authenticated like AddDevice).
	MethodResetIdentityKey = "ResetIdentityKey"
)

func (s *Server) registerIdentity(t map[string]*method) {
	register(t, MethodCertifyDevice, false, s.certifyDevice)
	// Public: the new device has no account yet. The per-address limit and
	// the per-account cap on pending requests bound it.
	register(t, MethodRequestLink, true, s.requestLink)
	register(t, MethodListLinkRequests, false, s.listLinkRequests)
	register(t, MethodResetIdentityKey, false, s.resetIdentityKey)
}

func (s *Server) resetIdentityKey(ctx context.Context, call *Call, req *qpcv1.ResetIdentityKeyRequest) (*qpcv1.ResetIdentityKeyResponse, error) {
	res, err := s.auth.ResetIdentityKey(callCtx(ctx, call), actorOf(call), req.GetIdentityKey(), reauthOf(req.GetReauth()))
	if err != nil {
		return nil, err
	}
	return &qpcv1.ResetIdentityKeyResponse{UncertifiedDeviceIds: res.UncertifiedDevices,
		KeyPackagesDeleted: uint32(min(res.KeyPackagesDeleted, int64(^uint32(0))))}, nil
}

func (s *Server) certifyDevice(ctx context.Context, call *Call, req *qpcv1.CertifyDeviceRequest) (*qpcv1.CertifyDeviceResponse, error) {
	if err := s.auth.CertifyDevice(callCtx(ctx, call), actorOf(call), req.GetDeviceId(), req.GetCertificate()); err != nil {
		return nil, err
	}
	return &qpcv1.CertifyDeviceResponse{}, nil
}

func (s *Server) requestLink(ctx context.Context, call *Call, req *qpcv1.RequestLinkRequest) (*qpcv1.RequestLinkResponse, error) {
	st, err := s.auth.RequestLink(callCtx(ctx, call), req.GetAccountName(), req.GetSignatureKey(), req.GetDeviceName())
	if err != nil {
		return nil, err
	}
	out := &qpcv1.RequestLinkResponse{DeviceId: st.DeviceID}
	if st.DeviceID != "" {
		// The account id is told only once the key is a device of it.
		out.AccountId = st.AccountID
	} else {
		out.ExpiresUnixMs = st.Expires.UnixMilli()
	}
	return out, nil
}

func (s *Server) listLinkRequests(ctx context.Context, call *Call, _ *qpcv1.ListLinkRequestsRequest) (*qpcv1.ListLinkRequestsResponse, error) {
	reqs, err := s.auth.ListLinkRequests(ctx, call.Principal.AccountID)
	if err != nil {
		return nil, err
	}
	out := &qpcv1.ListLinkRequestsResponse{}
	for _, r := range reqs {
		out.Requests = append(out.Requests, &qpcv1.LinkRequest{SignatureKey: r.SignatureKey, DeviceName: r.DeviceName, CreatedUnixMs: r.Created.UnixMilli()})
	}
	return out, nil
}
