package auth

import (
	"context"
	"errors"
	"testing"

	"github.com/quicprochat/quicprochat/internal/safetext"
)

// TestDeviceNameRefusesControlCharacters: a device name with an escape
// sequence or a bidirectional override is refused (INVALID_ARGUMENT on the
// wire), at registration and when a device is added.
func TestDeviceNameRefusesControlCharacters(t *testing.T) {
	e := newEnv(t, nil)
	ctx := context.Background()
	for i, bad := range []string{"phone\x1b[2K", "lap\u202Epot", "a\nb"} {
		pub, _ := genKey(t)
		_, _, err := e.s.Register(ctx, RegisterParams{AccountName: "eve" + string(rune('a'+i)), SignatureKey: pub, DeviceName: bad})
		if !errors.Is(err, ErrInvalidName) || !errors.Is(err, safetext.ErrUnsafe) {
			t.Fatalf("register with device name %q: %v", bad, err)
		}
	}
	pub, _ := genKey(t)
	if _, _, err := e.s.Register(ctx, RegisterParams{AccountName: "zoe", SignatureKey: pub, DeviceName: "Zoë's phone"}); err != nil {
		t.Fatalf("a plain non-ASCII device name: %v", err)
	}
}
