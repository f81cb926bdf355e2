package logstore

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"database/sql"
	"encoding/hex"
	"fmt"
	"time"

	"github.com/quicprochat/quicprochat/internal/keylog"
	"github.com/quicprochat/quicprochat/internal/store"
)

// Report is the outcome of Verify.
type Report struct {
	OK         bool      `json:"ok"`
	Entries    uint64    `json:"entries"`
	Heads      int       `json:"heads"`
	Root       string    `json:"root"` // hex, of the recomputed tree
	LastHeadAt time.Time `json:"last_head_at"`
	// Problems names each mismatch: an entry whose stored hash or fields
	// differ from its bytes, a gap, a head whose root is not the
	// recomputed tree's at its size or whose signature fails.
	Problems []string `json:"problems,omitempty"`
	Took     string   `json:"took"`
}

// maxProblems bounds the report of a badly damaged log.
const maxProblems = 100

// Verify recomputes the whole tree from the stored entries (ignoring the
// stored leaf hashes except to compare them) and checks every stored head
// against it: its root at the head's size, its signature under the key
// it names. Every head being a root of one recomputed tree is what makes
// them all consistent with each other.
func Verify(ctx context.Context, db *store.DB) (Report, error) {
	start := time.Now()
	rep := Report{}
	problem := func(format string, a ...any) {
		if len(rep.Problems) < maxProblems {
			rep.Problems = append(rep.Problems, fmt.Sprintf(format, a...))
		}
	}
	var tree keylog.Tree
	err := db.ReadTx(ctx, func(tx *sql.Tx) error {
		keys := map[string]ed25519.PublicKey{}
		rows, err := tx.QueryContext(ctx, "SELECT id, public_key FROM keylog_keys")
		if err != nil {
			return err
		}
		for rows.Next() {
			var id string
			var pub []byte
			if err := rows.Scan(&id, &pub); err != nil {
				rows.Close()
				return err
			}
			keys[id] = pub
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		rows, err = tx.QueryContext(ctx, "SELECT seq, kind, account_name, device_id, data, entry, leaf_hash FROM keylog_entries ORDER BY seq")
		if err != nil {
			return err
		}
		for rows.Next() {
			var seq int64
			var kind int
			var name, dev string
			var data, entry, leaf []byte
			if err := rows.Scan(&seq, &kind, &name, &dev, &data, &entry, &leaf); err != nil {
				rows.Close()
				return err
			}
			if uint64(seq) != tree.Size() {
				problem("entry %d: expected entry %d first (gap)", seq, tree.Size())
				for tree.Size() < uint64(seq) {
					tree.Append(keylog.Hash{}) // keep indices aligned; every head beyond fails
				}
			}
			h := keylog.LeafHash(entry)
			if !bytes.Equal(h[:], leaf) {
				problem("entry %d: stored leaf hash %x is not the hash of its bytes %x", seq, leaf, h)
			}
			e, err := keylog.ParseEntry(entry)
			switch {
			case err != nil:
				problem("entry %d: %v", seq, err)
			case int(e.Kind) != kind || e.AccountName != name || !bytes.Equal(e.Data, data):
				problem("entry %d: its columns (kind %d, account %q) differ from its bytes (%v, %q)", seq, kind, name, e.Kind, e.AccountName)
			}
			tree.Append(h)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		rep.Entries = tree.Size()
		rows, err = tx.QueryContext(ctx, "SELECT tree_size, root_hash, key_id, head FROM keylog_heads ORDER BY tree_size")
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var size int64
			var root, raw []byte
			var keyID string
			if err := rows.Scan(&size, &root, &keyID, &raw); err != nil {
				return err
			}
			rep.Heads++
			h, err := keylog.ParseHead(raw)
			if err != nil {
				problem("head %d: %v", size, err)
				continue
			}
			if h.Time.After(rep.LastHeadAt) {
				rep.LastHeadAt = h.Time.UTC()
			}
			if h.Size != uint64(size) || h.KeyID.String() != keyID || !bytes.Equal(h.Root[:], root) {
				problem("head %d: its columns differ from its signed bytes (%v)", size, h)
			}
			pub, ok := keys[h.KeyID.String()]
			if !ok {
				problem("head %d: signed by unknown log key %s", size, h.KeyID)
			} else if err := h.Verify(pub); err != nil {
				problem("head %d: %v", size, err)
			}
			if h.Size > tree.Size() {
				problem("head %d: beyond the %d stored entries", size, tree.Size())
				continue
			}
			want, err := tree.RootAt(h.Size)
			if err != nil {
				return err
			}
			if want != h.Root {
				problem("head %d: root %x, but the entries give %x: this head is not consistent with the log", size, h.Root, want)
			}
		}
		return rows.Err()
	})
	if err != nil {
		return Report{}, fmt.Errorf("keylog: verify: %w", err)
	}
	root, _ := tree.RootAt(tree.Size())
	rep.Root = hex.EncodeToString(root[:])
	if rep.Heads == 0 {
		problem("no signed tree head stored")
	}
	rep.OK = len(rep.Problems) == 0
	rep.Took = time.Since(start).Round(time.Millisecond).String()
	return rep, nil
}
