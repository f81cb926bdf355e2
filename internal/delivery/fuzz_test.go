package delivery

import (
	"testing"

	dt "github.com/quicprochat/quicprochat/internal/delivery/deliverytest"
	"github.com/quicprochat/quicprochat/internal/mls"
)

// FuzzParseFraming: any bytes as an enqueued MLS message decode to a
// framing or an error wrapping ErrInvalidMessage, never a panic.
func FuzzParseFraming(f *testing.F) {
	g := make([]byte, GroupIDSize)
	for _, seed := range [][]byte{
		dt.Application(g, 3, 40), dt.Commit(g, 7), dt.Private(g, 1, mls.ContentTypeProposal, 8),
		dt.Welcome(), dt.GroupInfo(g, 2), {}, {0, 1, 0, 1}, {0, 1, 0, 2, 0xff},
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		fr, err := ParseFraming(in)
		if err == nil && fr.ContentType != mls.ContentTypeApplication && fr.ContentType != mls.ContentTypeProposal && fr.ContentType != mls.ContentTypeCommit {
			t.Fatalf("accepted content type %d", fr.ContentType)
		}
		_, _ = parseGroupInfo(in, g, 1, false)
		if embedded, err := parseGroupInfo(in, g, 1, true); err == nil && embedded {
			t.Fatal("a GroupInfo that carries the tree accepted beside a separate tree")
		}
	})
}
