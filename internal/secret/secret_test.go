package secret

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"testing"
)

func TestNeverPrints(t *testing.T) {
	s := New([]byte("hunter2-very-secret"))
	var logBuf bytes.Buffer
	slog.New(slog.NewJSONHandler(&logBuf, nil)).Info("x", "key", s)
	js, _ := json.Marshal(struct{ K Bytes }{s})
	outs := []string{
		fmt.Sprint(s), fmt.Sprintf("%v %+v %#v %s %x %X %q", s, s, s, s, s, s, s),
		logBuf.String(), string(js),
	}
	for _, o := range outs {
		if strings.Contains(o, "hunter2") || strings.Contains(o, "68756e74") {
			t.Fatalf("secret leaked: %q", o)
		}
		if !strings.Contains(o, Redacted) {
			t.Fatalf("no redaction marker in %q", o)
		}
	}
}

func TestFromHexAndWipe(t *testing.T) {
	if _, err := FromHex("zz", 1); err == nil {
		t.Fatal("bad hex accepted")
	}
	if _, err := FromHex("0011", 32); err == nil {
		t.Fatal("short key accepted")
	}
	s, err := FromHex(strings.Repeat("ab", 32), 32)
	if err != nil {
		t.Fatal(err)
	}
	if !s.Equal(s.Clone()) || s.Equal(New(make([]byte, 32))) {
		t.Fatal("Equal wrong")
	}
	raw := s.Reveal()
	s.Wipe()
	if !s.IsZero() || !bytes.Equal(raw, make([]byte, 32)) {
		t.Fatal("not wiped")
	}
}
