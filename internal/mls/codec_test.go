package mls

import (
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
)

func TestVarintStrict(t *testing.T) {
	bad := map[string][]byte{
		"empty":                 {},
		"prefix 0b11":           {0xc0, 0, 0, 0, 0, 0, 0, 0},
		"non-minimal 2 bytes":   {0x40, 0x3f},
		"non-minimal 4 bytes":   {0x80, 0x00, 0x3f, 0xff},
		"truncated":             {0x80, 0x00},
		"trailing":              {0x01, 0x00},
		"non-minimal zero":      {0x40, 0x00},
		"non-minimal zero four": {0x80, 0, 0, 0},
	}
	for name, b := range bad {
		if _, err := DecodeVarint(b); !errors.Is(err, ErrDecode) {
			t.Errorf("%s (%x): err = %v, want ErrDecode", name, b, err)
		}
	}
	for _, v := range []uint32{0, 63, 64, 16383, 16384, maxVarint} {
		got, err := DecodeVarint(appendVarint(nil, v))
		if err != nil || got != v {
			t.Errorf("round trip %d: %d, %v", v, got, err)
		}
	}
}

func TestDecodeStrict(t *testing.T) {
	// A Remove proposal is a uint32; Proposal = type(2) + body.
	good := []byte{0x00, 0x03, 0, 0, 0, 5}
	var p Proposal
	if err := p.Unmarshal(good); err != nil || p.Remove == nil || p.Remove.Removed != 5 {
		t.Fatalf("decode remove: %+v %v", p, err)
	}
	cases := map[string][]byte{
		"trailing byte":    append(append([]byte{}, good...), 0),
		"truncated":        good[:4],
		"unknown proposal": {0x00, 0x63, 0, 0, 0, 5},
	}
	for name, b := range cases {
		var p Proposal
		if err := p.Unmarshal(b); !errors.Is(err, ErrDecode) {
			t.Errorf("%s: err = %v, want ErrDecode", name, err)
		}
	}
	// ExternalInit is opaque kem_output<V>: a length beyond the input must
	// fail before allocating.
	var ei ExternalInit
	if err := ei.Unmarshal([]byte{0xbf, 0xff, 0xff, 0xff, 1, 2}); !errors.Is(err, ErrDecode) {
		t.Errorf("over-long length: err = %v", err)
	}
	// optional<T> presence octet must be 0 or 1.
	var c Commit
	if err := c.Unmarshal([]byte{0x00, 0x02}); !errors.Is(err, ErrDecode) {
		t.Errorf("bad optional: err = %v", err)
	}
}

func TestEncodeVectorHeaderSizes(t *testing.T) {
	for _, n := range []int{0, 63, 64, 16383, 16384, 70000} {
		e := &encoder{}
		e.vector(func(e *encoder) { e.raw(make([]byte, n)) })
		d := newDecoder(e.buf)
		got := d.opaque()
		if err := d.finish(); err != nil || len(got) != n {
			t.Errorf("vector of %d: got %d bytes, %v", n, len(got), err)
		}
	}
}

func TestSecretsRedacted(t *testing.T) {
	s := NewSecret([]byte("supersecretvalue"))
	suite, _ := Suite(MLS128DHKEMX25519AES128GCMSHA256Ed25519)
	sk, _, err := suite.GenerateSignatureKey()
	if err != nil {
		t.Fatal(err)
	}
	hk, _, err := suite.GenerateHPKEKey()
	if err != nil {
		t.Fatal(err)
	}
	gs := GroupSecrets{JoinerSecret: s}
	var logs strings.Builder
	logger := slog.New(slog.NewTextHandler(&logs, nil))
	logger.Info("x", "secret", s, "sig", sk, "hpke", hk, "gs", gs)
	out := fmt.Sprintf("%v %+v %#v %x %s %q %v %v %+v %#v", s, s, s, s, s, s, sk, hk, gs, gs) + logs.String()
	for _, leak := range []string{"supersecretvalue", fmt.Sprintf("%x", "supersecretvalue")} {
		if strings.Contains(out, leak) {
			t.Fatalf("secret printed: %s", out)
		}
	}
	if !strings.Contains(out, redacted) {
		t.Fatalf("no redaction marker in %s", out)
	}
	s.Wipe()
	if !s.IsZero() || !gs.JoinerSecret.IsZero() {
		t.Fatal("Wipe did not zero the bytes")
	}
}
