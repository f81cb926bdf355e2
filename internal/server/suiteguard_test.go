package server

import (
	"slices"
	"strings"
	"testing"

	dt "github.com/quicprochat/quicprochat/internal/delivery/deliverytest"
	"github.com/quicprochat/quicprochat/internal/mls"
	"github.com/quicprochat/quicprochat/internal/wire/qpcv1"
)

func suiteGroupInfo(t *testing.T, group []byte, epoch uint64, suite mls.CipherSuiteID) []byte {
	t.Helper()
	var m mls.MLSMessage
	if err := m.Unmarshal(dt.GroupInfo(group, epoch)); err != nil {
		t.Fatal(err)
	}
	m.GroupInfo.GroupContext.CipherSuite = suite
	b, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func suiteWelcome(t *testing.T, suite mls.CipherSuiteID) []byte {
	t.Helper()
	b, err := (&mls.MLSMessage{Version: mls.ProtocolVersionMLS10, WireFormat: mls.WireFormatWelcome,
		Welcome: &mls.Welcome{CipherSuite: suite, EncryptedGroupInfo: make([]byte, 64)}}).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestServerSuiteGuards: qpcd advertises its policy in Ping and refuses,
// where it can see the suite, a GroupInfo or Welcome of a suite outside
// mls.allowed_suites or other than the group's (INVALID_ARGUMENT, a
// downgrade).
func TestServerSuiteGuards(t *testing.T) {
	cfg := testConfig(t)
	cfg.MLS.AllowedSuites = "MLS_256_XWING_AES256GCM_SHA512_Ed25519,1"
	ts := startServer(t, cfg)
	var ping qpcv1.PingResponse
	if err := ts.dial(t).Call(ctxT(t), MethodPing, "", &qpcv1.PingRequest{}, &ping); err != nil {
		t.Fatal(err)
	}
	if p := ping.GetMlsPolicy(); !slices.Equal(p.GetAllowedSuites(), []uint32{0xF00D, 1}) || p.GetMinimumSuite() != 1 {
		t.Fatalf("advertised policy %v", p)
	}
	alice, bob := ts.newDevice(t, "alice"), ts.newDevice(t, "bob")
	ch, g := groupChannel(t, alice, bob)
	xw := mls.MLS256XWingAES256GCMSHA512Ed25519
	downgrade := func(err error, what string) {
		t.Helper()
		expectStatus(t, err, qpcv1.Status_STATUS_INVALID_ARGUMENT)
		if !strings.Contains(err.Error(), "downgrade") {
			t.Fatalf("%s: %v does not say downgrade", what, err)
		}
	}
	// A first GroupInfo of a suite outside the policy.
	_, err := enqueue(t, alice, ch, newMessageID(), dt.Commit(g, 0), suiteGroupInfo(t, g, 1, 3))
	downgrade(err, "GroupInfo of suite 3")
	// The group's suite is set by its first GroupInfo: X-Wing.
	if _, err := enqueue(t, alice, ch, newMessageID(), dt.Commit(g, 0), suiteGroupInfo(t, g, 1, xw)); err != nil {
		t.Fatal(err)
	}
	// Suite 1 is allowed, but not for this group.
	_, err = enqueue(t, alice, ch, newMessageID(), dt.Commit(g, 1), suiteGroupInfo(t, g, 2, 1))
	downgrade(err, "GroupInfo of suite 1 in an X-Wing group")
	if _, err := enqueue(t, alice, ch, newMessageID(), dt.Commit(g, 1), suiteGroupInfo(t, g, 2, xw)); err != nil {
		t.Fatalf("commit keeping the suite: %v", err)
	}
	welcome := func(ch []byte, suite mls.CipherSuiteID) error {
		return alice.call(t, MethodSendToInbox, &qpcv1.SendToInboxRequest{ChannelId: ch, Kind: qpcv1.InboxKind_INBOX_KIND_WELCOME,
			Payload: suiteWelcome(t, suite), Recipients: []*qpcv1.InboxRecipient{{AccountName: "bob", DeviceId: bob.DeviceID}}}, &qpcv1.SendToInboxResponse{})
	}
	downgrade(welcome(ch, 1), "Welcome of suite 1 into an X-Wing group")
	if err := welcome(ch, xw); err != nil {
		t.Fatalf("Welcome of the group's suite: %v", err)
	}
	fresh, _ := groupChannel(t, alice, bob) // no GroupInfo yet: the policy alone decides
	downgrade(welcome(fresh, mls.MLS256DHKEMX448AES256GCMSHA512Ed448), "Welcome of suite 4")
	if err := welcome(fresh, 1); err != nil {
		t.Fatalf("Welcome of an allowed suite: %v", err)
	}
}
