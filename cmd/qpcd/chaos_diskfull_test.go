package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	dt "github.com/quicprochat/quicprochat/internal/delivery/deliverytest"
	"github.com/quicprochat/quicprochat/internal/secret"
	"github.com/quicprochat/quicprochat/internal/store"
	"github.com/quicprochat/quicprochat/internal/testutil"
	"github.com/quicprochat/quicprochat/internal/wire"
	"github.com/quicprochat/quicprochat/internal/wire/qpcv1"
)

// diskFullStatus reports whether err is what qpcd answers a write refused by
// a full disk: RESOURCE_EXHAUSTED with a retry-after (so clients retry),
// naming the disk.
func diskFullStatus(err error) bool {
	var se *wire.StatusError
	return errors.As(err, &se) && se.Code == qpcv1.Status_STATUS_RESOURCE_EXHAUSTED && se.RetryAfter > 0 &&
		strings.Contains(se.Message, "disk holding qpcd's data directory has no space left")
}

// senders enqueue messages into one channel from several connections, each
// retrying a refused message under the same client message id, as the
// client's outbox does, and record what was acknowledged.
type senders struct {
	wg      sync.WaitGroup
	stop    chan struct{}
	mu      sync.Mutex
	acked   map[string]uint64 // message id -> seq
	refused atomic.Int64      // RESOURCE_EXHAUSTED answers (disk full)
	dups    atomic.Int64      // acks flagged Duplicate: an earlier "refused" attempt was stored
	other   []error           // anything else: a broken promise
}

var chaosMsgN atomic.Int64

func startSenders(t *testing.T, p *proc, token string, ch, group []byte, n int) *senders {
	t.Helper()
	s := &senders{stop: make(chan struct{}), acked: map[string]uint64{}}
	for g := range n {
		c := p.dial(t)
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			for {
				id := fmt.Sprintf("00000000-0000-4000-8%03d-%012d", g, chaosMsgN.Add(1))
				for {
					select {
					case <-s.stop:
						return // an unacknowledged message stays pending
					default:
					}
					ctx, cancel := rpcCtx()
					var r qpcv1.EnqueueResponse
					err := c.Call(ctx, "Enqueue", token, &qpcv1.EnqueueRequest{ChannelId: ch, MessageId: id, MlsMessage: dt.Application(group, 0, 1500)}, &r)
					cancel()
					if err == nil {
						s.mu.Lock()
						s.acked[id] = r.GetSeq()
						s.mu.Unlock()
						if r.GetDuplicate() {
							s.dups.Add(1)
						}
						break
					}
					if !diskFullStatus(err) {
						s.mu.Lock()
						s.other = append(s.other, fmt.Errorf("%s: %w", id, err))
						s.mu.Unlock()
						return
					}
					s.refused.Add(1)
					// A client backs off before retrying; shorter than the
					// server's retry-after to keep the test quick.
					select {
					case <-s.stop:
						return
					case <-time.After(20 * time.Millisecond):
					}
				}
			}
		}()
	}
	return s
}

func (s *senders) ackedCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.acked)
}

func (s *senders) finish(t *testing.T) map[string]uint64 {
	t.Helper()
	close(s.stop)
	s.wg.Wait()
	if len(s.other) > 0 {
		t.Fatalf("%d enqueues failed with something other than the disk-full status, first: %v", len(s.other), s.other[0])
	}
	if d := s.dups.Load(); d > 0 {
		t.Fatalf("%d retried messages were already stored although their first attempt was refused", d)
	}
	return s.acked
}

// checkExactlyOnce reads the channel from the start: every acknowledged
// message is there once, at the sequence number it was acknowledged with,
// sequence numbers are contiguous, and nothing else is there.
func checkExactlyOnce(t *testing.T, reader *user, ch []byte, acked map[string]uint64) {
	t.Helper()
	got := reader.readAll(t, ch)
	seen := map[string]bool{}
	messages := 0 // not counting membership events
	for i, m := range got {
		// Contiguous from the reader's first seq (the invitation before
		// it joined is not its to read).
		if m.GetSeq() != got[0].GetSeq()+uint64(i) || got[0].GetSeq() > 2 {
			t.Fatalf("message %d has seq %d: sequence numbers are not contiguous", i, m.GetSeq())
		}
		id := m.GetMessageId()
		if seen[id] {
			t.Fatalf("message %s is in the channel twice", id)
		}
		seen[id] = true
		if m.GetEvent() != nil {
			continue // a membership event of the setup: it takes a seq, nobody acknowledged it
		}
		messages++
		seq, ok := acked[id]
		if !ok {
			t.Fatalf("message %s (seq %d) is in the channel but was never acknowledged", id, m.GetSeq())
		}
		if seq != m.GetSeq() {
			t.Fatalf("message %s acknowledged at seq %d, stored at %d", id, seq, m.GetSeq())
		}
	}
	if messages != len(acked) {
		t.Fatalf("%d messages in the channel, %d acknowledged: acknowledged messages lost", messages, len(acked))
	}
}

// TestChaosDiskFull: the data directory of the real qpcd on a 16 MiB
// filesystem, filled while messages arrive over QUIC. Writes are refused
// with RESOURCE_EXHAUSTED (retry-after, naming the disk), never INTERNAL;
// reads and fetches go on; /readyz and qpcd_disk_full report it. Once space
// is freed the condition clears by itself and writes resume: every
// acknowledged message is in the channel exactly once. Then SIGTERM on a
// full disk: exit 0 after draining, the checkpoint failure a warning, the
// WAL kept; the database passes its integrity checks, and qpcd restarts on
// it with every message.
func TestChaosDiskFull(t *testing.T) {
	mnt := testutil.SmallFS(t, 16<<20)
	dataDir := filepath.Join(mnt, "data")
	p := startProc(t, dataDir)
	alice, bob := newUser(t, p, "alice"), newUser(t, p, "bob")
	group := make([]byte, 32)
	_, _ = rand.Read(group)
	var cr qpcv1.CreateGroupChannelResponse
	if err := alice.call("CreateGroupChannel", &qpcv1.CreateGroupChannelRequest{GroupId: group}, &cr); err != nil {
		t.Fatal(err)
	}
	ch := cr.GetChannel().GetChannelId()
	if err := alice.call("AddMembers", &qpcv1.AddMembersRequest{ChannelId: ch, Members: []*qpcv1.MemberRef{{AccountName: "bob"}}}, &qpcv1.AddMembersResponse{}); err != nil {
		t.Fatal(err)
	}
	// Joining is by consent: bob accepts.
	var li qpcv1.ListInvitationsResponse
	if err := bob.call("ListInvitations", &qpcv1.ListInvitationsRequest{}, &li); err != nil || len(li.GetInvitations()) != 1 {
		t.Fatalf("bob's invitations: %v, %v", li.GetInvitations(), err)
	}
	if err := bob.call("AcceptInvitation", &qpcv1.AcceptInvitationRequest{InvitationId: li.GetInvitations()[0].GetInvitationId()}, &qpcv1.AcceptInvitationResponse{}); err != nil {
		t.Fatal(err)
	}

	s := startSenders(t, p, alice.token, ch, group, 4)
	waitFor(t, 60*time.Second, "100 messages acknowledged", func() bool { return s.ackedCount() >= 100 })
	filler := testutil.Fill(t, mnt, "filler")
	fullAt := time.Now()
	waitFor(t, 20*time.Second, "/readyz reporting the full disk", func() bool {
		code, _ := p.get("/readyz")
		return code == http.StatusServiceUnavailable
	})
	detect := time.Since(fullAt)
	waitFor(t, 60*time.Second, "enqueues refused by the full disk", func() bool { return s.refused.Load() >= 100 })
	if _, body := p.get("/readyz"); !strings.Contains(body, "disk full") || !strings.Contains(body, dataDir) {
		t.Fatalf("/readyz body %q does not name the full data directory", body)
	}
	if v := p.metric(t, "qpcd_disk_full"); v != "1" {
		t.Fatalf("qpcd_disk_full = %s on a full disk", v)
	}
	if v := p.metric(t, "qpcd_ready"); v != "0" {
		t.Fatalf("qpcd_ready = %s on a full disk", v)
	}

	// Reads and fetches go on; what writes is refused retryably or fits.
	before := s.ackedCount()
	if got := bob.readAll(t, ch); len(got) < before {
		t.Fatalf("fetch on a full disk returned %d messages, %d were acknowledged", len(got), before)
	}
	var lc qpcv1.LoginChallengeResponse
	ctx, cancel := rpcCtx()
	err := bob.c.Call(ctx, "LoginChallenge", "", &qpcv1.LoginChallengeRequest{DeviceId: bob.deviceID}, &lc)
	cancel()
	if err != nil && !diskFullStatus(err) {
		t.Fatalf("LoginChallenge on a full disk: %v", err)
	}
	if err := bob.call("Ack", &qpcv1.AckRequest{Cursors: []*qpcv1.ChannelCursor{{ChannelId: ch, Seq: 1}}}, &qpcv1.AckResponse{}); err != nil && !diskFullStatus(err) {
		t.Fatalf("Ack on a full disk: %v", err)
	}
	if err := bob.call("WhoAmI", &qpcv1.WhoAmIRequest{}, &qpcv1.WhoAmIResponse{}); err != nil {
		t.Fatalf("WhoAmI on a full disk: %v", err)
	}

	filler.Remove(t)
	freedAt := time.Now()
	waitFor(t, 30*time.Second, "/readyz ready again after space was freed", func() bool {
		code, _ := p.get("/readyz")
		return code == http.StatusOK
	})
	recovery := time.Since(freedAt)
	if v := p.metric(t, "qpcd_disk_full"); v != "0" {
		t.Fatalf("qpcd_disk_full = %s after space was freed", v)
	}
	resumeFrom := s.ackedCount()
	waitFor(t, 60*time.Second, "writes resuming", func() bool { return s.ackedCount() >= resumeFrom+100 })
	acked := s.finish(t)
	checkExactlyOnce(t, bob, ch, acked)
	if err := bob.login(); err != nil {
		t.Fatalf("login after space was freed: %v", err)
	}
	refused := s.refused.Load()

	// SIGTERM while the disk is full again.
	filler = testutil.Fill(t, mnt, "filler")
	if code := p.term(t); code != 0 {
		t.Fatalf("SIGTERM on a full disk: exit %d, want 0", code)
	}
	dbPath := filepath.Join(dataDir, "qpcd.db")
	walLeft := false
	if st, err := os.Stat(dbPath + "-wal"); err == nil && st.Size() > 0 {
		walLeft = true
		if len(p.logLines("checkpoint at close failed: disk full")) == 0 {
			t.Fatal("the WAL was left behind but no warning about the failed checkpoint was logged")
		}
	}
	for _, m := range p.logLines("checkpoint") {
		if m["level"] == "ERROR" {
			t.Fatalf("checkpoint failure logged as an error: %v", m)
		}
	}
	keyHex, err := os.ReadFile(filepath.Join(dataDir, "db.key"))
	if err != nil {
		t.Fatal(err)
	}
	raw, err := hex.DecodeString(strings.TrimSpace(string(keyHex)))
	if err != nil {
		t.Fatal(err)
	}
	// Read-only checks work on the still-full disk: the WAL is replayed.
	rep, err := store.VerifyFile(context.Background(), dbPath, secret.New(raw))
	if err != nil {
		t.Fatalf("integrity check after a stop on a full disk: %v", err)
	}
	// The log also holds the setup's two membership events (invited, joined).
	if rep.Tables["messages"] != int64(len(acked))+2 {
		t.Fatalf("the database holds %d messages, %d were acknowledged (and 2 membership events)", rep.Tables["messages"], len(acked))
	}

	// A start on the still-full disk: with the WAL and its index kept, qpcd
	// opens the database, serves reads and reports the full disk; without
	// them (the last checkpoint fitted) it cannot create the index and says
	// so (exit 1).
	var topUp *testutil.Filler
	if !walLeft {
		// The checkpoint fitted and the WAL was deleted, which freed its
		// pages: fill them again, or whether the start finds room for the
		// index depends on how large the WAL had grown.
		topUp = testutil.Fill(t, mnt, "filler-top-up")
	}
	p1, err := launchProc(t, dataDir)
	switch {
	case walLeft && err != nil:
		t.Fatalf("start on the full disk with the WAL kept: %v", err)
	case walLeft:
		// Until its start-up finishes /readyz says "starting"; then it
		// must say the disk is full (it does not become ready).
		var code int
		var body string
		waitFor(t, 15*time.Second, "start-up finished", func() bool {
			code, body = p1.get("/readyz")
			return !strings.Contains(body, "starting")
		})
		if code != http.StatusServiceUnavailable || !strings.Contains(body, "disk full") {
			t.Fatalf("started on a full disk: /readyz %d %q", code, body)
		}
		bob1 := &user{c: p1.dial(t), deviceID: bob.deviceID, token: bob.token}
		checkExactlyOnce(t, bob1, ch, acked)
		if code := p1.term(t); code != 0 {
			t.Fatalf("SIGTERM of the qpcd started on a full disk: exit %d", code)
		}
	case err == nil:
		t.Fatal("qpcd started on a full disk without its WAL index; expected it to refuse")
	case !strings.Contains(err.Error(), "cannot open its database on a full disk: free space in "+dataDir):
		t.Fatalf("start on a full disk: %v", err)
	}

	filler.Remove(t)
	if topUp != nil {
		topUp.Remove(t)
	}
	p2 := startProc(t, dataDir)
	bob2 := &user{c: p2.dial(t), name: "bob", deviceID: bob.deviceID, key: bob.key}
	if err := bob2.login(); err != nil {
		t.Fatalf("login after the restart: %v", err)
	}
	checkExactlyOnce(t, bob2, ch, acked)
	if code := p2.term(t); code != 0 {
		t.Fatalf("SIGTERM after the restart: exit %d", code)
	}
	t.Logf("acknowledged %d, refused %d (all RESOURCE_EXHAUSTED), lost 0, duplicated 0; /readyz reported the full disk %s after it filled, ready %s after space was freed; stop on a full disk: exit 0, WAL kept %v",
		len(acked), refused, detect.Round(time.Millisecond), recovery.Round(time.Millisecond), walLeft)
}
