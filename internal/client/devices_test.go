package client

import (
	"bytes"
	"crypto/sha256"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/quicprochat/quicprochat/internal/auth"
	"github.com/quicprochat/quicprochat/internal/wire/qpcv1"
)

// The client signs exactly what the server verifies.
func TestReauthMessageMatchesServer(t *testing.T) {
	const acc, dev = "0123456789abcdef0123456789abcdef", "fedcba9876543210fedcba9876543210"
	ch := bytes.Repeat([]byte{7}, 32)
	key := bytes.Repeat([]byte{9}, 32)
	if got, want := reauthMessage("add-device", acc, dev, key, ch), auth.ReauthMessage(auth.PurposeAddDevice, acc, dev, auth.ReauthBinding(key), ch); !bytes.Equal(got, want) {
		t.Fatalf("add-device message differs:\n%x\n%x", got, want)
	}
	if got, want := reauthMessage("revoke-device", acc, dev, []byte(dev), ch), auth.ReauthMessage(auth.PurposeRevokeDevice, acc, dev, auth.ReauthBinding([]byte(dev)), ch); !bytes.Equal(got, want) {
		t.Fatalf("revoke-device message differs")
	}
}

// FuzzDecodeAccountEvent: no payload makes the decoder panic, and what it
// accepts has a known kind, well-formed ids and a key fingerprint.
func FuzzDecodeAccountEvent(f *testing.F) {
	good, _ := proto.Marshal(&qpcv1.AccountEvent{Kind: qpcv1.AccountEventKind_ACCOUNT_EVENT_KIND_DEVICE_ADDED,
		DeviceId: "0123456789abcdef0123456789abcdef", DeviceName: "phone", SignatureKey: bytes.Repeat([]byte{1}, 32),
		ByDeviceId: "fedcba9876543210fedcba9876543210", TimeUnixMs: 1764000000000})
	f.Add(good)
	f.Add([]byte{})
	f.Add([]byte{0x08, 0x05})
	f.Fuzz(func(t *testing.T, payload []byte) {
		ev, err := decodeAccountEvent(payload)
		if err != nil {
			return
		}
		if ev.Kind != "device_added" && ev.Kind != "device_revoked" || !validHexID(ev.DeviceID) || len(ev.KeySHA256) != 2*sha256.Size {
			t.Fatalf("accepted %+v", ev)
		}
	})
}
