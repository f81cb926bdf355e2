package delivery

import (
	"database/sql"
	"fmt"
	"os"
	"slices"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	dt "github.com/quicprochat/quicprochat/internal/delivery/deliverytest"
)

// BenchmarkEnqueueParallel: many concurrent senders into one group
// channel, 1 KiB messages; the store group-commits their transactions.
func BenchmarkEnqueueParallel(b *testing.B) {
	e := newEnv(&testing.T{}, func(o *Options) { o.MaxPayload = 1 << 20 })
	owner := e.dir.add("owner", "o1")
	g := groupID()
	ch, _, err := e.svc.CreateGroup(ctx, owner.Caller, g, 0)
	if err != nil {
		b.Fatal(err)
	}
	msg := dt.Application(g, 0, 1024)
	var n atomic.Int64
	b.SetParallelism(64)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := e.svc.Enqueue(ctx, owner.Caller, ch.ID, fmt.Sprintf("m%d", n.Add(1)), msg, nil); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkEnqueueTracing is one Enqueue under an RPC's server span, as
// qpcd runs it, with tracing off (no span at all: qpcd skips it), on with
// sampling 0 (a span context that records nothing) and on with sampling 1
// (every span recorded and batched to an exporter that drops them).
// docs/benchmarks.md, "Tracing".
func BenchmarkEnqueueTracing(b *testing.B) {
	for _, mode := range []struct {
		name  string
		ratio float64
		on    bool
	}{{"off", 0, false}, {"sample0", 0, true}, {"sample1", 1, true}} {
		b.Run(mode.name, func(b *testing.B) {
			e := newEnv(&testing.T{}, func(o *Options) { o.MaxPayload = 1 << 20 })
			owner := e.dir.add("owner", "o1")
			g := groupID()
			ch, _, err := e.svc.CreateGroup(ctx, owner.Caller, g, 0)
			if err != nil {
				b.Fatal(err)
			}
			msg := dt.Application(g, 0, 1024)
			var tracer trace.Tracer
			if mode.on {
				tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.TraceIDRatioBased(mode.ratio))),
					sdktrace.WithBatcher(tracetest.NewNoopExporter()))
				defer tp.Shutdown(ctx)
				tracer = tp.Tracer("bench")
			}
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				c := ctx
				var span trace.Span
				if tracer != nil {
					c, span = tracer.Start(ctx, "qpc.Enqueue", trace.WithSpanKind(trace.SpanKindServer))
				}
				if _, err := e.svc.Enqueue(c, owner.Caller, ch.ID, fmt.Sprintf("m%d", i), msg, nil); err != nil {
					b.Fatal(err)
				}
				if span != nil {
					span.End()
				}
			}
		})
	}
}

// BenchmarkEnqueueStoredMessages: one sender's enqueue latency into a
// channel whose log is empty, and one already holding QPC_BENCH_STORED
// messages (default 100 000; docs/benchmarks.md ran 1 000 000), with the
// p99 of the single enqueues reported beside ns/op. The enqueue path reads
// the channel row and looks the message id up on its index, so the stored
// volume should cost a B-tree level, not a scan (issue 17: no more than
// 20 % slower). The backlog is inserted with SQL in one statement; its
// rows are real rows of the messages table, only their bodies repeat.
func BenchmarkEnqueueStoredMessages(b *testing.B) {
	stored := 100_000
	if s := os.Getenv("QPC_BENCH_STORED"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 {
			b.Fatalf("QPC_BENCH_STORED=%q: want a count", s)
		}
		stored = n
	}
	for _, backlog := range []int{0, stored} {
		b.Run(fmt.Sprintf("stored=%d", backlog), func(b *testing.B) {
			e := newEnv(&testing.T{}, func(o *Options) { o.MaxPayload = 1 << 20 })
			owner := e.dir.add("owner", "o1")
			g := groupID()
			ch, _, err := e.svc.CreateGroup(ctx, owner.Caller, g, 0)
			if err != nil {
				b.Fatal(err)
			}
			msg := dt.Application(g, 0, 1024)
			if backlog > 0 {
				now := e.clock.Now()
				err := e.db.WriteTx(ctx, func(tx *sql.Tx) error {
					var head int64
					if err := tx.QueryRowContext(ctx, `SELECT head_seq FROM channels WHERE id = ?`, ch.ID).Scan(&head); err != nil {
						return err
					}
					if _, err := tx.ExecContext(ctx, `INSERT INTO messages
						(channel_id, seq, message_id, sender_account, sender_device, epoch, content_type, created_at, expires_at, body)
						WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < ?)
						SELECT ?, ? + i, 'stored-' || i, ?, ?, 0, 1, ?, ?, ? FROM s`,
						backlog, ch.ID, head, owner.Caller.AccountID, owner.Caller.DeviceID,
						now.UnixMilli(), now.Add(30*24*time.Hour).UnixMilli(), msg); err != nil {
						return err
					}
					_, err := tx.ExecContext(ctx, `UPDATE channels SET head_seq = ? WHERE id = ?`, head+int64(backlog), ch.ID)
					return err
				})
				if err != nil {
					b.Fatal(err)
				}
			}
			lat := make([]time.Duration, 0, b.N)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				start := time.Now()
				if _, err := e.svc.Enqueue(ctx, owner.Caller, ch.ID, fmt.Sprintf("m%d", i), msg, nil); err != nil {
					b.Fatal(err)
				}
				lat = append(lat, time.Since(start))
			}
			b.StopTimer()
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
		})
	}
}
