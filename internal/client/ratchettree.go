package client

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/quicprochat/quicprochat/internal/mls"
)

// The ratchet tree beside the GroupInfo (docs/protocol.md, "Ratchet tree
// beside the GroupInfo"). A commit's GroupInfo for the server normally
// carries the whole ratchet tree, which the GroupInfo's signature hashes:
// at 10 000 members that is megabytes and most of the commit's CPU. When
// every member of the new epoch can join from a tree sent separately (its
// leaf lists TreeBesideExtension) and the server stores one (PingResponse
// feature "ratchet_tree"), the commit sends a GroupInfo without the tree
// plus the tree in EnqueueRequest.ratchet_tree. Otherwise the tree stays
// in the GroupInfo, so a client that predates this can still rejoin.

// TreeBesideExtension is the private-use extension type (RFC 9420 §17.3)
// this client lists in its leaves' capabilities: it joins by external
// commit from a GroupInfo whose tree comes beside it. It is only a
// capability; no extension of this type is ever sent.
const TreeBesideExtension mls.ExtensionType = 0xF0C2

// featureRatchetTree is the PingResponse feature of a server that stores
// the tree (internal/server.FeatureRatchetTree).
const featureRatchetTree = "ratchet_tree"

// leafCapabilities are the capabilities of every leaf this device makes
// (KeyPackages, new groups, external joins); the rest (version, suite,
// credential type, the certificate extension) is filled in by mls.
func leafCapabilities() *mls.Capabilities {
	return &mls.Capabilities{Extensions: []mls.ExtensionType{TreeBesideExtension}}
}

// serverStoresTrees reports whether the server announced the
// "ratchet_tree" feature (asked once per Client, with the suite policy),
// and no Enqueue since has shown a server that dropped a tree. A server
// that cannot be asked counts as one without it: the tree stays embedded.
func (c *Client) serverStoresTrees(ctx context.Context) bool {
	// Asked before a commit is queued, which works offline: do not wait
	// long for an unreachable server.
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	if _, err := c.SuitePolicy(ctx); err != nil {
		return false
	}
	c.policy.mu.Lock()
	defer c.policy.mu.Unlock()
	return slices.Contains(c.policy.features, featureRatchetTree) && !c.policy.treeDropped
}

// treeDropped records that the server did not store a tree it was sent
// (a node of an older release behind the same address): later commits
// embed the tree again until the next Client asks afresh.
func (c *Client) treeDropped() {
	c.policy.mu.Lock()
	c.policy.treeDropped = true
	c.policy.mu.Unlock()
	c.log.Warn("client: the server did not store the ratchet tree sent beside a GroupInfo; commits embed the tree again")
}

// commitTreeOptions sets opts to send the tree beside the GroupInfo when
// the server stores trees and every member of the new epoch supports it.
func (c *Client) commitTreeOptions(ctx context.Context, opts *mls.CommitOptions) {
	if c.serverStoresTrees(ctx) {
		opts.SeparateTree, opts.SeparateTreeIf = true, TreeBesideExtension
	}
}

// The outbox keeps a commit's GroupInfo and the tree sent beside it in its
// group_info column: as before, the GroupInfo alone when there is no
// separate tree; otherwise outboxTreeMagic, the GroupInfo's length (4
// bytes, big-endian), the GroupInfo, then the tree. An MLSMessage or a
// bare GroupInfo starts with the protocol version 0x0001, never with the
// magic.
var outboxTreeMagic = []byte("qpc-gi+tree-v1\x00")

// ErrOutboxGroupInfo: a stored outbox GroupInfo with a tree beside it does
// not decode (the database is damaged).
var ErrOutboxGroupInfo = errors.New("client: outbox group info with a ratchet tree does not decode")

func packOutboxGroupInfo(groupInfo, tree []byte) []byte {
	if len(tree) == 0 {
		return groupInfo
	}
	out := make([]byte, 0, len(outboxTreeMagic)+4+len(groupInfo)+len(tree))
	out = append(out, outboxTreeMagic...)
	out = binary.BigEndian.AppendUint32(out, uint32(len(groupInfo)))
	out = append(out, groupInfo...)
	return append(out, tree...)
}

func unpackOutboxGroupInfo(b []byte) (groupInfo, tree []byte, err error) {
	rest, ok := bytes.CutPrefix(b, outboxTreeMagic)
	if !ok {
		return b, nil, nil
	}
	if len(rest) < 4 {
		return nil, nil, fmt.Errorf("%w: %d bytes after the marker", ErrOutboxGroupInfo, len(rest))
	}
	n := binary.BigEndian.Uint32(rest)
	rest = rest[4:]
	if n == 0 || uint64(n) >= uint64(len(rest)) {
		return nil, nil, fmt.Errorf("%w: GroupInfo of %d bytes in %d", ErrOutboxGroupInfo, n, len(rest))
	}
	return rest[:n], rest[n:], nil
}
