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

// FuzzParseChallenge: no input makes the challenge decoder panic, whatever
// it accepts is exactly 32 bytes of version 1, and nothing but a challenge
// this server made verifies.
func FuzzParseChallenge(f *testing.F) {
	e := newEnv(f, nil)
	a := e.register(f, "alice")
	good, _, err := e.s.Challenge(context.Background(), a.id)
	if err != nil {
		f.Fatal(err)
	}
	f.Add([]byte{})
	f.Add(good)
	f.Add(append([]byte{1}, make([]byte, 31)...))
	f.Fuzz(func(t *testing.T, c []byte) {
		fields, ok := parseChallenge(c)
		if !ok {
			return
		}
		if len(c) != ChallengeSize || c[0] != challengeVersion || len(fields.tag) != 16 || len(fields.head) != 16 {
			t.Fatalf("accepted %d bytes, version %d", len(c), c[0])
		}
		_, verified := e.s.checkChallenge(context.Background(), c, challengeBinding{purpose: PurposeLogin, deviceID: a.id}, e.clk.Now())
		if verified && string(c) != string(good) {
			t.Fatalf("a challenge the server never made verified: %x", c)
		}
	})
}
