package cli

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/skip2/go-qrcode"
	"github.com/spf13/cobra"

	"github.com/quicprochat/quicprochat/internal/client"
	"github.com/quicprochat/quicprochat/internal/identity"
	"github.com/quicprochat/quicprochat/internal/safetext"
)

// Verifying contacts and linking devices (docs/client.md, "Verifying
// contacts").

// qrPrefix starts the text a safety number's QR code carries.
const qrPrefix = "qpc-safety-number:v1:"

func (a *app) stdoutIsTerminal() bool {
	f, ok := a.io.Stdout.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

func (a *app) verifyCmd() *cobra.Command {
	var confirm string
	var qr string
	cmd := &cobra.Command{
		Use:   "verify @USER [--confirm NUMBER]",
		Short: "Show the safety number with an account (compare it with theirs), or mark them verified with --confirm",
		Long: "verify prints the safety number derived from your account's and USER's identity keys; it is the same\n" +
			"on both sides. Compare it with USER in person or over a channel you trust (read it out, or compare\n" +
			"the QR codes), then run qpc verify @USER --confirm NUMBER. A number that differs means someone (for\n" +
			"example the server) gave one of you a key that is not the other's: do not confirm it.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			switch qr {
			case "auto", "on", "off":
			default:
				return usagef("--qr must be auto, on or off")
			}
			account := strings.TrimPrefix(args[0], "@")
			return a.withClient(cmd, func(ctx context.Context, c *client.Client) error {
				var sn *client.SafetyNumber
				var err error
				if confirm != "" {
					if identity.NormaliseSafetyNumber(confirm) == "" {
						return usagef("--confirm takes the 60-digit safety number (spaces allowed)")
					}
					sn, err = c.ConfirmSafetyNumber(ctx, account, confirm)
				} else {
					sn, err = c.SafetyNumber(ctx, account)
				}
				if err != nil {
					return err
				}
				if a.json {
					return a.emit(sn, "")
				}
				return a.printSafetyNumber(sn, confirm != "", qr == "on" || qr == "auto" && a.stdoutIsTerminal())
			})
		},
	}
	cmd.Flags().StringVar(&confirm, "confirm", "", "the safety number as USER's screen shows it: mark USER verified if it matches")
	cmd.Flags().StringVar(&qr, "qr", "auto", "show the number as a QR code too: auto (on a terminal), on, off")
	return cmd
}

func (a *app) printSafetyNumber(sn *client.SafetyNumber, confirmed, qr bool) error {
	w := a.io.Stdout
	if confirmed {
		fmt.Fprintf(w, "%s is now verified (identity key %s).\n", sn.Account, sn.TheirKey)
		return nil
	}
	fmt.Fprintf(w, "Safety number with %s:\n\n%s\n\n", sn.Account, indent(identity.FormatSafetyNumber(sn.Number, true)))
	fmt.Fprintf(w, "your identity key %s, theirs %s (first seen %s)\n", sn.OwnKey, sn.TheirKey,
		time.UnixMilli(sn.FirstSeenMs).Local().Format("2006-01-02 15:04"))
	if sn.ChangedKey != "" {
		fmt.Fprintf(w, "\nWARNING: a device certified by another identity key (%s) was seen for %s since.\n"+
			"The safety number over that key is:\n\n%s\n\n"+
			"Only if %s's screen shows this second number did they really change their identity; if it shows the\n"+
			"first, the other key is not theirs (the server may have made it). Confirm whichever their screen shows.\n",
			sn.ChangedKey, sn.Account, indent(identity.FormatSafetyNumber(sn.ChangedNumber, true)), sn.Account)
	}
	if sn.Verified {
		fmt.Fprintf(w, "%s is verified.\n", sn.Account)
	} else {
		fmt.Fprintf(w, "%s is not verified: compare the number with them, then run qpc verify @%s --confirm NUMBER\n", sn.Account, sn.Account)
	}
	if qr {
		code, err := qrcode.New(qrPrefix+sn.Number, qrcode.Medium)
		if err != nil {
			return fmt.Errorf("QR code: %w", err)
		}
		fmt.Fprintln(w)
		fmt.Fprint(w, code.ToSmallString(false))
	}
	return nil
}

func indent(s string) string { return "    " + strings.ReplaceAll(s, "\n", "\n    ") }

func (a *app) deviceLinkCmd() *cobra.Command {
	var name, display string
	var wait time.Duration
	cmd := &cobra.Command{
		Use:   "link ACCOUNT [--name NAME]",
		Short: "Make this (new) home a device of ACCOUNT: shows a code to approve on an existing device, then waits",
		Long: "link creates this device's key, asks the server to hold a link request for ACCOUNT and prints a code\n" +
			"(the fingerprint of the new key). On the device the account was registered with, run\n" +
			"qpc device approve CODE: it adds this device (signed by its key) and certifies it with the account's\n" +
			"identity key. Run qpc init --server ... in a new --home first.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := safetext.Check("device name", name); err != nil {
				return usageError{err}
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), wait+time.Minute)
			defer cancel()
			c, err := a.open(ctx)
			if err != nil {
				return explain(err)
			}
			defer c.Close()
			id, err := c.Link(ctx, args[0], client.LinkOptions{DeviceName: name, DisplayName: display, Timeout: wait,
				Code: func(code string) {
					_ = a.emit(map[string]any{"code": code, "account": args[0]},
						fmt.Sprintf("link code: %s\non a device of %s, run:  qpc device approve %s\nwaiting for approval (up to %s) ...", code, args[0], code, wait))
				}})
			if err != nil {
				return explain(err)
			}
			defer id.Wipe()
			ik := ""
			if cert := id.Certificate(); cert != nil {
				ik = identity.Fingerprint(cert.IdentityKey[:])
			}
			return a.emit(map[string]any{"account": id.AccountName, "device_id": id.DeviceID, "identity_key": ik},
				fmt.Sprintf("linked: device %s of %s, certified by identity key %s (the approving device shows the same)", id.DeviceID, id.AccountName, ik))
		},
	}
	cmd.Flags().StringVar(&name, "name", "", "this device's name in device lists")
	cmd.Flags().StringVar(&display, "display-name", "", "the name others see on your messages (default the account name)")
	cmd.Flags().DurationVar(&wait, "wait", 10*time.Minute, "how long to wait for the approval")
	return cmd
}

func (a *app) deviceApproveCmd() *cobra.Command {
	var name string
	cmd := &cobra.Command{
		Use:   "approve CODE [--name NAME]",
		Short: "Add and certify the new device whose qpc device link shows CODE, or certify again one left uncertified by qpc identity reset (on the device holding the identity key)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if identity.NormaliseCode(args[0]) == "" {
				return usagef("CODE is the 16-character code qpc device link shows (such as abcd-efgh-ijkl-mnop)")
			}
			return a.withClient(cmd, func(ctx context.Context, c *client.Client) error {
				d, err := c.ApproveLink(ctx, args[0], name)
				if err != nil {
					return err
				}
				ik, err := c.OwnIdentityKey(ctx)
				if err != nil {
					return err
				}
				fp := identity.Fingerprint(ik[:])
				return a.emit(map[string]any{"device_id": d.DeviceID, "name": d.DeviceName, "code": d.Code, "identity_key": fp},
					fmt.Sprintf("added and certified device %s (%s); identity key %s (the new device shows the same); your other devices are told",
						d.DeviceID, safetext.Line(d.DeviceName), fp))
			})
		},
	}
	cmd.Flags().StringVar(&name, "name", "", "the new device's name (default the name it asked with)")
	return cmd
}

func (a *app) deviceRequestsCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "requests",
		Short: "List pending device link requests of this account",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.withClient(cmd, func(ctx context.Context, c *client.Client) error {
				rs, err := c.LinkRequests(ctx)
				if err != nil {
					return err
				}
				for _, r := range rs {
					if err := a.emit(r, fmt.Sprintf("%s  %-20s asked %s", r.Code, safetext.Line(r.DeviceName),
						time.UnixMilli(r.CreatedMs).Local().Format("2006-01-02 15:04:05"))); err != nil {
						return err
					}
				}
				return nil
			})
		},
	}
}

// printTrustNotices shows what the client found about other people's
// devices: identity key changes, new devices of verified contacts,
// uncertified devices in groups.
func (a *app) printTrustNotices(ns []client.TrustNotice) error {
	for _, n := range ns {
		who := safetext.Line(n.Account)
		where := ""
		if n.Group != "" {
			where = " in " + safetext.Line(n.Group)
		}
		var text string
		switch n.Kind {
		case "identity_changed":
			v := ""
			if n.Verified {
				v = " (you verified " + who + ")"
			}
			text = fmt.Sprintf("[trust] WARNING: device %s of %s%s is certified by identity key %s, not the one you have for %s%s; it may be a device the server made. Compare safety numbers: qpc verify @%s",
				n.Device, who, where, n.KeyFP, who, v, who)
		case "new_device":
			text = fmt.Sprintf("[trust] %s, whom you verified, has a new device %s%s (key %s); sending there needs --allow-unverified until you check it with them (qpc verify @%s)",
				who, n.Device, where, n.KeyFP, who)
		default:
			text = fmt.Sprintf("[trust] WARNING: device %s of %s%s carries no valid certificate by %s's identity key; it may be a device the server made",
				n.Device, who, where, who)
		}
		if err := a.emit(map[string]any{"trust_notice": n}, text); err != nil {
			return err
		}
	}
	return nil
}

// printKeyLogAlarms shows the evidence that the server showed different
// key logs (a fork): loudly, with both signed heads, on stdout like the
// messages (docs/client.md, "The key log").
func (a *app) printKeyLogAlarms(as []client.KeyLogAlarm) error {
	for _, al := range as {
		text := fmt.Sprintf("[keylog] WARNING: the server showed different key logs (%s): %s\n"+
			"[keylog]   head from %s: %s\n[keylog]   head from %s: %s\n"+
			"[keylog]   both are signed by the server's log key: keep them as evidence. Someone was shown a key the others were not; compare safety numbers in person (qpc verify @NAME) before trusting new keys, and tell the operator",
			al.Kind, safetext.Line(al.Detail), safetext.Line(al.SourceA), al.HeadA, safetext.Line(al.SourceB), al.HeadB)
		if err := a.emit(map[string]any{"keylog_alarm": al}, text); err != nil {
			return err
		}
	}
	return nil
}

// allowUnverifiedFlag adds --allow-unverified to a command that adds
// devices to a group or encrypts to them.
func (a *app) allowUnverifiedFlag(cmd *cobra.Command) *cobra.Command {
	cmd.Flags().BoolVar(&a.allowUnverified, "allow-unverified", false,
		"go ahead although a verified contact has a new device, or a device is not certified by the identity key you have for its account")
	return cmd
}

func (a *app) trustCtx(ctx context.Context) context.Context {
	if a.allowUnverified {
		return client.AllowUnverified(ctx)
	}
	return ctx
}
