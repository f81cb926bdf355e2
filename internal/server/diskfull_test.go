package server

import (
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	dt "github.com/quicprochat/quicprochat/internal/delivery/deliverytest"
	"github.com/quicprochat/quicprochat/internal/store/storetest"
	"github.com/quicprochat/quicprochat/internal/testutil"
	"github.com/quicprochat/quicprochat/internal/wire"
	"github.com/quicprochat/quicprochat/internal/wire/qpcv1"
)

// readAll reads a channel from the start with read-ahead cursors (no Ack,
// so no write) and returns its messages in order.
func readAll(t *testing.T, d *testDevice, ch []byte) []*qpcv1.ChannelMessage {
	t.Helper()
	var out []*qpcv1.ChannelMessage
	var after uint64
	for {
		var r qpcv1.FetchResponse
		if err := d.call(t, MethodFetch, &qpcv1.FetchRequest{Limit: 500, After: []*qpcv1.ChannelCursor{{ChannelId: ch, Seq: after}}}, &r); err != nil {
			t.Fatalf("fetch: %v", err)
		}
		for _, m := range r.GetMessages() {
			if string(m.GetChannelId()) == string(ch) {
				if m.GetEvent() == nil { // membership events are not messages
					out = append(out, m)
				}
				after = m.GetSeq()
			}
		}
		if !r.GetMore() {
			return out
		}
	}
}

func (ts *testServer) httpBody(t *testing.T, path string) (int, string) {
	t.Helper()
	resp, err := http.Get("http://" + ts.OpsAddr() + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// isDiskFullStatus reports whether err is the retryable status a full disk
// answers: RESOURCE_EXHAUSTED with a retry-after, naming the disk.
func isDiskFullStatus(err error) bool {
	var se *wire.StatusError
	return errors.As(err, &se) && se.Code == qpcv1.Status_STATUS_RESOURCE_EXHAUSTED && se.RetryAfter > 0 &&
		strings.Contains(se.Message, "disk holding qpcd's data directory has no space left")
}

// The data directory on a small real filesystem, filled while the server
// runs: writes (Enqueue, LoginChallenge) are refused with the retryable
// RESOURCE_EXHAUSTED naming the disk, never INTERNAL; reads go on; /readyz
// and qpcd_disk_full report it; once the space is freed the condition
// clears by itself, writes resume and every acknowledged message is there
// exactly once.
func TestDiskFullRefusesWritesRetryablyAndRecovers(t *testing.T) {
	if storetest.Postgres() {
		t.Skip("the data directory holds the database only with SQLCipher; PostgreSQL's disk_full (53100) is classified in store.TestIsDiskFullClassifies")
	}
	cfg := svcConfig(t)
	cfg.DataDir = testutil.SmallFS(t, 12<<20)
	ts := startServer(t, cfg)
	alice, bob := ts.newDevice(t, "alice"), ts.newDevice(t, "bob")
	ch, g := groupChannel(t, alice, bob)

	acked := map[string]uint64{} // message id -> seq
	send := func() error {
		id := newMessageID()
		r, err := enqueue(t, alice, ch, id, dt.Application(g, 0, 2048), nil)
		if err == nil {
			acked[id] = r.GetSeq()
		}
		return err
	}
	for range 20 {
		if err := send(); err != nil {
			t.Fatal(err)
		}
	}
	filler := testutil.Fill(t, cfg.DataDir, "filler")

	// Some writes may still fit into reused WAL pages; keep sending until
	// the disk refuses one, and check every refusal is the retryable status.
	var refused error
	testutil.WaitFor(t, 20*time.Second, time.Millisecond, "an enqueue refused by the full disk", func() bool {
		err := send()
		if err != nil && !isDiskFullStatus(err) {
			t.Fatalf("enqueue on a full disk: %v; want RESOURCE_EXHAUSTED with retry-after naming the disk", err)
		}
		refused = err
		return err != nil
	})
	t.Logf("refused: %v", refused)

	// Nothing here may be INTERNAL: a login challenge (it stores a nonce)
	// either fits or gets the retryable status.
	var lc qpcv1.LoginChallengeResponse
	if err := bob.Client.Call(ctxT(t), MethodLoginChallenge, "", &qpcv1.LoginChallengeRequest{DeviceId: bob.DeviceID}, &lc); err != nil && !isDiskFullStatus(err) {
		t.Fatalf("LoginChallenge on a full disk: %v", err)
	}
	// Reads need no space.
	if got := readAll(t, bob, ch); len(got) != len(acked) {
		t.Fatalf("fetch on a full disk: %d messages, want %d", len(got), len(acked))
	}
	var lr qpcv1.ListChannelsResponse
	if err := bob.call(t, MethodListChannels, &qpcv1.ListChannelsRequest{}, &lr); err != nil || len(lr.GetChannels()) != 1 {
		t.Fatalf("list channels on a full disk: %v", err)
	}
	code, body := ts.httpBody(t, "/readyz")
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "disk full") || !strings.Contains(body, cfg.DataDir) {
		t.Fatalf("/readyz on a full disk: %d %q; want 503 naming the data directory", code, body)
	}
	if ts.gauge(t, "qpcd_disk_full") != 1 || ts.gauge(t, "qpcd_ready") != 0 {
		t.Fatalf("qpcd_disk_full %v, qpcd_ready %v; want 1 and 0", ts.gauge(t, "qpcd_disk_full"), ts.gauge(t, "qpcd_ready"))
	}
	if ts.gauge(t, "qpcd_datadir_filesystem_avail_bytes") >= 1<<20 {
		t.Fatalf("free bytes %v on a full filesystem", ts.gauge(t, "qpcd_datadir_filesystem_avail_bytes"))
	}

	filler.Remove(t)
	testutil.WaitFor(t, 20*time.Second, 20*time.Millisecond, "/readyz ready again after space was freed", func() bool {
		return ts.httpStatus("/readyz") == http.StatusOK
	})
	if ts.gauge(t, "qpcd_disk_full") != 0 || ts.gauge(t, "qpcd_ready") != 1 {
		t.Fatal("qpcd_disk_full / qpcd_ready did not clear")
	}
	for range 20 {
		if err := send(); err != nil {
			t.Fatalf("enqueue after space was freed: %v", err)
		}
	}
	if _, err := loginDevice(t, bob.Client, bob.DeviceID, bob.SigKey); err != nil {
		t.Fatalf("login after space was freed: %v", err)
	}
	got := readAll(t, bob, ch)
	seen := map[string]bool{}
	for _, m := range got {
		if seen[m.GetMessageId()] {
			t.Fatalf("message %s delivered twice", m.GetMessageId())
		}
		seen[m.GetMessageId()] = true
		if seq, ok := acked[m.GetMessageId()]; !ok || seq != m.GetSeq() {
			t.Fatalf("message %s at seq %d: acknowledged %v at %d", m.GetMessageId(), m.GetSeq(), ok, seq)
		}
	}
	if len(got) != len(acked) {
		t.Fatalf("%d messages in the channel, %d acknowledged", len(got), len(acked))
	}
}
