package delivery

import (
	"fmt"
	"sync/atomic"
	"testing"

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
