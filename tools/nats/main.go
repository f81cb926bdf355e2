// Command natsbench is the NATS JetStream peer of qpc-bench's durable
// enqueue, run by scripts/bench-peers.sh: N publishers, each on its own
// connection, publish 1 KiB messages into a file-backed stream and wait for
// every acknowledgement (closed loop); one consumer receives everything and
// acknowledges in batches, as qpc-bench's receiver does. It reports what
// qpc-bench reports, in the same JSON shape: messages/s over the measured
// window, ack and delivery latency percentiles, and CPU µs per message
// summed over this process and the nats-server process (-server-pid).
//
//	natsbench -url nats://127.0.0.1:4222 -server-pid PID -n 32 -duration 15s -warmup 3s -json r.json
//
// Whether an acknowledgement means fsynced is the server's setting
// (`jetstream { sync_interval: always }`), not this program's.
package main

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout)
	stop()
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "natsbench:", err)
		os.Exit(1)
	}
}

type options struct {
	url       string
	senders   int
	size      int
	duration  time.Duration
	warmup    time.Duration
	serverPID int
	jsonOut   string
	stream    string
}

// summary is a latency distribution, in qpc-bench's JSON shape.
type summary struct {
	Count int     `json:"count"`
	P50   float64 `json:"p50_ms"`
	P99   float64 `json:"p99_ms"`
	P999  float64 `json:"p999_ms"`
	Max   float64 `json:"max_ms"`
}

// report carries the fields of qpc-bench's report that bench-peers.sh reads.
type report struct {
	Mode       string  `json:"mode"`
	Clients    int     `json:"clients"`
	Size       int     `json:"size_bytes"`
	Seconds    float64 `json:"seconds"`
	Requests   int64   `json:"requests"`
	Errors     int64   `json:"errors"`
	Throughput float64 `json:"throughput_per_s"`
	RPC        summary `json:"rpc_latency"`
	Delivered  int64   `json:"delivered"`
	Delivery   summary `json:"delivery_latency"`
	CPUPerReq  float64 `json:"cpu_us_per_request"`
	Sent       int64   `json:"sent"`
	ServerCPU  float64 `json:"server_cpu_us"`
	FirstError string  `json:"first_error,omitempty"`
}

func parse(args []string) (options, error) {
	var o options
	fs := flag.NewFlagSet("natsbench", flag.ContinueOnError)
	fs.StringVar(&o.url, "url", nats.DefaultURL, "nats-server URL (loopback)")
	fs.IntVar(&o.senders, "n", 32, "concurrent publishers, each on its own connection, each awaiting every ack")
	fs.IntVar(&o.size, "size", 1024, "payload bytes")
	fs.DurationVar(&o.duration, "duration", 10*time.Second, "measured span (after warm-up)")
	fs.DurationVar(&o.warmup, "warmup", 2*time.Second, "run this long before measuring")
	fs.IntVar(&o.serverPID, "server-pid", 0, "nats-server's process id, to add its CPU time to the per-message figure (Linux)")
	fs.StringVar(&o.jsonOut, "json", "", "also write the result as JSON (a one-element array, as qpc-bench) to this file")
	fs.StringVar(&o.stream, "stream", "BENCH", "stream name; the stream is deleted and created afresh for each run")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	switch {
	case fs.NArg() > 0:
		return o, fmt.Errorf("unexpected arguments %q", fs.Args())
	case o.senders < 1 || o.senders > 4096:
		return o, fmt.Errorf("-n %d: want 1..4096", o.senders)
	case o.size < 16 || o.size > 1<<20:
		return o, fmt.Errorf("-size %d: want 16..1048576", o.size)
	case o.duration <= 0:
		return o, errors.New("-duration must be positive")
	}
	return o, nil
}

func run(ctx context.Context, args []string, stdout io.Writer) error {
	o, err := parse(args)
	if err != nil {
		return err
	}
	admin, err := nats.Connect(o.url, nats.Name("natsbench-admin"))
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer admin.Close()
	js, err := jetstream.New(admin)
	if err != nil {
		return err
	}
	setup, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if err := js.DeleteStream(setup, o.stream); err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
		return fmt.Errorf("delete stream: %w", err)
	}
	subject := strings.ToLower(o.stream)
	stream, err := js.CreateStream(setup, jetstream.StreamConfig{
		Name: o.stream, Subjects: []string{subject + ".>"}, Storage: jetstream.FileStorage,
	})
	if err != nil {
		return fmt.Errorf("create stream: %w", err)
	}
	defer func() {
		dctx, dcancel := context.WithTimeout(context.Background(), 30*time.Second)
		_ = js.DeleteStream(dctx, o.stream)
		dcancel()
	}()
	// One consumer receiving everything; it acknowledges the latest message
	// (AckAll) at most every 250 ms, as qpc-bench's receiver advances its
	// cursor, so acknowledgements are a small share of the work.
	cons, err := stream.CreateOrUpdateConsumer(setup, jetstream.ConsumerConfig{
		Durable: "receiver", AckPolicy: jetstream.AckAllPolicy, MaxAckPending: 1 << 20,
	})
	if err != nil {
		return fmt.Errorf("create consumer: %w", err)
	}

	pubs := make([]jetstream.JetStream, o.senders)
	for i := range pubs {
		nc, err := nats.Connect(o.url, nats.Name(fmt.Sprintf("natsbench-pub-%d", i)))
		if err != nil {
			return fmt.Errorf("connect publisher %d: %w", i, err)
		}
		defer nc.Close()
		if pubs[i], err = jetstream.New(nc); err != nil {
			return err
		}
	}

	start := time.Now()
	win := window{start: start.Add(o.warmup), end: start.Add(o.warmup + o.duration)}
	var ackLat, delLat samples
	var delivered atomic.Int64
	var lastAck atomic.Int64
	consumed, err := cons.Consume(func(m jetstream.Msg) {
		now := time.Now()
		delivered.Add(1)
		if d := m.Data(); len(d) >= 8 {
			at := time.Unix(0, int64(binary.BigEndian.Uint64(d)))
			if win.inside(at) {
				delLat.add(now.Sub(at))
			}
		}
		if t := lastAck.Load(); now.UnixNano()-t >= int64(250*time.Millisecond) && lastAck.CompareAndSwap(t, now.UnixNano()) {
			_ = m.Ack()
		}
	})
	if err != nil {
		return fmt.Errorf("consume: %w", err)
	}
	defer consumed.Stop()

	cpuStart, cpuOK := cpuOf(os.Getpid(), o.serverPID)
	serverStart, _ := cpuOf(o.serverPID)
	var sent, errs atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	for i, p := range pubs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			body := make([]byte, o.size)
			_, _ = rand.Read(body)
			subj := subject + "." + strconv.Itoa(i)
			var mine []time.Duration
			defer func() { ackLat.add(mine...) }()
			for ctx.Err() == nil {
				at := time.Now()
				if at.After(win.end) {
					return
				}
				binary.BigEndian.PutUint64(body, uint64(at.UnixNano()))
				if _, err := p.Publish(ctx, subj, body); err != nil {
					if ctx.Err() == nil {
						errs.Add(1)
						firstErr.CompareAndSwap(nil, err.Error())
					}
					continue
				}
				sent.Add(1)
				if win.inside(at) {
					mine = append(mine, time.Since(at))
				}
			}
		}()
	}
	wg.Wait()
	cpuEnd, cpuEndOK := cpuOf(os.Getpid(), o.serverPID)
	serverEnd, _ := cpuOf(o.serverPID)
	// Let the consumer catch up with everything published (bounded).
	deadline := time.Now().Add(10 * time.Second)
	for delivered.Load() < sent.Load() && time.Now().Before(deadline) && ctx.Err() == nil {
		time.Sleep(20 * time.Millisecond)
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	r := report{Mode: "nats-jetstream", Clients: o.senders, Size: o.size, Seconds: o.duration.Seconds(),
		Errors: errs.Load(), RPC: ackLat.summary(), Delivery: delLat.summary(), Sent: sent.Load(), Delivered: delivered.Load()}
	r.Requests = int64(r.RPC.Count)
	r.Throughput = float64(r.Requests) / r.Seconds
	if cpuOK && cpuEndOK && r.Sent > 0 {
		r.CPUPerReq = float64((cpuEnd - cpuStart).Microseconds()) / float64(r.Sent)
		r.ServerCPU = float64((serverEnd - serverStart).Microseconds())
	}
	if v, ok := firstErr.Load().(string); ok {
		r.FirstError = v
	}
	fmt.Fprintf(stdout, "natsbench: %d publishers, %d B: %.0f msg/s, ack p50/p99/p999 %.2f/%.2f/%.2f ms, delivery p50/p99/p999 %.2f/%.2f/%.2f ms, %.0f CPU µs/msg, %d errors, delivered %d of %d (GOMAXPROCS=%d)\n",
		o.senders, o.size, r.Throughput, r.RPC.P50, r.RPC.P99, r.RPC.P999, r.Delivery.P50, r.Delivery.P99, r.Delivery.P999,
		r.CPUPerReq, r.Errors, r.Delivered, r.Sent, runtime.GOMAXPROCS(0))
	if o.jsonOut != "" {
		b, _ := json.MarshalIndent([]report{r}, "", "  ")
		if err := os.WriteFile(o.jsonOut, append(b, '\n'), 0o644); err != nil {
			return err
		}
	}
	if r.Requests == 0 {
		return fmt.Errorf("no publish acknowledged (first error: %s)", r.FirstError)
	}
	return nil
}

// window is the measured span: messages sent inside it count.
type window struct{ start, end time.Time }

func (w window) inside(t time.Time) bool { return !t.Before(w.start) && !t.After(w.end) }

// samples collects latencies from many goroutines.
type samples struct {
	mu sync.Mutex
	d  []time.Duration
}

func (s *samples) add(d ...time.Duration) {
	s.mu.Lock()
	s.d = append(s.d, d...)
	s.mu.Unlock()
}

// summary returns nearest-rank percentiles, as qpc-bench computes them.
func (s *samples) summary() summary {
	s.mu.Lock()
	d := slices.Clone(s.d)
	s.mu.Unlock()
	if len(d) == 0 {
		return summary{}
	}
	slices.Sort(d)
	at := func(q float64) float64 {
		i := int(q*float64(len(d))+0.999999) - 1
		i = min(max(i, 0), len(d)-1)
		return float64(d[i]) / float64(time.Millisecond)
	}
	return summary{Count: len(d), P50: at(0.50), P99: at(0.99), P999: at(0.999), Max: float64(d[len(d)-1]) / float64(time.Millisecond)}
}

// cpuOf sums the user+system CPU time of the given processes (pid 0 is
// skipped) from /proc/PID/stat; ok is false if one cannot be read.
func cpuOf(pids ...int) (time.Duration, bool) {
	var sum time.Duration
	for _, pid := range pids {
		if pid <= 0 {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return 0, false
		}
		s := string(b)
		i := strings.LastIndexByte(s, ')') // the command name may hold spaces
		if i < 0 {
			return 0, false
		}
		f := strings.Fields(s[i+1:])
		if len(f) < 13 {
			return 0, false
		}
		u, err1 := strconv.ParseInt(f[11], 10, 64)
		st, err2 := strconv.ParseInt(f[12], 10, 64)
		if err1 != nil || err2 != nil {
			return 0, false
		}
		sum += time.Duration(u+st) * 10 * time.Millisecond // USER_HZ = 100
	}
	return sum, true
}
