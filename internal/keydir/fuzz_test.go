package keydir

import (
	"crypto/ed25519"
	"crypto/rand"
	"testing"
	"time"

	"github.com/quicprochat/quicprochat/internal/keydir/keydirtest"
	"github.com/quicprochat/quicprochat/internal/mls"
)

// FuzzValidate: any bytes as an uploaded KeyPackage are accepted only if
// they verify and are bound to the device; never a panic.
func FuzzValidate(f *testing.F) {
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	dev := Device{ID: "0123456789abcdef0123456789abcdef", AccountID: "acct", AccountName: "alice", SignatureKey: pub, Active: true}
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	for _, bare := range []bool{false, true} {
		kp, err := keydirtest.KeyPackage(keydirtest.Spec{Identity: Identity(dev.AccountName, dev.ID), Key: priv, Now: now, Bare: bare})
		if err != nil {
			f.Fatal(err)
		}
		f.Add(kp)
	}
	f.Add([]byte{})
	f.Add([]byte{0, 1, 0, 5})
	if d, err := New(Options{SweepInterval: -1}); err == nil || d != nil {
		f.Fatal("New without a store must fail")
	}
	v := &Directory{suites: map[mls.CipherSuiteID]bool{mls.MLS128DHKEMX25519AES128GCMSHA256Ed25519: true}}
	f.Fuzz(func(t *testing.T, in []byte) {
		c, err := v.validate(in, dev, now)
		if err == nil && len(c.ref) == 0 {
			t.Fatal("accepted without a reference")
		}
	})
}
