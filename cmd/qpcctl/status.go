package main

import (
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/quicprochat/quicprochat/internal/admin"
)

func newStatusCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "Show a running qpcd's version, uptime, readiness, connections, counts, database, KeyPackage stock and last backup",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, err := callAdmin(cmd, g, (*admin.Client).Status)
			if err != nil {
				return err
			}
			return g.emit(st, func(w io.Writer) { printStatus(w, st, time.Now()) })
		},
	}
}

func count(n int64) string {
	if n < 0 {
		return "n/a"
	}
	return fmt.Sprint(n)
}

func printStatus(w io.Writer, st admin.Status, now time.Time) {
	fmt.Fprintf(w, "qpcd %s (commit %s)\n", st.Version, st.Commit)
	fmt.Fprintf(w, "uptime:       %s (since %s)\n", time.Duration(st.UptimeSeconds*float64(time.Second)).Round(time.Second), fmtTime(st.StartedAt))
	fmt.Fprintf(w, "readiness:    %s\n", st.Readiness)
	fmt.Fprintf(w, "connections:  %d\n", st.Connections)
	fmt.Fprintf(w, "accounts:     %s (%s active)\n", count(st.Counts.Accounts), count(st.Counts.ActiveAccounts))
	fmt.Fprintf(w, "devices:      %s (%s active)\n", count(st.Counts.Devices), count(st.Counts.ActiveDevices))
	fmt.Fprintf(w, "channels:     %s\n", count(st.Counts.Channels))
	fmt.Fprintf(w, "invites open: %s\n", count(st.Counts.Invites))
	fmt.Fprintf(w, "keypackages:  %s pool, %s last resort\n", count(st.KeyPackages.Pool), count(st.KeyPackages.LastResort))
	for _, s := range st.KeyPackages.Suites {
		note := ""
		if !s.Allowed {
			note = " (no longer allowed)"
		}
		fmt.Fprintf(w, "  %-46s %d pool, %d last resort%s\n", s.Suite, s.Pool, s.LastResort, note)
	}
	fmt.Fprintf(w, "database:     %s, %s, schema %d, key id %s\n", st.DBPath, humanBytes(st.DBBytes), st.SchemaVersion, st.DBKeyID)
	if st.LastBackup != nil {
		fmt.Fprintf(w, "last backup:  %s (%s, %s, %s)\n", fmtTime(st.LastBackup.At), ago(now, st.LastBackup.At), humanBytes(st.LastBackup.Bytes), st.LastBackup.File)
	} else {
		fmt.Fprintln(w, "last backup:  never; take one with `qpcctl backup create --out FILE`")
	}
	fmt.Fprintf(w, "tls:          sha256 %s, expires %s\n", st.TLSFingerprint, fmtTime(st.TLSNotAfter))
	if st.TokenKeyID != "" {
		fmt.Fprintf(w, "token key:    %s (active since %s)\n", st.TokenKeyID, fmtTime(st.TokenKeySince))
		if st.SigningKeyID != "" && st.SigningKeyID != st.TokenKeyID {
			fmt.Fprintf(w, "              this node still signs with %s (it has not yet heard of the rotation)\n", st.SigningKeyID)
		}
	}
	printNodes(w, st.Nodes, now)
}

// printNodes lists the node registry; stale nodes are marked and counted,
// since they are what an operator must look at.
func printNodes(w io.Writer, nodes []admin.Node, now time.Time) {
	if len(nodes) == 0 {
		return
	}
	var running, stale int
	rows := make([][]string, 0, len(nodes))
	for _, n := range nodes {
		state := n.State
		switch n.State {
		case "running":
			running++
		case "stale":
			stale++
			state = "STALE (no heartbeat for " + now.Sub(n.LastSeen).Round(time.Second).String() + ")"
		case "stopped":
			state = "stopped " + ago(now, n.StoppedAt)
		}
		id := n.ID
		if n.Self {
			id += " *"
		}
		rows = append(rows, []string{id, n.Address, n.Version, fmtTime(n.StartedAt), ago(now, n.LastSeen), state})
	}
	summary := fmt.Sprintf("%d running", running)
	if stale > 0 {
		summary += fmt.Sprintf(", %d STALE", stale)
	}
	fmt.Fprintf(w, "nodes:        %s (* this node)\n", summary)
	tableRows(w, []string{"  NODE", "ADDRESS", "VERSION", "STARTED", "LAST SEEN", "STATE"}, indent(rows))
}

func indent(rows [][]string) [][]string {
	for _, r := range rows {
		r[0] = "  " + r[0]
	}
	return rows
}
