package mls

import (
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"testing"
)

// TestVerifyLeafSignaturesFirstBadLeaf: the parallel check of a large tree
// reports the first bad leaf in leaf order, every time, whichever worker
// finds which bad leaf first.
func TestVerifyLeafSignaturesFirstBadLeaf(t *testing.T) {
	const n = 200 // enough leaves for several workers
	if runtime.GOMAXPROCS(0) < 2 {
		defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(2))
	}
	a, _, _ := freshGroup(t, 1, n)
	groupID := a.Context().GroupID
	mustNoErr(t, a.tree.verifyLeafSignatures(groupID), "valid tree")

	corrupt := func(tree *ratchetTree, l leafIndex) {
		x := l.node()
		old := tree.nodes[x]
		leaf := *old.Leaf
		leaf.Signature = slices.Clone(leaf.Signature)
		leaf.Signature[0] ^= 1
		tree.set(x, &Node{Type: NodeTypeLeaf, Leaf: &leaf})
	}
	for _, bad := range [][]leafIndex{{n - 1}, {0}, {37, 150}, {150, 37, 38}, {5, 6, 7, 190}} {
		tree := a.tree.clone()
		for _, l := range bad {
			corrupt(tree, l)
		}
		first := slices.Min(bad)
		for range 20 {
			err := tree.verifyLeafSignatures(groupID)
			if !errors.Is(err, ErrInvalidTree) || !errors.Is(err, ErrInvalidSignature) {
				t.Fatalf("bad leaves %v: error %v, want ErrInvalidTree wrapping ErrInvalidSignature", bad, err)
			}
			if want := fmt.Sprintf("leaf %d:", first); !strings.Contains(err.Error(), want) {
				t.Fatalf("bad leaves %v: error %q does not name %q", bad, err, want)
			}
		}
	}
}
