package admin

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"io"
	"testing"

	"github.com/quicprochat/quicprochat/internal/secret"
)

func testKey(t testing.TB, b byte) secret.Bytes {
	t.Helper()
	return secret.New(bytes.Repeat([]byte{b}, 32))
}

func seal(t testing.TB, key secret.Bytes, salt, plain []byte) []byte {
	t.Helper()
	var out bytes.Buffer
	w, err := newSealWriter(&out, key, salt)
	if err != nil {
		t.Fatal(err)
	}
	// Odd write sizes cross chunk boundaries.
	for len(plain) > 0 {
		n := min(len(plain), 7919)
		if _, err := w.Write(plain[:n]); err != nil {
			t.Fatal(err)
		}
		plain = plain[n:]
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

func open(key secret.Bytes, salt, ct []byte) ([]byte, error) {
	r, err := newOpenReader(bytes.NewReader(ct), key, salt)
	if err != nil {
		return nil, err
	}
	return io.ReadAll(r)
}

// chunks splits a sealed payload at its frame boundaries.
func chunks(ct []byte) [][]byte {
	var out [][]byte
	for len(ct) >= 4 {
		n := 4 + int(binary.BigEndian.Uint32(ct))
		out = append(out, ct[:n])
		ct = ct[n:]
	}
	return out
}

func TestPayloadSealOpen(t *testing.T) {
	key, salt := testKey(t, 1), make([]byte, payloadSaltSize)
	for _, size := range []int{0, 1, payloadChunk - 1, payloadChunk, payloadChunk + 1, 3*payloadChunk + 17} {
		plain := make([]byte, size)
		_, _ = rand.Read(plain)
		ct := seal(t, key, salt, plain)
		got, err := open(key, salt, ct)
		if err != nil || !bytes.Equal(got, plain) {
			t.Fatalf("size %d: round trip: %v (equal %v)", size, err, bytes.Equal(got, plain))
		}
	}

	plain := bytes.Repeat([]byte("dump "), payloadChunk) // five chunks
	ct := seal(t, key, salt, plain)
	parts := chunks(ct)
	if len(parts) != 5 {
		t.Fatalf("%d chunks, want 5", len(parts))
	}
	join := func(ps ...[]byte) []byte { return bytes.Join(ps, nil) }
	flipped := bytes.Clone(ct)
	flipped[len(ct)/2] ^= 1
	for _, tc := range []struct {
		name string
		ct   []byte
		key  secret.Bytes
		salt []byte
		want error
	}{
		{"wrong key", ct, testKey(t, 2), salt, ErrPayloadAuth},
		{"other salt", ct, key, bytes.Repeat([]byte{1}, payloadSaltSize), ErrPayloadAuth},
		{"flipped byte", flipped, key, salt, ErrPayloadAuth},
		{"chunks swapped", join(parts[1], parts[0], parts[2], parts[3], parts[4]), key, salt, ErrPayloadAuth},
		{"chunk dropped", join(parts[0], parts[2], parts[3], parts[4]), key, salt, ErrPayloadAuth},
		{"final chunk dropped", join(parts[:4]...), key, salt, ErrBackupTruncated},
		{"cut inside a chunk", ct[:len(ct)-5], key, salt, ErrBackupTruncated},
		{"bytes after the final chunk", join(ct, []byte{0}), key, salt, ErrBackupCorrupt},
		{"impossible length", join([]byte{0xff, 0xff, 0xff, 0xff}, ct), key, salt, ErrBackupCorrupt},
		{"empty", nil, key, salt, ErrBackupTruncated},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := open(tc.key, tc.salt, tc.ct); !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
		})
	}
}

// FuzzOpenPayload: whatever the payload bytes, decryption ends in the
// plaintext or one of the typed errors, never a panic or an allocation a
// length field asks for.
func FuzzOpenPayload(f *testing.F) {
	key, salt := testKey(f, 1), make([]byte, payloadSaltSize)
	f.Add(seal(f, key, salt, []byte("small dump")))
	f.Add(seal(f, key, salt, bytes.Repeat([]byte{7}, payloadChunk+3)))
	f.Add([]byte{0, 0, 0, 16})
	f.Fuzz(func(t *testing.T, ct []byte) {
		_, err := open(key, salt, ct)
		if err != nil && !errors.Is(err, ErrPayloadAuth) && !errors.Is(err, ErrBackupTruncated) && !errors.Is(err, ErrBackupCorrupt) {
			t.Fatalf("untyped error: %v", err)
		}
	})
}
