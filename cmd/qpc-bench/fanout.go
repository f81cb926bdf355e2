package main

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/quicprochat/quicprochat/internal/mls"
	"github.com/quicprochat/quicprochat/internal/server"
	"github.com/quicprochat/quicprochat/internal/wire/qpcv1"
)

// fanoutReport is the fan-out step of -mode idle (-fanout N): one sender
// enqueues -fanout-messages messages, one at a time, into a group channel
// whose N other members are long-polling idle devices.
type fanoutReport struct {
	Receivers int `json:"receivers"`
	Messages  int `json:"messages"`
	// Receipt: from the moment the sender's Enqueue was sent to the moment
	// a receiver's FetchWait returned the message, over every receipt.
	Receipt summary `json:"receipt_latency"`
	// Last: per message, from its send to the last receiver's receipt;
	// LastByMessage lists them in sending order (ms), so a slow first
	// message or one hit by a pause shows as such.
	Last          summary   `json:"last_receipt_latency"`
	LastByMessage []float64 `json:"last_receipt_ms_by_message,omitempty"`
	// Enqueue: the sender's Enqueue round trip.
	Enqueue summary `json:"enqueue_latency"`
	// Missing receipts (a receiver that did not get a message within
	// fanoutWait).
	Missing int `json:"missing"`
	// qpcd's CPU over the step (waiting for the polls to be parked again
	// between messages included), per message and per receipt.
	ServerCPUPerMessageUs float64 `json:"server_cpu_us_per_message,omitempty"`
	ServerCPUPerReceiptUs float64 `json:"server_cpu_us_per_receipt,omitempty"`
	// qpc-bench's own CPU per receipt over the same window: the receivers
	// (and the sender) share the machine with qpcd, so the time to the last
	// receiver is bounded by both.
	ClientCPUPerReceiptUs float64 `json:"client_cpu_us_per_receipt,omitempty"`
	SetupSeconds          float64 `json:"setup_seconds"`
}

// fanoutWait bounds how long one message may take to reach every receiver.
const fanoutWait = 30 * time.Second

// fanoutMagic marks a fan-out message's ciphertext (then the run's tag
// and the message's number), so that receivers count no other message.
const fanoutMagic = 0x71706366616e6f75 // "qpcfanou"

// fanout is the state the receivers and the sender share.
type fanout struct {
	tag   uint64
	owner *device
	chID  []byte
	group []byte
	head  uint64 // the channel's head once every receiver joined

	mu     sync.Mutex
	sentAt []time.Time       // by message number; zero: not sent yet
	got    [][]time.Duration // receipts by message number
	done   chan struct{}     // closed when the current message reached every receiver
	want   int               // receivers
}

// newFanout creates the sender (an extra device, the channel's owner) and
// the group channel.
func newFanout(ctx context.Context, addr, pin, prefix string, keep time.Duration) (*fanout, error) {
	owner, err := newDevice(ctx, addr, pin, prefix+"-fanout-sender", keep)
	if err != nil {
		return nil, fmt.Errorf("fan-out sender: %w", err)
	}
	f := &fanout{owner: owner, group: make([]byte, 32)}
	_, _ = rand.Read(f.group)
	var tag [8]byte
	_, _ = rand.Read(tag[:])
	f.tag = binary.BigEndian.Uint64(tag[:])
	var cr qpcv1.CreateGroupChannelResponse
	if err := owner.call(ctx, server.MethodCreateGroupChannel, &qpcv1.CreateGroupChannelRequest{GroupId: f.group}, &cr); err != nil {
		return f, fmt.Errorf("fan-out: create channel: %w", err)
	}
	f.chID = cr.GetChannel().GetChannelId()
	return f, nil
}

// join makes every receiver a member (added by the owner, accepted by
// each receiver: the real RPCs) and notes the channel's head after the
// last join event. It runs before the receivers start to long-poll, so
// that the join events of 1 000 members do not wake the others 1 000
// times over, and the receivers then poll from the head on.
func (f *fanout) join(ctx context.Context, receivers []*device) error {
	f.want = len(receivers)
	for rest := receivers; len(rest) > 0; {
		n := min(len(rest), 100)
		refs := make([]*qpcv1.MemberRef, n)
		for i, d := range rest[:n] {
			refs[i] = &qpcv1.MemberRef{AccountName: d.name}
		}
		if err := f.owner.call(ctx, server.MethodAddMembers, &qpcv1.AddMembersRequest{ChannelId: f.chID, Members: refs}, &qpcv1.AddMembersResponse{}); err != nil {
			return fmt.Errorf("fan-out: add members: %w (raise QPC_INVITATIONS_MAX_PER_HOUR and QPC_INVITATIONS_MAX_PENDING)", err)
		}
		rest = rest[n:]
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	sem := make(chan struct{}, 16)
	for _, d := range receivers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			if err := acceptAll(ctx, d); err != nil {
				mu.Lock()
				firstErr = cmpErr(firstErr, fmt.Errorf("fan-out: %s joins: %w", d.name, err))
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if firstErr != nil {
		return firstErr
	}
	var lc qpcv1.ListChannelsResponse
	if err := f.owner.call(ctx, server.MethodListChannels, &qpcv1.ListChannelsRequest{}, &lc); err != nil {
		return fmt.Errorf("fan-out: list channels: %w", err)
	}
	for _, ch := range lc.GetChannels() {
		if string(ch.GetChannelId()) == string(f.chID) {
			f.head = ch.GetHeadSeq()
			return nil
		}
	}
	return errors.New("fan-out: the sender does not list its channel")
}

func cmpErr(old, new error) error {
	if old != nil {
		return old
	}
	return new
}

// body builds message k's MLS PrivateMessage: the ciphertext starts with
// the magic, the run's tag and k.
func (f *fanout) body(k int, size int) ([]byte, error) {
	ct := make([]byte, max(size, 24))
	_, _ = rand.Read(ct)
	binary.BigEndian.PutUint64(ct, fanoutMagic)
	binary.BigEndian.PutUint64(ct[8:], f.tag)
	binary.BigEndian.PutUint64(ct[16:], uint64(k))
	return (&mls.MLSMessage{Version: mls.ProtocolVersionMLS10, WireFormat: mls.WireFormatPrivateMessage,
		PrivateMessage: &mls.PrivateMessage{GroupID: f.group, ContentType: mls.ContentTypeApplication,
			EncryptedSenderData: ct[:28], Ciphertext: ct}}).Marshal()
}

// received notes what a receiver's FetchWait, returned at now, brought.
func (f *fanout) received(now time.Time, msgs []*qpcv1.ChannelMessage) {
	var m mls.MLSMessage
	for _, msg := range msgs {
		if msg.GetEvent() != nil || string(msg.GetChannelId()) != string(f.chID) {
			continue
		}
		if err := m.Unmarshal(msg.GetMlsMessage()); err != nil || m.PrivateMessage == nil || len(m.PrivateMessage.Ciphertext) < 24 {
			continue
		}
		ct := m.PrivateMessage.Ciphertext
		if binary.BigEndian.Uint64(ct) != fanoutMagic || binary.BigEndian.Uint64(ct[8:]) != f.tag {
			continue
		}
		k := int(binary.BigEndian.Uint64(ct[16:]))
		f.mu.Lock()
		if k < len(f.sentAt) && !f.sentAt[k].IsZero() {
			f.got[k] = append(f.got[k], now.Sub(f.sentAt[k]))
			if len(f.got[k]) == f.want && f.done != nil {
				close(f.done)
				f.done = nil
			}
		}
		f.mu.Unlock()
	}
}

// run sends messages one at a time: each once every receiver's poll is
// parked in qpcd again (qpcd_long_poll_waiters at least parked), the next
// after every receiver got the previous one.
func (f *fanout) run(ctx context.Context, o options, parked int, stdout io.Writer) (fanoutReport, error) {
	r := fanoutReport{Receivers: f.want, Messages: o.fanoutMessages}
	f.mu.Lock()
	f.sentAt = make([]time.Time, o.fanoutMessages)
	f.got = make([][]time.Duration, o.fanoutMessages)
	f.mu.Unlock()
	var enq, last []time.Duration
	if o.profileDir != "" {
		// qpcd's CPU profile over (about) the first messages.
		go func() {
			if err := saveProfile(ctx, o.ops, "/debug/pprof/profile?seconds=20", o.profileDir, "fanout-cpu.pb.gz"); err != nil {
				fmt.Fprintln(stdout, "qpc-bench: fan-out CPU profile:", err)
			}
		}()
	}
	cpu0, cpuErr := processCPU(o.serverPID)
	self0, selfErr := processCPU(os.Getpid())
	for k := range o.fanoutMessages {
		if err := waitParked(ctx, o.ops, parked); err != nil {
			return r, err
		}
		msg, err := f.body(k, o.size)
		if err != nil {
			return r, err
		}
		done := make(chan struct{})
		f.mu.Lock()
		f.done = done
		f.sentAt[k] = time.Now()
		at := f.sentAt[k]
		f.mu.Unlock()
		if err := f.owner.call(ctx, server.MethodEnqueue, &qpcv1.EnqueueRequest{ChannelId: f.chID, MessageId: newMessageID(), MlsMessage: msg}, &qpcv1.EnqueueResponse{}); err != nil {
			return r, fmt.Errorf("fan-out: enqueue %d: %w", k, err)
		}
		enq = append(enq, time.Since(at))
		t := time.NewTimer(fanoutWait)
		select {
		case <-done:
		case <-t.C:
		case <-ctx.Done():
		}
		t.Stop()
		f.mu.Lock()
		f.done = nil
		got := f.got[k]
		if len(got) > 0 {
			last = append(last, maxDuration(got))
			r.LastByMessage = append(r.LastByMessage, float64(maxDuration(got).Microseconds())/1000)
		}
		r.Missing += f.want - len(got)
		f.mu.Unlock()
		if ctx.Err() != nil {
			return r, ctx.Err()
		}
		if len(got) < f.want {
			fmt.Fprintf(stdout, "qpc-bench: fan-out message %d reached %d of %d receivers within %v\n", k, len(got), f.want, fanoutWait)
		}
	}
	if cpu1, err := processCPU(o.serverPID); o.serverPID > 0 && cpuErr == nil && err == nil {
		used := float64((cpu1 - cpu0).Microseconds())
		r.ServerCPUPerMessageUs = used / float64(o.fanoutMessages)
		r.ServerCPUPerReceiptUs = used / float64(max(o.fanoutMessages*f.want-r.Missing, 1))
	}
	if self1, err := processCPU(os.Getpid()); selfErr == nil && err == nil {
		r.ClientCPUPerReceiptUs = float64((self1 - self0).Microseconds()) / float64(max(o.fanoutMessages*f.want-r.Missing, 1))
	}
	var all []time.Duration
	f.mu.Lock()
	for _, g := range f.got {
		all = append(all, g...)
	}
	f.mu.Unlock()
	r.Receipt, r.Last, r.Enqueue = summarize(all), summarize(last), summarize(enq)
	if r.Missing > 0 {
		return r, fmt.Errorf("fan-out: %d receipts missing", r.Missing)
	}
	return r, nil
}

func maxDuration(d []time.Duration) time.Duration {
	var m time.Duration
	for _, x := range d {
		m = max(m, x)
	}
	return m
}

// waitParked waits until qpcd holds at least n long polls in its hub.
func waitParked(ctx context.Context, ops string, n int) error {
	deadline := time.Now().Add(time.Minute)
	for {
		s, err := scrape(ctx, ops)
		if err == nil && s.Waiters >= float64(n) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("fan-out: qpcd holds %v of %d long polls after a minute (%v)", s.Waiters, n, err)
		}
		if !sleepCtx(ctx, 20*time.Millisecond) { // polling qpcd's metrics
			return ctx.Err()
		}
	}
}

func printFanout(w io.Writer, r fanoutReport) {
	fmt.Fprintf(w, "  fan-out: %d messages to %d receivers each (set up in %.1f s): receipt p50/p99/max %.1f / %.1f / %.1f ms; last receiver p50/p99/max %.1f / %.1f / %.1f ms; enqueue p50 %.1f ms; %d missing",
		r.Messages, r.Receivers, r.SetupSeconds, r.Receipt.P50, r.Receipt.P99, r.Receipt.Max, r.Last.P50, r.Last.P99, r.Last.Max, r.Enqueue.P50, r.Missing)
	if r.ServerCPUPerMessageUs > 0 {
		fmt.Fprintf(w, "; qpcd CPU %.0f µs per message (%.1f µs per receipt)", r.ServerCPUPerMessageUs, r.ServerCPUPerReceiptUs)
	}
	if r.ClientCPUPerReceiptUs > 0 {
		fmt.Fprintf(w, "; qpc-bench CPU %.1f µs per receipt", r.ClientCPUPerReceiptUs)
	}
	fmt.Fprintln(w)
}
