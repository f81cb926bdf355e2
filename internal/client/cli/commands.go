package cli

import (
	"context"
	"crypto/ed25519"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/quicprochat/quicprochat/internal/client"
	"github.com/quicprochat/quicprochat/internal/identity"
	"github.com/quicprochat/quicprochat/internal/mls"
	"github.com/quicprochat/quicprochat/internal/safetext"
	"github.com/quicprochat/quicprochat/internal/wire/qpcv1"
)

func (a *app) initCmd() *cobra.Command {
	var t client.ServerTrust
	var pins []string
	var stock int
	var offline bool
	cmd := &cobra.Command{
		Use:   "init --server HOST:PORT[,HOST:PORT...] [--pin SHA256[,SHA256...] | --ca FILE]",
		Short: "Create the local state and record the server's nodes (pin a self-signed server's certificate)",
		Long: "--server names one qpcd, or every node of a cluster as a comma-separated list: the client uses one\n" +
			"node at a time and moves to the next when it fails or drains. The nodes may share one certificate\n" +
			"(one --pin) or each have their own: repeat --pin or give a comma-separated list; every node must\n" +
			"present a certificate that matches one of the pins.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			addrs := client.SplitList(t.Addr)
			if len(addrs) == 0 {
				return usagef("--server HOST:PORT is required (usage: %s)", cmd.UseLine())
			}
			seen := map[string]bool{}
			for _, addr := range addrs {
				if err := checkServerAddr(addr); err != nil {
					return err
				}
				if seen[addr] {
					return usagef("--server lists %s twice", addr)
				}
				seen[addr] = true
			}
			t.Addr = strings.Join(addrs, ",")
			var ps []string
			for _, p := range pins {
				ps = append(ps, client.SplitList(p)...)
			}
			t.PinSHA256 = strings.Join(ps, ",")
			if t.PinSHA256 != "" && t.CAFile != "" {
				return usagef("use --pin or --ca, not both")
			}
			o, err := a.options()
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), a.timeout)
			defer cancel()
			var p *qpcv1.PingResponse
			var pingErr error
			if !offline {
				// Ask first: settings the server cannot be trusted with are
				// not saved (the next command would only fail the same way).
				// Every node is asked: each must present a trusted certificate.
				for _, addr := range addrs {
					one := t
					one.Addr = addr
					r, err := client.ProbeServer(ctx, one, o)
					var te *client.TrustError
					if errors.As(err, &te) {
						return fmt.Errorf("nothing saved: %w", err)
					}
					if err != nil && pingErr == nil {
						pingErr = fmt.Errorf("%s: %w", addr, err)
					}
					if err == nil && p == nil {
						p = r
					}
				}
			}
			c, err := client.Init(ctx, o, t, stock)
			if err != nil {
				return explain(err)
			}
			defer c.Close()
			out := map[string]any{"home": o.Home, "server": t.Addr, "servers": addrs, "pinned": t.PinSHA256 != ""}
			if !offline {
				if pingErr != nil {
					return explain(fmt.Errorf("saved, but a server node did not answer: %w", pingErr))
				}
				out["server_version"] = p.GetServerVersion()
			}
			trust := "CA-verified"
			if t.PinSHA256 != "" {
				trust = "pinned " + strings.ReplaceAll(t.PinSHA256, ",", " or ")
			}
			return a.emit(out, fmt.Sprintf("initialised %s for %s (%s)", o.Home, strings.Join(addrs, ", "), trust))
		},
	}
	f := cmd.Flags()
	f.StringVar(&t.Addr, "server", "", "qpcd address HOST:PORT (UDP); a cluster's nodes as a comma-separated list")
	f.StringSliceVar(&pins, "pin", nil, "SHA-256 of a self-signed server's certificate (cert_sha256 in qpcd's log); repeat or comma-separate for nodes with their own certificates")
	f.StringVar(&t.CAFile, "ca", "", "PEM file of CA roots to verify the server with (default: the system roots)")
	f.StringVar(&t.ServerName, "server-name", "", "TLS server name (default: the host of each --server address)")
	f.IntVar(&stock, "stock", client.DefaultStock, "KeyPackages to keep on the server")
	f.BoolVar(&offline, "offline", false, "do not contact the server now")
	return cmd
}

// statusCmd shows where this client connects: the server nodes, the one
// in use, how they are trusted, and (unless --offline) which node answers.
func (a *app) statusCmd() *cobra.Command {
	var offline bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the server nodes, the one in use, the account, and whether the server answers",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.withClient(cmd, func(ctx context.Context, c *client.Client) error {
				s, err := c.Settings(ctx)
				if err != nil {
					return err
				}
				nodes, current := c.Servers()
				out := map[string]any{"servers": nodes, "current": current, "pins": s.Trust.Pins(), "ca_file": s.Trust.CAFile}
				var lines []string
				lines = append(lines, "servers:")
				for _, n := range nodes {
					mark := "  "
					if n == current {
						mark = "* "
					}
					lines = append(lines, "  "+mark+n)
				}
				switch {
				case len(s.Trust.Pins()) > 0:
					lines = append(lines, "trust: pinned "+strings.Join(s.Trust.Pins(), " or "))
				case s.Trust.CAFile != "":
					lines = append(lines, "trust: CA file "+s.Trust.CAFile)
				default:
					lines = append(lines, "trust: system CA roots")
				}
				if id, err := c.Identity(ctx); err == nil {
					out["account"], out["device_id"] = id.AccountName, id.DeviceID
					lines = append(lines, fmt.Sprintf("account: %s (device %s)", id.AccountName, id.DeviceID))
					id.Wipe()
				} else {
					lines = append(lines, "account: none on this device (qpc register NAME)")
				}
				if !offline {
					p, err := c.Ping(ctx)
					_, current = c.Servers()
					out["current"] = current
					if err != nil {
						out["reachable"] = false
						out["error"] = err.Error()
						lines = append(lines, "server: NOT REACHABLE: "+err.Error())
					} else {
						out["reachable"], out["server_version"] = true, p.GetServerVersion()
						lines = append(lines, fmt.Sprintf("server: %s answers (qpcd %s)", current, p.GetServerVersion()))
					}
				}
				return a.emit(out, strings.Join(lines, "\n"))
			})
		},
	}
	cmd.Flags().BoolVar(&offline, "offline", false, "do not contact the server")
	return cmd
}

// checkServerAddr refuses what cannot be a qpcd address (a usage error):
// it must be HOST:PORT with a numeric UDP port, no scheme or path.
func checkServerAddr(addr string) error {
	bad := func(why string) error {
		return usagef("--server %q: %s; want HOST:PORT, for example 127.0.0.1:7443 or chat.example.org:7443", addr, why)
	}
	if strings.Contains(addr, "://") || strings.Contains(addr, "/") {
		return bad("no scheme or path (qpcd speaks QUIC, not HTTPS)")
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return bad("missing or malformed port")
	}
	if host == "" {
		return bad("missing host")
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 1 || n > 65535 {
		return bad("the port must be a number from 1 to 65535")
	}
	return nil
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
				out := map[string]any{"account": id.AccountName, "account_id": id.AccountID, "device_id": id.DeviceID, "credential": id.Credential()}
				if id.InviteCodeUnused {
					// Not an error (the account exists), but not what the
					// user asked for: the code is still unused.
					out["invite_code_unused"] = true
					fmt.Fprintln(a.io.Stderr, "qpc: warning: this server lets anyone register, so the invite code was not needed and was not used "+
						"(it stays valid; tell the operator if invites were meant to be required)")
				}
				return a.emit(out, fmt.Sprintf("registered %s (device %s)", id.AccountName, id.DeviceID))
			})
		},
	}
	cmd.Flags().StringVar(&p.InviteCode, "invite", "", "invite code (servers with registration=invite; on an open server it is not used, and a warning says so)")
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
				_, current := c.Servers()
				id, err := c.Identity(ctx)
				if err != nil {
					return err
				}
				code := identity.Fingerprint(id.PublicKey())
				id.Wipe()
				return a.emit(map[string]any{"account": w.GetAccountName(), "account_id": w.GetAccountId(), "device_id": w.GetDeviceId(), "server": current, "servers": s.Trust.Addrs(), "device_code": code},
					fmt.Sprintf("%s (account %s, device %s, code %s) on %s", w.GetAccountName(), w.GetAccountId(), w.GetDeviceId(), code, current))
			})
		},
	}
}

func (a *app) devicesCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "devices",
		Aliases: []string{"device"},
		Short:   "List this account's devices (also: qpc device link / approve / requests)",
		Args:    cobra.NoArgs,
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
	cmd.AddCommand(a.deviceAddCmd(), a.deviceRevokeCmd(), a.deviceLinkCmd(), a.deviceApproveCmd(), a.deviceRequestsCmd())
	return cmd
}

func (a *app) deviceAddCmd() *cobra.Command {
	var name string
	cmd := &cobra.Command{
		Use:   "add KEY",
		Short: "Add a device by its Ed25519 public key (64 hex characters) and certify it (on the device holding the identity key; else use qpc device link)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			key, err := hex.DecodeString(strings.TrimSpace(args[0]))
			if err != nil || len(key) != ed25519.PublicKeySize {
				return usagef("KEY must be the new device's Ed25519 public key as 64 hex characters")
			}
			return a.withClient(cmd, func(ctx context.Context, c *client.Client) error {
				d, err := c.AddCertifiedDevice(ctx, key, name)
				if err != nil {
					return err
				}
				return a.emit(map[string]any{"device_id": d.DeviceID, "name": name, "code": d.Code},
					fmt.Sprintf("added and certified device %s (%s, code %s); your other devices are told", d.DeviceID, safetext.Line(name), d.Code))
			})
		},
	}
	cmd.Flags().StringVar(&name, "name", "", "name of the new device in device lists")
	return cmd
}

func (a *app) deviceRevokeCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "revoke DEVICE",
		Short: "Revoke a device of this account (its tokens stop at once); this device's key signs the change",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.withClient(cmd, func(ctx context.Context, c *client.Client) error {
				if err := c.RevokeDevice(ctx, args[0]); err != nil {
					return err
				}
				return a.emit(map[string]any{"device_id": args[0], "revoked": true}, fmt.Sprintf("revoked device %s; your other devices are told", args[0]))
			})
		},
	}
}

// printAccountEvents shows the server's notices about this account's devices.
func (a *app) printAccountEvents(evs []client.AccountEvent) error {
	for _, ev := range evs {
		by := "by the server operator"
		if ev.ByDeviceID != "" {
			by = "by device " + ev.ByDeviceID
		}
		what := "added to"
		if ev.Kind == "device_revoked" {
			what = "revoked from"
		}
		text := fmt.Sprintf("[account] %s device %s (%q, key sha256 %s) was %s your account %s; if that was not you, revoke it with qpc devices revoke and tell the operator",
			time.UnixMilli(ev.ServerMs).Local().Format("2006-01-02 15:04:05"), ev.DeviceID, ev.DeviceName, ev.KeySHA256[:16], what, by)
		if ev.Kind == "device_revoked" {
			text = fmt.Sprintf("[account] %s device %s (%q) was %s your account %s",
				time.UnixMilli(ev.ServerMs).Local().Format("2006-01-02 15:04:05"), ev.DeviceID, ev.DeviceName, what, by)
		}
		if err := a.emit(map[string]any{"account_event": ev}, text); err != nil {
			return err
		}
	}
	return nil
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
					line := fmt.Sprintf("uploaded %d KeyPackage(s)%s; stock %d of %d, last resort %v",
						r.Uploaded, lrNote(r.NewLastResort), r.ServerStock, r.Target, r.LastResort)
					if len(r.Suites) > 1 {
						line = fmt.Sprintf("uploaded %d KeyPackage(s)%s", r.Uploaded, lrNote(r.NewLastResort))
						for _, x := range r.Suites {
							line += fmt.Sprintf("\n  %s: stock %d of %d, last resort %v", x.Suite, x.ServerStock, r.Target, x.LastResort)
						}
					}
					return a.emit(r, line)
				}
				n, err := c.KeyPackageStock(ctx)
				if err != nil {
					return err
				}
				s, err := c.Settings(ctx)
				if err != nil {
					return err
				}
				line := fmt.Sprintf("stock %d of %d, last resort %v (account: %d of %d)", n.GetDeviceCount(), s.Stock, n.GetHasLastResort(), n.GetAccountCount(), n.GetMaxPerAccount())
				var suites []map[string]any
				for _, x := range n.GetSuites() {
					name := mls.CipherSuiteID(x.GetCipherSuite()).String()
					suites = append(suites, map[string]any{"suite": name, "id": x.GetCipherSuite(), "server_stock": x.GetDeviceCount(), "last_resort": x.GetHasLastResort()})
					if len(n.GetSuites()) > 1 {
						line += fmt.Sprintf("\n  %s: stock %d of %d, last resort %v", name, x.GetDeviceCount(), s.Stock, x.GetHasLastResort())
					}
				}
				return a.emit(map[string]any{"server_stock": n.GetDeviceCount(), "target": s.Stock, "last_resort": n.GetHasLastResort(),
					"account_stock": n.GetAccountCount(), "account_cap": n.GetMaxPerAccount(), "suites": suites}, line)
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
					if err := a.emit(g, fmt.Sprintf("%-20s %-5s %-7s epoch %-4d channel %s", safetext.Line(g.Name), g.Kind, g.Status, g.Epoch, g.ChannelID)); err != nil {
						return err
					}
				}
				return nil
			})
		},
	}, a.groupCreateCmd(), a.groupInfoCmd(), a.allowUnverifiedFlag(&cobra.Command{
		Use: "add NAME USER...", Short: "Invite accounts (all their devices) to a group; they join when they accept", Args: cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.withClient(cmd, func(ctx context.Context, c *client.Client) error {
				if err := c.AddMembers(a.trustCtx(ctx), args[0], args[1:]); err != nil {
					return err
				}
				return a.emit(map[string]any{"group": args[0], "added": args[1:], "invited": args[1:]},
					fmt.Sprintf("invited %s to %s; they join when they accept (qpc invitations)", strings.Join(args[1:], ", "), args[0]))
			})
		},
	}), &cobra.Command{
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
				ms, err := c.MembersTrust(ctx, args[0])
				if err != nil {
					return err
				}
				for _, m := range ms {
					if err := a.emit(m, safetext.Line(m.Account+"/"+m.Device)+"  "+m.Trust); err != nil {
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
	return a.allowUnverifiedFlag(&cobra.Command{
		Use: "dm USER", Short: "Open a direct-message channel with an account (its name is @USER)", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.withClient(cmd, func(ctx context.Context, c *client.Client) error {
				name, err := c.DM(a.trustCtx(ctx), args[0])
				if err != nil {
					return err
				}
				return a.emit(map[string]any{"channel": name, "peer": args[0]}, fmt.Sprintf("DM with %s: send to %s", args[0], name))
			})
		},
	})
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
				id, err := c.SendChecked(a.trustCtx(ctx), args[0], text, replyTo)
				// Not refused: the message waits in the outbox.
				queued := id != "" && err != nil && !errors.Is(err, client.ErrRefused)
				if err != nil && !queued {
					return err
				}
				if queued && !client.Retryable(err) && !errors.Is(err, context.DeadlineExceeded) {
					// It waits for something only the user can fix (a changed
					// certificate, a login): say so and fail.
					return fmt.Errorf("message %s is kept in the outbox and goes out with the next send, recv or watch once this is fixed: %w", id, explain(err))
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
	return a.allowUnverifiedFlag(cmd)
}

func (a *app) printMessages(ms []client.Message) error {
	for _, m := range ms {
		if err := a.emit(m, humanMessage(m)); err != nil {
			return err
		}
	}
	return nil
}

// humanMessage is one message for a terminal. Everything other people
// chose (text, names) is made safe to print (safetext), and the sender is
// shown as "display (account)" whenever the display name is not the account
// name, so a display name cannot pass for another account.
func humanMessage(m client.Message) string {
	if m.Event != nil {
		// A membership change the server announced: its text is built from
		// account names, which are no safer than a message.
		return fmt.Sprintf("[%s] %s * %s", safetext.Line(m.Channel), time.UnixMilli(m.SentUnixMs).Local().Format("15:04:05"), safetext.Line(m.Text))
	}
	account, _, _ := strings.Cut(m.Sender, "/")
	who := safetext.Line(account)
	if m.DisplayName != "" && m.DisplayName != account {
		who = safetext.Line(m.DisplayName) + " (" + who + ")"
	}
	line := fmt.Sprintf("[%s] %s <%s>: %s", safetext.Line(m.Channel), time.UnixMilli(m.SentUnixMs).Local().Format("15:04:05"), who, safetext.Display(m.Text, "    "))
	switch m.Delivery {
	case client.DeliveryPending:
		line += "  [not delivered yet: waiting in the outbox]"
	case client.DeliveryRefused:
		line += "  [NOT DELIVERED: refused by the server (" + safetext.Line(m.DeliveryError) + "); qpc outbox retry or discard]"
	case client.DeliveryDiscarded:
		line += "  [NOT DELIVERED: discarded]"
	case client.DeliveryLost:
		line += "  [LOST: the server was restored from a backup taken before it, and it could not be sent again]"
	}
	if m.LostInRestore && !m.Outgoing {
		line += "  [LOST on the server: restored from a backup taken before it; shown again here when its sender's client re-sends it]"
	}
	return line
}

// receive flushes the outbox, syncs once (waiting up to wait) and prints
// what was decrypted.
func (a *app) receive(ctx context.Context, c *client.Client, wait time.Duration) error {
	// A message that cannot go out now stays in the outbox; it must not
	// keep this device from receiving.
	_, flushErr := c.Flush(ctx)
	var ns *client.NotSentError
	if flushErr != nil && !errors.As(flushErr, &ns) {
		return flushErr
	}
	rep, err := c.Sync(ctx, wait)
	if err != nil {
		return err
	}
	// Processing may have queued a commit (a member's leave proposal).
	if flushErr == nil {
		if _, flushErr = c.Flush(ctx); flushErr != nil && !errors.As(flushErr, &ns) {
			return flushErr
		}
	}
	if flushErr != nil {
		fmt.Fprintln(a.io.Stderr, "qpc:", explain(flushErr))
	}
	for _, g := range rep.Gaps {
		fmt.Fprintf(a.io.Stderr, "qpc: messages %d-%d of channel %x expired before this device fetched them\n", g.From, g.To, g.ChannelID)
	}
	evs, err := c.AccountEvents(ctx)
	if err != nil {
		return err
	}
	if err := a.printAccountEvents(evs); err != nil {
		return err
	}
	tns, err := c.TrustNotices(ctx)
	if err != nil {
		return err
	}
	if err := a.printTrustNotices(tns); err != nil {
		return err
	}
	alarms, err := c.KeyLogAlarms(ctx)
	if err != nil {
		return err
	}
	if err := a.printKeyLogAlarms(alarms); err != nil {
		return err
	}
	if err := a.printRestoreNotice(ctx, c); err != nil {
		return err
	}
	for _, name := range rep.RemovedFrom {
		// A notice, not a failure: recv did its job (documented in docs/client.md).
		fmt.Fprintf(a.io.Stderr, "qpc: you were removed from %s by another member; you no longer receive or send there (its history stays: qpc history %s)\n",
			safetext.Line(name), safetext.Line(name))
		if a.json {
			if err := a.emit(map[string]any{"removed_from": name}, ""); err != nil {
				return err
			}
		}
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
		if err := a.emit(map[string]any{"invitation": in}, invitationLine(in)+"; qpc invitations accept "+safetext.Line(in.ID)+" (or decline)"); err != nil {
			return err
		}
	}
	return nil
}

// printRestoreNotice tells the user, once, that the server was restored
// from a backup and what this device did about it (docs/client.md).
func (a *app) printRestoreNotice(ctx context.Context, c *client.Client) error {
	n, err := c.RestoreNotice(ctx)
	if err != nil || n == nil {
		return err
	}
	fmt.Fprintf(a.io.Stderr, "qpc: the server was restored from a backup: %d channel(s) set back; %d of your messages are sent again, %d received message(s) are marked lost until their senders' clients send them again (qpc history shows them)\n",
		len(n.Channels), n.Resent, n.Lost)
	for _, ch := range n.Channels {
		if len(ch.NotResent) > 0 {
			fmt.Fprintf(a.io.Stderr, "qpc: %s: %d of your messages were lost and cannot be sent again (the group is no longer active here): %s\n",
				safetext.Line(ch.Channel), len(ch.NotResent), strings.Join(ch.NotResent, ", "))
		}
		if ch.LocalEpoch > ch.ServerEpoch {
			fmt.Fprintf(a.io.Stderr, "qpc: %s is at epoch %d here and %d on the server: the member who changed the group since the backup must run qpc recv so the change is sent again\n",
				safetext.Line(ch.Channel), ch.LocalEpoch, ch.ServerEpoch)
		}
	}
	if a.json {
		return a.emit(map[string]any{"server_restored": n}, "")
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
	// The id and the inviter's name come from the server: made safe to
	// print like everything else other people chose.
	return fmt.Sprintf("invitation %s: %s invites you to %s (expires %s)", safetext.Line(in.ID), safetext.Line(in.Inviter), what,
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
					if err := a.emit(b, fmt.Sprintf("%s  since %s", safetext.Line(b.Account), time.UnixMilli(b.SinceMs).UTC().Format(time.RFC3339))); err != nil {
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
			a.interactive = false
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
	ob := &cobra.Command{
		Use: "outbox", Short: "List messages waiting to be sent, refused ones and recent ones (retry or discard them)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.withClient(cmd, func(ctx context.Context, c *client.Client) error {
				es, err := c.Outbox(ctx)
				if err != nil {
					return err
				}
				for _, e := range es {
					ch := e.Channel
					if ch == "" {
						ch = fmt.Sprintf("%x", e.ChannelID)
					}
					human := fmt.Sprintf("%s  %-7s %-8s %-20s seq %d  attempts %d", e.MessageID, e.Status, e.Kind, safetext.Line(ch), e.Seq, e.Attempts)
					if e.LastError != "" {
						human += "  " + safetext.Line(e.LastError)
					}
					if e.Status == client.OutboxFailed {
						human += "  (qpc outbox retry " + e.MessageID + " | qpc outbox discard " + e.MessageID + ")"
					}
					if err := a.emit(e, human); err != nil {
						return err
					}
				}
				return nil
			})
		},
	}
	var all bool
	retry := &cobra.Command{
		Use: "retry [MESSAGE_ID | --all]", Short: "Send refused (failed) messages again", Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if (len(args) == 1) == all {
				return usagef("give one MESSAGE_ID or --all (usage: %s)", cmd.UseLine())
			}
			id := ""
			if len(args) == 1 {
				id = args[0]
			}
			return a.withClient(cmd, func(ctx context.Context, c *client.Client) error {
				n, err := c.RetryOutbox(ctx, id)
				if err != nil {
					return err
				}
				rep, err := c.Flush(ctx)
				if err != nil {
					return err
				}
				return a.emit(map[string]any{"retried": n, "sent": rep.Sent, "failed": rep.Failed},
					fmt.Sprintf("retried %d message(s): %d sent, %d refused again", n, rep.Sent, rep.Failed))
			})
		},
	}
	retry.Flags().BoolVar(&all, "all", false, "retry every failed message")
	ob.AddCommand(retry, &cobra.Command{
		Use: "discard MESSAGE_ID", Short: "Drop a message that was not delivered (history keeps it, marked discarded)", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.withClient(cmd, func(ctx context.Context, c *client.Client) error {
				if err := c.DiscardOutbox(ctx, args[0]); err != nil {
					return err
				}
				return a.emit(map[string]any{"message_id": args[0], "discarded": true}, "discarded "+args[0])
			})
		},
	})
	return ob
}

// completeGroups completes the first argument with this device's group and
// DM names (shell completion; nothing when the state cannot be opened).
func (a *app) completeGroups(cmd *cobra.Command, args []string, _ string) ([]string, cobra.ShellCompDirective) {
	if len(args) > 0 {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	ctx, cancel := context.WithTimeout(cmd.Context(), 5*time.Second)
	defer cancel()
	c, err := a.open(ctx)
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	defer c.Close()
	gs, err := c.Groups(ctx)
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	var out []string
	for _, g := range gs {
		if safetext.Check("group name", g.Name) == nil {
			out = append(out, g.Name)
		}
	}
	return out, cobra.ShellCompDirectiveNoFileComp
}

func (a *app) groupCreateCmd() *cobra.Command {
	var suiteName string
	cmd := &cobra.Command{
		Use:   "create NAME [--suite SUITE]",
		Short: "Create a group (you are its only member) on the server's most preferred MLS cipher suite, or --suite",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var suite mls.CipherSuiteID
			if suiteName != "" {
				var err error
				if suite, err = mls.ParseCipherSuite(suiteName); err != nil {
					return usagef("--suite %q: give a suite name such as MLS_256_XWING_AES256GCM_SHA512_Ed25519 or a number such as 1 or 0xF00D", suiteName)
				}
			}
			return a.withClient(cmd, func(ctx context.Context, c *client.Client) error {
				if err := c.CreateGroupWithSuite(ctx, args[0], suite); err != nil {
					return err
				}
				got, err := c.GroupSuite(ctx, args[0])
				if err != nil {
					return err
				}
				return a.emit(map[string]any{"group": args[0], "created": true, "suite": got.String()},
					fmt.Sprintf("created group %s (%s)", args[0], got))
			})
		},
	}
	cmd.Flags().StringVar(&suiteName, "suite", "", "MLS cipher suite (name or number) within the server's policy; default: the server's most preferred one this device supports")
	return cmd
}

func (a *app) groupInfoCmd() *cobra.Command {
	return &cobra.Command{
		Use: "info NAME", Short: "Show a group's kind, status, epoch, channel and MLS cipher suite", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.withClient(cmd, func(ctx context.Context, c *client.Client) error {
				gs, err := c.Groups(ctx)
				if err != nil {
					return err
				}
				for _, g := range gs {
					if g.Name != args[0] {
						continue
					}
					suite, err := c.GroupSuite(ctx, g.Name)
					if err != nil {
						return err
					}
					members, err := c.Members(ctx, g.Name)
					if err != nil {
						return err
					}
					return a.emit(map[string]any{"name": g.Name, "kind": g.Kind, "status": g.Status, "epoch": g.Epoch, "channel_id": g.ChannelID,
						"suite": suite.String(), "suite_id": uint16(suite), "post_quantum": isPostQuantum(suite), "members": len(members)},
						fmt.Sprintf("%s (%s, %s)\nepoch:    %d\nchannel:  %s\nsuite:    %s%s\nmembers:  %d",
							safetext.Line(g.Name), g.Kind, g.Status, g.Epoch, g.ChannelID, suite, pqNote(suite), len(members)))
				}
				return fmt.Errorf("%w %q; see qpc group list", client.ErrNoGroup, args[0])
			})
		},
	}
}

func isPostQuantum(id mls.CipherSuiteID) bool {
	s, err := mls.Suite(id)
	return err == nil && s.PostQuantum()
}

func pqNote(id mls.CipherSuiteID) string {
	if isPostQuantum(id) {
		return " (post-quantum hybrid)"
	}
	return ""
}
