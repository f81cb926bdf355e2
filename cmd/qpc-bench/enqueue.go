package main

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"google.golang.org/protobuf/proto"

	"github.com/quicprochat/quicprochat/internal/auth"
	"github.com/quicprochat/quicprochat/internal/config"
	"github.com/quicprochat/quicprochat/internal/mls"
	"github.com/quicprochat/quicprochat/internal/rpcclient"
	"github.com/quicprochat/quicprochat/internal/server"
	"github.com/quicprochat/quicprochat/internal/transport"
	"github.com/quicprochat/quicprochat/internal/wire"
	"github.com/quicprochat/quicprochat/internal/wire/qpcv1"
)

func gomaxprocs() int { return runtime.GOMAXPROCS(0) }

// device is one logged-in bench client with its own QUIC connection.
type device struct {
	c     *rpcclient.Client
	name  string
	id    string
	token string
}

func (d *device) call(ctx context.Context, method string, req, resp proto.Message) error {
	return callRetry(ctx, d.c, method, d.token, req, resp)
}

// callRetry calls method, again (up to 20 times, backing off) while qpcd
// answers unavailable: on PostgreSQL, setting up many devices and joining
// them to one channel at once makes serialization conflicts qpcd reports
// so ("retry shortly"), as a real client would retry them.
func callRetry(ctx context.Context, c *rpcclient.Client, method, token string, req, resp proto.Message) error {
	for attempt := 1; ; attempt++ {
		err := c.Call(ctx, method, token, req, resp)
		var se *wire.StatusError
		if err == nil || attempt == 20 || !errors.As(err, &se) || se.Code != qpcv1.Status_STATUS_UNAVAILABLE {
			return err
		}
		wait := max(se.RetryAfter, time.Duration(attempt)*10*time.Millisecond)
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return err
		}
	}
}

// runEnqueue measures the durable delivery path: o.clients senders enqueue
// o.size-byte MLS application messages into o.channels group channels
// (sender i into channel i%o.channels; each acknowledged only after its
// transaction is durably committed), o.receivers devices long-poll with FetchWait and Ack.
func runEnqueue(ctx context.Context, o options, stderr io.Writer) (report, error) {
	addr, pin := o.addr, o.pin
	if o.serve {
		srv, stop, err := startInProcess(ctx, o)
		if err != nil {
			return report{}, err
		}
		defer stop()
		addr, pin = srv.QUICAddr(), srv.CertFingerprint()
	} else if pin == "" {
		p, err := pinFromDataDir(o.dataDir)
		if err != nil {
			return report{}, err
		}
		pin = p
	}
	run := make([]byte, 3)
	_, _ = rand.Read(run)
	prefix := "b" + hex.EncodeToString(run)

	setup, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	devs := make([]*device, o.clients+o.receivers)
	var wg sync.WaitGroup
	var setupErr error
	var mu sync.Mutex
	sem := make(chan struct{}, 16)
	for i := range devs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			name := fmt.Sprintf("%s-s%d", prefix, i)
			if i >= o.clients {
				name = fmt.Sprintf("%s-r%d", prefix, i-o.clients)
			}
			d, err := newDevice(setup, addr, pin, name, 0)
			mu.Lock()
			defer mu.Unlock()
			if err != nil && setupErr == nil {
				setupErr = fmt.Errorf("register %s: %w (is limits.rate_limit raised? QPC_LIMITS_RATE_LIMIT=1000000 QPC_LIMITS_RATE_BURST=1000000; for long or large runs also QPC_LIMITS_BYTE_RATE=1073741824 QPC_LIMITS_BYTE_BURST=1073741824 QPC_QUOTA_MESSAGES=0 QPC_QUOTA_MESSAGE_BYTES=0)", name, err)
			}
			devs[i] = d
		}()
	}
	wg.Wait()
	defer func() {
		for _, d := range devs {
			if d != nil {
				_ = d.c.Close()
			}
		}
	}()
	if setupErr != nil {
		return report{}, setupErr
	}
	senders, receivers := devs[:o.clients], devs[o.clients:]
	owner := receivers[0]
	group := make([]byte, 32)
	_, _ = rand.Read(group)
	var refs []*qpcv1.MemberRef
	for _, d := range devs {
		if d != owner {
			refs = append(refs, &qpcv1.MemberRef{AccountName: d.name})
		}
	}
	channels := make([][]byte, max(o.channels, 1))
	groups := make([][]byte, len(channels))
	for c := range channels {
		var cr qpcv1.CreateGroupChannelResponse
		gid := group
		if c > 0 {
			gid = make([]byte, 32)
			_, _ = rand.Read(gid)
		}
		groups[c] = gid
		if err := owner.call(setup, server.MethodCreateGroupChannel, &qpcv1.CreateGroupChannelRequest{GroupId: gid}, &cr); err != nil {
			return report{}, fmt.Errorf("create channel: %w", err)
		}
		channels[c] = cr.GetChannel().GetChannelId()
		for rest := refs; len(rest) > 0; {
			n := min(len(rest), 100)
			if err := owner.call(setup, server.MethodAddMembers, &qpcv1.AddMembersRequest{ChannelId: channels[c], Members: rest[:n]}, &qpcv1.AddMembersResponse{}); err != nil {
				return report{}, fmt.Errorf("add members: %w (against an external qpcd, raise QPC_INVITATIONS_MAX_PER_HOUR and QPC_INVITATIONS_MAX_PENDING)", err)
			}
			rest = rest[n:]
		}
	}
	// Joining is by consent: every other account accepts its invitations
	// and acknowledges the notices, so that long polls start quiet.
	for _, d := range devs {
		if d != owner {
			if err := acceptAll(setup, d); err != nil {
				return report{}, fmt.Errorf("%s joins: %w", d.name, err)
			}
		}
	}

	w := newWindow(o.warmup, o.duration, o.messages)
	p := newPacer(o.rate)
	var rpcLat, delLat samples
	var errs, sent, delivered atomic.Int64
	var firstErr atomic.Value

	// Receivers: FetchWait, record latency from the send time carried in
	// the ciphertext, Ack.
	rctx, rstop := context.WithCancel(ctx)
	defer rstop()
	var rwg sync.WaitGroup
	for _, d := range receivers {
		rwg.Add(1)
		go func() {
			defer rwg.Done()
			receive(rctx, d, w, &delLat, &delivered)
		}()
	}

	serverPID := o.serverPID
	if o.serve {
		serverPID = 0 // the server is this process
	}
	cpu := startCPU(serverPID)
	side := startSide(serverPID, o.cpuComm, o.cpuTree)
	var swg sync.WaitGroup
	for i, d := range senders {
		swg.Add(1)
		go func() {
			defer swg.Done()
			channel, group := channels[i%len(channels)], groups[i%len(channels)]
			body := make([]byte, o.size)
			_, _ = rand.Read(body)
			var mine []time.Duration
			defer func() { rpcLat.add(mine...) }()
			for n := 0; w.running() && ctx.Err() == nil; n++ {
				at, ok := p.wait(w.stop)
				if !ok {
					return
				}
				binary.BigEndian.PutUint64(body, uint64(at.UnixNano()))
				msg, err := (&mls.MLSMessage{Version: mls.ProtocolVersionMLS10, WireFormat: mls.WireFormatPrivateMessage,
					PrivateMessage: &mls.PrivateMessage{GroupID: group, ContentType: mls.ContentTypeApplication,
						EncryptedSenderData: body[:28], Ciphertext: body}}).Marshal()
				if err != nil {
					firstErr.CompareAndSwap(nil, err.Error())
					errs.Add(1)
					return
				}
				acked, err := send(ctx, d, channel, msg, o.batch)
				if err != nil && ctx.Err() == nil {
					errs.Add(int64(o.batch - acked))
					firstErr.CompareAndSwap(nil, fmt.Sprintf("sender %d: %v", i, err))
				}
				if acked == 0 {
					continue
				}
				sent.Add(int64(acked))
				lat := time.Since(at)
				counted := false
				for range acked {
					counted = w.count(at)
				}
				if counted {
					mine = append(mine, lat)
				}
			}
		}()
	}
	swg.Wait()
	stopped := time.Now()
	cpuPerReq := 0.0
	if o.serve || o.serverPID > 0 {
		cpuPerReq = cpu.perRequest(sent.Load())
	}
	serverCPU, commUsed, treeUsed := side.used()
	// Let receivers catch up with everything sent (bounded).
	want := sent.Load() * int64(len(receivers))
	deadline := time.Now().Add(10 * time.Second)
	for delivered.Load() < want && time.Now().Before(deadline) && ctx.Err() == nil {
		time.Sleep(20 * time.Millisecond)
	}
	rstop()
	rwg.Wait()

	r := report{Mode: "enqueue", Clients: o.clients, Receivers: o.receivers, Size: o.size, TargetRate: o.rate,
		Seconds: w.seconds(stopped), Requests: w.counted(), Errors: errs.Load(), RPC: rpcLat.summary(),
		Delivery: delLat.summary(), ServerInPro: o.serve, CPUPerReq: cpuPerReq,
		Channels: len(channels), Batch: o.batch, Sent: sent.Load(), ServerCPU: serverCPU, CommCPU: commUsed, TreeCPU: treeUsed}
	if n := sent.Load(); n > 0 {
		r.ServerCPUPerReq = serverCPU / float64(n)
		r.CommCPUPerReq = commUsed / float64(n)
		r.TreeCPUPerReq = treeUsed / float64(n)
	}
	r.Delivered = int64(r.Delivery.Count)
	r.Throughput = float64(r.Requests) / r.Seconds
	if v, ok := firstErr.Load().(string); ok {
		r.FirstError = v
		fmt.Fprintln(stderr, "qpc-bench: first error:", v)
	}
	if got := delivered.Load(); got < want {
		fmt.Fprintf(stderr, "qpc-bench: receivers got %d of %d deliveries\n", got, want)
	}
	return finish(r), nil
}

// send enqueues msg into channel: alone with Enqueue (batch 1), or batch
// copies of it (each under its own message id) with one EnqueueBatch. It
// returns how many were acknowledged, and the first error.
func send(ctx context.Context, d *device, channel, msg []byte, batch int) (int, error) {
	if batch == 1 {
		var r qpcv1.EnqueueResponse
		if err := d.call(ctx, server.MethodEnqueue, &qpcv1.EnqueueRequest{ChannelId: channel, MessageId: newMessageID(), MlsMessage: msg}, &r); err != nil {
			return 0, err
		}
		return 1, nil
	}
	req := &qpcv1.EnqueueBatchRequest{Items: make([]*qpcv1.EnqueueRequest, batch)}
	for k := range req.Items {
		req.Items[k] = &qpcv1.EnqueueRequest{ChannelId: channel, MessageId: newMessageID(), MlsMessage: msg}
	}
	var r qpcv1.EnqueueBatchResponse
	if err := d.call(ctx, server.MethodEnqueueBatch, req, &r); err != nil {
		return 0, err
	}
	ok := 0
	var first error
	for k, it := range r.GetResults() {
		if it.GetStatus() == qpcv1.Status_STATUS_OK {
			ok++
		} else if first == nil {
			first = fmt.Errorf("item %d: %v: %s", k, it.GetStatus(), it.GetMessage())
		}
	}
	if len(r.GetResults()) != batch && first == nil {
		first = fmt.Errorf("%d results for %d items", len(r.GetResults()), batch)
	}
	return ok, first
}

// acceptAll accepts the device's pending invitations and acknowledges its
// inbox (the invitation notices).
func acceptAll(ctx context.Context, d *device) error {
	var li qpcv1.ListInvitationsResponse
	if err := d.call(ctx, server.MethodListInvitations, &qpcv1.ListInvitationsRequest{}, &li); err != nil {
		return err
	}
	for _, in := range li.GetInvitations() {
		if err := d.call(ctx, server.MethodAcceptInvitation, &qpcv1.AcceptInvitationRequest{InvitationId: in.GetInvitationId()}, &qpcv1.AcceptInvitationResponse{}); err != nil {
			return err
		}
	}
	for {
		var f qpcv1.FetchResponse
		if err := d.call(ctx, server.MethodFetch, &qpcv1.FetchRequest{Limit: 1000}, &f); err != nil {
			return err
		}
		var inbox uint64
		for _, it := range f.GetInbox() {
			inbox = max(inbox, it.GetSeq())
		}
		if inbox == 0 {
			return nil
		}
		if err := d.call(ctx, server.MethodAck, &qpcv1.AckRequest{InboxSeq: inbox}, &qpcv1.AckResponse{}); err != nil {
			return err
		}
	}
}

// receive long-polls with FetchWait from its own read-ahead position and
// acknowledges at most every ackEvery, as a client that batches its
// acknowledgements does (each Ack is a database write).
func receive(ctx context.Context, d *device, w *window, lat *samples, delivered *atomic.Int64) {
	const ackEvery = 250 * time.Millisecond
	var m mls.MLSMessage
	pos := map[string]uint64{}
	acked := map[string]uint64{}
	lastAck := time.Now()
	for ctx.Err() == nil {
		req := &qpcv1.FetchWaitRequest{TimeoutMs: 2000, Limit: 1000}
		for ch, seq := range pos {
			req.After = append(req.After, &qpcv1.ChannelCursor{ChannelId: []byte(ch), Seq: seq})
		}
		var f qpcv1.FetchResponse
		if err := d.call(ctx, server.MethodFetchWait, req, &f); err != nil {
			if ctx.Err() != nil {
				return
			}
			time.Sleep(10 * time.Millisecond)
			continue
		}
		now := time.Now()
		var mine []time.Duration
		for _, msg := range f.GetMessages() {
			pos[string(msg.GetChannelId())] = max(pos[string(msg.GetChannelId())], msg.GetSeq())
			if msg.GetEvent() != nil {
				continue // a membership event the server wrote at setup
			}
			delivered.Add(1)
			if err := m.Unmarshal(msg.GetMlsMessage()); err != nil || m.PrivateMessage == nil || len(m.PrivateMessage.Ciphertext) < 8 {
				continue
			}
			at := time.Unix(0, int64(binary.BigEndian.Uint64(m.PrivateMessage.Ciphertext)))
			if !at.Before(w.start) && (w.end.IsZero() || !at.After(w.end)) {
				mine = append(mine, now.Sub(at))
			}
		}
		lat.add(mine...)
		if time.Since(lastAck) >= ackEvery {
			var cursors []*qpcv1.ChannelCursor
			for ch, seq := range pos {
				if acked[ch] < seq {
					cursors = append(cursors, &qpcv1.ChannelCursor{ChannelId: []byte(ch), Seq: seq})
				}
			}
			if len(cursors) > 0 && d.call(ctx, server.MethodAck, &qpcv1.AckRequest{Cursors: cursors}, &qpcv1.AckResponse{}) == nil {
				for _, c := range cursors {
					acked[string(c.GetChannelId())] = c.GetSeq()
				}
			}
			lastAck = time.Now()
		}
	}
}

// newDevice registers and logs in a device on its own connection; keep is
// its QUIC keep-alive period (0: the transport's default, 15 s).
func newDevice(ctx context.Context, addr, pin, name string, keep time.Duration) (*device, error) {
	c, err := rpcclient.Dial(ctx, addr, transport.DialOptions{PinSHA256: pin, KeepAlive: keep})
	if err != nil {
		return nil, err
	}
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	var reg qpcv1.RegisterResponse
	if err := callRetry(ctx, c, server.MethodRegister, "", &qpcv1.RegisterRequest{AccountName: name, SignatureKey: pub, DeviceName: "qpc-bench"}, &reg); err != nil {
		_ = c.Close()
		return nil, err
	}
	var ch qpcv1.LoginChallengeResponse
	if err := callRetry(ctx, c, server.MethodLoginChallenge, "", &qpcv1.LoginChallengeRequest{DeviceId: reg.GetDeviceId()}, &ch); err != nil {
		_ = c.Close()
		return nil, err
	}
	var lr qpcv1.LoginResponse
	if err := callRetry(ctx, c, server.MethodLogin, "", &qpcv1.LoginRequest{DeviceId: reg.GetDeviceId(), Nonce: ch.GetNonce(),
		Signature: ed25519.Sign(priv, auth.LoginMessage(reg.GetDeviceId(), ch.GetNonce()))}, &lr); err != nil {
		_ = c.Close()
		return nil, err
	}
	return &device{c: c, name: name, id: reg.GetDeviceId(), token: lr.GetTokens().GetAccessToken()}, nil
}

// startInProcess runs qpcd (server.New + Run) on loopback with rate limits
// out of the way; stop drains it and removes a temporary data dir.
func startInProcess(ctx context.Context, o options) (*server.Server, func(), error) {
	dir := o.serveDir
	tmp := dir == ""
	if tmp {
		d, err := os.MkdirTemp("", "qpc-bench-")
		if err != nil {
			return nil, nil, err
		}
		dir = d
	}
	cfg := config.Default()
	cfg.DataDir = dir
	cfg.Listen = "127.0.0.1:0"
	cfg.OpsListen = ""
	if o.mode == "idle" {
		// Idle mode reads the server's metrics and profiles.
		cfg.OpsListen, cfg.OpsPprof = "127.0.0.1:0", "on"
		cfg.Limits.MaxConnections = max(cfg.Limits.MaxConnections, o.clients+64)
	}
	cfg.Limits.RateLimit = 1e9
	cfg.Limits.RateBurst = 1 << 30
	cfg.Limits.ByteRate = 1 << 40
	cfg.Limits.ByteBurst = 1 << 40
	cfg.Quota.MessageBytes, cfg.Quota.Messages = 0, 0 // a long run sends more than a week of use
	cfg.Limits.MaxStreamsPerConn = 1000
	// Every bench client connects from loopback: one address.
	cfg.Limits.MaxConnectionsPerAddress = cfg.Limits.MaxConnections
	// The owner invites every other bench account into every channel.
	cfg.Invitations.MaxPerHour = 1 << 30
	cfg.Invitations.MaxPending = 1 << 30
	if err := cfg.Validate(); err != nil {
		return nil, nil, err
	}
	srv, err := server.New(ctx, server.Options{Config: cfg, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return nil, nil, err
	}
	rctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(rctx) }()
	return srv, func() {
		cancel()
		<-done
		if tmp {
			_ = os.RemoveAll(dir)
		}
	}, nil
}

// pinFromDataDir reads the dev certificate qpcd generated in its data dir.
func pinFromDataDir(dir string) (string, error) {
	path := filepath.Join(dir, config.DefaultTLSCertFile)
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("%w: read %s: %v (pass -pin with qpcd's cert_sha256)", errNoPin, path, err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		return "", fmt.Errorf("%w: %s holds no PEM certificate", errNoPin, path)
	}
	return transport.Fingerprint(blk.Bytes), nil
}

// newMessageID returns a time-ordered (version 7) UUID, as the qpc client
// does: ids that sort by time keep the server's idempotency index appending.
func newMessageID() string { return uuid.Must(uuid.NewV7()).String() }
