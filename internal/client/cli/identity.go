package cli

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/quicprochat/quicprochat/internal/client"
	"github.com/quicprochat/quicprochat/internal/safetext"
)

// Resetting a lost identity key (docs/client.md, "Losing the identity key").

func (a *app) identityCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "identity", Short: "The account identity key (reset it when the device holding it is lost)", Args: cobra.NoArgs}
	cmd.AddCommand(a.identityResetCmd())
	return cmd
}

func (a *app) stdinIsTerminal() bool {
	f, ok := a.io.Stdin.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

func (a *app) identityResetCmd() *cobra.Command {
	var yes bool
	cmd := &cobra.Command{
		Use:   "reset [--yes]",
		Short: "Give the account a new identity key when the device holding it is lost; every contact is warned",
		Long: "reset makes a new account identity key on this device and has the server replace the account's key\n" +
			"(signed off by this device's key; the server records the new key in its key log). Use it only when the\n" +
			"device that held the identity key is lost: every contact's client then warns that your identity key\n" +
			"changed, and contacts who had verified you must compare safety numbers again (qpc verify). This device\n" +
			"certifies itself with the new key, uploads fresh KeyPackages and rejoins its groups; your other devices\n" +
			"lose their certificates until you approve them again here (qpc device approve CODE, the code qpc whoami\n" +
			"shows on them). Revoke the lost device first (qpc devices revoke). At most one reset per account a day.\n" +
			"It asks you to type the account name; without a terminal pass --yes.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if !yes && !a.stdinIsTerminal() {
				return usagef("identity reset warns every contact and cannot be undone: pass --yes (or run it on a terminal and type the account name)")
			}
			return a.withClient(cmd, func(ctx context.Context, c *client.Client) error {
				id, err := c.Identity(ctx)
				if err != nil {
					return err
				}
				id.Wipe()
				if !yes {
					fmt.Fprintf(a.io.Stderr, "This gives %s a new identity key. Every contact will be warned that your identity changed,\n"+
						"and those who verified you must verify you again. Type the account name to go ahead: ", safetext.Line(id.AccountName))
					line, _ := bufio.NewReader(a.io.Stdin).ReadString('\n')
					if strings.TrimSpace(line) != id.AccountName {
						return usagef("not confirmed: nothing was changed")
					}
				}
				res, err := c.ResetIdentity(ctx)
				if err != nil {
					return err
				}
				if a.json {
					return a.emit(res, "")
				}
				w := a.io.Stdout
				if res.Resumed {
					fmt.Fprintf(w, "finished the earlier reset of %s's identity key\n", res.Account)
				}
				fmt.Fprintf(w, "%s's identity key is now %s (was %s).\n", res.Account, res.NewIdentity, res.OldIdentity)
				fmt.Fprintf(w, "Every contact will be warned that your identity key changed; ask those who verified you to compare safety numbers again (qpc verify).\n")
				if len(res.GroupsRejoined) > 0 {
					fmt.Fprintf(w, "rejoined with the new certificate: %s\n", strings.Join(res.GroupsRejoined, ", "))
				}
				for _, d := range res.Uncertified {
					fmt.Fprintf(w, "device %s has no certificate now: approve it here (qpc device approve CODE, its qpc whoami shows the code) or revoke it (qpc devices revoke %s)\n", d, d)
				}
				return nil
			})
		},
	}
	cmd.Flags().BoolVar(&yes, "yes", false, "do not ask for confirmation")
	return cmd
}
