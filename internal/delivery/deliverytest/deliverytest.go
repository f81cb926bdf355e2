// Package deliverytest builds MLS messages with chosen cleartext framing for tests of the delivery service.
//
// The messages are structurally valid MLSMessages (they decode with
// internal/mls) but carry dummy signatures and ciphertexts: the delivery
// service reads only the framing.
package deliverytest

import (
	"github.com/quicprochat/quicprochat/internal/mls"
)

// Private returns an MLSMessage(PrivateMessage) for group at epoch with the
// given content type and a ciphertext of size bytes.
func Private(group []byte, epoch uint64, ct mls.ContentType, size int) []byte {
	m := &mls.MLSMessage{Version: mls.ProtocolVersionMLS10, WireFormat: mls.WireFormatPrivateMessage,
		PrivateMessage: &mls.PrivateMessage{
			GroupID: group, Epoch: epoch, ContentType: ct,
			EncryptedSenderData: make([]byte, 28), Ciphertext: make([]byte, size),
		}}
	b, _ := m.Marshal()
	return b
}

// Application is Private with content type application.
func Application(group []byte, epoch uint64, size int) []byte {
	return Private(group, epoch, mls.ContentTypeApplication, size)
}

// Commit returns an MLSMessage(PublicMessage) carrying an empty commit from
// member leaf 0 at epoch.
func Commit(group []byte, epoch uint64) []byte {
	m := &mls.MLSMessage{Version: mls.ProtocolVersionMLS10, WireFormat: mls.WireFormatPublicMessage,
		PublicMessage: &mls.PublicMessage{
			Content: mls.FramedContent{
				GroupID: group, Epoch: epoch, Sender: mls.Sender{Type: mls.SenderTypeMember},
				ContentType: mls.ContentTypeCommit, Commit: &mls.Commit{},
			},
			Auth:          mls.FramedContentAuthData{Signature: make([]byte, 64), ConfirmationTag: make([]byte, 32)},
			MembershipTag: make([]byte, 32),
		}}
	b, _ := m.Marshal()
	return b
}

// GroupInfo returns an MLSMessage(GroupInfo) for group at epoch.
func GroupInfo(group []byte, epoch uint64) []byte {
	m := &mls.MLSMessage{Version: mls.ProtocolVersionMLS10, WireFormat: mls.WireFormatGroupInfo,
		GroupInfo: &mls.GroupInfo{
			GroupContext: mls.GroupContext{Version: mls.ProtocolVersionMLS10, CipherSuite: 1, GroupID: group, Epoch: epoch,
				TreeHash: make([]byte, 32), ConfirmedTranscriptHash: make([]byte, 32)},
			ConfirmationTag: make([]byte, 32), Signature: make([]byte, 64),
		}}
	b, _ := m.Marshal()
	return b
}

// Welcome returns an MLSMessage(Welcome) with no secrets.
func Welcome() []byte { return SizedWelcome(64) }

// SizedWelcome is Welcome with an encrypted GroupInfo of n bytes.
func SizedWelcome(n int) []byte {
	m := &mls.MLSMessage{Version: mls.ProtocolVersionMLS10, WireFormat: mls.WireFormatWelcome,
		Welcome: &mls.Welcome{CipherSuite: 1, EncryptedGroupInfo: make([]byte, n)}}
	b, _ := m.Marshal()
	return b
}
