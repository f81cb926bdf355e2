package wire

import (
	"bytes"

	"google.golang.org/protobuf/proto"

	"github.com/quicprochat/quicprochat/internal/wire/qpcv1"
)

func init() { goldenSets["auth"] = authGolden }

func authGolden() map[string]proto.Message {
	key := bytes.Repeat([]byte{0x11}, 32)
	nonce := bytes.Repeat([]byte{0x22}, 32)
	sig := bytes.Repeat([]byte{0x33}, 64)
	refresh := bytes.Repeat([]byte{0x44}, 32)
	const acc, dev = "0123456789abcdef0123456789abcdef", "fedcba9876543210fedcba9876543210"
	tokens := &qpcv1.Tokens{AccessToken: "qpcat1.AAAA.BBBB", AccessExpiresUnixMs: 1764000900000,
		RefreshToken: refresh, RefreshExpiresUnixMs: 1766592000000, AccountId: acc, DeviceId: dev}
	return map[string]proto.Message{
		"auth_register_request": &qpcv1.RegisterRequest{AccountName: "alice", SignatureKey: key,
			DeviceName: "laptop", InviteCode: "abcdefghijklmnopqrstuvwxyz234567"},
		"auth_register_request_identity": &qpcv1.RegisterRequest{AccountName: "alice", SignatureKey: key,
			DeviceName: "laptop", IdentityKey: bytes.Repeat([]byte{0x55}, 32)},
		"auth_register_response": &qpcv1.RegisterResponse{AccountId: acc, DeviceId: dev},
		"auth_device_certified": &qpcv1.Device{DeviceId: dev, Name: "phone", SignatureKey: key, Status: "active",
			CreatedUnixMs: 1764000000000, Certificate: bytes.Repeat([]byte{0x66}, 40)},
		"auth_lookup_account_response_identity": &qpcv1.LookupAccountResponse{AccountId: acc, AccountName: "alice",
			IdentityKey: bytes.Repeat([]byte{0x55}, 32), Devices: []*qpcv1.PublicDevice{{DeviceId: dev, SignatureKey: key, Certificate: bytes.Repeat([]byte{0x66}, 40)}}},
		"auth_certify_device_request":  &qpcv1.CertifyDeviceRequest{DeviceId: dev, Certificate: bytes.Repeat([]byte{0x66}, 40)},
		"auth_certify_device_response": &qpcv1.CertifyDeviceResponse{},
		"auth_reset_identity_key_request": &qpcv1.ResetIdentityKeyRequest{IdentityKey: bytes.Repeat([]byte{0x77}, 32),
			Reauth: &qpcv1.Reauth{Challenge: nonce, Signature: sig}},
		"auth_reset_identity_key_response": &qpcv1.ResetIdentityKeyResponse{UncertifiedDeviceIds: []string{dev}, KeyPackagesDeleted: 7},
		"auth_reauth_challenge_request_reset": &qpcv1.ReauthChallengeRequest{Purpose: qpcv1.ReauthPurpose_REAUTH_PURPOSE_RESET_IDENTITY,
			NewIdentityKey: bytes.Repeat([]byte{0x77}, 32)},
		"auth_request_link_request":       &qpcv1.RequestLinkRequest{AccountName: "alice", SignatureKey: key, DeviceName: "laptop"},
		"auth_request_link_response":      &qpcv1.RequestLinkResponse{AccountId: acc, DeviceId: dev},
		"auth_request_link_pending":       &qpcv1.RequestLinkResponse{ExpiresUnixMs: 1764000600000},
		"auth_list_link_requests_request": &qpcv1.ListLinkRequestsRequest{},
		"auth_list_link_requests_response": &qpcv1.ListLinkRequestsResponse{Requests: []*qpcv1.LinkRequest{
			{SignatureKey: key, DeviceName: "laptop", CreatedUnixMs: 1764000000000}}},
		"auth_login_challenge_request":  &qpcv1.LoginChallengeRequest{DeviceId: dev},
		"auth_login_challenge_response": &qpcv1.LoginChallengeResponse{Nonce: nonce, ExpiresUnixMs: 1764000060000},
		"auth_login_request":            &qpcv1.LoginRequest{DeviceId: dev, Nonce: nonce, Signature: sig},
		"auth_tokens":                   tokens,
		"auth_login_response":           &qpcv1.LoginResponse{Tokens: tokens},
		"auth_refresh_request":          &qpcv1.RefreshRequest{DeviceId: dev, RefreshToken: refresh},
		"auth_refresh_response":         &qpcv1.RefreshResponse{Tokens: tokens},
		"auth_add_device_request":       &qpcv1.AddDeviceRequest{SignatureKey: key, DeviceName: "phone"},
		"auth_add_device_response":      &qpcv1.AddDeviceResponse{DeviceId: dev},
		"auth_device": &qpcv1.Device{DeviceId: dev, Name: "phone", SignatureKey: key, Status: "active",
			CreatedUnixMs: 1764000000000, LastSeenUnixMs: 1764000500000},
		"auth_list_devices_request": &qpcv1.ListDevicesRequest{},
		"auth_list_devices_response": &qpcv1.ListDevicesResponse{Devices: []*qpcv1.Device{
			{DeviceId: dev, Name: "phone", SignatureKey: key, Status: "revoked", CreatedUnixMs: 1764000000000},
		}},
		"auth_revoke_device_request": &qpcv1.RevokeDeviceRequest{DeviceId: dev},
		"auth_reauth_challenge_request": &qpcv1.ReauthChallengeRequest{Purpose: qpcv1.ReauthPurpose_REAUTH_PURPOSE_ADD_DEVICE,
			NewSignatureKey: key},
		"auth_reauth_challenge_request_revoke": &qpcv1.ReauthChallengeRequest{Purpose: qpcv1.ReauthPurpose_REAUTH_PURPOSE_REVOKE_DEVICE,
			TargetDeviceId: dev},
		"auth_reauth_challenge_response": &qpcv1.ReauthChallengeResponse{Challenge: nonce, ExpiresUnixMs: 1764000060000},
		"auth_add_device_request_reauth": &qpcv1.AddDeviceRequest{SignatureKey: key, DeviceName: "phone",
			Reauth: &qpcv1.Reauth{Challenge: nonce, Signature: sig}},
		"auth_revoke_device_request_reauth": &qpcv1.RevokeDeviceRequest{DeviceId: dev,
			Reauth: &qpcv1.Reauth{Challenge: nonce, Signature: sig}},
		"auth_account_event": &qpcv1.AccountEvent{Kind: qpcv1.AccountEventKind_ACCOUNT_EVENT_KIND_DEVICE_ADDED,
			DeviceId: dev, DeviceName: "phone", SignatureKey: key, ByDeviceId: dev, TimeUnixMs: 1764000000000},
		"auth_revoke_device_response": &qpcv1.RevokeDeviceResponse{},
		"auth_whoami_request":         &qpcv1.WhoAmIRequest{DeviceId: dev},
		"auth_whoami_response": &qpcv1.WhoAmIResponse{AccountId: acc, AccountName: "alice", DeviceId: dev,
			TokenExpiresUnixMs: 1764000900000},
		"auth_lookup_account_request": &qpcv1.LookupAccountRequest{AccountName: "alice"},
		"auth_public_device":          &qpcv1.PublicDevice{DeviceId: dev, SignatureKey: key},
		"auth_lookup_account_response": &qpcv1.LookupAccountResponse{AccountId: acc, AccountName: "alice",
			Devices: []*qpcv1.PublicDevice{{DeviceId: dev, SignatureKey: key}}},
	}
}
