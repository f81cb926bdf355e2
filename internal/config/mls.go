package config

import (
	"fmt"
	"slices"
	"strings"

	"github.com/quicprochat/quicprochat/internal/mls"
)

// DefaultMLSSuites is mls.allowed_suites' default: suite 1 only. The X-Wing
// hybrid is implemented and can be listed, but is not the default
// preference (docs/mls.md "Cipher suites", docs/benchmarks.md: its
// KeyPackages, commits and Welcomes are about ten times larger).
const DefaultMLSSuites = "MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519"

// MLSSuites parses mls.allowed_suites: the suites in preference order.
func (c Config) MLSSuites() ([]mls.CipherSuiteID, error) {
	return ParseMLSSuites(c.MLS.AllowedSuites)
}

// ParseMLSSuites reads a comma-separated list of suite names or numbers;
// it must name at least one implemented suite, each at most once.
func ParseMLSSuites(s string) ([]mls.CipherSuiteID, error) {
	var out []mls.CipherSuiteID
	for _, f := range strings.Split(s, ",") {
		if strings.TrimSpace(f) == "" {
			continue
		}
		id, err := mls.ParseCipherSuite(f)
		if err != nil {
			return nil, err
		}
		if slices.Contains(out, id) {
			return nil, fmt.Errorf("%v listed twice", id)
		}
		out = append(out, id)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no suite listed")
	}
	return out, nil
}

func validateMLS(c Config) *FieldError {
	if _, err := c.MLSSuites(); err != nil {
		return &FieldError{Key: "mls.allowed_suites", Value: c.MLS.AllowedSuites,
			Expected: "comma-separated MLS cipher suite names or numbers such as " + DefaultMLSSuites + ",0xF00D", Err: err}
	}
	return nil
}
