package server

import (
	"context"
	"errors"
	"fmt"

	"github.com/quicprochat/quicprochat/internal/delivery"
	"github.com/quicprochat/quicprochat/internal/mls"
)

// ErrSuiteDowngrade: a Welcome or GroupInfo is of a cipher suite outside
// mls.allowed_suites, weaker than its minimum, or other than the suite of
// the group's current GroupInfo (a group never changes suite).
var ErrSuiteDowngrade = errors.New("server: cipher suite downgrade")

// The server's downgrade guards, where it can see the suite: a Welcome
// carries it in the clear, a GroupInfo in its GroupContext. Handshake
// messages do not name a suite (a member's commit is a PrivateMessage), so
// a commit is guarded through the GroupInfo that comes with it, and by
// every member's client. Whatever does not decode is left to the delivery
// service, which refuses it with its own error.

// checkGroupInfoSuite guards the GroupInfo sent with a commit.
func (s *Server) checkGroupInfoSuite(ctx context.Context, c delivery.Caller, channelID, raw []byte) error {
	if len(raw) == 0 {
		return nil
	}
	gi, ok := decodeGroupInfo(raw)
	if !ok {
		return nil
	}
	return s.checkChannelSuite(ctx, c, channelID, gi.GroupContext.CipherSuite, "group_info")
}

// checkWelcomeSuite guards a Welcome put into inboxes.
func (s *Server) checkWelcomeSuite(ctx context.Context, c delivery.Caller, channelID, raw []byte) error {
	var m mls.MLSMessage
	if err := m.UnmarshalAliased(raw); err != nil || m.Welcome == nil {
		return nil
	}
	return s.checkChannelSuite(ctx, c, channelID, m.Welcome.CipherSuite, "welcome")
}

// checkChannelSuite refuses suite unless the policy admits it and it is
// the suite of the channel's stored GroupInfo (when there is one).
func (s *Server) checkChannelSuite(ctx context.Context, c delivery.Caller, channelID []byte, suite mls.CipherSuiteID, what string) error {
	p := s.keydir.Policy()
	if !p.Allows(suite) {
		s.log.Info("server: refused a cipher suite outside the policy", "what", what, "suite", uint16(suite), "account_id", c.AccountID)
		return fmt.Errorf("%w: %s of %v, which the server does not allow (allowed: %v, minimum %v)", ErrSuiteDowngrade, what, suite, p.Allowed, p.Minimum)
	}
	prev, _, err := s.delivery.GroupInfo(ctx, c, channelID)
	if err != nil {
		return nil // no GroupInfo yet, or no access: the delivery call decides
	}
	if old, ok := decodeGroupInfo(prev); ok && old.GroupContext.CipherSuite != suite {
		return fmt.Errorf("%w: %s of %v for a group of %v", ErrSuiteDowngrade, what, suite, old.GroupContext.CipherSuite)
	}
	return nil
}

// decodeGroupInfo accepts an MLSMessage(GroupInfo) or a bare GroupInfo.
func decodeGroupInfo(raw []byte) (*mls.GroupInfo, bool) {
	var m mls.MLSMessage
	if err := m.UnmarshalAliased(raw); err == nil && m.GroupInfo != nil {
		return m.GroupInfo, true
	}
	gi := new(mls.GroupInfo)
	if err := gi.Unmarshal(raw); err != nil {
		return nil, false
	}
	return gi, true
}
