package wire

import (
	"bytes"

	"google.golang.org/protobuf/proto"

	"github.com/quicprochat/quicprochat/internal/wire/qpcv1"
)

func init() { goldenSets["keylog"] = keyLogGolden }

func keyLogGolden() map[string]proto.Message {
	head := bytes.Repeat([]byte{0x77}, 121)
	entry := append([]byte{1, 1, 5}, []byte("alice")...)
	path := [][]byte{bytes.Repeat([]byte{0x88}, 32), bytes.Repeat([]byte{0x99}, 32)}
	const dev = "fedcba9876543210fedcba9876543210"
	incl := &qpcv1.KeyLogInclusion{TreeHead: head, Identity: &qpcv1.KeyLogProof{Index: 3, Entry: entry, Path: path},
		Devices: map[string]*qpcv1.KeyLogProof{dev: {Index: 4, Entry: entry, Path: path[:1]}}}
	return map[string]proto.Message{
		"keylog_get_head_request":         &qpcv1.GetKeyLogHeadRequest{},
		"keylog_get_head_response":        &qpcv1.GetKeyLogHeadResponse{TreeHead: head, LogPublicKey: bytes.Repeat([]byte{0x11}, 32)},
		"keylog_consistency_request":      &qpcv1.GetKeyLogConsistencyRequest{FromSize: 3, ToSize: 7},
		"keylog_consistency_response":     &qpcv1.GetKeyLogConsistencyResponse{TreeHead: head, Proof: path},
		"keylog_inclusion":                incl,
		"keylog_lookup_account_response":  &qpcv1.LookupAccountResponse{AccountId: "0123456789abcdef0123456789abcdef", AccountName: "alice", IdentityKey: bytes.Repeat([]byte{0x55}, 32), KeyLog: &qpcv1.KeyLogInclusion{TreeHead: head, Identity: &qpcv1.KeyLogProof{Index: 3, Entry: entry, Path: path}}},
		"keylog_fetch_keypackages_proofs": &qpcv1.FetchKeyPackagesResponse{AccountId: "0123456789abcdef0123456789abcdef", KeyLog: &qpcv1.KeyLogInclusion{TreeHead: head}},
		"keylog_app_gossip":               &qpcv1.AppMessage{Version: 1, MessageId: "m", KeyLog: &qpcv1.KeyLogGossip{TreeHead: head}},
	}
}
