package config

import (
	"errors"
	"slices"
	"testing"

	"github.com/quicprochat/quicprochat/internal/mls"
)

func TestMLSAllowedSuites(t *testing.T) {
	d := Default()
	got, err := d.MLSSuites()
	if err != nil || !slices.Equal(got, []mls.CipherSuiteID{1}) {
		t.Fatalf("default = %v, %v", got, err)
	}
	c := Default()
	c.MLS.AllowedSuites = " mls_256_xwing_aes256gcm_sha512_ed25519 , 1"
	if got, err := c.MLSSuites(); err != nil || !slices.Equal(got, []mls.CipherSuiteID{0xF00D, 1}) {
		t.Fatalf("preference order lost: %v, %v", got, err)
	}
	for _, bad := range []string{"", ",", "1,1", "0xF00F", "MLS_128", "1,nope"} {
		c.MLS.AllowedSuites = bad
		var fe *FieldError
		if err := c.Validate(); !errors.As(err, &fe) || fe.Key != "mls.allowed_suites" {
			t.Errorf("%q: %v", bad, err)
		}
	}
}
