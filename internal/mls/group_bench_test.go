package mls

import (
	"crypto/rand"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// Group benchmarks (docs/benchmarks.md, "MLS groups"), produced by
// scripts/bench-mls.sh. Sizes come from QPC_MLS_BENCH_SIZES (default
// "2,10,100"; the script passes 2,10,100,1000 and 10000). Two tree shapes:
//
//   - fresh: the creator added everyone in one commit with a path, so
//     the creator's direct path is set (no unmerged leaves: the new
//     members get their path secrets in the Welcome) and the other parents
//     are blank (resolutions off that path are whole subtrees of leaves);
//   - populated: every member has committed once (each has a full path);
//     the per-member path updates are simulated at the TreeKEM level (keys
//     and signed leaves are real, ciphertexts are skipped), then the last
//     epoch's secrets are shared by the two measured members.

func benchSizes() []int {
	s := os.Getenv("QPC_MLS_BENCH_SIZES")
	if s == "" {
		s = "2,10,100"
	}
	var out []int
	start := 0
	for i := 0; i <= len(s); i++ {
		if i == len(s) || s[i] == ',' {
			if n, err := strconv.Atoi(s[start:i]); err == nil && n >= 2 {
				out = append(out, n)
			}
			start = i + 1
		}
	}
	return out
}

// benchGroup is a group of n members as seen by two of them: a (leaf 0,
// the creator) and b (the last leaf).
type benchGroup struct {
	a, b      *Group
	kps       []*KeyPackageBundle
	joiner    *KeyPackageBundle
	welcome   []byte // Welcome adding joiner, created by a
	commitB   []byte // b's full-path commit (PublicMessage), for processing at a
	aSnapshot Group
}

var (
	benchMu     sync.Mutex
	benchGroups = map[string]*benchGroup{}
	benchBundle = map[string][]*KeyPackageBundle{}
)

func bundles(tb testing.TB, n int) []*KeyPackageBundle { return suiteBundles(tb, 1, n) }

// suiteBundles returns n KeyPackage bundles of suite id (cached).
func suiteBundles(tb testing.TB, id CipherSuiteID, n int) []*KeyPackageBundle {
	benchMu.Lock()
	defer benchMu.Unlock()
	key := fmt.Sprintf("%d/%d", id, n)
	if kb := benchBundle[key]; kb != nil {
		return kb
	}
	s, _ := Suite(id)
	out := make([]*KeyPackageBundle, n)
	for i := range out {
		sig, _, err := s.GenerateSignatureKey()
		mustNoErr(tb, err, "sig")
		out[i], err = GenerateKeyPackage(id, BasicIdentity("user"+strconv.Itoa(i), "d"), sig, KeyPackageOptions{})
		mustNoErr(tb, err, "kp")
	}
	benchBundle[key] = out
	return out
}

var benchCfg = Config{PublicHandshake: true, PaddingBlock: -1,
	AllowedSuites: []CipherSuiteID{1, MLS256XWingAES256GCMSHA512Ed25519, MLS256XWingChaCha20Poly1305SHA512Ed25519}}

// freshGroup creates the group with one add-all commit; b joins.
func freshGroup(tb testing.TB, id CipherSuiteID, n int) (*Group, *Group, []*KeyPackageBundle) {
	kb := suiteBundles(tb, id, n)
	a, err := CreateGroup(benchCfg, NewGroupID(), id, kb[0].KeyPackage.LeafNode.Credential.Identity, kb[0].SignaturePriv, GroupOptions{})
	mustNoErr(tb, err, "CreateGroup")
	kps := make([]*KeyPackage, 0, n-1)
	for _, x := range kb[1:] {
		kps = append(kps, &x.KeyPackage)
	}
	pc, err := a.Commit(CommitOptions{Add: kps})
	mustNoErr(tb, err, "add all")
	mustNoErr(tb, a.MergePendingCommit(pc), "merge")
	b, err := JoinFromWelcome(benchCfg, pc.Welcome, kb[n-1], JoinOptions{})
	mustNoErr(tb, err, "join")
	return a, b, kb
}

// populate simulates one full-path update per member on a and b's shared
// tree (leaf order), then installs the tree and the path keys of a and b.
func populate(tb testing.TB, a, b *Group, kb []*KeyPackageBundle) {
	s := a.suite
	t := a.tree.clone()
	keys := map[nodeIndex]nodeKey{}
	n := len(kb)
	for i := 0; i < n; i++ {
		l := leafIndex(i)
		fdp := t.filteredDirectPath(l)
		pubs := make([]HPKEPublicKey, len(fdp))
		for j, st := range fdp {
			seed := make([]byte, 32)
			_, _ = rand.Read(seed)
			priv, pub, err := s.DeriveKeyPair(seed)
			mustNoErr(tb, err, "node key")
			pubs[j] = pub
			keys[st.node] = nodeKey{priv, pub}
		}
		lpriv, lpub, err := s.GenerateHPKEKey()
		mustNoErr(tb, err, "leaf key")
		keys[l.node()] = nodeKey{lpriv, lpub}
		ln := *t.leaf(l)
		ln.EncryptionKey, ln.Source, ln.Lifetime = lpub, LeafNodeSourceCommit, Lifetime{}
		ln.ParentHash = t.applyPathNodes(l, fdp, pubs)
		mustNoErr(tb, s.SignLeafNode(&ln, a.gc.GroupID, uint32(l), kb[i].SignaturePriv), "sign leaf")
		t.setLeaf(l, &ln)
	}
	mustNoErr(tb, t.verifyParentHashes(), "populated tree parent hashes")
	th := t.rootHash()
	for _, g := range []*Group{a, b} {
		g.tree = t.clone()
		g.gc.TreeHash = th
		g.keys = nodeKeys{}
		x := g.own.node()
		for ok := true; ok; x, ok = x.parent(t.leafCount()) {
			if k, has := keys[x]; has {
				g.keys[x] = k
			}
		}
	}
}

func getBenchGroup(tb testing.TB, shape string, n int) *benchGroup {
	return getSuiteBenchGroup(tb, 1, shape, n)
}

func getSuiteBenchGroup(tb testing.TB, id CipherSuiteID, shape string, n int) *benchGroup {
	key := fmt.Sprintf("%d/%s/%d", id, shape, n)
	benchMu.Lock()
	bg := benchGroups[key]
	benchMu.Unlock()
	if bg != nil {
		return bg
	}
	a, b, kb := freshGroup(tb, id, n)
	if shape == "populated" {
		populate(tb, a, b, kb)
	}
	bg = &benchGroup{a: a, b: b, kps: kb}
	s, _ := Suite(id)
	sig, _, _ := s.GenerateSignatureKey()
	var err error
	bg.joiner, err = GenerateKeyPackage(id, []byte("joiner/d"), sig, KeyPackageOptions{})
	mustNoErr(tb, err, "joiner kp")
	pc, err := a.Commit(CommitOptions{Add: []*KeyPackage{&bg.joiner.KeyPackage}})
	mustNoErr(tb, err, "add joiner")
	bg.welcome = pc.Welcome
	a.ClearPendingCommit()
	pcb, err := b.Commit(CommitOptions{})
	mustNoErr(tb, err, "b commit")
	bg.commitB = pcb.Message
	b.ClearPendingCommit()
	bg.aSnapshot = *a
	benchMu.Lock()
	benchGroups[key] = bg
	benchMu.Unlock()
	return bg
}

var shapes = []string{"fresh", "populated"}

// BenchmarkGroupCreateAddAll: create a group and add n-1 members in one
// commit (KeyPackages generated beforehand), including the Welcome.
func BenchmarkGroupCreateAddAll(b *testing.B) {
	for _, n := range benchSizes() {
		b.Run(fmt.Sprintf("n=%d", n), func(b *testing.B) {
			kb := bundles(b, n)
			kps := make([]*KeyPackage, 0, n-1)
			for _, x := range kb[1:] {
				kps = append(kps, &x.KeyPackage)
			}
			b.ReportAllocs()
			defer reportCPU(b)()
			for b.Loop() {
				g, err := CreateGroup(benchCfg, NewGroupID(), 1, []byte("user0/d"), kb[0].SignaturePriv, GroupOptions{})
				if err != nil {
					b.Fatal(err)
				}
				pc, err := g.Commit(CommitOptions{Add: kps})
				if err != nil {
					b.Fatal(err)
				}
				if err := g.MergePendingCommit(pc); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkGroupUpdateCommit: one member's empty commit with a full path.
// It also reports the number of path-secret ciphertexts the commit carries
// (the resolutions of the committer's copath: HPKE seals), which
// scripts/bench-mls-peers.sh checks against ts-mls's for the same tree.
//
// The shapes "fresh" and "populated" measure the commit a group of
// current clients makes: the ratchet tree returned beside the GroupInfo
// (CommitOptions.SeparateTree), not signed inside it. "fresh-embedded"
// and "populated-embedded" measure the tree inside the GroupInfo, as a
// group with an older client (or a server that does not store trees)
// gets; scripts/bench-mls-peers.sh compares that one with ts-mls, whose
// figure includes a GroupInfo with the tree.
//
// The committer's tree holds the encoding of its last commit (the setup
// made one), as a member's does after its own commit or an import of its
// state (pubCache): the tree is copied from it, not gathered node by
// node. "populated-cold" drops that before every commit, the cost for a
// tree never encoded (built by processing others' commits since the last
// import).
func BenchmarkGroupUpdateCommit(b *testing.B) {
	for _, shape := range []string{"fresh", "populated", "fresh-embedded", "populated-embedded", "populated-cold"} {
		tree, embedded := strings.CutSuffix(shape, "-embedded")
		tree, cold := strings.CutSuffix(tree, "-cold")
		separate := !embedded
		for _, n := range benchSizes() {
			b.Run(fmt.Sprintf("%s/n=%d", shape, n), func(b *testing.B) {
				bg := getBenchGroup(b, tree, n)
				b.ReportAllocs()
				defer reportCPU(b)()
				for b.Loop() {
					if cold {
						bg.b.tree.pub = nil
					}
					pc, err := bg.b.Commit(CommitOptions{SeparateTree: separate})
					if err != nil {
						b.Fatal(err)
					}
					if (pc.Tree != nil) != separate {
						b.Fatalf("separate tree %v, want %v", pc.Tree != nil, separate)
					}
				}
				bg.b.ClearPendingCommit()
				b.ReportMetric(float64(pathCiphertexts(bg.b)), "path-cts")
			})
		}
	}
}

// pathCiphertexts is the number of path secrets g's commit encrypts: the
// sizes of the resolutions of its filtered direct path's copath nodes.
func pathCiphertexts(g *Group) int {
	c := 0
	for _, st := range g.tree.filteredDirectPath(g.own) {
		c += len(g.tree.resolution(st.copath))
	}
	return c
}

// BenchmarkGroupProcessCommit: processing that commit at another member.
func BenchmarkGroupProcessCommit(b *testing.B) {
	for _, shape := range shapes {
		for _, n := range benchSizes() {
			b.Run(fmt.Sprintf("%s/n=%d", shape, n), func(b *testing.B) {
				bg := getBenchGroup(b, shape, n)
				b.ReportAllocs()
				defer reportCPU(b)()
				for b.Loop() {
					// Processing wipes the left epoch's secrets: give each
					// iteration its own copy of the snapshot's.
					bg.a.es = cloneEpochSecrets(bg.aSnapshot.es)
					if _, err := bg.a.ProcessMessage(bg.commitB); err != nil {
						b.Fatal(err)
					}
					*bg.a = bg.aSnapshot
				}
			})
		}
	}
}

// BenchmarkGroupJoinWelcome: joining from a Welcome (ratchet tree in the
// extension, full validation).
func BenchmarkGroupJoinWelcome(b *testing.B) {
	for _, shape := range shapes {
		for _, n := range benchSizes() {
			b.Run(fmt.Sprintf("%s/n=%d", shape, n), func(b *testing.B) {
				bg := getBenchGroup(b, shape, n)
				b.ReportAllocs()
				defer reportCPU(b)()
				for b.Loop() {
					if _, err := JoinFromWelcome(benchCfg, bg.welcome, bg.joiner, JoinOptions{}); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

// BenchmarkGroupAppMessage: protect at one member and unprotect at
// another, 1 KiB.
func BenchmarkGroupAppMessage(b *testing.B) {
	for _, n := range benchSizes() {
		b.Run(fmt.Sprintf("n=%d", n), func(b *testing.B) {
			bg := getBenchGroup(b, "fresh", n)
			msg := make([]byte, 1024)
			b.ReportAllocs()
			defer reportCPU(b)()
			for b.Loop() {
				ct, err := bg.a.Protect(msg, nil)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := bg.b.ProcessMessage(ct); err != nil {
					b.Fatal(err)
				}
			}
			bg.aSnapshot = *bg.a
		})
	}
}

// reportCPU starts measuring process CPU time; the returned func reports
// it per iteration as "cpu-ns/op".
func reportCPU(b *testing.B) func() {
	start := processCPU()
	return func() {
		if b.N > 0 {
			b.ReportMetric(float64(processCPU()-start)/float64(b.N), "cpu-ns/op")
		}
	}
}

func cloneEpochSecrets(e *EpochSecrets) *EpochSecrets {
	c := &EpochSecrets{suite: e.suite}
	for i, p := range c.ptrs() {
		*p = e.all()[i].Clone()
	}
	return c
}
