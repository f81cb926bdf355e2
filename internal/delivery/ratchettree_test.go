package delivery

import (
	"bytes"
	"database/sql"
	"errors"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	dt "github.com/quicprochat/quicprochat/internal/delivery/deliverytest"
	"github.com/quicprochat/quicprochat/internal/mls"
)

// groupInfoWithTree is an MLSMessage(GroupInfo) that carries a
// ratchet_tree extension.
func groupInfoWithTree(t *testing.T, group []byte, epoch uint64) []byte {
	t.Helper()
	m := &mls.MLSMessage{Version: mls.ProtocolVersionMLS10, WireFormat: mls.WireFormatGroupInfo,
		GroupInfo: &mls.GroupInfo{
			GroupContext: mls.GroupContext{Version: mls.ProtocolVersionMLS10, CipherSuite: 1, GroupID: group, Epoch: epoch,
				TreeHash: make([]byte, 32), ConfirmedTranscriptHash: make([]byte, 32)},
			Extensions:      []mls.Extension{{Type: mls.ExtensionTypeRatchetTree, Data: []byte{1, 0}}},
			ConfirmationTag: make([]byte, 32), Signature: make([]byte, 64),
		}}
	b, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// The ratchet tree beside the GroupInfo is stored, returned with the
// GroupInfo of its epoch only, replaced or dropped by the next commit's,
// and refused where it does not belong. Runs on every backend.
func TestRatchetTreeBesideGroupInfo(t *testing.T) {
	e := newEnv(t, nil)
	alice, bob, mallory := e.dir.add("alice", "a1"), e.dir.add("bob", "b1"), e.dir.add("mallory", "m1")
	ch, g := e.group(t, alice, bob)
	tree1 := bytes.Repeat([]byte{0xA1}, 3000)

	first := EnqueueItem{ChannelID: ch.ID, MessageID: newMsgID(), MLSMessage: dt.Commit(g, 0), GroupInfo: dt.GroupInfo(g, 1), RatchetTree: tree1}
	r, err := e.svc.EnqueueItem(ctx, alice.Caller, first)
	if err != nil || r.Epoch != 1 || !r.TreeStored {
		t.Fatalf("commit with a tree: %+v %v", r, err)
	}
	gi, tree, epoch, err := e.svc.GroupInfoTree(ctx, bob.Caller, ch.ID)
	if err != nil || epoch != 1 || !bytes.Equal(gi, dt.GroupInfo(g, 1)) || !bytes.Equal(tree, tree1) {
		t.Fatalf("GroupInfoTree: epoch %d, tree of %d bytes, %v", epoch, len(tree), err)
	}
	if gi, epoch, err := e.svc.GroupInfo(ctx, bob.Caller, ch.ID); err != nil || epoch != 1 || !bytes.Equal(gi, dt.GroupInfo(g, 1)) {
		t.Fatalf("GroupInfo beside a tree: %d %v", epoch, err)
	}
	// The same message again: a duplicate, its tree reported stored.
	if r, err := e.svc.EnqueueItem(ctx, alice.Caller, first); err != nil || !r.Duplicate || !r.TreeStored {
		t.Fatalf("duplicate: %+v %v", r, err)
	}
	if _, _, _, err := e.svc.GroupInfoTree(ctx, mallory.Caller, ch.ID); !errors.Is(err, ErrNotMember) {
		t.Fatalf("non-member: %v", err)
	}

	// A commit whose GroupInfo carries the tree (an older client) drops
	// the stored one.
	r, err = e.svc.Enqueue(ctx, bob.Caller, ch.ID, newMsgID(), dt.Commit(g, 1), groupInfoWithTree(t, g, 2))
	if err != nil || r.TreeStored {
		t.Fatalf("commit without a separate tree: %+v %v", r, err)
	}
	if gi, tree, epoch, err := e.svc.GroupInfoTree(ctx, bob.Caller, ch.ID); err != nil || epoch != 2 || tree != nil || !bytes.Equal(gi, groupInfoWithTree(t, g, 2)) {
		t.Fatalf("after an embedded commit: epoch %d, tree of %d bytes, %v", epoch, len(tree), err)
	}

	// A tree again, then a qpcd one release older (which knows nothing of
	// the tree columns) stores the next GroupInfo: the old tree is not
	// served beside it.
	tree3 := bytes.Repeat([]byte{0xA3}, 100)
	if r, err := e.svc.EnqueueItem(ctx, alice.Caller, EnqueueItem{ChannelID: ch.ID, MessageID: newMsgID(), MLSMessage: dt.Commit(g, 2),
		GroupInfo: dt.GroupInfo(g, 3), RatchetTree: tree3}); err != nil || !r.TreeStored {
		t.Fatalf("commit with a tree at 2: %+v %v", r, err)
	}
	if _, tree, _, _ := e.svc.GroupInfoTree(ctx, bob.Caller, ch.ID); !bytes.Equal(tree, tree3) {
		t.Fatal("the epoch 3 tree is not served")
	}
	if err := e.db.WriteTx(ctx, func(tx *sql.Tx) error {
		// The statement of the release before migration 0014.
		_, err := tx.ExecContext(ctx, `INSERT INTO channel_group_info (channel_id, epoch, group_info) VALUES (?, ?, ?)
			ON CONFLICT (channel_id) DO UPDATE SET epoch = excluded.epoch, group_info = excluded.group_info`, ch.ID, int64(4), dt.GroupInfo(g, 4))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if gi, tree, epoch, err := e.svc.GroupInfoTree(ctx, bob.Caller, ch.ID); err != nil || epoch != 4 || tree != nil || !bytes.Equal(gi, dt.GroupInfo(g, 4)) {
		t.Fatalf("after an older server's GroupInfo: epoch %d, tree of %d bytes, %v", epoch, len(tree), err)
	}
	// Stored: epochs 1 and 3 beside, 2 embedded (the duplicate is not
	// counted).
	for p, want := range map[string]float64{"beside": 2, "embedded": 1, "missing": 0} {
		if got := testutil.ToFloat64(e.svc.metrics.groupInfos.WithLabelValues(p)); got != want {
			t.Errorf("qpcd_group_infos_stored_total{tree=%q} = %v, want %v", p, got, want)
		}
	}
}

func TestRatchetTreeRefused(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.MaxPayload = 4096 })
	alice, bob := e.dir.add("alice", "a1"), e.dir.add("bob", "b1")
	ch, g := e.group(t, alice, bob)
	for _, c := range []struct {
		name string
		it   EnqueueItem
		want error
	}{
		{"tree without a GroupInfo", EnqueueItem{MLSMessage: dt.Commit(g, 0), RatchetTree: []byte{1}}, ErrInvalidRequest},
		{"tree beside a GroupInfo that carries one", EnqueueItem{MLSMessage: dt.Commit(g, 0), GroupInfo: groupInfoWithTree(t, g, 1), RatchetTree: []byte{1}}, ErrInvalidRequest},
		{"tree with an application message", EnqueueItem{MLSMessage: dt.Application(g, 0, 10), GroupInfo: dt.GroupInfo(g, 1), RatchetTree: []byte{1}}, ErrInvalidRequest},
		{"tree over the payload cap", EnqueueItem{MLSMessage: dt.Commit(g, 0), GroupInfo: dt.GroupInfo(g, 1), RatchetTree: make([]byte, 4000)}, ErrTooLarge},
	} {
		c.it.ChannelID, c.it.MessageID = ch.ID, newMsgID()
		if _, err := e.svc.EnqueueItem(ctx, alice.Caller, c.it); !errors.Is(err, c.want) {
			t.Errorf("%s: %v, want %v", c.name, err, c.want)
		}
	}
	// A batch's cap counts the trees too.
	items := []EnqueueItem{
		{ChannelID: ch.ID, MessageID: newMsgID(), MLSMessage: dt.Commit(g, 0), GroupInfo: dt.GroupInfo(g, 1), RatchetTree: make([]byte, 2100)},
		{ChannelID: ch.ID, MessageID: newMsgID(), MLSMessage: dt.Commit(g, 1), GroupInfo: dt.GroupInfo(g, 2), RatchetTree: make([]byte, 2100)},
	}
	if _, err := e.svc.EnqueueBatch(ctx, alice.Caller, items); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("batch over the cap by its trees: %v", err)
	}
	// Under the cap, both commits of one batch are stored; the later
	// one's tree is served.
	items[0].RatchetTree, items[1].RatchetTree = []byte{1}, []byte{2}
	res, err := e.svc.EnqueueBatch(ctx, alice.Caller, items)
	if err != nil || res[0].Err != nil || res[1].Err != nil || !res[0].TreeStored || !res[1].TreeStored {
		t.Fatalf("batch of two commits with trees: %+v %v", res, err)
	}
	if _, tree, epoch, err := e.svc.GroupInfoTree(ctx, bob.Caller, ch.ID); err != nil || epoch != 2 || !bytes.Equal(tree, []byte{2}) {
		t.Fatalf("after the batch: epoch %d, tree %x, %v", epoch, tree, err)
	}
}
