package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/quicprochat/quicprochat/internal/admin"
	"github.com/quicprochat/quicprochat/internal/release"
	"github.com/quicprochat/quicprochat/internal/release/canary"
	"github.com/quicprochat/quicprochat/internal/store"
)

// canaryFlags are the flags of release install|canary|promote|rollback|status|list.
type canaryFlags struct {
	releasesDir, backupDir, pubKey, sig string
	service, unit, serviceCmd, opsURL   string
	bake, poll, startTimeout, maxP99    time.Duration
	maxErrorRatio                       float64
	acceptDataLoss                      bool
}

// addCanaryCommands adds install, canary, promote, rollback, status and
// list to `qpcctl release`; the work is in internal/release/canary.
func addCanaryCommands(rel *cobra.Command, g *globals) {
	// rel.Short stays as main.go sets it: testdata/help.golden pins it.
	f := &canaryFlags{}
	layoutFlags := func(c *cobra.Command) {
		c.Flags().StringVar(&f.releasesDir, "releases-dir", "", "releases directory (default <data_dir>/releases)")
		c.Flags().StringVar(&f.opsURL, "ops-url", "", "qpcd's ops listener (default http:// + ops_listen from qpcd's configuration)")
	}
	liveFlags := func(c *cobra.Command) {
		layoutFlags(c)
		c.Flags().StringVar(&f.backupDir, "backup-dir", "", "where the pre-upgrade backup goes (default <releases-dir>/backups)")
		c.Flags().StringVar(&f.service, "service", "systemd", "service manager that restarts qpcd: systemd, procd or exec")
		c.Flags().StringVar(&f.unit, "unit", "qpcd", "systemd unit or procd init script name")
		c.Flags().StringVar(&f.serviceCmd, "service-cmd", "", "with --service exec: command run with restart, stop or start appended (e.g. \"qpc-supervise ctl --state FILE\")")
		c.Flags().DurationVar(&f.startTimeout, "start-timeout", canary.DefaultStartTimeout, "how long qpcd gets to start and turn ready after a restart")
		c.Flags().DurationVar(&f.poll, "poll", canary.DefaultPoll, "how often /readyz and /metrics are read")
	}
	signed := func(c *cobra.Command) {
		c.Flags().StringVar(&f.pubKey, "pubkey", "", "minisign public key file (default "+release.DefaultPublicKeyPath+")")
		c.Flags().StringVar(&f.sig, "sig", "", "signature file (default ARTIFACT.minisig)")
	}

	install := &cobra.Command{
		Use:   "install ARTIFACT",
		Short: "Verify a qpcd binary and install it under <releases-dir>/<version>; it becomes current only if none is",
		Long: "ARTIFACT is a qpcd binary (qpcd_VERSION_linux_ARCH from a release) with ARTIFACT.minisig beside it.\n" +
			"Use it once to put the running version into the releases layout before the first canary.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			m, err := g.canaryManager(f, false)
			if err != nil {
				return err
			}
			ctx, cancel := g.longCtx(cmd.Context())
			defer cancel()
			inst, made, err := m.Install(ctx, args[0], f.sig)
			if err != nil {
				return failed(err)
			}
			return g.emit(map[string]any{"installed": inst, "current": made}, func(w io.Writer) {
				fmt.Fprintf(w, "installed qpcd %s at %s (sha256 %s, key %s)\n", inst.Version, inst.Path, inst.SHA256, inst.KeyID)
				if made {
					fmt.Fprintf(w, "it is the current release: run qpcd as %s\n", filepath.Join(m.ReleasesDir(), canary.CurrentLink, canary.BinaryName))
				}
			})
		},
	}
	layoutFlags(install)
	signed(install)

	can := &cobra.Command{
		Use:   "canary ARTIFACT",
		Short: "Verify, back up, switch to ARTIFACT, restart qpcd and watch its health; roll back automatically if the gate fails",
		Long: "ARTIFACT is a qpcd binary with ARTIFACT.minisig beside it (or --sig). In order: verify the signature,\n" +
			"install to <releases-dir>/<version> (the version `qpcd version` prints), take a backup through the admin\n" +
			"API, point `previous` at the running release and `current` at the new one, restart qpcd through the\n" +
			"service manager, wait for it to run the new version and be ready (--start-timeout), then watch it for\n" +
			"--bake: every --poll /readyz must answer 200 and over the bake the RPC error ratio (internal, unavailable\n" +
			"and unknown statuses over all RPCs) must stay within --max-error-ratio and the p99 latency (without\n" +
			"FetchWait and Ping) within --max-p99. On failure: `current` goes back, qpcd restarts, and if the schema\n" +
			"moved the pre-upgrade backup is restored (qpcd stopped meanwhile).\n" +
			"On PostgreSQL (several nodes, one database) it upgrades this node only, gates on its metrics while the others\n" +
			"keep serving, takes no file backup and never restores the shared database: a rollback switches this node's binary\n" +
			"back (the new release's migrations must be expand-only). After promote, run it on each other node in turn.\n" +
			"Exit codes: 0 the gate passed (then promote or roll back), 1 failed (rolled back, or see the error), 2 usage.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			m, err := g.canaryManager(f, true)
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), g.timeout+f.bake+2*f.startTimeout)
			defer cancel()
			rep, err := m.Canary(ctx, args[0], f.sig)
			if rep.Installed.Version == "" && err != nil {
				return failed(err)
			}
			if eerr := g.emit(rep, func(w io.Writer) { printCanary(w, rep) }); eerr != nil && err == nil {
				return failed(eerr)
			}
			return failed(err)
		},
	}
	liveFlags(can)
	signed(can)
	can.Flags().DurationVar(&f.bake, "bake", canary.DefaultBake, "how long the gate watches the new qpcd")
	can.Flags().Float64Var(&f.maxErrorRatio, "max-error-ratio", canary.DefaultMaxErrorRatio, "highest share of RPCs failing server-side (internal, unavailable) during the bake")
	can.Flags().DurationVar(&f.maxP99, "max-p99", canary.DefaultMaxP99, "highest p99 RPC latency during the bake (FetchWait and Ping excluded)")

	promote := &cobra.Command{
		Use:   "promote",
		Short: "Mark the release that passed its canary as stable (`previous` is kept for one more rollback)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			m, err := g.canaryManager(f, false)
			if err != nil {
				return err
			}
			ctx, cancel := g.longCtx(cmd.Context())
			defer cancel()
			st, err := m.Promote(ctx)
			if err != nil {
				return failed(err)
			}
			return g.emit(st, func(w io.Writer) {
				fmt.Fprintf(w, "promoted qpcd %s to stable; `qpcctl release rollback` still returns to %s\n", st.Version, st.From)
			})
		},
	}
	layoutFlags(promote)

	rollback := &cobra.Command{
		Use:   "rollback",
		Short: "Switch back to the release the last canary replaced and restart qpcd (restores the pre-upgrade backup if the schema moved)",
		Long: "If the schema did not move, only the binary changes and no data is lost. If it moved, the old qpcd cannot\n" +
			"open the database: rollback then stops qpcd, restores the pre-upgrade backup (every write since the upgrade\n" +
			"is LOST; the replaced database is kept as qpcd.db.pre-restore-<time>) and starts it; it refuses unless\n" +
			"--accept-data-loss is given.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			m, err := g.canaryManager(f, true)
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), g.timeout+2*f.startTimeout)
			defer cancel()
			st, err := m.Rollback(ctx, f.acceptDataLoss)
			if err != nil {
				return failed(err)
			}
			return g.emit(st, func(w io.Writer) {
				fmt.Fprintf(w, "rolled back from %s to %s; qpcd %s serves\n", st.Version, st.From, st.From)
				if st.Restored {
					fmt.Fprintf(w, "restored the pre-upgrade backup %s: writes since %s are lost\n", st.Backup, fmtTime(st.StartedAt))
				}
			})
		},
	}
	liveFlags(rollback)
	rollback.Flags().BoolVar(&f.acceptDataLoss, "accept-data-loss", false, "restore the pre-upgrade backup if the schema moved (writes since the upgrade are lost)")

	status := &cobra.Command{
		Use:   "status",
		Short: "Show the installed releases, current and previous, the last canary and the running version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			m, err := g.canaryManager(f, false)
			if err != nil {
				return err
			}
			ctx, cancel := g.longCtx(cmd.Context())
			defer cancel()
			rep, err := m.Status(ctx)
			if err != nil {
				return failed(err)
			}
			return g.emit(rep, func(w io.Writer) { printReleaseStatus(w, rep) })
		},
	}
	layoutFlags(status)

	list := &cobra.Command{
		Use:   "list",
		Short: "List the installed releases",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			m, err := g.canaryManager(f, false)
			if err != nil {
				return err
			}
			rs, err := m.List()
			if err != nil {
				return failed(err)
			}
			return g.emit(rs, func(w io.Writer) { printReleases(w, rs) })
		},
	}
	layoutFlags(list)
	rel.AddCommand(install, can, promote, rollback, status, list)
}

// canaryManager builds the canary configuration from qpcd's configuration
// and the flags; live adds the service manager, admin client and restore.
func (g *globals) canaryManager(f *canaryFlags, live bool) (*canary.Manager, error) {
	cfg, err := g.loadConfig()
	if err != nil {
		return nil, err
	}
	opsURL := f.opsURL
	if opsURL == "" {
		// status and list work without an ops listener (status says it cannot read it).
		if opsURL, err = opsURLFrom(cfg.OpsListen); err != nil && live {
			return nil, usageError{err}
		}
	}
	c := canary.Config{
		DataDir: cfg.DataDir, ReleasesDir: f.releasesDir, BackupDir: f.backupDir, PublicKey: f.pubKey,
		OpsURL: opsURL, Bake: f.bake, Poll: f.poll, StartTimeout: f.startTimeout,
		Thresholds: canary.Thresholds{MaxErrorRatio: f.maxErrorRatio, MaxP99: f.maxP99},
	}
	if !g.json {
		c.Step = func(msg string) { fmt.Fprintln(g.stderr, "release:", msg) }
	}
	if live {
		svc, err := canary.NewService(f.service, f.unit, f.serviceCmd)
		if err != nil {
			return nil, usageError{err}
		}
		cl, err := g.client()
		if err != nil {
			return nil, err
		}
		dbPath := filepath.Join(cfg.DataDir, "qpcd.db")
		c.Service, c.Admin = svc, cl
		c.Restore = func(ctx context.Context, backup string) error {
			key, err := g.dbKey(cfg)
			if err != nil {
				return err
			}
			defer key.Wipe()
			if _, err = admin.Restore(ctx, admin.RestoreOptions{Backup: backup, DataDir: cfg.DataDir, DBPath: dbPath, Key: key}); err != nil {
				return err
			}
			return chownLikeDataDir(cfg.DataDir, dbPath)
		}
		c.OfflineSchema = func(ctx context.Context) (int, error) {
			key, err := g.dbKey(cfg)
			if err != nil {
				return 0, err
			}
			defer key.Wipe()
			rep, err := store.VerifyFile(ctx, dbPath, key)
			return rep.SchemaVersion, err
		}
	}
	m, err := canary.New(c)
	if err != nil {
		return nil, usageError{err}
	}
	return m, nil
}

// chownLikeDataDir gives the restored database to the data directory's
// owner when qpcctl runs as root (systemctl needs root; qpcd runs as qpcd
// and must open the file it is started on).
func chownLikeDataDir(dataDir, db string) error {
	if os.Geteuid() != 0 {
		return nil
	}
	fi, err := os.Stat(dataDir)
	if err != nil {
		return err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok || st.Uid == 0 {
		return nil
	}
	if err := os.Chown(db, int(st.Uid), int(st.Gid)); err != nil {
		return fmt.Errorf("give the restored %s to the data directory's owner: %w (chown it by hand before starting qpcd)", db, err)
	}
	return nil
}

// opsURLFrom turns ops_listen into a URL to reach it from this host.
func opsURLFrom(listen string) (string, error) {
	if listen == "" {
		return "", fmt.Errorf("qpcd's ops listener is disabled (ops_listen is empty); the canary gate reads /readyz and /metrics: enable ops_listen or pass --ops-url")
	}
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return "", fmt.Errorf("ops_listen %q: %w; pass --ops-url", listen, err)
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
	}
	return "http://" + net.JoinHostPort(host, port), nil
}

func printCanary(w io.Writer, r canary.Report) {
	g := r.Gate
	verdict := "FAILED"
	if g.Passed {
		verdict = "passed"
	}
	fmt.Fprintf(w, "canary %s -> %s: gate %s\n", r.From, r.Installed.Version, verdict)
	if g.Reason != "" {
		fmt.Fprintf(w, "reason:         %s\n", g.Reason)
	}
	fmt.Fprintf(w, "artifact:       %s (sha256 %s, key %s)\n", r.Installed.Path, r.Installed.SHA256, r.Installed.KeyID)
	if r.Backup != "" {
		fmt.Fprintf(w, "backup:         %s (schema %d)\n", r.Backup, r.SchemaBefore)
	}
	if r.Shared {
		fmt.Fprintf(w, "cluster:        shared PostgreSQL database (schema %d before), %d other node(s); no file backup, never restored by a rollback\n", r.SchemaBefore, len(r.Peers))
		for _, p := range r.Peers {
			fmt.Fprintf(w, "  node %s  %s  qpcd %s  %s\n", p.ID, p.Address, p.Version, p.State)
		}
	}
	fmt.Fprintf(w, "bake:           %.1fs, %d polls, ready %v\n", g.BakeSeconds, g.Polls, g.Ready)
	fmt.Fprintf(w, "rpcs:           %.0f, errors %.0f, ratio %.4f (max %.4f)\n", g.Requests, g.Errors, g.ErrorRatio, g.MaxErrorRatio)
	if g.P99Seconds >= 0 {
		fmt.Fprintf(w, "p99:            %s (max %s)\n", time.Duration(g.P99Seconds*float64(time.Second)).Round(time.Microsecond), time.Duration(g.MaxP99Seconds*float64(time.Second)))
	} else {
		fmt.Fprintln(w, "p99:            no timed RPCs during the bake")
	}
	switch {
	case g.Passed:
		fmt.Fprintf(w, "next:           `qpcctl release promote`, or `qpcctl release rollback` to return to %s\n", r.From)
		if r.Shared && len(r.Peers) > 0 {
			fmt.Fprintf(w, "then:           on each other node in turn, `qpcctl release canary` of the same artifact and `qpcctl release promote`\n")
		}
	case r.RolledBack:
		fmt.Fprintf(w, "rolled back:    qpcd %s serves again", r.From)
		if r.Restored {
			fmt.Fprintf(w, "; the schema had moved (%d -> %d), the pre-upgrade backup was restored", r.SchemaBefore, r.SchemaAfter)
		}
		fmt.Fprintln(w)
	}
}

func printReleaseStatus(w io.Writer, r canary.StatusReport) {
	fmt.Fprintf(w, "releases:  %s\n", r.ReleasesDir)
	fmt.Fprintf(w, "current:   %s\n", dash(r.Current))
	fmt.Fprintf(w, "previous:  %s\n", dash(r.Previous))
	if r.OpsError != "" {
		fmt.Fprintf(w, "running:   unknown (%s)\n", r.OpsError)
	} else {
		fmt.Fprintf(w, "running:   qpcd %s, ready %v\n", r.Running, r.Ready)
	}
	if c := r.Canary; c != nil {
		fmt.Fprintf(w, "canary:    %s -> %s, %s (started %s, updated %s)\n", c.From, c.Version, c.Phase, fmtTime(c.StartedAt), fmtTime(c.UpdatedAt))
		if c.Shared {
			fmt.Fprintf(w, "cluster:   shared PostgreSQL database (schema %d before); other nodes at the start:", c.SchemaBefore)
			for _, p := range c.Peers {
				fmt.Fprintf(w, " %s (%s, %s)", p.ID, p.Version, p.State)
			}
			fmt.Fprintln(w)
		} else {
			fmt.Fprintf(w, "backup:    %s (schema %d)\n", c.Backup, c.SchemaBefore)
		}
		if c.Stable != "" {
			fmt.Fprintf(w, "stable:    %s\n", c.Stable)
		}
		if c.Error != "" {
			fmt.Fprintf(w, "error:     %s\n", c.Error)
		}
	} else {
		fmt.Fprintln(w, "canary:    none yet")
	}
	printReleases(w, r.Releases)
}

func printReleases(w io.Writer, rs []canary.Release) {
	if len(rs) == 0 {
		fmt.Fprintln(w, "no releases installed; `qpcctl release install ARTIFACT` adds the running one")
		return
	}
	rows := make([][]string, 0, len(rs))
	for _, r := range rs {
		var marks []string
		for _, m := range []struct {
			on   bool
			name string
		}{{r.Current, "current"}, {r.Previous, "previous"}, {r.Canary, "canary"}, {r.Stable, "stable"}} {
			if m.on {
				marks = append(marks, m.name)
			}
		}
		rows = append(rows, []string{r.Version, dash(strings.Join(marks, ",")), fmtTime(r.Modified), r.Path})
	}
	tableRows(w, []string{"VERSION", "MARKS", "INSTALLED", "PATH"}, rows)
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
