package release

import (
	"bytes"
	"errors"
	"testing"
)

// FuzzVerify feeds arbitrary signature files and contents to Verify: it must
// never panic, never accept anything but the signed bytes under the real
// signature, and fail only with a *VerifyError.
func FuzzVerify(f *testing.F) {
	key, pub, err := GenerateKey()
	if err != nil {
		f.Fatal(err)
	}
	content := []byte("qpcd release artifact")
	sig, err := Sign(key, bytes.NewReader(content), "artifact", 1764000000)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(sig, content)
	f.Add(sig, []byte("qpcd release artifacT"))
	f.Add(bytes.Replace(sig, []byte("trusted comment"), []byte("trusted commenT"), 1), content)
	f.Add([]byte("untrusted comment: x\n"), content)
	f.Add([]byte{}, []byte{})
	f.Fuzz(func(t *testing.T, s, data []byte) {
		_, err := Verify(pub, bytes.NewReader(data), "artifact", s)
		if err == nil {
			if !bytes.Equal(data, content) {
				t.Fatalf("accepted content that was never signed: %q", data)
			}
			return
		}
		var ve *VerifyError
		if !errors.As(err, &ve) {
			t.Fatalf("untyped error %T: %v", err, err)
		}
	})
}

// FuzzParsePublicKey: arbitrary key files are refused with an error, never a panic.
func FuzzParsePublicKey(f *testing.F) {
	_, pub, err := GenerateKey()
	if err != nil {
		f.Fatal(err)
	}
	txt, err := pub.MarshalText()
	if err != nil {
		f.Fatal(err)
	}
	f.Add(txt)
	f.Add([]byte("untrusted comment: minisign public key\nRWQ=\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		_, _ = ParsePublicKey(in)
	})
}
