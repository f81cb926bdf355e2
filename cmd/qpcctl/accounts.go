package main

import (
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/quicprochat/quicprochat/internal/admin"
)

// clientCmd builds a command whose work is one admin API call.
func clientCmd(g *globals, use, short string, args cobra.PositionalArgs, fn func(cmd *cobra.Command, c *admin.Client, args []string) error) *cobra.Command {
	return &cobra.Command{
		Use: use, Short: short, Args: args,
		RunE: func(cmd *cobra.Command, a []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			return failed(fn(cmd, c, a))
		},
	}
}

func newAccountsCommand(g *globals) *cobra.Command {
	acc := &cobra.Command{Use: "accounts", Short: "List, show, disable and enable accounts", Args: cobra.NoArgs}
	var after string
	var limit int
	list := clientCmd(g, "list", "List accounts by name", cobra.NoArgs, func(cmd *cobra.Command, c *admin.Client, _ []string) error {
		ctx, cancel := g.ctx(cmd.Context())
		defer cancel()
		as, err := c.ListAccounts(ctx, after, limit)
		if err != nil {
			return err
		}
		return g.emit(as, func(w io.Writer) { printAccounts(w, as) })
	})
	list.Flags().StringVar(&after, "after", "", "list names after this one (paging)")
	list.Flags().IntVar(&limit, "limit", 0, "at most this many (0: all)")
	var recount bool
	show := clientCmd(g, "show ACCOUNT", "Show an account (id or name), its devices and its usage against the per-account quotas", cobra.ExactArgs(1), func(cmd *cobra.Command, c *admin.Client, args []string) error {
		ctx, cancel := g.ctx(cmd.Context())
		defer cancel()
		get := c.GetAccount
		if recount {
			get = c.RecountUsage
		}
		a, err := get(ctx, args[0])
		if err != nil {
			return err
		}
		return g.emit(a, func(w io.Writer) { printAccount(w, a) })
	})
	show.Flags().BoolVar(&recount, "recount", false, "first rebuild the usage counters from the stored data (scans the account's messages)")
	setter := func(use, short string, disabled bool) *cobra.Command {
		return clientCmd(g, use, short, cobra.ExactArgs(1), func(cmd *cobra.Command, c *admin.Client, args []string) error {
			ctx, cancel := g.ctx(cmd.Context())
			defer cancel()
			a, err := c.SetAccountDisabled(ctx, args[0], disabled)
			if err != nil {
				return err
			}
			return g.emit(a, func(w io.Writer) { fmt.Fprintf(w, "account %s (%s) is %s\n", a.Name, a.ID, a.Status) })
		})
	}
	acc.AddCommand(list, show,
		setter("disable ACCOUNT", "Disable an account: its tokens stop working, its devices cannot log in", true),
		setter("enable ACCOUNT", "Re-enable a disabled account", false))
	return acc
}

func printAccounts(w io.Writer, as []admin.Account) {
	rows := make([][]string, 0, len(as))
	for _, a := range as {
		rows = append(rows, []string{a.ID, a.Name, a.Status, fmtTime(a.CreatedAt)})
	}
	tableRows(w, []string{"ID", "NAME", "STATUS", "CREATED"}, rows)
}

func printAccount(w io.Writer, a admin.Account) {
	fmt.Fprintf(w, "id:      %s\nname:    %s\nstatus:  %s\ncreated: %s\n", a.ID, a.Name, a.Status, fmtTime(a.CreatedAt))
	fmt.Fprintf(w, "devices: %d\n", len(a.Devices))
	if len(a.Devices) > 0 {
		printDevices(w, a.Devices)
	}
	if len(a.Usage) > 0 {
		fmt.Fprintln(w, "usage:")
		printUsage(w, a.Usage)
	}
}

// printUsage shows each quota: used, allowed, the share used and the
// option an operator raises.
func printUsage(w io.Writer, us []admin.UsageLimit) {
	rows := make([][]string, 0, len(us))
	for _, u := range us {
		num := func(n int64) string { return fmt.Sprint(n) }
		if u.Unit == "bytes" {
			num = formatBytes
		}
		quota, share := "no limit", "-"
		if u.Quota > 0 {
			quota, share = num(u.Quota), fmt.Sprintf("%.0f%%", 100*float64(u.Used)/float64(u.Quota))
		}
		rows = append(rows, []string{u.Limit, num(u.Used), quota, share, u.Option})
	}
	tableRows(w, []string{"LIMIT", "USED", "QUOTA", "USE", "OPTION"}, rows)
}

func printDevices(w io.Writer, ds []admin.Device) {
	rows := make([][]string, 0, len(ds))
	for _, d := range ds {
		rows = append(rows, []string{d.ID, d.AccountName, d.Name, d.Status, fmtTime(d.CreatedAt), fmtTime(d.LastSeen)})
	}
	tableRows(w, []string{"ID", "ACCOUNT", "NAME", "STATUS", "CREATED", "LAST SEEN"}, rows)
}

func newDevicesCommand(g *globals) *cobra.Command {
	dev := &cobra.Command{Use: "devices", Short: "List and revoke devices", Args: cobra.NoArgs}
	var account string
	list := clientCmd(g, "list", "List devices (of one account with --account)", cobra.NoArgs, func(cmd *cobra.Command, c *admin.Client, _ []string) error {
		ctx, cancel := g.ctx(cmd.Context())
		defer cancel()
		ds, err := c.ListDevices(ctx, account)
		if err != nil {
			return err
		}
		return g.emit(ds, func(w io.Writer) { printDevices(w, ds) })
	})
	list.Flags().StringVar(&account, "account", "", "only this account's devices (id or name)")
	revoke := clientCmd(g, "revoke DEVICE", "Revoke a device: its tokens stop working at once, it cannot log in again", cobra.ExactArgs(1), func(cmd *cobra.Command, c *admin.Client, args []string) error {
		ctx, cancel := g.ctx(cmd.Context())
		defer cancel()
		if err := c.RevokeDevice(ctx, args[0]); err != nil {
			return err
		}
		return g.emit(map[string]string{"revoked": args[0]}, func(w io.Writer) { fmt.Fprintf(w, "device %s revoked\n", args[0]) })
	})
	dev.AddCommand(list, revoke)
	return dev
}

func newInvitesCommand(g *globals) *cobra.Command {
	inv := &cobra.Command{Use: "invites", Short: "Create, list and revoke single-use registration invites", Args: cobra.NoArgs}
	var ttl time.Duration
	var by string
	create := clientCmd(g, "create", "Create a single-use invite; the code is shown once", cobra.NoArgs, func(cmd *cobra.Command, c *admin.Client, _ []string) error {
		ctx, cancel := g.ctx(cmd.Context())
		defer cancel()
		i, err := c.CreateInvite(ctx, ttl, by)
		if err != nil {
			return err
		}
		if i.Warning != "" && !g.json {
			fmt.Fprintln(g.stderr, "qpcctl: warning:", i.Warning)
		}
		return g.emit(i, func(w io.Writer) {
			fmt.Fprintf(w, "invite %s: code %s\nexpires %s; the code is not shown again\n", i.ID, i.Code, fmtTime(i.ExpiresAt))
		})
	})
	create.Flags().DurationVar(&ttl, "ttl", 7*24*time.Hour, "how long the invite is valid (at most 2160h)")
	create.Flags().StringVar(&by, "created-by", "qpcctl", "operator label stored with the invite")
	list := clientCmd(g, "list", "List invites, newest first", cobra.NoArgs, func(cmd *cobra.Command, c *admin.Client, _ []string) error {
		ctx, cancel := g.ctx(cmd.Context())
		defer cancel()
		is, err := c.ListInvites(ctx)
		if err != nil {
			return err
		}
		return g.emit(is, func(w io.Writer) {
			rows := make([][]string, 0, len(is))
			for _, i := range is {
				rows = append(rows, []string{i.ID, i.State, i.CreatedBy, fmtTime(i.CreatedAt), fmtTime(i.ExpiresAt), usedBy(i)})
			}
			tableRows(w, []string{"ID", "STATE", "CREATED BY", "CREATED", "EXPIRES", "USED BY"}, rows)
		})
	})
	revoke := clientCmd(g, "revoke ID", "Revoke an unused invite", cobra.ExactArgs(1), func(cmd *cobra.Command, c *admin.Client, args []string) error {
		ctx, cancel := g.ctx(cmd.Context())
		defer cancel()
		if err := c.RevokeInvite(ctx, args[0]); err != nil {
			return err
		}
		return g.emit(map[string]string{"revoked": args[0]}, func(w io.Writer) { fmt.Fprintf(w, "invite %s revoked\n", args[0]) })
	})
	inv.AddCommand(create, list, revoke)
	return inv
}

// usedBy names the account an invite was used for: its name, or its id
// if the account has no name any more.
func usedBy(i admin.Invite) string {
	if i.UsedByName != "" {
		return i.UsedByName
	}
	return i.UsedBy
}

// formatBytes prints a byte count in binary units (12.0 MiB).
func formatBytes(n int64) string {
	if n < 1024 {
		return fmt.Sprintf("%d B", n)
	}
	v, unit := float64(n)/1024, 0
	for v >= 1024 && unit < 4 {
		v /= 1024
		unit++
	}
	return fmt.Sprintf("%.1f %ciB", v, "KMGTP"[unit])
}
