package mls

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
)

// BenchmarkSuiteCost compares suite 1 with the X-Wing hybrid
// (docs/benchmarks.md, "Cipher suites: X-Wing against suite 1"): the
// KeyPackage (generation time, encoded size), and at each group size the
// commit with a full UpdatePath in a populated tree (time, size), its
// processing by another member, the Welcome adding one member (size; the
// ratchet tree travels in it) and the join from it. Sizes come from
// QPC_MLS_SUITE_BENCH_SIZES (default "10,100"; docs use 10,100,1000).
func BenchmarkSuiteCost(b *testing.B) {
	sizes := []int{10, 100}
	if env := os.Getenv("QPC_MLS_SUITE_BENCH_SIZES"); env != "" {
		sizes = nil
		for _, f := range strings.Split(env, ",") {
			if n, err := strconv.Atoi(f); err == nil && n >= 2 {
				sizes = append(sizes, n)
			}
		}
	}
	for _, id := range []CipherSuiteID{1, MLS256XWingAES256GCMSHA512Ed25519} {
		b.Run(fmt.Sprintf("suite=%#x/keypackage", uint16(id)), func(b *testing.B) {
			s, _ := Suite(id)
			sig, _, _ := s.GenerateSignatureKey()
			var size int
			defer reportCPU(b)()
			for b.Loop() {
				kb, err := GenerateKeyPackage(id, []byte("user/device"), sig, KeyPackageOptions{})
				if err != nil {
					b.Fatal(err)
				}
				raw, _ := kb.KeyPackage.Marshal()
				size = len(raw)
			}
			b.ReportMetric(float64(size), "bytes")
		})
		for _, n := range sizes {
			b.Run(fmt.Sprintf("suite=%#x/n=%d/commit", uint16(id), n), func(b *testing.B) {
				bg := getSuiteBenchGroup(b, id, "populated", n)
				defer reportCPU(b)()
				for b.Loop() {
					if _, err := bg.b.Commit(CommitOptions{}); err != nil {
						b.Fatal(err)
					}
				}
				bg.b.ClearPendingCommit()
				b.ReportMetric(float64(len(bg.commitB)), "bytes")
			})
			b.Run(fmt.Sprintf("suite=%#x/n=%d/process", uint16(id), n), func(b *testing.B) {
				bg := getSuiteBenchGroup(b, id, "populated", n)
				defer reportCPU(b)()
				for b.Loop() {
					bg.a.es = cloneEpochSecrets(bg.aSnapshot.es)
					if _, err := bg.a.ProcessMessage(bg.commitB); err != nil {
						b.Fatal(err)
					}
					*bg.a = bg.aSnapshot
				}
			})
			b.Run(fmt.Sprintf("suite=%#x/n=%d/join", uint16(id), n), func(b *testing.B) {
				bg := getSuiteBenchGroup(b, id, "populated", n)
				defer reportCPU(b)()
				for b.Loop() {
					if _, err := JoinFromWelcome(benchCfg, bg.welcome, bg.joiner, JoinOptions{}); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64(len(bg.welcome)), "welcome-bytes")
			})
		}
	}
}
