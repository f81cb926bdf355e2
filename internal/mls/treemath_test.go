package mls

import (
	"slices"
	"testing"
)

func TestTreeMathPaths(t *testing.T) {
	n := leafCount(8)
	for _, c := range []struct {
		leaf           leafIndex
		direct, copath []nodeIndex
	}{
		{0, []nodeIndex{1, 3, 7}, []nodeIndex{2, 5, 11}},
		{2, []nodeIndex{5, 3, 7}, []nodeIndex{6, 1, 11}},
		{7, []nodeIndex{13, 11, 7}, []nodeIndex{12, 9, 3}},
	} {
		x := c.leaf.node()
		if !x.isLeaf() || x.leaf() != c.leaf {
			t.Errorf("leaf %d: node %d", c.leaf, x)
		}
		if got := x.directPath(n); !slices.Equal(got, c.direct) {
			t.Errorf("directPath(leaf %d) = %v, want %v", c.leaf, got, c.direct)
		}
		if got := x.copath(n); !slices.Equal(got, c.copath) {
			t.Errorf("copath(leaf %d) = %v, want %v", c.leaf, got, c.copath)
		}
	}
	if got := leafCount(1).root().directPath(1); len(got) != 0 {
		t.Errorf("one-leaf tree: direct path %v", got)
	}
	for _, c := range []struct {
		a, d nodeIndex
		want bool
	}{{3, 0, true}, {3, 6, true}, {3, 7, false}, {7, 14, true}, {5, 3, false}, {4, 4, true}, {11, 6, false}} {
		if got := c.a.isAncestor(c.d); got != c.want {
			t.Errorf("isAncestor(%d, %d) = %v", c.a, c.d, got)
		}
	}
}
