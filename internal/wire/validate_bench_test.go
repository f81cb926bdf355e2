package wire

import (
	"testing"

	"github.com/quicprochat/quicprochat/internal/wire/qpcv1"
)

func BenchmarkValidateEnqueue(b *testing.B) {
	m := &qpcv1.EnqueueRequest{ChannelId: make([]byte, 16), MessageId: "0193a3c4-6b1e-7cc2-9b4f-2a9e7d3c1f00", MlsMessage: make([]byte, 1100)}
	b.ReportAllocs()
	for b.Loop() {
		if err := Validate(m); err != nil {
			b.Fatal(err)
		}
	}
}
