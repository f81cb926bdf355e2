package mls

import (
	"slices"
	"testing"
)

type treeValidationCase struct {
	CipherSuite CipherSuiteID `json:"cipher_suite"`
	Tree        hexBytes      `json:"tree"`
	GroupID     hexBytes      `json:"group_id"`
	Resolutions [][]uint32    `json:"resolutions"`
	TreeHashes  []hexBytes    `json:"tree_hashes"`
}

func decodeTree(t *testing.T, s *CipherSuite, b []byte) *ratchetTree {
	t.Helper()
	var rt RatchetTree
	mustNoErr(t, rt.Unmarshal(b), "decode ratchet tree")
	tree, err := treeFromPublic(s, rt)
	mustNoErr(t, err, "treeFromPublic")
	return tree
}

func TestTreeValidationVectors(t *testing.T) {
	runVectors(t, "tree-validation.json", func(c *treeValidationCase) CipherSuiteID { return c.CipherSuite },
		func(t *testing.T, s *CipherSuite, tc *treeValidationCase) {
			tree := decodeTree(t, s, tc.Tree)
			if len(tc.Resolutions) > len(tree.nodes) {
				t.Fatalf("%d resolutions for %d nodes", len(tc.Resolutions), len(tree.nodes))
			}
			for i, want := range tc.Resolutions {
				got := tree.resolution(nodeIndex(i))
				g := make([]uint32, len(got))
				for j := range got {
					g[j] = uint32(got[j])
				}
				if !slices.Equal(g, want) && !(len(g) == 0 && len(want) == 0) {
					t.Errorf("resolution(%d) = %v, want %v", i, g, want)
				}
			}
			for i, want := range tc.TreeHashes {
				mustHex(t, tree.treeHash(nodeIndex(i)), want, "tree hash")
			}
			mustNoErr(t, tree.verifyStructure(), "structure")
			mustNoErr(t, tree.verifyParentHashes(), "parent hashes")
			mustNoErr(t, tree.verifyLeafSignatures(tc.GroupID), "leaf signatures")
			pub := tree.public()
			raw, err := pub.Marshal()
			mustNoErr(t, err, "re-encode")
			mustHex(t, raw, tc.Tree, "re-encoded tree")
		})
}

type treeOperationsCase struct {
	CipherSuite    CipherSuiteID `json:"cipher_suite"`
	TreeBefore     hexBytes      `json:"tree_before"`
	Proposal       hexBytes      `json:"proposal"`
	ProposalSender uint32        `json:"proposal_sender"`
	TreeHashBefore hexBytes      `json:"tree_hash_before"`
	TreeAfter      hexBytes      `json:"tree_after"`
	TreeHashAfter  hexBytes      `json:"tree_hash_after"`
}

func TestTreeOperationsVectors(t *testing.T) {
	runVectors(t, "tree-operations.json", func(c *treeOperationsCase) CipherSuiteID { return c.CipherSuite },
		func(t *testing.T, s *CipherSuite, tc *treeOperationsCase) {
			tree := decodeTree(t, s, tc.TreeBefore)
			mustHex(t, tree.rootHash(), tc.TreeHashBefore, "tree hash before")
			var p Proposal
			mustNoErr(t, p.Unmarshal(tc.Proposal), "decode proposal")
			switch p.Type {
			case ProposalTypeAdd:
				tree.addLeaf(&p.Add.KeyPackage.LeafNode)
			case ProposalTypeUpdate:
				tree.updateLeaf(leafIndex(tc.ProposalSender), &p.Update.LeafNode)
			case ProposalTypeRemove:
				tree.removeLeaf(leafIndex(p.Remove.Removed))
				tree.truncate()
			default:
				t.Fatalf("proposal type %d", p.Type)
			}
			pub := tree.public()
			raw, err := pub.Marshal()
			mustNoErr(t, err, "encode")
			mustHex(t, raw, tc.TreeAfter, "tree after")
			mustHex(t, tree.rootHash(), tc.TreeHashAfter, "tree hash after")
		})
}

func TestEncodePublicMatches(t *testing.T) {
	runVectors(t, "tree-validation.json", func(c *treeValidationCase) CipherSuiteID { return c.CipherSuite },
		func(t *testing.T, s *CipherSuite, tc *treeValidationCase) {
			tree := decodeTree(t, s, tc.Tree)
			for i := 0; i < 2; i++ { // cold and cached
				e := &encoder{}
				tree.encodePublic(e)
				mustNoErr(t, e.err, "encodePublic")
				mustHex(t, e.buf, tc.Tree, "encodePublic")
			}
		})
}
