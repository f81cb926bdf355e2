package server

import (
	"context"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/quicprochat/quicprochat/internal/auth"
	"github.com/quicprochat/quicprochat/internal/config"
	"github.com/quicprochat/quicprochat/internal/delivery"
	"github.com/quicprochat/quicprochat/internal/wire"
	"github.com/quicprochat/quicprochat/internal/wire/qpcv1"
)

// Delivery method names.
const (
	MethodCreateGroupChannel = "CreateGroupChannel"
	MethodCreateDMChannel    = "CreateDMChannel"
	MethodAddMembers         = "AddMembers"
	MethodRemoveMembers      = "RemoveMembers"
	MethodListChannels       = "ListChannels"
	MethodEnqueue            = "Enqueue"
	MethodEnqueueBatch       = "EnqueueBatch"
	MethodSendToInbox        = "SendToInbox"
	MethodFetch              = "Fetch"
	MethodFetchWait          = "FetchWait"
	MethodAck                = "Ack"
	MethodGetGroupInfo       = "GetGroupInfo"
	MethodListInvitations    = "ListInvitations"
	MethodAcceptInvitation   = "AcceptInvitation"
	MethodDeclineInvitation  = "DeclineInvitation"
	MethodBlockAccount       = "BlockAccount"
	MethodUnblockAccount     = "UnblockAccount"
	MethodListBlocked        = "ListBlocked"
)

// deliveryPart holds the delivery service's state inside Server.
type deliveryPart struct {
	delivery *delivery.Service
	// byteLimits: one bucket of payload bytes per account (limits.byte_rate).
	byteLimits *rateLimits
	// incarnation: the store's incarnation id, read once at start (a
	// restore needs every node stopped), sent with every fetch answer.
	incarnation string
}

func (s *Server) initDelivery(ctx context.Context) error {
	inc, err := s.db.Incarnation(ctx)
	if err != nil {
		return err
	}
	s.incarnation = inc
	d, err := delivery.New(delivery.Options{
		DB:           s.db,
		Directory:    deliveryDirectory{s.auth},
		Logger:       s.log,
		Audit:        s.audit,
		Now:          s.now,
		Retention:    s.cfg.Retention.Messages,
		EpochsBehind: s.cfg.Retention.EpochsBehind,
		MaxPayload:   s.cfg.Limits.MaxPayloadBytes,
		LongPollMax:  s.cfg.Limits.LongPollMax,
		Registry:     s.metrics.Registry,

		MaxInboxCallBytes: s.cfg.Limits.MaxInboxCallBytes,
		Quota:             quotaOf(s.cfg),

		InvitationTTL:         s.cfg.Invitations.TTL,
		InvitationsPerHour:    s.cfg.Invitations.MaxPerHour,
		MaxPendingInvitations: s.cfg.Invitations.MaxPending,
		MaxHeldWelcome:        s.cfg.Invitations.MaxWelcomeBytes,
	})
	if err != nil {
		return err
	}
	s.delivery = d
	s.byteLimits = newRateLimits(float64(s.cfg.Limits.ByteRate), s.cfg.Limits.ByteBurst, s.now, s.metrics, s.audit)
	s.byteLimits.bytes = true
	return nil
}

// quotaOf is the configured per-account quota.
func quotaOf(cfg config.Config) delivery.Quota {
	q := cfg.Quota
	return delivery.Quota{
		MessageBytes: int64(q.MessageBytes), Messages: int64(q.Messages),
		InboxBytes: int64(q.InboxBytes), InboxItems: int64(q.InboxItems), Channels: int64(q.Channels),
	}
}

// allowBytes applies the account's byte-rate limit to what a request asks
// the server to store.
func (s *Server) allowBytes(ctx context.Context, c delivery.Caller, n int) error {
	return s.byteLimits.allowN(ctx, scopeAccountBytes, c.AccountID, n)
}

// allowAgain takes what one more call would take from the caller's
// buckets (IP, account, device): a batch's further items each pay as a
// call of their own would.
func (s *Server) allowAgain(ctx context.Context, call *Call, c delivery.Caller) error {
	if err := s.admitIP(ctx, call); err != nil {
		return err
	}
	if err := s.limits.allow(ctx, scopeAccount, c.AccountID); err != nil {
		return err
	}
	return s.limits.allow(ctx, scopeDevice, c.DeviceID)
}

func (s *Server) closeDelivery() error {
	if s.delivery != nil {
		return s.delivery.Close()
	}
	return nil
}

func (s *Server) registerDelivery(t map[string]*method) {
	register(t, MethodCreateGroupChannel, false, s.createGroupChannel)
	register(t, MethodCreateDMChannel, false, s.createDMChannel)
	register(t, MethodAddMembers, false, s.addMembers)
	register(t, MethodRemoveMembers, false, s.removeMembers)
	register(t, MethodListChannels, false, s.listChannels)
	register(t, MethodEnqueue, false, s.enqueue)
	register(t, MethodEnqueueBatch, false, s.enqueueBatch)
	register(t, MethodSendToInbox, false, s.sendToInbox)
	register(t, MethodFetch, false, s.fetch)
	register(t, MethodFetchWait, false, s.fetchWait)
	register(t, MethodAck, false, s.ack)
	register(t, MethodGetGroupInfo, false, s.getGroupInfo)
	register(t, MethodListInvitations, false, s.listInvitations)
	register(t, MethodAcceptInvitation, false, s.acceptInvitation)
	register(t, MethodDeclineInvitation, false, s.declineInvitation)
	register(t, MethodBlockAccount, false, s.blockAccount)
	register(t, MethodUnblockAccount, false, s.unblockAccount)
	register(t, MethodListBlocked, false, s.listBlocked)
}

func caller(call *Call) (delivery.Caller, error) {
	p, err := principal(call)
	if err != nil {
		return delivery.Caller{}, err
	}
	return delivery.Caller{AccountID: p.AccountID, DeviceID: p.DeviceID}, nil
}

func channelProto(ch delivery.Channel) *qpcv1.Channel {
	t := qpcv1.ChannelType_CHANNEL_TYPE_GROUP
	if ch.Kind == delivery.KindDM {
		t = qpcv1.ChannelType_CHANNEL_TYPE_DM
	}
	out := &qpcv1.Channel{ChannelId: ch.ID, Type: t, GroupId: ch.GroupID, Epoch: ch.Epoch, HeadSeq: ch.HeadSeq,
		TtlSeconds: uint32(ch.TTL / time.Second), CreatedByAccountId: ch.CreatedBy, AckedSeq: ch.AckedSeq}
	for _, m := range ch.Members {
		out.Members = append(out.Members, &qpcv1.Member{AccountId: m.AccountID, DeviceId: m.DeviceID, AddedByAccountId: m.AddedBy})
	}
	for _, m := range ch.Invited {
		out.Invited = append(out.Invited, &qpcv1.Member{AccountId: m.AccountID, DeviceId: m.DeviceID, AddedByAccountId: m.AddedBy})
	}
	return out
}

func memberRefs(in []*qpcv1.MemberRef) []delivery.MemberRef {
	out := make([]delivery.MemberRef, 0, len(in))
	for _, m := range in {
		out = append(out, delivery.MemberRef{AccountName: m.GetAccountName(), DeviceID: m.GetDeviceId()})
	}
	return out
}

func (s *Server) createGroupChannel(ctx context.Context, call *Call, req *qpcv1.CreateGroupChannelRequest) (*qpcv1.CreateGroupChannelResponse, error) {
	c, err := caller(call)
	if err != nil {
		return nil, err
	}
	ch, created, err := s.delivery.CreateGroup(ctx, c, req.GetGroupId(), req.GetEpoch())
	if err != nil {
		return nil, err
	}
	return &qpcv1.CreateGroupChannelResponse{Channel: channelProto(ch), Created: created}, nil
}

func (s *Server) createDMChannel(ctx context.Context, call *Call, req *qpcv1.CreateDMChannelRequest) (*qpcv1.CreateDMChannelResponse, error) {
	c, err := caller(call)
	if err != nil {
		return nil, err
	}
	ttl := time.Duration(req.GetTtlSeconds()) * time.Second
	ch, created, err := s.delivery.CreateDM(ctx, c, req.GetPeerAccountName(), req.GetGroupId(), ttl)
	if err != nil {
		return nil, err
	}
	return &qpcv1.CreateDMChannelResponse{Channel: channelProto(ch), Created: created}, nil
}

func (s *Server) addMembers(ctx context.Context, call *Call, req *qpcv1.AddMembersRequest) (*qpcv1.AddMembersResponse, error) {
	c, err := caller(call)
	if err != nil {
		return nil, err
	}
	ch, err := s.delivery.AddMembers(ctx, c, req.GetChannelId(), memberRefs(req.GetMembers()))
	if err != nil {
		return nil, err
	}
	return &qpcv1.AddMembersResponse{Channel: channelProto(ch)}, nil
}

func (s *Server) removeMembers(ctx context.Context, call *Call, req *qpcv1.RemoveMembersRequest) (*qpcv1.RemoveMembersResponse, error) {
	c, err := caller(call)
	if err != nil {
		return nil, err
	}
	n, err := s.delivery.RemoveMembers(ctx, c, req.GetChannelId(), memberRefs(req.GetMembers()))
	if err != nil {
		return nil, err
	}
	return &qpcv1.RemoveMembersResponse{Removed: uint32(n)}, nil
}

func (s *Server) listChannels(ctx context.Context, call *Call, _ *qpcv1.ListChannelsRequest) (*qpcv1.ListChannelsResponse, error) {
	c, err := caller(call)
	if err != nil {
		return nil, err
	}
	list, err := s.delivery.ListChannels(ctx, c)
	if err != nil {
		return nil, err
	}
	out := &qpcv1.ListChannelsResponse{}
	for _, ch := range list {
		out.Channels = append(out.Channels, channelProto(ch))
	}
	return out, nil
}

func (s *Server) enqueue(ctx context.Context, call *Call, req *qpcv1.EnqueueRequest) (*qpcv1.EnqueueResponse, error) {
	c, err := caller(call)
	if err != nil {
		return nil, err
	}
	it := enqueueItem(req)
	if err := s.allowBytes(ctx, c, len(it.MLSMessage)+len(it.GroupInfo)+len(it.RatchetTree)); err != nil {
		return nil, err
	}
	if err := s.checkGroupInfoSuite(ctx, c, req.GetChannelId(), req.GetGroupInfo()); err != nil {
		return nil, err
	}
	r, err := s.delivery.EnqueueItem(ctx, c, it)
	if err != nil {
		return nil, err
	}
	return enqueueResponse(r), nil
}

func enqueueItem(req *qpcv1.EnqueueRequest) delivery.EnqueueItem {
	return delivery.EnqueueItem{ChannelID: req.GetChannelId(), MessageID: req.GetMessageId(), MLSMessage: req.GetMlsMessage(),
		GroupInfo: req.GetGroupInfo(), RatchetTree: req.GetRatchetTree()}
}

func enqueueResponse(r delivery.Enqueued) *qpcv1.EnqueueResponse {
	return &qpcv1.EnqueueResponse{Seq: r.Seq, Epoch: r.Epoch, Duplicate: r.Duplicate, ServerTimeUnixMs: r.Time.UnixMilli(),
		RatchetTreeStored: r.TreeStored}
}

// enqueueBatch answers each item as its own Enqueue would be answered.
// Every item counts against the rate limits (the call's own tokens pay for
// the first; each further item takes one more from the IP, account and
// device buckets) and the byte rate; an item refused there gets its own
// RESOURCE_EXHAUSTED and is not stored, the others go on.
func (s *Server) enqueueBatch(ctx context.Context, call *Call, req *qpcv1.EnqueueBatchRequest) (*qpcv1.EnqueueBatchResponse, error) {
	out, err := s.enqueueBatchItems(ctx, call, req)
	counted := s.metrics.EnqueueMessages
	if err != nil {
		// Refused as a whole: each of its messages has the call's status
		// (the delivery SLO counts messages, not calls). The status error
		// goes back as it is, so toStatus logs an internal error once.
		st := s.rpc.toStatus(ctx, call, err)
		counted.WithLabelValues(MethodEnqueueBatch, wire.StatusName(st.Code)).Add(float64(len(req.GetItems())))
		return nil, st
	}
	for _, r := range out.Results {
		counted.WithLabelValues(MethodEnqueueBatch, wire.StatusName(r.GetStatus())).Inc()
	}
	return out, nil
}

func (s *Server) enqueueBatchItems(ctx context.Context, call *Call, req *qpcv1.EnqueueBatchRequest) (*qpcv1.EnqueueBatchResponse, error) {
	c, err := caller(call)
	if err != nil {
		return nil, err
	}
	items := make([]delivery.EnqueueItem, len(req.GetItems()))
	for i, it := range req.GetItems() {
		items[i] = enqueueItem(it)
	}
	if err := s.delivery.CheckBatch(items); err != nil {
		return nil, err
	}
	errs := make([]error, len(items))
	admitted := make([]delivery.EnqueueItem, 0, len(items))
	for i, it := range items {
		if i > 0 {
			errs[i] = s.allowAgain(ctx, call, c)
		}
		if errs[i] == nil {
			errs[i] = s.allowBytes(ctx, c, len(it.MLSMessage)+len(it.GroupInfo)+len(it.RatchetTree))
		}
		if errs[i] == nil {
			errs[i] = s.checkGroupInfoSuite(ctx, c, it.ChannelID, it.GroupInfo)
		}
		if errs[i] == nil {
			admitted = append(admitted, it)
		}
	}
	var res []delivery.BatchResult
	if len(admitted) > 0 {
		if res, err = s.delivery.EnqueueBatch(ctx, c, admitted); err != nil {
			return nil, err
		}
	}
	out := &qpcv1.EnqueueBatchResponse{Results: make([]*qpcv1.EnqueueBatchResult, len(items))}
	for i := range items {
		if errs[i] == nil {
			r := res[0]
			res = res[1:]
			if errs[i] = r.Err; errs[i] == nil {
				out.Results[i] = &qpcv1.EnqueueBatchResult{Status: qpcv1.Status_STATUS_OK,
					Response: enqueueResponse(r.Enqueued)}
				continue
			}
		}
		st := s.rpc.toStatus(ctx, call, errs[i])
		out.Results[i] = &qpcv1.EnqueueBatchResult{Status: st.Code, Message: st.Message,
			RetryAfterMs: uint32(min(st.RetryAfter.Milliseconds(), int64(^uint32(0))))}
	}
	return out, nil
}

func (s *Server) sendToInbox(ctx context.Context, call *Call, req *qpcv1.SendToInboxRequest) (*qpcv1.SendToInboxResponse, error) {
	c, err := caller(call)
	if err != nil {
		return nil, err
	}
	to := make([]delivery.InboxRecipient, 0, len(req.GetRecipients()))
	for _, r := range req.GetRecipients() {
		to = append(to, delivery.InboxRecipient{AccountName: r.GetAccountName(), DeviceID: r.GetDeviceId()})
	}
	// Each recipient gets a copy: the bytes stored are payload x recipients.
	if err := s.allowBytes(ctx, c, len(req.GetPayload())*len(to)); err != nil {
		return nil, err
	}
	if req.GetKind() == qpcv1.InboxKind_INBOX_KIND_WELCOME {
		if err := s.checkWelcomeSuite(ctx, c, req.GetChannelId(), req.GetPayload()); err != nil {
			return nil, err
		}
	}
	n, err := s.delivery.SendToInbox(ctx, c, req.GetChannelId(), int(req.GetKind()), req.GetPayload(), to)
	if err != nil {
		return nil, err
	}
	return &qpcv1.SendToInboxResponse{Delivered: uint32(n)}, nil
}

func batchProto(b delivery.Batch) *qpcv1.FetchResponse {
	out := &qpcv1.FetchResponse{More: b.More}
	for _, m := range b.Messages {
		cm := &qpcv1.ChannelMessage{
			ChannelId: m.ChannelID, Seq: m.Seq, MessageId: m.MessageID, SenderAccountId: m.SenderAccount,
			SenderDeviceId: m.SenderDevice, MlsMessage: m.Body, ServerTimeUnixMs: m.Time.UnixMilli(), Epoch: m.Epoch,
		}
		if m.IsEvent() {
			// A membership change the server wrote (delivery/members.go).
			ev := &qpcv1.MembershipEvent{}
			if err := proto.Unmarshal(m.Body, ev); err == nil {
				// mls_message keeps the encoded event: a client older than
				// events stores every message's body (an empty one failed
				// its NOT NULL column and wedged its receive) and drops it
				// as a malformed MLS message.
				cm.Event, cm.SenderAccountId = ev, ""
			}
		}
		out.Messages = append(out.Messages, cm)
	}
	for _, it := range b.Inbox {
		out.Inbox = append(out.Inbox, &qpcv1.InboxItem{
			Seq: it.Seq, Kind: qpcv1.InboxKind(it.Kind), ChannelId: it.ChannelID, SenderAccountId: it.SenderAccount,
			SenderDeviceId: it.SenderDevice, Payload: it.Body, ServerTimeUnixMs: it.Time.UnixMilli(),
		})
	}
	return out
}

// withIncarnation stamps a fetch answer with the store's incarnation id.
func (s *Server) withIncarnation(resp *qpcv1.FetchResponse) *qpcv1.FetchResponse {
	resp.StoreIncarnation = s.incarnation
	return resp
}

func afterPositions(in []*qpcv1.ChannelCursor, inbox uint64) delivery.After {
	a := delivery.After{Inbox: inbox}
	if len(in) > 0 {
		a.Channels = make(map[string]uint64, len(in))
		for _, c := range in {
			a.Channels[string(c.GetChannelId())] = c.GetSeq()
		}
	}
	return a
}

func (s *Server) fetch(ctx context.Context, call *Call, req *qpcv1.FetchRequest) (*qpcv1.FetchResponse, error) {
	c, err := caller(call)
	if err != nil {
		return nil, err
	}
	b, err := s.delivery.Fetch(ctx, c, int(req.GetLimit()), afterPositions(req.GetAfter(), req.GetInboxAfter()))
	if err != nil {
		return nil, err
	}
	return s.withRefillSignal(s.withIncarnation(batchProto(b)), c.DeviceID), nil
}

// fetchWait long-polls; the wait is clipped to limits.long_poll_max and
// ends early (with what there is) when the server starts draining.
func (s *Server) fetchWait(ctx context.Context, call *Call, req *qpcv1.FetchWaitRequest) (*qpcv1.FetchResponse, error) {
	c, err := caller(call)
	if err != nil {
		return nil, err
	}
	timeout := time.Duration(req.GetTimeoutMs()) * time.Millisecond
	b, err := s.delivery.FetchWait(ctx, c, timeout, int(req.GetLimit()), afterPositions(req.GetAfter(), req.GetInboxAfter()), s.drainCh)
	if err != nil {
		return nil, err
	}
	return s.withRefillSignal(s.withIncarnation(batchProto(b)), c.DeviceID), nil
}

func (s *Server) ack(ctx context.Context, call *Call, req *qpcv1.AckRequest) (*qpcv1.AckResponse, error) {
	c, err := caller(call)
	if err != nil {
		return nil, err
	}
	cursors := make([]delivery.Cursor, 0, len(req.GetCursors()))
	for _, cu := range req.GetCursors() {
		cursors = append(cursors, delivery.Cursor{ChannelID: cu.GetChannelId(), Seq: cu.GetSeq()})
	}
	if err := s.delivery.Ack(ctx, c, cursors, req.GetInboxSeq()); err != nil {
		return nil, err
	}
	return &qpcv1.AckResponse{}, nil
}

func (s *Server) getGroupInfo(ctx context.Context, call *Call, req *qpcv1.GetGroupInfoRequest) (*qpcv1.GetGroupInfoResponse, error) {
	c, err := caller(call)
	if err != nil {
		return nil, err
	}
	gi, tree, epoch, err := s.delivery.GroupInfoTree(ctx, c, req.GetChannelId())
	if err != nil {
		return nil, err
	}
	return &qpcv1.GetGroupInfoResponse{GroupInfo: gi, Epoch: epoch, RatchetTree: tree}, nil
}

func (s *Server) listInvitations(ctx context.Context, call *Call, _ *qpcv1.ListInvitationsRequest) (*qpcv1.ListInvitationsResponse, error) {
	c, err := caller(call)
	if err != nil {
		return nil, err
	}
	list, err := s.delivery.ListInvitations(ctx, c)
	if err != nil {
		return nil, err
	}
	out := &qpcv1.ListInvitationsResponse{}
	for _, inv := range list {
		t := qpcv1.ChannelType_CHANNEL_TYPE_GROUP
		if inv.ChannelKind == delivery.KindDM {
			t = qpcv1.ChannelType_CHANNEL_TYPE_DM
		}
		out.Invitations = append(out.Invitations, &qpcv1.Invitation{
			InvitationId: inv.ID, ChannelId: inv.ChannelID, ChannelType: t, InviterAccountId: inv.InviterID,
			InviterAccountName: inv.InviterName, CreatedUnixMs: inv.Created.UnixMilli(), ExpiresUnixMs: inv.Expires.UnixMilli(),
			MemberCount: uint32(inv.Members), DeviceId: inv.DeviceID, WelcomesHeld: uint32(inv.WelcomesHeld),
		})
	}
	return out, nil
}

func (s *Server) acceptInvitation(ctx context.Context, call *Call, req *qpcv1.AcceptInvitationRequest) (*qpcv1.AcceptInvitationResponse, error) {
	c, err := caller(call)
	if err != nil {
		return nil, err
	}
	ch, n, err := s.delivery.AcceptInvitation(ctx, c, req.GetInvitationId())
	if err != nil {
		return nil, err
	}
	return &qpcv1.AcceptInvitationResponse{Channel: channelProto(ch), Welcomes: uint32(n)}, nil
}

func (s *Server) declineInvitation(ctx context.Context, call *Call, req *qpcv1.DeclineInvitationRequest) (*qpcv1.DeclineInvitationResponse, error) {
	c, err := caller(call)
	if err != nil {
		return nil, err
	}
	if err := s.delivery.DeclineInvitation(ctx, c, req.GetInvitationId()); err != nil {
		return nil, err
	}
	return &qpcv1.DeclineInvitationResponse{}, nil
}

func (s *Server) blockAccount(ctx context.Context, call *Call, req *qpcv1.BlockAccountRequest) (*qpcv1.BlockAccountResponse, error) {
	c, err := caller(call)
	if err != nil {
		return nil, err
	}
	n, err := s.delivery.Block(ctx, c, req.GetAccountName())
	if err != nil {
		return nil, err
	}
	return &qpcv1.BlockAccountResponse{InvitationsDeclined: uint32(n)}, nil
}

func (s *Server) unblockAccount(ctx context.Context, call *Call, req *qpcv1.UnblockAccountRequest) (*qpcv1.UnblockAccountResponse, error) {
	c, err := caller(call)
	if err != nil {
		return nil, err
	}
	if err := s.delivery.Unblock(ctx, c, req.GetAccountName()); err != nil {
		return nil, err
	}
	return &qpcv1.UnblockAccountResponse{}, nil
}

func (s *Server) listBlocked(ctx context.Context, call *Call, _ *qpcv1.ListBlockedRequest) (*qpcv1.ListBlockedResponse, error) {
	c, err := caller(call)
	if err != nil {
		return nil, err
	}
	list, err := s.delivery.ListBlocked(ctx, c)
	if err != nil {
		return nil, err
	}
	out := &qpcv1.ListBlockedResponse{}
	for _, b := range list {
		out.Blocked = append(out.Blocked, &qpcv1.BlockedAccount{AccountId: b.AccountID, AccountName: b.AccountName, SinceUnixMs: b.Since.UnixMilli()})
	}
	return out, nil
}

// deliveryDirectory adapts internal/auth to delivery.Directory.
type deliveryDirectory struct{ a *auth.Service }

func (d deliveryDirectory) AccountByName(ctx context.Context, name string) (delivery.Account, error) {
	a, _, err := d.a.LookupAccount(ctx, name)
	if err != nil {
		return delivery.Account{}, lookupErr(delivery.ErrUnknownAccount, err)
	}
	return delivery.Account{ID: a.ID, Name: a.Name, Active: a.Status == "active"}, nil
}

func (d deliveryDirectory) AccountByID(ctx context.Context, id string) (delivery.Account, error) {
	a, err := d.a.GetAccount(ctx, id)
	if err != nil {
		return delivery.Account{}, lookupErr(delivery.ErrUnknownAccount, err)
	}
	return delivery.Account{ID: a.ID, Name: a.Name, Active: a.Status == "active"}, nil
}

func (d deliveryDirectory) Devices(ctx context.Context, accountID string) ([]delivery.Device, error) {
	devs, err := d.a.ListDevices(ctx, accountID)
	if err != nil {
		return nil, lookupErr(delivery.ErrUnknownAccount, err)
	}
	out := make([]delivery.Device, 0, len(devs))
	for _, dev := range devs {
		out = append(out, delivery.Device{ID: dev.ID, AccountID: dev.AccountID, Active: dev.Active()})
	}
	return out, nil
}

func (d deliveryDirectory) Device(ctx context.Context, id string) (delivery.Device, error) {
	dev, err := d.a.Device(ctx, id)
	if err != nil {
		return delivery.Device{}, lookupErr(delivery.ErrUnknownAccount, err)
	}
	return delivery.Device{ID: dev.ID, AccountID: dev.AccountID, Active: dev.Active()}, nil
}
