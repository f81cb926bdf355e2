package wire

import (
	"google.golang.org/protobuf/proto"

	"github.com/quicprochat/quicprochat/internal/wire/qpcv1"
)

func init() {
	goldenSets["keydir"] = keydirGolden
	goldenSets["delivery"] = deliveryGolden
}

func goldenGroupID(b byte) []byte   { return goldenBytes(b, 32) }
func goldenChannelID(b byte) []byte { return goldenBytes(b, 16) }

func goldenBytes(b byte, n int) []byte {
	out := make([]byte, n)
	for i := range out {
		out[i] = b + byte(i)
	}
	return out
}

func keydirGolden() map[string]proto.Message {
	return map[string]proto.Message{
		"keydir_upload_request":  &qpcv1.UploadKeyPackagesRequest{KeyPackages: [][]byte{{0, 1, 0, 5, 1}, {0, 1, 0, 5, 2}}, LastResort: []byte{0, 1, 0, 5, 3}},
		"keydir_upload_response": &qpcv1.UploadKeyPackagesResponse{Accepted: 2, RejectedOverCap: 1, DeviceStock: 7, LastResortSet: true},
		"keydir_fetch_request":   &qpcv1.FetchKeyPackagesRequest{AccountName: "alice", DeviceId: "0123456789abcdef0123456789abcdef"},
		"keydir_fetch_response": &qpcv1.FetchKeyPackagesResponse{AccountId: "fedcba9876543210fedcba9876543210",
			KeyPackages:      []*qpcv1.FetchedKeyPackage{{DeviceId: "0123456789abcdef0123456789abcdef", KeyPackage: []byte{0, 1, 0, 5, 9}, LastResort: true}},
			MissingDeviceIds: []string{"00000000000000000000000000000000"}},
		"keydir_count_request":        &qpcv1.CountKeyPackagesRequest{},
		"keydir_count_response":       &qpcv1.CountKeyPackagesResponse{DeviceCount: 3, AccountCount: 5, MaxPerAccount: 100, HasLastResort: true},
		"keydir_fetch_request_suites": &qpcv1.FetchKeyPackagesRequest{AccountName: "alice", CipherSuites: []uint32{0xF00D, 1}},
		"keydir_fetch_response_suite": &qpcv1.FetchKeyPackagesResponse{AccountId: "fedcba9876543210fedcba9876543210",
			KeyPackages: []*qpcv1.FetchedKeyPackage{{DeviceId: "0123456789abcdef0123456789abcdef", KeyPackage: []byte{0, 1, 0xF0, 0x0D, 9}}}, CipherSuite: 0xF00D},
		"keydir_count_response_suites": &qpcv1.CountKeyPackagesResponse{DeviceCount: 3, AccountCount: 5, MaxPerAccount: 100, HasLastResort: true,
			Suites: []*qpcv1.SuiteStock{{CipherSuite: 1, DeviceCount: 2, HasLastResort: true}, {CipherSuite: 0xF00D, DeviceCount: 1}}},
	}
}

func deliveryGolden() map[string]proto.Message {
	channel := &qpcv1.Channel{ChannelId: goldenChannelID(1), Type: qpcv1.ChannelType_CHANNEL_TYPE_DM, GroupId: goldenGroupID(2), Epoch: 3, HeadSeq: 42, TtlSeconds: 3600,
		Members: []*qpcv1.Member{{AccountId: "a1"}, {AccountId: "a2", DeviceId: "d2"}}}
	refs := []*qpcv1.MemberRef{{AccountName: "bob"}, {AccountName: "carol", DeviceId: "d3"}}
	return map[string]proto.Message{
		"delivery_create_group_request":    &qpcv1.CreateGroupChannelRequest{GroupId: goldenGroupID(2), Epoch: 1},
		"delivery_create_group_response":   &qpcv1.CreateGroupChannelResponse{Channel: channel, Created: true},
		"delivery_create_dm_request":       &qpcv1.CreateDMChannelRequest{PeerAccountName: "bob", GroupId: goldenGroupID(2), TtlSeconds: 3600},
		"delivery_create_dm_response":      &qpcv1.CreateDMChannelResponse{Channel: channel, Created: true},
		"delivery_add_members_request":     &qpcv1.AddMembersRequest{ChannelId: goldenChannelID(1), Members: refs},
		"delivery_add_members_response":    &qpcv1.AddMembersResponse{Channel: channel},
		"delivery_remove_members_request":  &qpcv1.RemoveMembersRequest{ChannelId: goldenChannelID(1), Members: refs},
		"delivery_remove_members_response": &qpcv1.RemoveMembersResponse{Removed: 2},
		"delivery_list_channels_request":   &qpcv1.ListChannelsRequest{},
		"delivery_list_channels_response":  &qpcv1.ListChannelsResponse{Channels: []*qpcv1.Channel{channel}},
		"delivery_enqueue_request": &qpcv1.EnqueueRequest{ChannelId: goldenChannelID(1), MessageId: "6f1c1c1e-8a43-4c5e-9a43-8f0e6f2d9a10",
			MlsMessage: []byte{0, 1, 0, 2, 7}, GroupInfo: []byte{0, 1, 0, 4, 8}},
		"delivery_enqueue_response": &qpcv1.EnqueueResponse{Seq: 43, Epoch: 4, Duplicate: true, ServerTimeUnixMs: 1764000000000},
		"delivery_enqueue_request_ratchet_tree": &qpcv1.EnqueueRequest{ChannelId: goldenChannelID(1), MessageId: "6f1c1c1e-8a43-4c5e-9a43-8f0e6f2d9a12",
			MlsMessage: []byte{0, 1, 0, 2, 7}, GroupInfo: []byte{0, 1, 0, 4, 8}, RatchetTree: []byte{3, 1, 1, 0}},
		"delivery_enqueue_response_ratchet_tree": &qpcv1.EnqueueResponse{Seq: 44, Epoch: 5, ServerTimeUnixMs: 1764000000000, RatchetTreeStored: true},
		"delivery_enqueue_batch_request": &qpcv1.EnqueueBatchRequest{Items: []*qpcv1.EnqueueRequest{
			{ChannelId: goldenChannelID(1), MessageId: "6f1c1c1e-8a43-4c5e-9a43-8f0e6f2d9a10", MlsMessage: []byte{0, 1, 0, 2, 7}, GroupInfo: []byte{0, 1, 0, 4, 8}},
			{ChannelId: goldenChannelID(3), MessageId: "6f1c1c1e-8a43-4c5e-9a43-8f0e6f2d9a11", MlsMessage: []byte{0, 1, 0, 2, 8}}}},
		"delivery_enqueue_batch_response": &qpcv1.EnqueueBatchResponse{Results: []*qpcv1.EnqueueBatchResult{
			{Status: qpcv1.Status_STATUS_OK, Response: &qpcv1.EnqueueResponse{Seq: 43, Epoch: 4, ServerTimeUnixMs: 1764000000000}},
			{Status: qpcv1.Status_STATUS_OK, Response: &qpcv1.EnqueueResponse{Seq: 7, Epoch: 1, Duplicate: true, ServerTimeUnixMs: 1764000000000}},
			{Status: qpcv1.Status_STATUS_STALE_EPOCH, Message: "delivery: enqueue: delivery: stale epoch: commit for epoch 3, the channel is at epoch 4"},
			{Status: qpcv1.Status_STATUS_RESOURCE_EXHAUSTED, Message: "rate limit (device) exceeded; retry later", RetryAfterMs: 250}}},
		"delivery_send_to_inbox_request": &qpcv1.SendToInboxRequest{Recipients: []*qpcv1.InboxRecipient{{AccountName: "bob", DeviceId: "d2"}},
			ChannelId: goldenChannelID(1), Kind: qpcv1.InboxKind_INBOX_KIND_WELCOME, Payload: []byte{0, 1, 0, 3, 9}},
		"delivery_send_to_inbox_response": &qpcv1.SendToInboxResponse{Delivered: 1},
		"delivery_fetch_request":          &qpcv1.FetchRequest{Limit: 50},
		"delivery_fetch_wait_request":     &qpcv1.FetchWaitRequest{TimeoutMs: 30000, Limit: 50},
		"delivery_fetch_request_after": &qpcv1.FetchRequest{Limit: 50,
			After: []*qpcv1.ChannelCursor{{ChannelId: goldenChannelID(1), Seq: 40}}, InboxAfter: 4},
		"delivery_fetch_wait_request_after": &qpcv1.FetchWaitRequest{TimeoutMs: 30000, Limit: 50,
			After: []*qpcv1.ChannelCursor{{ChannelId: goldenChannelID(1), Seq: 40}}, InboxAfter: 4},
		"delivery_fetch_response": &qpcv1.FetchResponse{
			Messages: []*qpcv1.ChannelMessage{{ChannelId: goldenChannelID(1), Seq: 43, MessageId: "m1", SenderAccountId: "a1", SenderDeviceId: "d1",
				MlsMessage: []byte{0, 1, 0, 2, 7}, ServerTimeUnixMs: 1764000000000, Epoch: 3}},
			Inbox: []*qpcv1.InboxItem{{Seq: 5, Kind: qpcv1.InboxKind_INBOX_KIND_OTHER, ChannelId: goldenChannelID(1), SenderAccountId: "a1",
				SenderDeviceId: "d1", Payload: []byte{1}, ServerTimeUnixMs: 1764000000001}},
			More: true},
		"delivery_fetch_response_refill": &qpcv1.FetchResponse{RefillKeyPackages: true},
		"delivery_fetch_response_incarnation": &qpcv1.FetchResponse{
			Messages: []*qpcv1.ChannelMessage{{ChannelId: goldenChannelID(1), Seq: 3, MessageId: "m3", SenderAccountId: "a1", SenderDeviceId: "d1",
				MlsMessage: []byte{0, 1, 0, 2, 9}, ServerTimeUnixMs: 1764000000002, Epoch: 1}},
			StoreIncarnation: "0123456789abcdef0123456789abcdef"},
		"delivery_channel_acked": &qpcv1.Channel{ChannelId: goldenChannelID(1), Type: qpcv1.ChannelType_CHANNEL_TYPE_GROUP, GroupId: goldenGroupID(2),
			Epoch: 3, HeadSeq: 42, AckedSeq: 40},
		"delivery_ack_request":             &qpcv1.AckRequest{Cursors: []*qpcv1.ChannelCursor{{ChannelId: goldenChannelID(1), Seq: 43}}, InboxSeq: 5},
		"delivery_ack_response":            &qpcv1.AckResponse{},
		"delivery_get_group_info_request":  &qpcv1.GetGroupInfoRequest{ChannelId: goldenChannelID(1)},
		"delivery_get_group_info_response": &qpcv1.GetGroupInfoResponse{GroupInfo: []byte{0, 1, 0, 4, 8}, Epoch: 4},
		"delivery_get_group_info_response_ratchet_tree": &qpcv1.GetGroupInfoResponse{GroupInfo: []byte{0, 1, 0, 4, 8}, Epoch: 5,
			RatchetTree: []byte{3, 1, 1, 0}},
		"delivery_channel_with_invited": &qpcv1.Channel{ChannelId: goldenChannelID(1), Type: qpcv1.ChannelType_CHANNEL_TYPE_GROUP, GroupId: goldenGroupID(2),
			Epoch: 3, HeadSeq: 42, Members: []*qpcv1.Member{{AccountId: "a1", AddedByAccountId: "a1"}},
			Invited: []*qpcv1.Member{{AccountId: "a2", AddedByAccountId: "a1"}}, CreatedByAccountId: "a1"},
		"delivery_fetch_response_event": &qpcv1.FetchResponse{
			Messages: []*qpcv1.ChannelMessage{{ChannelId: goldenChannelID(1), Seq: 44, MessageId: "event-1", ServerTimeUnixMs: 1764000000000, Epoch: 3,
				Event: goldenEvent()}},
			Inbox: []*qpcv1.InboxItem{{Seq: 6, Kind: qpcv1.InboxKind_INBOX_KIND_MEMBERSHIP, ChannelId: goldenChannelID(1), SenderAccountId: "a1",
				Payload: []byte{8, 5}, ServerTimeUnixMs: 1764000000001}}},
		"delivery_list_invitations_request":    &qpcv1.ListInvitationsRequest{},
		"delivery_list_invitations_response":   &qpcv1.ListInvitationsResponse{Invitations: []*qpcv1.Invitation{goldenInvitation()}},
		"delivery_accept_invitation_request":   &qpcv1.AcceptInvitationRequest{InvitationId: "0123456789abcdef0123456789abcdef"},
		"delivery_accept_invitation_response":  &qpcv1.AcceptInvitationResponse{Channel: channel, Welcomes: 2},
		"delivery_decline_invitation_request":  &qpcv1.DeclineInvitationRequest{InvitationId: "0123456789abcdef0123456789abcdef"},
		"delivery_decline_invitation_response": &qpcv1.DeclineInvitationResponse{},
		"delivery_block_request":               &qpcv1.BlockAccountRequest{AccountName: "mallory"},
		"delivery_block_response":              &qpcv1.BlockAccountResponse{InvitationsDeclined: 1},
		"delivery_unblock_request":             &qpcv1.UnblockAccountRequest{AccountName: "mallory"},
		"delivery_unblock_response":            &qpcv1.UnblockAccountResponse{},
		"delivery_list_blocked_request":        &qpcv1.ListBlockedRequest{},
		"delivery_list_blocked_response": &qpcv1.ListBlockedResponse{Blocked: []*qpcv1.BlockedAccount{
			{AccountId: "a9", AccountName: "mallory", SinceUnixMs: 1764000000000}}},
	}
}

func goldenInvitation() *qpcv1.Invitation {
	return &qpcv1.Invitation{InvitationId: "0123456789abcdef0123456789abcdef", ChannelId: goldenChannelID(1),
		ChannelType: qpcv1.ChannelType_CHANNEL_TYPE_GROUP, InviterAccountId: "a1", InviterAccountName: "alice",
		CreatedUnixMs: 1764000000000, ExpiresUnixMs: 1764604800000, MemberCount: 3, WelcomesHeld: 1}
}

func goldenEvent() *qpcv1.MembershipEvent {
	return &qpcv1.MembershipEvent{Type: qpcv1.MembershipEventType_MEMBERSHIP_EVENT_TYPE_INVITED, ChannelId: goldenChannelID(1),
		ActorAccountId: "a1", ActorAccountName: "alice", SubjectAccountId: "a2", SubjectAccountName: "bob",
		Invitation: goldenInvitation(), TimeUnixMs: 1764000000000}
}
