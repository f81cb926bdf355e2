// Command qpc-release is the release pipeline's helper: it completes SBOMs with
// the bundled C libraries, makes and reads minisign keys, and signs and
// verifies artifacts. `make release` runs it; operators use `qpcctl release verify`.
package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/quicprochat/quicprochat/internal/release"
	"github.com/quicprochat/quicprochat/internal/release/sbom"
)

// Exit codes.
const (
	exitOK      = 0
	exitFailure = 1
	exitUsage   = 2
)

// PasswordEnv names the variable holding the signing key's password.
const PasswordEnv = "QPC_RELEASE_KEY_PASSWORD"

type usageError struct{ err error }

func (u usageError) Error() string { return u.err.Error() }
func (u usageError) Unwrap() error { return u.err }

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	root := &cobra.Command{
		Use:           "qpc-release",
		Short:         "quicprochat release helper (SBOM completion, minisign keys and signatures)",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	root.AddCommand(sbomCommand(stdout), changelogCommand(stdout), keygenCommand(stdout), pubkeyCommand(stdout), signCommand(stdout), verifyCommand(stdout))
	root.SetArgs(args)
	err := root.Execute()
	if err == nil {
		return exitOK
	}
	fmt.Fprintln(stderr, "qpc-release:", err)
	var ue usageError
	// cobra reports an unknown subcommand only as text.
	if errors.As(err, &ue) || strings.HasPrefix(err.Error(), "unknown command") {
		return exitUsage
	}
	return exitFailure
}

// usageArgs wraps a cobra argument check so its errors exit with code 2.
func usageArgs(check cobra.PositionalArgs) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if err := check(cmd, args); err != nil {
			return usageError{err}
		}
		return nil
	}
}

// epoch parses SOURCE_DATE_EPOCH-style seconds ("" = now).
func epoch(s string) (time.Time, error) {
	if s == "" {
		return time.Now(), nil
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 {
		return time.Time{}, usageError{fmt.Errorf("--epoch %q: want seconds since 1970 such as $SOURCE_DATE_EPOCH", s)}
	}
	return time.Unix(n, 0).UTC(), nil
}

func sbomCommand(stdout io.Writer) *cobra.Command {
	var in, out, moduleDir, schemaDir, epochText, version string
	cmd := &cobra.Command{
		Use:   "sbom --in GOMOD.cdx.json --out FILE",
		Short: "Add go-sqlcipher's bundled C libraries (versions read from its sources) to a cyclonedx-gomod SBOM",
		Args:  usageArgs(cobra.NoArgs),
		RunE: func(*cobra.Command, []string) error {
			if in == "" || out == "" {
				return usageError{errors.New("--in and --out are required")}
			}
			ts, err := epoch(epochText)
			if err != nil {
				return err
			}
			if moduleDir == "" {
				if moduleDir, err = moduleDirOf(sbom.SQLCipherModule); err != nil {
					return err
				}
			}
			libs, err := sbom.ReadBundled(moduleDir)
			if err != nil {
				return err
			}
			f, err := os.Open(in)
			if err != nil {
				return fmt.Errorf("%w: %v", sbom.ErrRead, err)
			}
			bom, err := sbom.Decode(f)
			f.Close()
			if err != nil {
				return fmt.Errorf("%s: %w", in, err)
			}
			n := sbom.Augment(bom, libs, sbom.Options{Timestamp: ts, Version: version})
			var buf bytes.Buffer
			if err := sbom.Encode(&buf, bom); err != nil {
				return err
			}
			// What we publish must pass the check consumers run: the
			// official schema of the spec version the SBOM declares.
			if schemaDir == "" {
				dir, err := moduleDirOf(sbom.SchemaModule)
				if err != nil {
					return err
				}
				schemaDir = filepath.Join(dir, "schema")
			}
			if err := sbom.Validate(buf.Bytes(), schemaDir); err != nil {
				return fmt.Errorf("%s: %w", out, err)
			}
			if err := sbom.CheckLicenses(bom); err != nil {
				return fmt.Errorf("%s: %w", out, err)
			}
			if err := os.WriteFile(out, buf.Bytes(), 0o644); err != nil {
				return fmt.Errorf("%w: %v", sbom.ErrWrite, err)
			}
			total := 0
			if bom.Components != nil {
				total = len(*bom.Components)
			}
			fmt.Fprintf(stdout, "%s: %d components (%d bundled C libraries added)\n", out, total, n)
			return nil
		},
	}
	cmd.Flags().StringVar(&in, "in", "", "cyclonedx-gomod JSON SBOM")
	cmd.Flags().StringVar(&out, "out", "", "completed SBOM to write")
	cmd.Flags().StringVar(&moduleDir, "sqlcipher-dir", "", "go-sqlcipher module directory (default: from go list -m)")
	cmd.Flags().StringVar(&schemaDir, "schema-dir", "", "directory of the official CycloneDX JSON schemas (default: cyclonedx-go's schema/ from go list -m)")
	cmd.Flags().StringVar(&epochText, "epoch", os.Getenv("SOURCE_DATE_EPOCH"), "SBOM timestamp in seconds (default $SOURCE_DATE_EPOCH)")
	cmd.Flags().StringVar(&version, "version", "", "version of the main component (default: as cyclonedx-gomod found it)")
	return cmd
}

func changelogCommand(stdout io.Writer) *cobra.Command {
	var version, epochText, gitLog, out string
	cmd := &cobra.Command{
		Use:   "changelog --version V --out FILE [--git-log FILE]",
		Short: "Write the packages' changelog entry for this release (chglog YAML, rendered by nfpm)",
		Long: "The entry lists the commits since the previous tag (--git-log: the output of\n" +
			"git log --format='%h %s' PREVIOUS..HEAD); without commits it names the build.",
		Args: usageArgs(cobra.NoArgs),
		RunE: func(*cobra.Command, []string) error {
			if version == "" || out == "" {
				return usageError{errors.New("--version and --out are required")}
			}
			ts, err := epoch(epochText)
			if err != nil {
				return err
			}
			var changes []release.Change
			if gitLog != "" {
				b, err := os.ReadFile(gitLog)
				if err != nil {
					return fmt.Errorf("%w: %v", release.ErrIO, err)
				}
				changes = release.ParseGitLog(string(b))
			}
			if len(changes) == 0 {
				changes = []release.Change{{Note: "Build " + version + "; see docs/release.md."}}
			}
			var buf bytes.Buffer
			if err := release.WriteChangelog(&buf, release.ChangelogEntry{Version: version, Date: ts, Changes: changes}); err != nil {
				return err
			}
			if err := os.WriteFile(out, buf.Bytes(), 0o644); err != nil {
				return fmt.Errorf("%w: %v", release.ErrIO, err)
			}
			fmt.Fprintf(stdout, "%s: %d changes\n", out, len(changes))
			return nil
		},
	}
	cmd.Flags().StringVar(&version, "version", "", "package version")
	cmd.Flags().StringVar(&epochText, "epoch", os.Getenv("SOURCE_DATE_EPOCH"), "entry date in seconds (default $SOURCE_DATE_EPOCH)")
	cmd.Flags().StringVar(&gitLog, "git-log", "", "file with git log --format='%h %s' output")
	cmd.Flags().StringVar(&out, "out", "", "file to write")
	return cmd
}

// moduleDirOf asks the go command where a module of the build list lives.
func moduleDirOf(module string) (string, error) {
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", module).Output()
	dir := strings.TrimSpace(string(out))
	if err != nil || dir == "" {
		return "", fmt.Errorf("%w: cannot locate %s (run go mod download, or pass --sqlcipher-dir): %v", sbom.ErrRead, module, err)
	}
	return dir, nil
}

func keygenCommand(stdout io.Writer) *cobra.Command {
	var secretPath, publicPath string
	cmd := &cobra.Command{
		Use:   "keygen --secret FILE --public FILE",
		Short: "Make a minisign key pair (secret key encrypted when " + PasswordEnv + " is set)",
		Args:  usageArgs(cobra.NoArgs),
		RunE: func(*cobra.Command, []string) error {
			if secretPath == "" || publicPath == "" {
				return usageError{errors.New("--secret and --public are required")}
			}
			if _, err := os.Stat(secretPath); err == nil {
				return fmt.Errorf("%s exists; refusing to overwrite a signing key", secretPath)
			}
			key, pub, err := release.GenerateKey()
			if err != nil {
				return err
			}
			sec, err := release.MarshalPrivateKey(key, os.Getenv(PasswordEnv))
			if err != nil {
				return err
			}
			pubText, err := pub.MarshalText()
			if err != nil {
				return err
			}
			if err := os.WriteFile(secretPath, sec, 0o600); err != nil {
				return fmt.Errorf("%w: %v", release.ErrIO, err)
			}
			if err := os.WriteFile(publicPath, pubText, 0o644); err != nil {
				return fmt.Errorf("%w: %v", release.ErrIO, err)
			}
			fmt.Fprintf(stdout, "key %s: secret %s, public %s\n", pub.ID(), secretPath, publicPath)
			return nil
		},
	}
	cmd.Flags().StringVar(&secretPath, "secret", "", "secret key file to create (mode 0600)")
	cmd.Flags().StringVar(&publicPath, "public", "", "public key file to write")
	return cmd
}

func pubkeyCommand(stdout io.Writer) *cobra.Command {
	var keyPath, out string
	cmd := &cobra.Command{
		Use:   "pubkey --key SECRET [--out FILE]",
		Short: "Write the public key of a minisign secret key",
		Args:  usageArgs(cobra.NoArgs),
		RunE: func(*cobra.Command, []string) error {
			if keyPath == "" {
				return usageError{errors.New("--key is required")}
			}
			key, err := release.LoadPrivateKey(keyPath, os.Getenv(PasswordEnv))
			if err != nil {
				return err
			}
			pub, err := key.Public()
			if err != nil {
				return err
			}
			text, err := pub.MarshalText()
			if err != nil {
				return err
			}
			if out == "" {
				_, err = stdout.Write(text)
				return err
			}
			if err := os.WriteFile(out, text, 0o644); err != nil {
				return fmt.Errorf("%w: %v", release.ErrIO, err)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&keyPath, "key", os.Getenv("QPC_RELEASE_KEY"), "minisign secret key (default $QPC_RELEASE_KEY)")
	cmd.Flags().StringVar(&out, "out", "", "public key file to write (default stdout)")
	return cmd
}

func signCommand(stdout io.Writer) *cobra.Command {
	var keyPath, epochText string
	cmd := &cobra.Command{
		Use:   "sign --key SECRET FILE...",
		Short: "Write FILE.minisig for each FILE (password from " + PasswordEnv + ")",
		Args:  usageArgs(cobra.MinimumNArgs(1)),
		RunE: func(_ *cobra.Command, files []string) error {
			if keyPath == "" {
				return usageError{errors.New("--key (or $QPC_RELEASE_KEY) is required")}
			}
			ts, err := epoch(epochText)
			if err != nil {
				return err
			}
			key, err := release.LoadPrivateKey(keyPath, os.Getenv(PasswordEnv))
			if err != nil {
				return err
			}
			for _, f := range files {
				sig, err := release.SignFile(key, f, ts.Unix())
				if err != nil {
					return err
				}
				fmt.Fprintf(stdout, "signed %s\n", sig)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&keyPath, "key", os.Getenv("QPC_RELEASE_KEY"), "minisign secret key (default $QPC_RELEASE_KEY)")
	cmd.Flags().StringVar(&epochText, "epoch", os.Getenv("SOURCE_DATE_EPOCH"), "timestamp in the trusted comment (default $SOURCE_DATE_EPOCH)")
	return cmd
}

func verifyCommand(stdout io.Writer) *cobra.Command {
	var pubPath string
	cmd := &cobra.Command{
		Use:   "verify --pubkey FILE FILE...",
		Short: "Verify FILE against FILE.minisig for each FILE",
		Args:  usageArgs(cobra.MinimumNArgs(1)),
		RunE: func(_ *cobra.Command, files []string) error {
			var failed []string
			for _, f := range files {
				res, err := release.VerifyFile(f, "", pubPath)
				if err != nil {
					fmt.Fprintf(stdout, "FAIL %v\n", err)
					failed = append(failed, f)
					continue
				}
				fmt.Fprintf(stdout, "OK %s (key %s)\n", f, res.KeyID)
			}
			if len(failed) > 0 {
				return fmt.Errorf("%d of %d files did not verify", len(failed), len(files))
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&pubPath, "pubkey", release.DefaultPublicKeyPath, "minisign public key")
	return cmd
}
