package obs

import (
	"context"
	"io"
	"log/slog"
	"testing"
)

// BenchmarkAuditEvent: one enqueue-shaped audit event through the text
// logger qpcd uses, to a writer that discards it (the write itself is the
// kernel's cost, not measured here).
func BenchmarkAuditEvent(b *testing.B) {
	l, err := NewLogger(io.Discard, "info", "text")
	if err != nil {
		b.Fatal(err)
	}
	a := NewAudit(l)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		a.Event(ctx, "delivery.enqueue", slog.String("account_id", "0123456789abcdef0123456789abcdef"),
			slog.String("device_id", "0123456789abcdef0123456789abcdef"), slog.String("channel_id", "00112233445566778899aabbccddeeff"),
			slog.Uint64("seq", 123456), slog.Int("size", 1024), slog.String("channel_type", "group"))
	}
}
