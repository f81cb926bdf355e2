package server

import (
	"context"
	"database/sql"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	dt "github.com/quicprochat/quicprochat/internal/delivery/deliverytest"
	"github.com/quicprochat/quicprochat/internal/secret"
	"github.com/quicprochat/quicprochat/internal/store"
	"github.com/quicprochat/quicprochat/internal/store/pgtest"
	"github.com/quicprochat/quicprochat/internal/store/storetest"
	"github.com/quicprochat/quicprochat/internal/wire/qpcv1"
)

// Several qpcd nodes on one PostgreSQL database: each test starts real
// nodes (own data directory, certificate and QUIC port; one shared
// database) and checks a promise that must hold whichever node a request
// reaches.

// startCluster starts n nodes on one fresh PostgreSQL database.
func startCluster(t *testing.T, n int) []*testServer {
	t.Helper()
	if !storetest.Postgres() {
		t.Skip("several nodes share a PostgreSQL database; this runs in the PostgreSQL pass of the suite")
	}
	base := svcConfig(t)
	nodes := []*testServer{startServer(t, base)}
	for range n - 1 {
		cfg := base
		cfg.DataDir = t.TempDir()
		cfg.Postgres.DSN = base.Postgres.DSN.Clone()
		nodes = append(nodes, startServer(t, cfg))
	}
	return nodes
}

// on returns d (same device, same access token) connected to node ts.
func (d *testDevice) on(t *testing.T, ts *testServer) *testDevice {
	t.Helper()
	c := *d
	c.Client = ts.dial(t)
	return &c
}

// openClusterDB opens the nodes' database directly, for checks.
func openClusterDB(t *testing.T, ts *testServer) *store.DB {
	t.Helper()
	db, err := store.OpenPostgres(context.Background(), store.PostgresOptions{DSN: ts.cfg.Postgres.DSN.Clone(), MaxConns: 2, MinConns: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	return db
}

// Many writers on two nodes: the channel's sequence numbers are 1..N with
// no gap and no repeat, and each message sits at the seq it was acked with.
func TestClusterSequencesContiguous(t *testing.T) {
	nodes := startCluster(t, 2)
	alice, bob := nodes[0].newDevice(t, "alice"), nodes[0].newDevice(t, "bob")
	ch, g := groupChannel(t, alice, bob)
	const senders, each = 8, 25
	var mu sync.Mutex
	acked := map[string]uint64{}
	var wg sync.WaitGroup
	for i := range senders {
		d := alice.on(t, nodes[i%2])
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range each {
				id := newMessageID()
				r, err := enqueue(t, d, ch, id, dt.Application(g, 0, 256), nil)
				if err != nil {
					t.Errorf("enqueue: %v", err)
					return
				}
				mu.Lock()
				acked[id] = r.GetSeq()
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	db := openClusterDB(t, nodes[0])
	var seqs []uint64
	events := 0
	err := db.ReadTx(context.Background(), func(tx *sql.Tx) error {
		seqs, events = nil, 0
		rows, err := tx.QueryContext(context.Background(), `SELECT seq, message_id FROM messages WHERE channel_id = ? ORDER BY seq`, ch)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var seq uint64
			var id string
			if err := rows.Scan(&seq, &id); err != nil {
				return err
			}
			seqs = append(seqs, seq)
			if strings.HasPrefix(id, "event-") {
				events++ // the membership events (bob invited, bob joined)
				continue
			}
			if acked[id] != seq {
				t.Errorf("message %s stored at seq %d, acked with %d", id, seq, acked[id])
			}
		}
		return rows.Err()
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(seqs)-events != senders*each || events != 2 {
		t.Fatalf("%d messages and %d events stored, %d acknowledged", len(seqs)-events, events, senders*each)
	}
	for i, s := range seqs {
		if s != uint64(i+1) {
			t.Fatalf("seq %d at position %d: not contiguous", s, i+1)
		}
	}
}

// Many senders on two nodes, each message sent to both nodes at once (a
// client retrying on another node while its first try is in flight): the
// nodes batch concurrent enqueues of a channel into shared commits, and
// still every message is stored once, both answers name its seq, exactly
// one of them is not a duplicate, and the log is 1..N without a gap.
func TestClusterConcurrentRetriesExactlyOnce(t *testing.T) {
	nodes := startCluster(t, 2)
	alice, bob := nodes[0].newDevice(t, "alice"), nodes[0].newDevice(t, "bob")
	ch, g := groupChannel(t, alice, bob)
	const senders, each = 8, 15
	type answer struct {
		seq uint64
		dup bool
	}
	var mu sync.Mutex
	answers := map[string][]answer{}
	var wg sync.WaitGroup
	for i := range senders {
		on := [2]*testDevice{alice.on(t, nodes[0]), alice.on(t, nodes[1])}
		if i%2 == 1 {
			on = [2]*testDevice{bob.on(t, nodes[0]), bob.on(t, nodes[1])}
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range each {
				id := newMessageID()
				msg := dt.Application(g, 0, 128)
				var inner sync.WaitGroup
				for _, d := range on {
					inner.Add(1)
					go func() {
						defer inner.Done()
						r, err := enqueue(t, d, ch, id, msg, nil)
						if err != nil {
							t.Errorf("enqueue %s: %v", id, err)
							return
						}
						mu.Lock()
						answers[id] = append(answers[id], answer{r.GetSeq(), r.GetDuplicate()})
						mu.Unlock()
					}()
				}
				inner.Wait()
			}
		}()
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	db := openClusterDB(t, nodes[0])
	var seqs []uint64
	var ids []string
	err := db.ReadTx(context.Background(), func(tx *sql.Tx) error {
		seqs, ids = nil, nil
		rows, err := tx.QueryContext(context.Background(), `SELECT seq, message_id FROM messages WHERE channel_id = ? ORDER BY seq`, ch)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var seq uint64
			var id string
			if err := rows.Scan(&seq, &id); err != nil {
				return err
			}
			seqs, ids = append(seqs, seq), append(ids, id)
		}
		return rows.Err()
	})
	if err != nil {
		t.Fatal(err)
	}
	stored := 0
	for i, id := range ids {
		if seqs[i] != uint64(i+1) {
			t.Fatalf("seq %d at position %d: not contiguous", seqs[i], i+1)
		}
		if strings.HasPrefix(id, "event-") {
			continue
		}
		stored++
		a := answers[id]
		if len(a) != 2 || a[0].seq != seqs[i] || a[1].seq != seqs[i] || a[0].dup == a[1].dup {
			t.Fatalf("message %s stored at %d, answered %+v", id, seqs[i], a)
		}
	}
	if stored != senders*each || len(answers) != senders*each {
		t.Fatalf("%d messages stored, %d sent", stored, len(answers))
	}
}

// A message id replayed to another node answers with the original seq.
func TestClusterReplayedMessageIDOnOtherNode(t *testing.T) {
	nodes := startCluster(t, 2)
	alice, bob := nodes[0].newDevice(t, "alice"), nodes[0].newDevice(t, "bob")
	ch, g := groupChannel(t, alice, bob)
	mustEnqueue(t, alice, ch, dt.Application(g, 0, 64))
	id := newMessageID()
	msg := dt.Application(g, 0, 64)
	first, err := enqueue(t, alice, ch, id, msg, nil)
	if err != nil {
		t.Fatal(err)
	}
	again, err := enqueue(t, alice.on(t, nodes[1]), ch, id, msg, nil)
	if err != nil || again.GetSeq() != first.GetSeq() || !again.GetDuplicate() {
		t.Fatalf("replay on the other node: %v %v (first seq %d)", again, err, first.GetSeq())
	}
	// Replays racing on both nodes at once: one stores, every answer names its seq.
	id = newMessageID()
	var seqs [2]uint64
	var wg sync.WaitGroup
	for i := range 2 {
		d := alice.on(t, nodes[i])
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, err := enqueue(t, d, ch, id, msg, nil)
			if err != nil {
				t.Errorf("racing replay: %v", err)
				return
			}
			seqs[i] = r.GetSeq()
		}()
	}
	wg.Wait()
	if seqs[0] != seqs[1] || seqs[0] == 0 {
		t.Fatalf("racing replays got seqs %v", seqs)
	}
}

// Two commits for one epoch sent to two nodes at once: exactly one wins.
func TestClusterCommitRaceOneWinner(t *testing.T) {
	nodes := startCluster(t, 2)
	alice, bob := nodes[0].newDevice(t, "alice"), nodes[0].newDevice(t, "bob")
	ch, g := groupChannel(t, alice, bob)
	senders := []*testDevice{alice, bob.on(t, nodes[1])}
	for epoch := uint64(0); epoch < 20; epoch++ {
		if wins, stale := raceCommits(t, senders, ch, g, epoch); wins != 1 || stale != 1 {
			t.Fatalf("epoch %d: %d winners, %d stale", epoch, wins, stale)
		}
	}
}

// Fetchers on two nodes never receive the same KeyPackage.
func TestClusterKeyPackagesSingleUse(t *testing.T) {
	nodes := startCluster(t, 2)
	bob := nodes[0].newDevice(t, "bob")
	now := time.Now()
	var kps [][]byte
	for range 10 {
		kps = append(kps, keyPackage(t, bob, now, nil))
	}
	if err := bob.call(t, MethodUploadKeyPackages, &qpcv1.UploadKeyPackagesRequest{KeyPackages: kps, LastResort: keyPackage(t, bob, now, nil)}, &qpcv1.UploadKeyPackagesResponse{}); err != nil {
		t.Fatal(err)
	}
	fetchers := []*testDevice{nodes[0].newDevice(t, "alice"), nodes[1].newDevice(t, "carol")}
	var mu sync.Mutex
	seen := map[string]int{}
	lastResort := 0
	var wg sync.WaitGroup
	for _, f := range fetchers {
		for i := range 3 {
			d := f.on(t, nodes[i%2])
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range 3 {
					var r qpcv1.FetchKeyPackagesResponse
					if err := d.call(t, MethodFetchKeyPackages, &qpcv1.FetchKeyPackagesRequest{AccountName: "bob"}, &r); err != nil {
						t.Errorf("fetch: %v", err)
						return
					}
					mu.Lock()
					for _, kp := range r.GetKeyPackages() {
						if kp.GetLastResort() {
							lastResort++
						} else {
							seen[string(kp.GetKeyPackage())]++
						}
					}
					mu.Unlock()
				}
			}()
		}
	}
	wg.Wait()
	for _, n := range seen {
		if n != 1 {
			t.Fatalf("a KeyPackage was handed out %d times", n)
		}
	}
	if len(seen) != 10 || lastResort != 18-10 {
		t.Fatalf("%d pool KeyPackages and %d last-resort answers for 18 fetches of a pool of 10", len(seen), lastResort)
	}
}

// A refresh token used on one node and replayed on another is detected as
// reuse, and the whole token family dies.
func TestClusterRefreshReuseDetected(t *testing.T) {
	nodes := startCluster(t, 2)
	d := nodes[0].newDevice(t, "dave")
	var r1 qpcv1.RefreshResponse
	if err := d.Client.Call(ctxT(t), MethodRefresh, "", &qpcv1.RefreshRequest{DeviceId: d.DeviceID, RefreshToken: d.RefreshToken}, &r1); err != nil {
		t.Fatal(err)
	}
	other := nodes[1].dial(t)
	err := other.Call(ctxT(t), MethodRefresh, "", &qpcv1.RefreshRequest{DeviceId: d.DeviceID, RefreshToken: d.RefreshToken}, &qpcv1.RefreshResponse{})
	if statusOf(err) != qpcv1.Status_STATUS_UNAUTHENTICATED {
		t.Fatalf("reuse on the other node: %v", err)
	}
	// The family is revoked: the token issued by the first refresh is dead too.
	err = d.Client.Call(ctxT(t), MethodRefresh, "", &qpcv1.RefreshRequest{DeviceId: d.DeviceID, RefreshToken: r1.GetTokens().GetRefreshToken()}, &qpcv1.RefreshResponse{})
	if statusOf(err) != qpcv1.Status_STATUS_UNAUTHENTICATED {
		t.Fatalf("family after reuse: %v", err)
	}
}

// A device revoked on one node is refused on the other. The other node
// learns it from the database's notification (milliseconds); the test
// waits for that notification to arrive rather than guessing a delay.
func TestClusterRevokedDeviceRefusedEverywhere(t *testing.T) {
	nodes := startCluster(t, 2)
	bob := nodes[0].newDevice(t, "bob")
	bob2 := nodes[0].addDevice(t, bob)
	onB := bob2.on(t, nodes[1])
	if err := onB.call(t, MethodWhoAmI, &qpcv1.WhoAmIRequest{}, &qpcv1.WhoAmIResponse{}); err != nil {
		t.Fatalf("before revocation: %v", err) // and node B now has the device's state cached
	}
	seen := nodes[1].gauge(t, "qpcd_db_notifications_total")
	if err := bob.revoke(t, bob2.DeviceID); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "node B hears of the revocation", func() bool {
		return nodes[1].gauge(t, "qpcd_db_notifications_total") > seen
	})
	err := onB.call(t, MethodWhoAmI, &qpcv1.WhoAmIRequest{}, &qpcv1.WhoAmIResponse{})
	if statusOf(err) != qpcv1.Status_STATUS_UNAUTHENTICATED {
		t.Fatalf("revoked device on the other node: %v", err)
	}
}

// A token-signing key rotated on one node: tokens signed by either node
// are accepted by the other, and the other node signs with the new key.
func TestClusterTokenKeyRotationShared(t *testing.T) {
	nodes := startCluster(t, 2)
	d := nodes[0].newDevice(t, "erin")
	if err := d.on(t, nodes[1]).call(t, MethodWhoAmI, &qpcv1.WhoAmIRequest{}, &qpcv1.WhoAmIResponse{}); err != nil {
		t.Fatalf("node A's token on node B: %v", err)
	}
	kid, err := nodes[0].auth.RotateSigningKey(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "node B signs with the new key", func() bool {
		return nodes[1].auth.ActiveKeyID() == kid
	})
	// A token node B signs now is accepted by node A.
	tok, err := loginDevice(t, nodes[1].dial(t), d.DeviceID, d.SigKey)
	if err != nil {
		t.Fatal(err)
	}
	fresh := *d
	fresh.Token = tok.GetAccessToken()
	if err := fresh.call(t, MethodWhoAmI, &qpcv1.WhoAmIRequest{}, &qpcv1.WhoAmIResponse{}); err != nil {
		t.Fatalf("node B's new-key token on node A: %v", err)
	}
	// Old (pre-rotation) tokens still verify on both nodes.
	for _, n := range nodes {
		if err := d.on(t, n).call(t, MethodWhoAmI, &qpcv1.WhoAmIRequest{}, &qpcv1.WhoAmIResponse{}); err != nil {
			t.Fatalf("old token after rotation: %v", err)
		}
	}
}

// A long poll on one node wakes when a message is enqueued on another.
func TestClusterFetchWaitWakesAcrossNodes(t *testing.T) {
	nodes := startCluster(t, 2)
	alice, bob := nodes[0].newDevice(t, "alice"), nodes[0].newDevice(t, "bob")
	ch, g := groupChannel(t, alice, bob)
	bobB := bob.on(t, nodes[1])
	drain(t, bobB) // the membership events and the invitation notice
	var worst time.Duration
	for round := range 5 {
		type result struct {
			r   *qpcv1.FetchResponse
			err error
			at  time.Time
		}
		out := make(chan result, 1)
		go func() {
			var r qpcv1.FetchResponse
			err := bobB.call(t, MethodFetchWait, &qpcv1.FetchWaitRequest{TimeoutMs: 20000}, &r)
			out <- result{&r, err, time.Now()}
		}()
		waitFor(t, 10*time.Second, "long poll on node B", func() bool { return nodes[1].gauge(t, "qpcd_long_poll_waiters") == 1 })
		sent := time.Now()
		r := mustEnqueue(t, alice, ch, dt.Application(g, 0, 64))
		res := <-out
		if res.err != nil || len(res.r.GetMessages()) != 1 || res.r.GetMessages()[0].GetSeq() != r.GetSeq() {
			t.Fatalf("round %d: %v %v", round, res.r, res.err)
		}
		worst = max(worst, res.at.Sub(sent))
		var ack qpcv1.AckResponse
		if err := bobB.call(t, MethodAck, &qpcv1.AckRequest{Cursors: []*qpcv1.ChannelCursor{{ChannelId: ch, Seq: r.GetSeq()}}}, &ack); err != nil {
			t.Fatal(err)
		}
	}
	// Enqueue round trip plus the wake-up; a missed notification would show
	// as the 20 s long-poll timeout.
	t.Logf("cross-node wake-up: worst of 5, enqueue sent to fetch returned: %s", worst)
	if worst > 5*time.Second {
		t.Fatalf("cross-node wake-up took %s", worst)
	}
}

// A node whose database goes away turns unready and answers UNAVAILABLE;
// when the database is back it recovers by itself, without a restart.
func TestClusterDatabaseLossAndRecovery(t *testing.T) {
	if !storetest.Postgres() {
		t.Skip("PostgreSQL backend only; runs in the PostgreSQL pass")
	}
	ctx := context.Background()
	// Durable settings: the server is killed, and what qpcd acknowledged
	// must be there when it comes back.
	pg, err := pgtest.Start(ctx, pgtest.Options{Fsync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = pg.Stop() })
	dsn, err := pg.CreateDatabase(ctx, "qpc")
	if err != nil {
		t.Fatal(err)
	}
	cfg := svcConfig(t)
	cfg.Postgres.DSN = secret.New([]byte(dsn))
	cfg.Postgres.StatementTimeout = 2 * time.Second
	cfg.Postgres.ConnectTimeout = 2 * time.Second
	ts := startServer(t, cfg)
	alice := ts.newDevice(t, "alice")
	if err := pg.Kill(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 15*time.Second, "/readyz not ready", func() bool { return ts.httpStatus("/readyz") == http.StatusServiceUnavailable })
	if ts.gauge(t, "qpcd_db_up") != 0 {
		t.Fatal("qpcd_db_up still 1")
	}
	start := time.Now()
	err = alice.call(t, MethodListChannels, &qpcv1.ListChannelsRequest{}, &qpcv1.ListChannelsResponse{})
	if statusOf(err) != qpcv1.Status_STATUS_UNAVAILABLE {
		t.Fatalf("request while the database is down: %v", err)
	}
	t.Logf("request refused after %s while the database was down", time.Since(start).Round(time.Millisecond))
	if err := pg.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "/readyz ready again", func() bool { return ts.httpStatus("/readyz") == http.StatusOK })
	waitFor(t, 30*time.Second, "requests served again", func() bool {
		return alice.call(t, MethodListChannels, &qpcv1.ListChannelsRequest{}, &qpcv1.ListChannelsResponse{}) == nil
	})
	waitFor(t, 30*time.Second, "LISTEN connection back", func() bool { return ts.gauge(t, "qpcd_db_listen_up") == 1 })
	if ts.gauge(t, "qpcd_db_listen_reconnects_total") < 1 {
		t.Fatal("LISTEN reconnect not counted")
	}
}
