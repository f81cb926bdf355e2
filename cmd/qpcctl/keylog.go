package main

import (
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/quicprochat/quicprochat/internal/admin"
)

// newKeyLogCommand: the key transparency log (docs/operations.md, "Key
// log"): its latest signed head, and the full re-check.
func newKeyLogCommand(g *globals) *cobra.Command {
	kl := &cobra.Command{Use: "keylog", Short: "Show the key transparency log's latest signed head; re-check the whole log", Args: cobra.NoArgs}
	status := clientCmd(g, "status", "Show the key log's size, root hash, log key and when the last head was signed", cobra.NoArgs,
		func(cmd *cobra.Command, c *admin.Client, _ []string) error {
			ctx, cancel := g.ctx(cmd.Context())
			defer cancel()
			st, err := c.KeyLogStatus(ctx)
			if err != nil {
				return err
			}
			return g.emit(st, func(w io.Writer) {
				fmt.Fprintf(w, "size:       %d entries\nroot:       %s\nlog key:    %s (%s)\nlast head:  %s\nheads:      %d\n",
					st.Size, st.Root, st.KeyID, st.PublicKey, st.LastHeadAt.UTC().Format(time.RFC3339), st.Heads)
			})
		})
	verify := clientCmd(g, "verify", "Recompute the key log's Merkle tree from its entries and check every stored signed head against it (exit 1 on any mismatch)", cobra.NoArgs,
		func(cmd *cobra.Command, c *admin.Client, _ []string) error {
			ctx, cancel := g.ctx(cmd.Context())
			defer cancel()
			rep, err := c.KeyLogVerify(ctx)
			if err != nil {
				return err
			}
			if err := g.emit(rep, func(w io.Writer) {
				state := "consistent"
				if !rep.OK {
					state = "NOT CONSISTENT"
				}
				fmt.Fprintf(w, "key log %s: %d entries, %d signed heads checked, root %s (%s)\n", state, rep.Entries, rep.Heads, rep.Root, rep.Took)
				for _, p := range rep.Problems {
					fmt.Fprintf(w, "  %s\n", p)
				}
			}); err != nil {
				return err
			}
			if !rep.OK {
				return fmt.Errorf("the key log does not match its signed heads (%d problems): follow docs/runbooks/keylog-inconsistent.md", len(rep.Problems))
			}
			return nil
		})
	kl.AddCommand(status, verify)
	return kl
}
