package client

import (
	"context"
	"crypto/rand"
	"database/sql"
	"testing"
	"time"

	"github.com/quicprochat/quicprochat/internal/delivery/deliverytest"
	"github.com/quicprochat/quicprochat/internal/server/servertest"
	"github.com/quicprochat/quicprochat/internal/wire/qpcv1"
)

// rawChannel makes a group channel (with a random group id, epoch 0) owned
// by a and adds the other clients' accounts (they accept the invitation,
// and read the membership events and notices it makes). The group layer
// does this with real MLS; the outbox and fetch tests need only the channel.
func rawChannel(t *testing.T, a *Client, others ...*Client) (channelID, groupID []byte) {
	t.Helper()
	groupID = make([]byte, 32)
	_, _ = rand.Read(groupID)
	var cr qpcv1.CreateGroupChannelResponse
	if err := a.call(ctxT(t), "CreateGroupChannel", &qpcv1.CreateGroupChannelRequest{GroupId: groupID}, &cr); err != nil {
		t.Fatal(err)
	}
	channelID = cr.GetChannel().GetChannelId()
	var refs []*qpcv1.MemberRef
	for _, o := range others {
		id, err := o.Identity(ctxT(t))
		if err != nil {
			t.Fatal(err)
		}
		id.Wipe()
		refs = append(refs, &qpcv1.MemberRef{AccountName: id.AccountName})
	}
	if len(refs) > 0 {
		if err := a.call(ctxT(t), "AddMembers", &qpcv1.AddMembersRequest{ChannelId: channelID, Members: refs}, &qpcv1.AddMembersResponse{}); err != nil {
			t.Fatal(err)
		}
		acceptAll(t, others...)
		for _, c := range append([]*Client{a}, others...) {
			if _, err := c.Sync(ctxT(t), 0); err != nil {
				t.Fatal(err)
			}
		}
	}
	return channelID, groupID
}

// inboundIDs returns the message ids stored for processing, per channel, in seq order.
func inboundIDs(t *testing.T, c *Client, channelID []byte) []string {
	t.Helper()
	var ids []string
	err := c.db.ReadTx(ctxT(t), func(tx *sql.Tx) error {
		rows, err := tx.Query(`SELECT message_id FROM inbound WHERE channel_id = ? AND sender_device_id != '' ORDER BY seq`, channelID)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var id string
			if err := rows.Scan(&id); err != nil {
				return err
			}
			ids = append(ids, id)
		}
		return rows.Err()
	})
	if err != nil {
		t.Fatal(err)
	}
	return ids
}

// TestOutboxExactlyOnceAcrossRestart: messages queued while qpcd is down
// are delivered once it is back, each exactly once, in order, including one
// whose Enqueue reached the server but whose reply was "lost".
func TestOutboxExactlyOnceAcrossRestart(t *testing.T) {
	srv := servertest.Start(t, servertest.Config(t))
	alice := registered(t, srv, "alice")
	bob := registered(t, srv, "bob")
	ch, group := rawChannel(t, alice, bob)
	ctx := ctxT(t)

	var want []string
	queue := func() {
		id, err := alice.QueueMLS(ctx, ch, deliverytest.Application(group, 0, 64), nil)
		if err != nil {
			t.Fatal(err)
		}
		want = append(want, id)
	}
	queue()
	if rep, err := alice.Flush(ctx); err != nil || rep.Sent != 1 {
		t.Fatalf("flush with the server up: %+v, %v", rep, err)
	}

	srv.Stop(t)
	queue()
	queue()
	short, cancel := context.WithTimeout(ctx, 3*time.Second)
	rep, err := alice.Flush(short)
	cancel()
	if err == nil || rep.Pending != 2 {
		t.Fatalf("flush with the server down: %+v, %v; want an error and 2 pending", rep, err)
	}
	srv.Start(t)

	// A message the server stored although the client never saw the reply:
	// it is still pending locally and goes out again.
	queue()
	last := want[len(want)-1]
	var er qpcv1.EnqueueResponse
	if err := alice.call(ctx, "Enqueue", &qpcv1.EnqueueRequest{ChannelId: ch, MessageId: last, MlsMessage: deliverytest.Application(group, 0, 64)}, &er); err != nil {
		t.Fatal(err)
	}
	rep, err = alice.Flush(ctx)
	if err != nil || rep.Sent != 3 || rep.Pending != 0 {
		t.Fatalf("flush after restart: %+v, %v", rep, err)
	}
	ob, err := alice.Outbox(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ob {
		if e.Status != OutboxSent || e.Seq == 0 {
			t.Fatalf("outbox entry %+v not sent", e)
		}
	}
	if ob[3].Seq != er.GetSeq() {
		t.Fatalf("re-sent message got seq %d, first enqueue %d: stored twice", ob[3].Seq, er.GetSeq())
	}

	// Bob receives each exactly once (the "lost reply" one first: the
	// server took it before the outbox drained); a second sync adds nothing.
	if _, err := bob.Sync(ctx, 0); err != nil {
		t.Fatal(err)
	}
	if got, w := inboundIDs(t, bob, ch), []string{want[0], want[3], want[1], want[2]}; !equalStrings(got, w) {
		t.Fatalf("bob got %v, want %v", got, w)
	}
	if r, err := bob.Sync(ctx, 0); err != nil || r.Messages != 0 {
		t.Fatalf("second sync: %+v, %v", r, err)
	}
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
