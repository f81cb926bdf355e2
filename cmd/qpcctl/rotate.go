package main

import (
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/quicprochat/quicprochat/internal/admin"
)

func newRotateCommand(g *globals) *cobra.Command {
	r := &cobra.Command{Use: "rotate", Short: "Rotate the database key, the TLS certificate or the token-signing key of a running qpcd", Args: cobra.NoArgs}
	r.AddCommand(&cobra.Command{
		Use:   "db-key",
		Short: "Re-encrypt the database under a new key without losing a write, and write the new key file",
		Long: "qpcd exports the database under a new random key, verifies the copy, swaps it in atomically and\n" +
			"reopens every pooled connection; writes wait (they are not refused) while the copy is made.\n" +
			"The new key replaces db.key_file (0600). Back the new key up: backups taken from now on need it.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			ctx, cancel := g.longCtx(cmd.Context())
			defer cancel()
			stop := g.newProgress().ticker("re-encrypting the database")
			res, err := c.RotateDBKey(ctx)
			stop()
			if err != nil {
				return failed(err)
			}
			return g.emit(res, func(w io.Writer) {
				fmt.Fprintf(w, "database key rotated: key id %s -> %s\n", res.OldKeyID, res.NewKeyID)
				fmt.Fprintf(w, "new key written to %s; back it up now (backups from now on need it)\n", res.KeyFile)
				fmt.Fprintf(w, "database: %s; took %.2fs, writes waited %.2fs\n", humanBytes(res.DBBytes), res.TookSeconds, res.PausedSeconds)
			})
		},
	}, &cobra.Command{
		Use:   "tls",
		Short: "Make qpcd reload its certificate and key from disk; existing connections are kept (SIGHUP does the same)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			res, err := callAdmin(cmd, g, (*admin.Client).RotateTLS)
			if err != nil {
				return err
			}
			return g.emit(res, func(w io.Writer) {
				if res.OldFingerprint == res.Fingerprint {
					fmt.Fprintf(w, "certificate reloaded from %s; unchanged (sha256 %s): did you replace the files?\n", res.CertFile, res.Fingerprint)
				} else {
					fmt.Fprintf(w, "certificate reloaded from %s: sha256 %s -> %s\n", res.CertFile, res.OldFingerprint, res.Fingerprint)
				}
				fmt.Fprintf(w, "expires %s; %d open connections kept (new handshakes use the new certificate)\n", fmtTime(res.NotAfter), res.Connections)
			})
		},
	}, &cobra.Command{
		Use:   "token-key",
		Short: "Activate a new access-token signing key; older keys keep verifying until their tokens expire",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			res, err := callAdmin(cmd, g, (*admin.Client).RotateTokenKey)
			if err != nil {
				return err
			}
			return g.emit(res, func(w io.Writer) {
				fmt.Fprintf(w, "token-signing key %s is active; tokens signed by older keys stay valid until %s at the latest\n", res.KeyID, fmtTime(res.OldKeysUntil))
			})
		},
	})
	return r
}
