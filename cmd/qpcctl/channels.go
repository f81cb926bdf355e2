package main

import (
	"fmt"
	"io"
	"strconv"

	"github.com/spf13/cobra"

	"github.com/quicprochat/quicprochat/internal/admin"
)

// newChannelsCommand: inspect a delivery channel and recover one a member
// wedged with commits nobody else can process (docs/operations.md,
// "A wedged group").
func newChannelsCommand(g *globals) *cobra.Command {
	ch := &cobra.Command{Use: "channels", Short: "Show a channel and its commits; revert a wedged channel's epoch", Args: cobra.NoArgs}
	var commits int
	show := clientCmd(g, "show CHANNEL_ID", "Show a channel (32 hex characters): epoch, members and its latest commits with their senders", cobra.ExactArgs(1),
		func(cmd *cobra.Command, c *admin.Client, args []string) error {
			ctx, cancel := g.ctx(cmd.Context())
			defer cancel()
			info, err := c.GetChannel(ctx, args[0], commits)
			if err != nil {
				return err
			}
			return g.emit(info, func(w io.Writer) { printChannel(w, info) })
		})
	show.Flags().IntVar(&commits, "commits", 20, "show this many of the latest commits (0 to 1000)")

	var to string
	var remove string
	revert := &cobra.Command{
		Use:   "revert-epoch CHANNEL_ID --to EPOCH",
		Short: "Move a wedged channel back to the last epoch its honest members share, optionally removing the member who wedged it",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if to == "" {
				return usageError{fmt.Errorf("--to is required: the last epoch the honest members share (see `qpcctl channels show %s`)", args[0])}
			}
			epoch, err := strconv.ParseUint(to, 10, 64)
			if err != nil {
				return usageError{fmt.Errorf("--to %q is not an epoch number", to)}
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			ctx, cancel := g.ctx(cmd.Context())
			defer cancel()
			res, err := c.RevertEpoch(ctx, args[0], admin.RevertEpochRequest{To: epoch, RemoveAccount: remove})
			if err != nil {
				return failed(err)
			}
			return g.emit(res, func(w io.Writer) {
				fmt.Fprintf(w, "channel %s: epoch %d -> %d\n", res.ChannelID, res.From, res.To)
				if res.GroupInfoCleared {
					fmt.Fprintln(w, "stored GroupInfo of a reverted epoch deleted")
				}
				if res.RemovedAccount != "" {
					fmt.Fprintf(w, "account %s removed from the channel (%d memberships)\n", res.RemovedAccount, res.RemovedMemberships)
				}
				fmt.Fprintf(w, "next: a member commits the offender's removal at epoch %d (qpc group remove)\n", res.To)
			})
		},
	}
	revert.Flags().StringVar(&to, "to", "", "the epoch to go back to (lower than the channel's; required)")
	revert.Flags().StringVar(&remove, "remove", "", "account (id or name) to take off the channel in the same step")
	ch.AddCommand(show, revert)
	return ch
}

func printChannel(w io.Writer, c admin.Channel) {
	fmt.Fprintf(w, "id:        %s\nkind:      %s\ngroup id:  %s\nepoch:     %d\nhead seq:  %d\n", c.ID, c.Kind, c.GroupID, c.Epoch, c.HeadSeq)
	if c.GroupInfoEpoch != nil {
		fmt.Fprintf(w, "groupinfo: epoch %d\n", *c.GroupInfoEpoch)
	} else {
		fmt.Fprintln(w, "groupinfo: none")
	}
	fmt.Fprintf(w, "members:   %d\n", len(c.Members))
	rows := make([][]string, 0, len(c.Members))
	for _, m := range c.Members {
		dev := m.DeviceID
		if dev == "" {
			dev = "(all)"
		}
		rows = append(rows, []string{m.AccountName, m.AccountID, dev})
	}
	tableRows(w, []string{"ACCOUNT", "ACCOUNT ID", "DEVICE"}, rows)
	fmt.Fprintf(w, "latest commits (newest first): %d\n", len(c.Commits))
	rows = rows[:0]
	for _, cm := range c.Commits {
		rows = append(rows, []string{strconv.FormatUint(cm.Seq, 10), fmt.Sprintf("%d -> %d", cm.Epoch, cm.Epoch+1), cm.AccountName, cm.DeviceID, fmtTime(cm.Time)})
	}
	tableRows(w, []string{"SEQ", "EPOCH", "SENDER", "DEVICE", "TIME"}, rows)
}
