package auth

import (
	"context"
	"testing"
)

// FuzzParseToken: no input makes the token parser panic, and whatever it
// accepts has the exact layout.
func FuzzParseToken(f *testing.F) {
	f.Add("")
	f.Add("qpcat1.")
	f.Add("qpcat1.AAAA.BBBB")
	f.Add("qpcat1." + b64.EncodeToString(make([]byte, claimsLen)) + "." + b64.EncodeToString(make([]byte, 64)))
	f.Fuzz(func(t *testing.T, tok string) {
		raw, sig, ok := splitToken(tok)
		if !ok {
			return
		}
		if len(raw) != claimsLen || len(sig) != 64 {
			t.Fatalf("accepted %d-byte claims, %d-byte signature", len(raw), len(sig))
		}
		if c, ok := parseClaims(raw); ok {
			if b, err := c.marshal(); err != nil || string(b) != string(raw) {
				t.Fatalf("claims do not round-trip: %v", err)
			}
		}
	})
}

// BenchmarkAuthenticate is the per-RPC cost of the middleware: signature
// check plus one read of the device and account rows.
func BenchmarkAuthenticate(b *testing.B) {
	e := newEnv(b, nil)
	a := e.register(b, "alice")
	tok := e.login(b, a).AccessToken
	ctx := context.Background()
	b.ResetTimer()
	for b.Loop() {
		if _, err := e.s.Authenticate(ctx, tok); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkVerifySignature is the stateless part of Authenticate.
func BenchmarkVerifySignature(b *testing.B) {
	e := newEnv(b, nil)
	a := e.register(b, "alice")
	tok := e.login(b, a).AccessToken
	ctx := context.Background()
	for b.Loop() {
		if _, err := e.s.VerifySignature(ctx, tok); err != nil {
			b.Fatal(err)
		}
	}
}
