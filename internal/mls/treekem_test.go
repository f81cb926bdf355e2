package mls

import (
	"testing"
)

type treeKEMCase struct {
	CipherSuite             CipherSuiteID `json:"cipher_suite"`
	GroupID                 hexBytes      `json:"group_id"`
	Epoch                   uint64        `json:"epoch"`
	ConfirmedTranscriptHash hexBytes      `json:"confirmed_transcript_hash"`
	RatchetTree             hexBytes      `json:"ratchet_tree"`
	LeavesPrivate           []struct {
		Index          uint32   `json:"index"`
		EncryptionPriv hexBytes `json:"encryption_priv"`
		SignaturePriv  hexBytes `json:"signature_priv"`
		PathSecrets    []struct {
			Node       uint32   `json:"node"`
			PathSecret hexBytes `json:"path_secret"`
		} `json:"path_secrets"`
	} `json:"leaves_private"`
	UpdatePaths []struct {
		Sender        uint32     `json:"sender"`
		UpdatePath    hexBytes   `json:"update_path"`
		PathSecrets   []hexBytes `json:"path_secrets"`
		CommitSecret  hexBytes   `json:"commit_secret"`
		TreeHashAfter hexBytes   `json:"tree_hash_after"`
	} `json:"update_paths"`
}

func TestTreeKEMVectors(t *testing.T) {
	runVectors(t, "treekem.json", func(c *treeKEMCase) CipherSuiteID { return c.CipherSuite },
		func(t *testing.T, s *CipherSuite, tc *treeKEMCase) {
			base := decodeTree(t, s, tc.RatchetTree)
			keys := map[leafIndex]nodeKeys{}
			sigs := map[leafIndex]SignaturePrivateKey{}
			for _, lp := range tc.LeavesPrivate {
				k := nodeKeys{}
				priv, pub, err := s.HPKEPrivateKeyFromBytes(lp.EncryptionPriv)
				mustNoErr(t, err, "leaf key")
				l := leafIndex(lp.Index)
				mustHex(t, pub, base.encKey(l.node()), "leaf public key")
				k[l.node()] = nodeKey{priv, pub}
				for _, ps := range lp.PathSecrets {
					priv, pub, err := s.deriveNodeKey(ps.PathSecret)
					mustNoErr(t, err, "node key")
					mustHex(t, pub, base.encKey(nodeIndex(ps.Node)), "node public key")
					k[nodeIndex(ps.Node)] = nodeKey{priv, pub}
				}
				keys[l] = k
				sp, _, err := s.SignaturePrivateKeyFromBytes(lp.SignaturePriv)
				mustNoErr(t, err, "signature key")
				sigs[l] = sp
			}
			gcFor := func(th []byte) (*GroupContext, error) {
				return &GroupContext{Version: ProtocolVersionMLS10, CipherSuite: s.ID(), GroupID: tc.GroupID, Epoch: tc.Epoch,
					TreeHash: th, ConfirmedTranscriptHash: tc.ConfirmedTranscriptHash}, nil
			}
			for _, up := range tc.UpdatePaths {
				var path UpdatePath
				mustNoErr(t, path.Unmarshal(up.UpdatePath), "decode UpdatePath")
				from := leafIndex(up.Sender)
				tree := base.clone()
				fdp, err := tree.mergeUpdatePath(from, &path, tc.GroupID, nil)
				mustNoErr(t, err, "merge UpdatePath")
				mustHex(t, tree.rootHash(), up.TreeHashAfter, "tree hash after")
				mustNoErr(t, tree.verifyParentHashes(), "parent hashes after merge")
				gc, _ := gcFor(tree.rootHash())
				gcb, _ := gc.Marshal()
				for j, want := range up.PathSecrets {
					l := leafIndex(j)
					if l == from || want == nil {
						continue
					}
					first, cs, _, err := tree.decryptPath(from, l, fdp, &path, gcb, keys[l], nil)
					mustNoErr(t, err, "decrypt path")
					mustHex(t, first.Bytes(), want, "path secret")
					mustHex(t, cs.Bytes(), up.CommitSecret, "commit secret")
				}
				// Create a new UpdatePath from the same sender; everyone processes it.
				tree2 := base.clone()
				tmpl := *base.leaf(from)
				res, err := tree2.createUpdatePath(from, &tmpl, tc.GroupID, sigs[from], gcFor, nil)
				mustNoErr(t, err, "create UpdatePath")
				mustNoErr(t, tree2.verifyParentHashes(), "parent hashes of own path")
				for l := range keys {
					if l == from {
						continue
					}
					tree3 := base.clone()
					fdp, err := tree3.mergeUpdatePath(from, res.path, tc.GroupID, nil)
					mustNoErr(t, err, "merge own UpdatePath")
					mustHex(t, tree3.rootHash(), tree2.rootHash(), "tree hash of merged own path")
					gc, _ := gcFor(tree3.rootHash())
					gcb, _ := gc.Marshal()
					_, cs, _, err := tree3.decryptPath(from, l, fdp, res.path, gcb, keys[l], nil)
					mustNoErr(t, err, "decrypt own path")
					mustHex(t, cs.Bytes(), res.commitSecret.Bytes(), "commit secret of own path")
				}
			}
		})
}
