package mls

import (
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"testing"
)

// vectorDir holds the official MLS test vectors (see testdata/vectors/SOURCE.md).
const vectorDir = "testdata/vectors"

// hexBytes is a hex string in the vector JSON; null decodes to nil.
type hexBytes []byte

func (h *hexBytes) UnmarshalJSON(b []byte) error {
	var s *string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	if s == nil {
		*h = nil
		return nil
	}
	d, err := hex.DecodeString(*s)
	if err != nil {
		return err
	}
	*h = d
	return nil
}

// vectorCounts records, per file, how many cases ran and were skipped.
var vectorCounts = struct {
	sync.Mutex
	m map[string][2]int
}{m: map[string][2]int{}}

func TestMain(m *testing.M) {
	code := m.Run()
	vectorCounts.Lock()
	files := make([]string, 0, len(vectorCounts.m))
	for f := range vectorCounts.m {
		files = append(files, f)
	}
	sort.Strings(files)
	for _, f := range files {
		c := vectorCounts.m[f]
		fmt.Printf("mls vectors: %s: %d run, %d skipped (unimplemented cipher suites)\n", f, c[0], c[1])
	}
	vectorCounts.Unlock()
	os.Exit(code)
}

// readVectors loads a vector file into a slice of T; a missing or malformed
// file fails the test.
func readVectors[T any](t testing.TB, file string) []T {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(vectorDir, file))
	if err != nil {
		t.Fatalf("vector file missing: %v", err)
	}
	var cases []T
	if err := json.Unmarshal(b, &cases); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	if len(cases) == 0 {
		t.Fatalf("%s: no cases", file)
	}
	return cases
}

// runVectors runs fn as one subtest per case of file. suiteOf returns the
// case's cipher suite, or 0 for suite-independent cases. Cases of suites
// this package does not implement are counted as skipped.
func runVectors[T any](t *testing.T, file string, suiteOf func(*T) CipherSuiteID, fn func(t *testing.T, s *CipherSuite, tc *T)) {
	t.Helper()
	cases := readVectors[T](t, file)
	run, skipped := 0, 0
	for i := range cases {
		tc := &cases[i]
		var s *CipherSuite
		name := fmt.Sprintf("case%d", i)
		if suiteOf != nil {
			id := suiteOf(tc)
			var err error
			if s, err = Suite(id); err != nil {
				skipped++
				continue
			}
			name = fmt.Sprintf("suite%d/case%d", id, i)
		}
		run++
		t.Run(name, func(t *testing.T) { fn(t, s, tc) })
	}
	if run == 0 {
		t.Fatalf("%s: no case ran", file)
	}
	t.Logf("%s: %d run, %d skipped", file, run, skipped)
	vectorCounts.Lock()
	vectorCounts.m[file] = [2]int{run, skipped}
	vectorCounts.Unlock()
}

func mustHex(t testing.TB, got, want []byte, what string) {
	t.Helper()
	if hex.EncodeToString(got) != hex.EncodeToString(want) {
		t.Errorf("%s:\n got %x\nwant %x", what, got, want)
	}
}

func mustNoErr(t testing.TB, err error, what string) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

type treeMathCase struct {
	NLeaves uint32    `json:"n_leaves"`
	NNodes  uint32    `json:"n_nodes"`
	Root    uint32    `json:"root"`
	Left    []*uint32 `json:"left"`
	Right   []*uint32 `json:"right"`
	Parent  []*uint32 `json:"parent"`
	Sibling []*uint32 `json:"sibling"`
}

func TestTreeMathVectors(t *testing.T) {
	runVectors(t, "tree-math.json", nil, func(t *testing.T, _ *CipherSuite, tc *treeMathCase) {
		n := leafCount(tc.NLeaves)
		if got := n.nodeWidth(); got != tc.NNodes {
			t.Errorf("nodeWidth = %d, want %d", got, tc.NNodes)
		}
		if got := n.root(); uint32(got) != tc.Root {
			t.Errorf("root = %d, want %d", got, tc.Root)
		}
		check := func(what string, want []*uint32, f func(nodeIndex) (nodeIndex, bool)) {
			if len(want) != int(tc.NNodes) {
				t.Fatalf("%s: %d entries for %d nodes", what, len(want), tc.NNodes)
			}
			for i, w := range want {
				got, ok := f(nodeIndex(i))
				switch {
				case w == nil && ok:
					t.Errorf("%s(%d) = %d, want none", what, i, got)
				case w != nil && !ok:
					t.Errorf("%s(%d) = none, want %d", what, i, *w)
				case w != nil && uint32(got) != *w:
					t.Errorf("%s(%d) = %d, want %d", what, i, got, *w)
				}
			}
		}
		check("left", tc.Left, nodeIndex.left)
		check("right", tc.Right, nodeIndex.right)
		check("parent", tc.Parent, func(x nodeIndex) (nodeIndex, bool) { return x.parent(n) })
		check("sibling", tc.Sibling, func(x nodeIndex) (nodeIndex, bool) { return x.sibling(n) })
	})
}

type deserializationCase struct {
	Header hexBytes `json:"vlbytes_header"`
	Length uint32   `json:"length"`
}

func TestDeserializationVectors(t *testing.T) {
	runVectors(t, "deserialization.json", nil, func(t *testing.T, _ *CipherSuite, tc *deserializationCase) {
		got, err := DecodeVarint(tc.Header)
		mustNoErr(t, err, "DecodeVarint")
		if got != tc.Length {
			t.Errorf("DecodeVarint(%x) = %d, want %d", tc.Header, got, tc.Length)
		}
		mustHex(t, appendVarint(nil, got), tc.Header, "re-encoded header")
	})
}

type cryptoBasicsCase struct {
	CipherSuite CipherSuiteID `json:"cipher_suite"`
	RefHash     struct {
		Label string   `json:"label"`
		Value hexBytes `json:"value"`
		Out   hexBytes `json:"out"`
	} `json:"ref_hash"`
	ExpandWithLabel struct {
		Secret  hexBytes `json:"secret"`
		Label   string   `json:"label"`
		Context hexBytes `json:"context"`
		Length  int      `json:"length"`
		Out     hexBytes `json:"out"`
	} `json:"expand_with_label"`
	DeriveSecret struct {
		Secret hexBytes `json:"secret"`
		Label  string   `json:"label"`
		Out    hexBytes `json:"out"`
	} `json:"derive_secret"`
	DeriveTreeSecret struct {
		Secret     hexBytes `json:"secret"`
		Label      string   `json:"label"`
		Generation uint32   `json:"generation"`
		Length     int      `json:"length"`
		Out        hexBytes `json:"out"`
	} `json:"derive_tree_secret"`
	SignWithLabel struct {
		Priv      hexBytes `json:"priv"`
		Pub       hexBytes `json:"pub"`
		Content   hexBytes `json:"content"`
		Label     string   `json:"label"`
		Signature hexBytes `json:"signature"`
	} `json:"sign_with_label"`
	EncryptWithLabel struct {
		Priv       hexBytes `json:"priv"`
		Pub        hexBytes `json:"pub"`
		Label      string   `json:"label"`
		Context    hexBytes `json:"context"`
		Plaintext  hexBytes `json:"plaintext"`
		KEMOutput  hexBytes `json:"kem_output"`
		Ciphertext hexBytes `json:"ciphertext"`
	} `json:"encrypt_with_label"`
}

func suiteOfCryptoBasics(c *cryptoBasicsCase) CipherSuiteID { return c.CipherSuite }

func TestCryptoBasicsVectors(t *testing.T) {
	runVectors(t, "crypto-basics.json", suiteOfCryptoBasics, func(t *testing.T, s *CipherSuite, tc *cryptoBasicsCase) {
		t.Run("ref_hash", func(t *testing.T) {
			v := tc.RefHash
			got, err := s.RefHash(v.Label, v.Value)
			mustNoErr(t, err, "RefHash")
			mustHex(t, got, v.Out, "RefHash")
		})
		t.Run("expand_with_label", func(t *testing.T) {
			v := tc.ExpandWithLabel
			got, err := s.ExpandWithLabel(v.Secret, v.Label, v.Context, v.Length)
			mustNoErr(t, err, "ExpandWithLabel")
			mustHex(t, got, v.Out, "ExpandWithLabel")
		})
		t.Run("derive_secret", func(t *testing.T) {
			v := tc.DeriveSecret
			got, err := s.DeriveSecret(v.Secret, v.Label)
			mustNoErr(t, err, "DeriveSecret")
			mustHex(t, got, v.Out, "DeriveSecret")
		})
		t.Run("derive_tree_secret", func(t *testing.T) {
			v := tc.DeriveTreeSecret
			got, err := s.DeriveTreeSecret(v.Secret, v.Label, v.Generation, v.Length)
			mustNoErr(t, err, "DeriveTreeSecret")
			mustHex(t, got, v.Out, "DeriveTreeSecret")
		})
		t.Run("sign_with_label", func(t *testing.T) {
			v := tc.SignWithLabel
			priv, pub, err := s.SignaturePrivateKeyFromBytes(v.Priv)
			mustNoErr(t, err, "import signature key")
			mustHex(t, pub, v.Pub, "public key of priv")
			mustNoErr(t, s.VerifyWithLabel(SignaturePublicKey(v.Pub), v.Label, v.Content, v.Signature), "verify vector signature")
			sig, err := s.SignWithLabel(priv, v.Label, v.Content)
			mustNoErr(t, err, "SignWithLabel")
			mustNoErr(t, s.VerifyWithLabel(SignaturePublicKey(v.Pub), v.Label, v.Content, sig), "verify own signature")
			if err := s.VerifyWithLabel(SignaturePublicKey(v.Pub), v.Label+"x", v.Content, sig); err == nil {
				t.Error("signature verified under another label")
			}
		})
		t.Run("encrypt_with_label", func(t *testing.T) {
			v := tc.EncryptWithLabel
			priv, pub, err := s.HPKEPrivateKeyFromBytes(v.Priv)
			mustNoErr(t, err, "import HPKE key")
			mustHex(t, pub, v.Pub, "public key of priv")
			pt, err := s.DecryptWithLabel(priv, v.Label, v.Context, HPKECiphertext{KEMOutput: v.KEMOutput, Ciphertext: v.Ciphertext})
			mustNoErr(t, err, "DecryptWithLabel(vector)")
			mustHex(t, pt, v.Plaintext, "plaintext")
			ct, err := s.EncryptWithLabel(HPKEPublicKey(v.Pub), v.Label, v.Context, v.Plaintext)
			mustNoErr(t, err, "EncryptWithLabel")
			pt, err = s.DecryptWithLabel(priv, v.Label, v.Context, ct)
			mustNoErr(t, err, "DecryptWithLabel(own)")
			mustHex(t, pt, v.Plaintext, "plaintext of own ciphertext")
		})
	})
}

// TestVectorFilesPresent fails if any file of the official vector set is
// missing, including those only part 2 (TreeKEM, group state) will use.
func TestVectorFilesPresent(t *testing.T) {
	for _, f := range []string{
		"tree-math.json", "crypto-basics.json", "secret-tree.json", "message-protection.json",
		"key-schedule.json", "psk_secret.json", "transcript-hashes.json", "welcome.json",
		"tree-operations.json", "tree-validation.json", "treekem.json", "messages.json",
		"passive-client-welcome.json", "passive-client-handling-commit.json",
		"deserialization.json", "test-vectors.md", "SOURCE.md",
	} {
		if _, err := os.Stat(filepath.Join(vectorDir, f)); err != nil {
			t.Errorf("vector file missing: %v", err)
		}
	}
}
