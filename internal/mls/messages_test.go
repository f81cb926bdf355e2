package mls

import (
	"bytes"
	"testing"
)

type messagesCase struct {
	MLSWelcome                     hexBytes `json:"mls_welcome"`
	MLSGroupInfo                   hexBytes `json:"mls_group_info"`
	MLSKeyPackage                  hexBytes `json:"mls_key_package"`
	RatchetTree                    hexBytes `json:"ratchet_tree"`
	GroupSecrets                   hexBytes `json:"group_secrets"`
	AddProposal                    hexBytes `json:"add_proposal"`
	UpdateProposal                 hexBytes `json:"update_proposal"`
	RemoveProposal                 hexBytes `json:"remove_proposal"`
	PreSharedKeyProposal           hexBytes `json:"pre_shared_key_proposal"`
	ReInitProposal                 hexBytes `json:"re_init_proposal"`
	ExternalInitProposal           hexBytes `json:"external_init_proposal"`
	GroupContextExtensionsProposal hexBytes `json:"group_context_extensions_proposal"`
	Commit                         hexBytes `json:"commit"`
	PublicMessageApplication       hexBytes `json:"public_message_application"`
	PublicMessageProposal          hexBytes `json:"public_message_proposal"`
	PublicMessageCommit            hexBytes `json:"public_message_commit"`
	PrivateMessage                 hexBytes `json:"private_message"`
}

// wireStruct is what messages.json round-trips.
type wireStruct interface {
	Marshal() ([]byte, error)
	Unmarshal([]byte) error
}

func roundTrip(t *testing.T, name string, v wireStruct, b []byte) {
	t.Helper()
	if err := v.Unmarshal(b); err != nil {
		t.Errorf("%s: decode: %v", name, err)
		return
	}
	got, err := v.Marshal()
	if err != nil {
		t.Errorf("%s: encode: %v", name, err)
		return
	}
	if !bytes.Equal(got, b) {
		t.Errorf("%s: re-encoding differs:\n got %x\nwant %x", name, got, b)
	}
}

func TestMessagesVectors(t *testing.T) {
	runVectors(t, "messages.json", nil, func(t *testing.T, _ *CipherSuite, tc *messagesCase) {
		mls := func(name string, b []byte, wf WireFormat, ct ContentType) {
			var m MLSMessage
			roundTrip(t, name, &m, b)
			if m.WireFormat != wf {
				t.Errorf("%s: wire format %d, want %d", name, m.WireFormat, wf)
			}
			if ct != 0 && (m.PublicMessage == nil || m.PublicMessage.Content.ContentType != ct) {
				t.Errorf("%s: not a PublicMessage of content type %d", name, ct)
			}
		}
		mls("mls_welcome", tc.MLSWelcome, WireFormatWelcome, 0)
		mls("mls_group_info", tc.MLSGroupInfo, WireFormatGroupInfo, 0)
		mls("mls_key_package", tc.MLSKeyPackage, WireFormatKeyPackage, 0)
		mls("public_message_application", tc.PublicMessageApplication, WireFormatPublicMessage, ContentTypeApplication)
		mls("public_message_proposal", tc.PublicMessageProposal, WireFormatPublicMessage, ContentTypeProposal)
		mls("public_message_commit", tc.PublicMessageCommit, WireFormatPublicMessage, ContentTypeCommit)
		mls("private_message", tc.PrivateMessage, WireFormatPrivateMessage, 0)
		roundTrip(t, "ratchet_tree", new(RatchetTree), tc.RatchetTree)
		roundTrip(t, "group_secrets", new(GroupSecrets), tc.GroupSecrets)
		roundTrip(t, "add_proposal", new(Add), tc.AddProposal)
		roundTrip(t, "update_proposal", new(Update), tc.UpdateProposal)
		roundTrip(t, "remove_proposal", new(Remove), tc.RemoveProposal)
		roundTrip(t, "pre_shared_key_proposal", new(PreSharedKey), tc.PreSharedKeyProposal)
		roundTrip(t, "re_init_proposal", new(ReInit), tc.ReInitProposal)
		roundTrip(t, "external_init_proposal", new(ExternalInit), tc.ExternalInitProposal)
		roundTrip(t, "group_context_extensions_proposal", new(GroupContextExtensions), tc.GroupContextExtensionsProposal)
		roundTrip(t, "commit", new(Commit), tc.Commit)
	})
}
