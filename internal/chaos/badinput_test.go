package chaos

import (
	"context"
	"encoding/binary"
	"fmt"
	mrand "math/rand/v2"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/quicprochat/quicprochat/internal/rpcclient"
	"github.com/quicprochat/quicprochat/internal/wire"
	"github.com/quicprochat/quicprochat/internal/wire/qpcv1"
)

// badCase is one kind of malformed stream and the typed statuses that may
// answer it.
type badCase struct {
	name  string
	frame func(rng *mrand.Rand, token string) []byte
	want  []qpcv1.Status
}

func lengthPrefixed(body []byte) []byte { return wire.AppendFrame(nil, body) }

func envelope(version uint32, method, token string, body []byte) []byte {
	b, _ := proto.Marshal(&qpcv1.Request{Version: version, Method: method, RequestId: 7, AccessToken: token, Body: body})
	return lengthPrefixed(b)
}

func randomBytes(rng *mrand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	return b
}

func marshal(m proto.Message) []byte { b, _ := proto.Marshal(m); return b }

var (
	invalidArg  = []qpcv1.Status{qpcv1.Status_STATUS_INVALID_ARGUMENT}
	garbageWant = []qpcv1.Status{qpcv1.Status_STATUS_INVALID_ARGUMENT, qpcv1.Status_STATUS_UNSUPPORTED_VERSION}
)

var badCases = []badCase{
	{"garbage body", func(rng *mrand.Rand, _ string) []byte { return lengthPrefixed(randomBytes(rng, 1+rng.IntN(2000))) }, garbageWant},
	{"huge length prefix", func(rng *mrand.Rand, _ string) []byte {
		b := binary.BigEndian.AppendUint32(nil, 0xffffffff-uint32(rng.IntN(1000)))
		return append(b, randomBytes(rng, 64)...)
	}, []qpcv1.Status{qpcv1.Status_STATUS_RESOURCE_EXHAUSTED}},
	{"length just over the cap", func(rng *mrand.Rand, _ string) []byte {
		return append(binary.BigEndian.AppendUint32(nil, wire.DefaultMaxFrame+1<<20), randomBytes(rng, 512)...)
	}, []qpcv1.Status{qpcv1.Status_STATUS_RESOURCE_EXHAUSTED}},
	{"truncated frame", func(rng *mrand.Rand, _ string) []byte {
		return append(binary.BigEndian.AppendUint32(nil, 4000), randomBytes(rng, rng.IntN(100))...)
	}, invalidArg},
	{"empty frame", func(*mrand.Rand, string) []byte { return binary.BigEndian.AppendUint32(nil, 0) }, invalidArg},
	{"short header", func(*mrand.Rand, string) []byte { return []byte{0, 1} }, invalidArg},
	{"wrong version", func(rng *mrand.Rand, _ string) []byte {
		return envelope(wire.ProtocolVersion+1+uint32(rng.IntN(1000)), "Ping", "", nil)
	}, []qpcv1.Status{qpcv1.Status_STATUS_UNSUPPORTED_VERSION}},
	{"unknown method", func(rng *mrand.Rand, _ string) []byte {
		return envelope(wire.ProtocolVersion, fmt.Sprintf("NoSuchMethod%d", rng.IntN(1e6)), "", nil)
	}, []qpcv1.Status{qpcv1.Status_STATUS_NOT_FOUND}},
	{"truncated protobuf body", func(rng *mrand.Rand, _ string) []byte {
		b := marshal(&qpcv1.RegisterRequest{AccountName: "truncated", SignatureKey: randomBytes(rng, 32), DeviceName: "d"})
		cut := b[:1+rng.IntN(len(b)-2)]
		if proto.Unmarshal(cut, &qpcv1.RegisterRequest{}) == nil { // a clean cut between fields parses
			cut = append(cut, 0x12) // a field tag with no length
		}
		return envelope(wire.ProtocolVersion, "Register", "", cut)
	}, invalidArg},
	{"truncated envelope", func(rng *mrand.Rand, _ string) []byte {
		full := envelope(wire.ProtocolVersion, "Ping", "", marshal(&qpcv1.PingRequest{}))[wire.FrameHeaderLen:]
		cut := full[:1+rng.IntN(len(full)-1)]
		if proto.Unmarshal(cut, &qpcv1.Request{}) == nil { // a clean cut between fields parses
			cut = append(cut, 0x0a) // a field tag with no length
		}
		return lengthPrefixed(cut)
	}, garbageWant},
	{"enqueue with a 3-byte channel id", func(rng *mrand.Rand, tok string) []byte {
		return envelope(wire.ProtocolVersion, "Enqueue", tok, marshal(&qpcv1.EnqueueRequest{ChannelId: randomBytes(rng, 3), MessageId: "x", MlsMessage: []byte{1}}))
	}, invalidArg},
	{"enqueue with a garbage MLS message", func(rng *mrand.Rand, tok string) []byte {
		return envelope(wire.ProtocolVersion, "Enqueue", tok, marshal(&qpcv1.EnqueueRequest{ChannelId: randomBytes(rng, 16), MessageId: "x", MlsMessage: randomBytes(rng, 200)}))
	}, []qpcv1.Status{qpcv1.Status_STATUS_INVALID_ARGUMENT, qpcv1.Status_STATUS_NOT_FOUND, qpcv1.Status_STATUS_PERMISSION_DENIED}},
	{"register with invalid UTF-8", func(rng *mrand.Rand, _ string) []byte {
		b := marshal(&qpcv1.RegisterRequest{AccountName: "ok", SignatureKey: randomBytes(rng, 32), DeviceName: "d"})
		return envelope(wire.ProtocolVersion, "Register", "", append(b, 0x1a, 2, 0xff, 0xfe)) // device_name again, not UTF-8
	}, invalidArg},
	{"upload of garbage KeyPackages", func(rng *mrand.Rand, tok string) []byte {
		return envelope(wire.ProtocolVersion, "UploadKeyPackages", tok, marshal(&qpcv1.UploadKeyPackagesRequest{KeyPackages: [][]byte{randomBytes(rng, 300)}}))
	}, invalidArg},
	{"fetch with an oversized cursor list", func(rng *mrand.Rand, tok string) []byte {
		after := make([]*qpcv1.ChannelCursor, 1001)
		for i := range after {
			after[i] = &qpcv1.ChannelCursor{ChannelId: randomBytes(rng, 16)}
		}
		return envelope(wire.ProtocolVersion, "Fetch", tok, marshal(&qpcv1.FetchRequest{After: after}))
	}, invalidArg},
	{"bad token", func(rng *mrand.Rand, _ string) []byte {
		return envelope(wire.ProtocolVersion, "WhoAmI", string(randomBytes(rng, 40)), nil)
	}, []qpcv1.Status{qpcv1.Status_STATUS_UNAUTHENTICATED, qpcv1.Status_STATUS_INVALID_ARGUMENT}},
}

// serverFootprint samples what must come back to baseline.
type serverFootprint struct {
	goroutines, conns float64
	rss               int64
}

func footprint(t *testing.T, n *node) serverFootprint {
	t.Helper()
	m, err := n.metrics()
	if err != nil {
		t.Fatal(err)
	}
	rss, err := rssOf(n.pid())
	if err != nil {
		t.Fatal(err)
	}
	return serverFootprint{goroutines: m["go_goroutines"], conns: m["qpcd_connections"], rss: rss}
}

// Bad input at scale: a bounded loop of malformed streams over several
// connections. qpcd stays up, answers each with its typed status, and its
// goroutines, connections and RSS come back near their baseline.
func TestChaosBadInput(t *testing.T) {
	forEachBackend(t, func(t *testing.T, backend string) {
		streams := pick(10000, 200000)
		const workers = 8
		n := newNode(t, backend)
		n.start()
		c := n.mustDial(t)
		d, err := registerDevice(c, "badinput")
		if err != nil {
			t.Fatal(err)
		}
		_ = c.Close()
		waitFor(t, 10*time.Second, "no connections before the baseline", func() bool { return footprint(t, n).conns == 0 })
		base := footprint(t, n)

		var mu sync.Mutex
		counts := map[string]map[qpcv1.Status]int{}
		var wrong []string
		var peak serverFootprint
		var wg sync.WaitGroup
		begin := time.Now()
		for w := range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				rng := mrand.New(mrand.NewPCG(uint64(w), 23))
				var cl *rpcclient.Client
				for i := w; i < streams; i += workers {
					if cl == nil || i%(workers*250) == w { // new connections now and then
						if cl != nil {
							_ = cl.Close()
						}
						ctx, cancel := callCtx(10 * time.Second)
						cl, err = n.dial(ctx, "")
						cancel()
						if err != nil {
							mu.Lock()
							wrong = append(wrong, fmt.Sprintf("dial: %v", err))
							mu.Unlock()
							return
						}
					}
					bc := badCases[i%len(badCases)]
					ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
					resp, err := cl.DoFrame(ctx, bc.frame(rng, d.token))
					cancel()
					mu.Lock()
					if counts[bc.name] == nil {
						counts[bc.name] = map[qpcv1.Status]int{}
					}
					switch {
					case err != nil:
						wrong = append(wrong, fmt.Sprintf("%s: no typed answer: %v", bc.name, err))
						_ = cl.Close()
						cl = nil
					default:
						counts[bc.name][resp.GetStatus()]++
						ok := false
						for _, s := range bc.want {
							ok = ok || resp.GetStatus() == s
						}
						if !ok {
							wrong = append(wrong, fmt.Sprintf("%s: %s %q, want one of %v", bc.name, resp.GetStatus(), resp.GetMessage(), bc.want))
						}
					}
					mu.Unlock()
				}
				if cl != nil {
					_ = cl.Close()
				}
			}()
		}
		// Sample the peak while the flood runs.
		flood := make(chan struct{})
		go func() { wg.Wait(); close(flood) }()
		for done := false; !done; {
			select {
			case <-flood:
				done = true
			case <-time.After(100 * time.Millisecond):
				if f, err := n.metrics(); err == nil {
					peak.goroutines = max(peak.goroutines, f["go_goroutines"])
					peak.conns = max(peak.conns, f["qpcd_connections"])
				}
				if r, err := rssOf(n.pid()); err == nil {
					peak.rss = max(peak.rss, r)
				}
			}
		}
		took := time.Since(begin)
		if r, err := rssOf(n.pid()); err == nil {
			peak.rss = max(peak.rss, r)
		}
		if !n.alive() {
			t.Fatal("qpcd died under bad input")
		}
		if len(wrong) > 0 {
			t.Errorf("%d of %d malformed streams got an unexpected answer; first: %s", len(wrong), streams, wrong[0])
		}
		// Still serving: a well-formed call works.
		c = n.mustDial(t)
		if err := d.call(c, 10*time.Second, "WhoAmI", &qpcv1.WhoAmIRequest{}, &qpcv1.WhoAmIResponse{}); err != nil {
			t.Fatalf("WhoAmI after the flood: %v", err)
		}
		_ = c.Close()
		// Back near baseline: goroutines and connections within a deadline;
		// RSS within 1.5 x baseline + 32 MiB (the Go runtime returns freed
		// heap to the OS gradually, so exact equality is not the promise).
		rssLimit := base.rss*3/2 + 32<<20
		var after serverFootprint
		settle := time.Now()
		waitFor(t, 30*time.Second, "goroutines, connections and RSS back near baseline", func() bool {
			after = footprint(t, n)
			return after.conns == 0 && after.goroutines <= base.goroutines+5 && after.rss <= rssLimit
		})
		summary(t, "%d malformed streams in %s over %d workers (%d kinds), unexpected answers %d; goroutines %.0f -> peak %.0f -> %.0f, "+
			"RSS %.1f -> peak %.1f -> %.1f MiB, connections peak %.0f -> %.0f, settled in %s",
			streams, took.Round(time.Millisecond), workers, len(badCases), len(wrong), base.goroutines, peak.goroutines, after.goroutines,
			mib(base.rss), mib(peak.rss), mib(after.rss), peak.conns, after.conns, time.Since(settle).Round(time.Millisecond))
		t.Logf("answers by kind: %v", counts)
	})
}

func mib(b int64) float64 { return float64(b) / (1 << 20) }
