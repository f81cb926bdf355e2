package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/quicprochat/quicprochat/internal/client"
)

func (a *app) initCmd() *cobra.Command {
	var t client.ServerTrust
	var stock int
	var offline bool
	cmd := &cobra.Command{
		Use:   "init --server HOST:PORT [--pin SHA256 | --ca FILE]",
		Short: "Create the local state and record the server (pin a self-signed server's certificate)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if t.Addr == "" {
				return usagef("--server HOST:PORT is required")
			}
			if t.PinSHA256 != "" && t.CAFile != "" {
				return usagef("use --pin or --ca, not both")
			}
			o, err := a.options()
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), a.timeout)
			defer cancel()
			c, err := client.Init(ctx, o, t, stock)
			if err != nil {
				return explain(err)
			}
			defer c.Close()
			out := map[string]any{"home": o.Home, "server": t.Addr, "pinned": t.PinSHA256 != ""}
			if !offline {
				p, err := c.Ping(ctx)
				if err != nil {
					return explain(fmt.Errorf("saved, but the server did not answer: %w", err))
				}
				out["server_version"] = p.GetServerVersion()
			}
			trust := "CA-verified"
			if t.PinSHA256 != "" {
				trust = "pinned " + t.PinSHA256
			}
			return a.emit(out, fmt.Sprintf("initialised %s for %s (%s)", o.Home, t.Addr, trust))
		},
	}
	f := cmd.Flags()
	f.StringVar(&t.Addr, "server", "", "qpcd address HOST:PORT (UDP)")
	f.StringVar(&t.PinSHA256, "pin", "", "SHA-256 of a self-signed server's certificate (cert_sha256 in qpcd's log)")
	f.StringVar(&t.CAFile, "ca", "", "PEM file of CA roots to verify the server with (default: the system roots)")
	f.StringVar(&t.ServerName, "server-name", "", "TLS server name (default: the host of --server)")
	f.IntVar(&stock, "stock", client.DefaultStock, "KeyPackages to keep on the server")
	f.BoolVar(&offline, "offline", false, "do not contact the server now")
	return cmd
}

func (a *app) registerCmd() *cobra.Command {
	var p client.RegisterParams
	cmd := &cobra.Command{
		Use:   "register NAME [--invite CODE]",
		Short: "Create an account with this device and upload its KeyPackages",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p.AccountName = args[0]
			return a.withClient(cmd, func(ctx context.Context, c *client.Client) error {
				id, err := c.Register(ctx, p)
				if err != nil {
					return err
				}
				id.Wipe()
				return a.emit(map[string]any{"account": id.AccountName, "account_id": id.AccountID, "device_id": id.DeviceID, "credential": id.Credential()},
					fmt.Sprintf("registered %s (device %s)", id.AccountName, id.DeviceID))
			})
		},
	}
	cmd.Flags().StringVar(&p.InviteCode, "invite", "", "invite code (servers with registration=invite)")
	cmd.Flags().StringVar(&p.DeviceName, "device-name", "qpc", "name of this device in device lists")
	cmd.Flags().StringVar(&p.DisplayName, "display-name", "", "name shown with your messages (default: the account name)")
	return cmd
}

func (a *app) loginCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "login",
		Short: "Log in again with the device key (fresh tokens)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.withClient(cmd, func(ctx context.Context, c *client.Client) error {
				if err := c.Login(ctx); err != nil {
					return err
				}
				id, err := c.Identity(ctx)
				if err != nil {
					return err
				}
				id.Wipe()
				return a.emit(map[string]any{"account": id.AccountName, "device_id": id.DeviceID, "logged_in": true},
					fmt.Sprintf("logged in as %s (device %s)", id.AccountName, id.DeviceID))
			})
		},
	}
}

func (a *app) whoamiCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "whoami",
		Short: "Show the account and device the server sees",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.withClient(cmd, func(ctx context.Context, c *client.Client) error {
				w, err := c.WhoAmI(ctx)
				if err != nil {
					return err
				}
				s, err := c.Settings(ctx)
				if err != nil {
					return err
				}
				return a.emit(map[string]any{"account": w.GetAccountName(), "account_id": w.GetAccountId(), "device_id": w.GetDeviceId(), "server": s.Trust.Addr},
					fmt.Sprintf("%s (account %s, device %s) on %s", w.GetAccountName(), w.GetAccountId(), w.GetDeviceId(), s.Trust.Addr))
			})
		},
	}
}

func (a *app) devicesCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "devices",
		Short: "List this account's devices",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.withClient(cmd, func(ctx context.Context, c *client.Client) error {
				id, err := c.Identity(ctx)
				if err != nil {
					return err
				}
				id.Wipe()
				devs, err := c.Devices(ctx)
				if err != nil {
					return err
				}
				for _, d := range devs {
					this := d.GetDeviceId() == id.DeviceID
					mark := ""
					if this {
						mark = "  (this device)"
					}
					if err := a.emit(map[string]any{"device_id": d.GetDeviceId(), "name": d.GetName(), "status": d.GetStatus(),
						"created_unix_ms": d.GetCreatedUnixMs(), "last_seen_unix_ms": d.GetLastSeenUnixMs(), "this_device": this},
						fmt.Sprintf("%s  %-8s %-20s created %s%s", d.GetDeviceId(), d.GetStatus(), d.GetName(),
							time.UnixMilli(d.GetCreatedUnixMs()).UTC().Format(time.RFC3339), mark)); err != nil {
						return err
					}
				}
				return nil
			})
		},
	}
}

func (a *app) keysCmd() *cobra.Command {
	var upload bool
	cmd := &cobra.Command{
		Use:   "keys [--upload]",
		Short: "Show this device's KeyPackage stock on the server; --upload tops it up and replaces expiring ones",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.withClient(cmd, func(ctx context.Context, c *client.Client) error {
				if upload {
					r, err := c.KeyPackageUpkeep(ctx)
					if err != nil {
						return err
					}
					return a.emit(r, fmt.Sprintf("uploaded %d KeyPackage(s)%s; stock %d of %d, last resort %v",
						r.Uploaded, lrNote(r.NewLastResort), r.ServerStock, r.Target, r.LastResort))
				}
				n, err := c.KeyPackageStock(ctx)
				if err != nil {
					return err
				}
				s, err := c.Settings(ctx)
				if err != nil {
					return err
				}
				return a.emit(map[string]any{"server_stock": n.GetDeviceCount(), "target": s.Stock, "last_resort": n.GetHasLastResort(),
					"account_stock": n.GetAccountCount(), "account_cap": n.GetMaxPerAccount()},
					fmt.Sprintf("stock %d of %d, last resort %v (account: %d of %d)", n.GetDeviceCount(), s.Stock, n.GetHasLastResort(), n.GetAccountCount(), n.GetMaxPerAccount()))
			})
		},
	}
	cmd.Flags().BoolVar(&upload, "upload", false, "generate and upload KeyPackages up to the stock")
	return cmd
}

func lrNote(b bool) string {
	if b {
		return " and a new last-resort one"
	}
	return ""
}

func (a *app) groupCmd() *cobra.Command {
	g := &cobra.Command{Use: "group", Short: "Create groups and manage their members"}
	g.AddCommand(&cobra.Command{
		Use: "list", Short: "List this device's groups and DMs", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.withClient(cmd, func(ctx context.Context, c *client.Client) error {
				gs, err := c.Groups(ctx)
				if err != nil {
					return err
				}
				for _, g := range gs {
					// The channel id and this device's epoch are what an
					// operator needs to recover a wedged group.
					if err := a.emit(g, fmt.Sprintf("%-20s %-5s %-7s epoch %-4d channel %s", g.Name, g.Kind, g.Status, g.Epoch, g.ChannelID)); err != nil {
						return err
					}
				}
				return nil
			})
		},
	}, &cobra.Command{
		Use: "create NAME", Short: "Create a group (you are its only member)", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.withClient(cmd, func(ctx context.Context, c *client.Client) error {
				if err := c.CreateGroup(ctx, args[0]); err != nil {
					return err
				}
				return a.emit(map[string]any{"group": args[0], "created": true}, "created group "+args[0])
			})
		},
	}, &cobra.Command{
		Use: "add NAME USER...", Short: "Invite accounts (all their devices) to a group; they join when they accept", Args: cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.withClient(cmd, func(ctx context.Context, c *client.Client) error {
				if err := c.AddMembers(ctx, args[0], args[1:]); err != nil {
					return err
				}
				return a.emit(map[string]any{"group": args[0], "added": args[1:], "invited": args[1:]},
					fmt.Sprintf("invited %s to %s; they join when they accept (qpc invitations)", strings.Join(args[1:], ", "), args[0]))
			})
		},
	}, &cobra.Command{
		Use: "remove NAME USER", Short: "Remove an account from a group (the group's admin only; everyone sees it)", Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.withClient(cmd, func(ctx context.Context, c *client.Client) error {
				if err := c.RemoveMember(ctx, args[0], args[1]); err != nil {
					return err
				}
				return a.emit(map[string]any{"group": args[0], "removed": args[1]}, fmt.Sprintf("removed %s from %s", args[1], args[0]))
			})
		},
	}, &cobra.Command{
		Use: "leave NAME", Short: "Leave a group", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.withClient(cmd, func(ctx context.Context, c *client.Client) error {
				if err := c.Leave(ctx, args[0]); err != nil {
					return err
				}
				return a.emit(map[string]any{"group": args[0], "left": true}, "left "+args[0])
			})
		},
	}, &cobra.Command{
		Use: "rejoin NAME", Short: "Rejoin a group by external commit (after being offline past retention; recv does this by itself)", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.withClient(cmd, func(ctx context.Context, c *client.Client) error {
				if err := c.Rejoin(ctx, args[0]); err != nil {
					return err
				}
				return a.emit(map[string]any{"group": args[0], "rejoined": true}, "rejoined "+args[0])
			})
		},
	}, &cobra.Command{
		Use: "members NAME", Short: "List a group's members", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.withClient(cmd, func(ctx context.Context, c *client.Client) error {
				ms, err := c.Members(ctx, args[0])
				if err != nil {
					return err
				}
				for _, m := range ms {
					if err := a.emit(m, m.Account+"/"+m.Device); err != nil {
						return err
					}
				}
				return nil
			})
		},
	})
	return g
}

func (a *app) dmCmd() *cobra.Command {
	return &cobra.Command{
		Use: "dm USER", Short: "Open a direct-message channel with an account (its name is @USER)", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.withClient(cmd, func(ctx context.Context, c *client.Client) error {
				name, err := c.DM(ctx, args[0])
				if err != nil {
					return err
				}
				return a.emit(map[string]any{"channel": name, "peer": args[0]}, fmt.Sprintf("DM with %s: send to %s", args[0], name))
			})
		},
	}
}

func (a *app) sendCmd() *cobra.Command {
	var replyTo string
	cmd := &cobra.Command{
		Use: "send CHANNEL [TEXT]", Short: "Send a message to a group or @USER (TEXT, or standard input)", Args: cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			var text string
			if len(args) == 2 {
				text = args[1]
			} else {
				b, err := io.ReadAll(io.LimitReader(a.io.Stdin, 1<<20+1))
				if err != nil {
					return fmt.Errorf("read standard input: %w", err)
				}
				if len(b) > 1<<20 {
					return usagef("message longer than 1 MiB")
				}
				text = strings.TrimRight(string(b), "\n")
			}
			if text == "" {
				return usagef("empty message: give TEXT or pipe it on standard input")
			}
			return a.withClient(cmd, func(ctx context.Context, c *client.Client) error {
				id, err := c.Send(ctx, args[0], text, replyTo)
				queued := id != "" && (client.Retryable(err) || errors.Is(err, context.DeadlineExceeded))
				if err != nil && !queued {
					return err
				}
				if err != nil {
					// Queued but not yet delivered: the outbox sends it later.
					return a.emit(map[string]any{"channel": args[0], "message_id": id, "queued": true, "error": err.Error()},
						fmt.Sprintf("queued %s (not delivered yet: %v); qpc recv or watch sends it when the server is back", id, err))
				}
				return a.emit(map[string]any{"channel": args[0], "message_id": id, "queued": false}, "sent "+id)
			})
		},
	}
	cmd.Flags().StringVar(&replyTo, "reply-to", "", "message id this one answers")
	return cmd
}

func (a *app) printMessages(ms []client.Message) error {
	for _, m := range ms {
		if m.Event != nil {
			// A membership change the server announced.
			if err := a.emit(m, fmt.Sprintf("[%s] %s * %s", m.Channel, time.UnixMilli(m.SentUnixMs).Local().Format("15:04:05"), m.Text)); err != nil {
				return err
			}
			continue
		}
		who := m.DisplayName
		if who == "" {
			who = m.Sender
		}
		if err := a.emit(m, fmt.Sprintf("[%s] %s <%s>: %s", m.Channel, time.UnixMilli(m.SentUnixMs).Local().Format("15:04:05"), who, m.Text)); err != nil {
			return err
		}
	}
	return nil
}

// receive flushes the outbox, syncs once (waiting up to wait) and prints
// what was decrypted.
func (a *app) receive(ctx context.Context, c *client.Client, wait time.Duration) error {
	if _, err := c.Flush(ctx); err != nil {
		return err
	}
	rep, err := c.Sync(ctx, wait)
	if err != nil {
		return err
	}
	// Processing may have queued a commit (a member's leave proposal).
	if _, err := c.Flush(ctx); err != nil {
		return err
	}
	for _, g := range rep.Gaps {
		fmt.Fprintf(a.io.Stderr, "qpc: messages %d-%d of channel %x expired before this device fetched them\n", g.From, g.To, g.ChannelID)
	}
	ms, err := c.Received(ctx)
	if err != nil {
		return err
	}
	if err := a.printMessages(ms); err != nil {
		return err
	}
	invs, err := c.NewInvitations(ctx)
	if err != nil {
		return err
	}
	for _, in := range invs {
		if err := a.emit(map[string]any{"invitation": in}, invitationLine(in)+"; qpc invitations accept "+in.ID+" (or decline)"); err != nil {
			return err
		}
	}
	return nil
}

func invitationLine(in client.Invitation) string {
	what := "a group"
	if in.Kind == "dm" {
		what = "a DM"
	} else if in.Members > 0 {
		what = fmt.Sprintf("a group of %d", in.Members)
	}
	return fmt.Sprintf("invitation %s: %s invites you to %s (expires %s)", in.ID, in.Inviter, what,
		time.UnixMilli(in.ExpiresMs).UTC().Format(time.RFC3339))
}

func (a *app) invitationsCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "invitations",
		Short: "List pending invitations to groups and DMs; accept or decline one",
		Long: "Adding you to a group or opening a DM with you makes an invitation: nothing of the channel reaches\n" +
			"you until you accept it. Without arguments, lists the pending ones.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.withClient(cmd, func(ctx context.Context, c *client.Client) error {
				invs, err := c.Invitations(ctx)
				if err != nil {
					return err
				}
				if len(invs) == 0 && !a.json {
					return a.emit(nil, "no pending invitations")
				}
				for _, in := range invs {
					if err := a.emit(in, invitationLine(in)); err != nil {
						return err
					}
				}
				return nil
			})
		},
	}
	cmd.AddCommand(&cobra.Command{
		Use: "accept ID", Short: "Accept an invitation and join the group or DM", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.withClient(cmd, func(ctx context.Context, c *client.Client) error {
				name, err := c.AcceptInvitation(ctx, args[0])
				if err != nil {
					return err
				}
				if name == "" {
					return a.emit(map[string]any{"invitation": args[0], "accepted": true, "joined": false},
						"accepted; the group's Welcome has not arrived yet: qpc recv joins it when it does")
				}
				return a.emit(map[string]any{"invitation": args[0], "accepted": true, "joined": true, "group": name}, "joined "+name)
			})
		},
	}, &cobra.Command{
		Use: "decline ID", Short: "Decline an invitation (its group is told)", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.withClient(cmd, func(ctx context.Context, c *client.Client) error {
				if err := c.DeclineInvitation(ctx, args[0]); err != nil {
					return err
				}
				return a.emit(map[string]any{"invitation": args[0], "declined": true}, "declined "+args[0])
			})
		},
	})
	return cmd
}

func (a *app) blockCmds() []*cobra.Command {
	return []*cobra.Command{{
		Use: "block USER", Short: "Refuse invitations, DMs and inbox items from an account (declines its pending invitations)", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.withClient(cmd, func(ctx context.Context, c *client.Client) error {
				n, err := c.Block(ctx, args[0])
				if err != nil {
					return err
				}
				return a.emit(map[string]any{"blocked": args[0], "invitations_declined": n},
					fmt.Sprintf("blocked %s (%d pending invitation(s) declined); groups you already share are unchanged", args[0], n))
			})
		},
	}, {
		Use: "unblock USER", Short: "Lift a block", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.withClient(cmd, func(ctx context.Context, c *client.Client) error {
				if err := c.Unblock(ctx, args[0]); err != nil {
					return err
				}
				return a.emit(map[string]any{"unblocked": args[0]}, "unblocked "+args[0])
			})
		},
	}, {
		Use: "blocked", Short: "List the accounts you block", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.withClient(cmd, func(ctx context.Context, c *client.Client) error {
				bl, err := c.Blocked(ctx)
				if err != nil {
					return err
				}
				if len(bl) == 0 && !a.json {
					return a.emit(nil, "no blocked accounts")
				}
				for _, b := range bl {
					if err := a.emit(b, fmt.Sprintf("%s  since %s", b.Account, time.UnixMilli(b.SinceMs).UTC().Format(time.RFC3339))); err != nil {
						return err
					}
				}
				return nil
			})
		},
	}}
}

func (a *app) recvCmd() *cobra.Command {
	var wait time.Duration
	cmd := &cobra.Command{
		Use: "recv", Short: "Fetch and print new messages once (and send what waits in the outbox)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.withClient(cmd, func(ctx context.Context, c *client.Client) error { return a.receive(ctx, c, wait) })
		},
	}
	cmd.Flags().DurationVar(&wait, "wait", 0, "wait this long for something to arrive")
	return cmd
}

func (a *app) watchCmd() *cobra.Command {
	return &cobra.Command{
		Use: "watch", Short: "Print messages as they arrive until interrupted", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			c, err := a.open(ctx)
			if err != nil {
				return explain(err)
			}
			defer c.Close()
			fails := 0
			for ctx.Err() == nil {
				err := a.receive(ctx, c, 25*time.Second)
				switch {
				case err == nil:
					fails = 0
				case ctx.Err() != nil:
				case client.Retryable(err) && fails < 1000:
					// The SDK already retried with backoff; keep watching.
					fails++
					fmt.Fprintln(a.io.Stderr, "qpc: watch:", err)
				default:
					return explain(err)
				}
			}
			return nil
		},
	}
}

func (a *app) historyCmd() *cobra.Command {
	var limit int
	cmd := &cobra.Command{
		Use: "history CHANNEL", Short: "Print a channel's stored messages", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.withClient(cmd, func(ctx context.Context, c *client.Client) error {
				ms, err := c.History(ctx, args[0], limit)
				if err != nil {
					return err
				}
				return a.printMessages(ms)
			})
		},
	}
	cmd.Flags().IntVar(&limit, "limit", 100, "at most this many (the newest)")
	return cmd
}

func (a *app) outboxCmd() *cobra.Command {
	return &cobra.Command{
		Use: "outbox", Short: "List messages waiting to be sent (and recent ones)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.withClient(cmd, func(ctx context.Context, c *client.Client) error {
				es, err := c.Outbox(ctx)
				if err != nil {
					return err
				}
				for _, e := range es {
					human := fmt.Sprintf("%s  %-7s seq %d  attempts %d", e.MessageID, e.Status, e.Seq, e.Attempts)
					if e.LastError != "" {
						human += "  " + e.LastError
					}
					if err := a.emit(e, human); err != nil {
						return err
					}
				}
				return nil
			})
		},
	}
}
