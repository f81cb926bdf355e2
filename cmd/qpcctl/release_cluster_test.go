package main

import (
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/quicprochat/quicprochat/internal/admin"
	"github.com/quicprochat/quicprochat/internal/release"
	"github.com/quicprochat/quicprochat/internal/release/canary"
	"github.com/quicprochat/quicprochat/internal/store/pgtest"
)

// TestReleaseCanaryCluster is the canary drill on a cluster, with real
// binaries: nodes A and B run qpcd 1.0.0 on one PostgreSQL database, A from
// <data>/releases/current under qpc-supervise while a client enqueues
// through it. `qpcctl release canary` on A of 2.0.0-fail fails its gate and
// rolls back A's binary only (no file backup, nothing restored, B never
// restarted); a healthy 1.1.0 then passes on A while B still serves 1.0.0,
// and is promoted; the reports and `release status` name node B. Every
// acknowledged message is there at the end, read through B.
func TestReleaseCanaryCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("builds three qpcd binaries")
	}
	dsnFile := writeDSNFile(t, shortDir(t), pgtest.NewDatabase(t))
	env := []string{"QPC_STORE_BACKEND=postgres", "QPC_POSTGRES_DSN_FILE=" + dsnFile, "QPC_CLUSTER_HEARTBEAT=200ms"}
	d := newDrill(t, env...)
	bDir := shortDir(t)
	copyTree(t, filepath.Join(d.data, "tls"), filepath.Join(bDir, "tls")) // one certificate for the cluster
	b := startQPCDBin(t, d.v1, bDir, env...)
	bStart := startTime(t, b)

	// Node A sees B in the registry.
	waitFor(t, 10*time.Second, "node A lists node B running", func() bool {
		var st admin.Status
		ctlOK(t, d.data, &st, "status")
		for _, n := range st.Nodes {
			if n.Address == b.quic && n.State == "running" && n.Version == "1.0.0" {
				return st.Backend == "postgres"
			}
		}
		return false
	})

	// 2.0.0-fail on A: gate fails, A's binary goes back, the database stays.
	r := ctl(t, d.data, append(append([]string{"--json", "release", "canary", "--pubkey", d.pubFile, "--bake", "2s", "--poll", "100ms", "--start-timeout", "5s"}, d.exec()...), d.v2)...)
	t.Logf("canary 2.0.0-fail on node A: exit %d\nstderr: %s", r.code, r.stderr)
	if r.code != 1 {
		t.Fatalf("canary exit %d, want 1\nstdout: %s", r.code, r.stdout)
	}
	var rep canary.Report
	if err := json.NewDecoder(strings.NewReader(r.stdout)).Decode(&rep); err != nil {
		t.Fatalf("report %q: %v", r.stdout, err)
	}
	if !rep.Shared || len(rep.Peers) != 1 || rep.Peers[0].Address != b.quic || rep.Peers[0].Version != "1.0.0" ||
		rep.Backup != "" || !rep.RolledBack || rep.Restored || rep.Gate.Passed {
		t.Fatalf("report: %+v", rep)
	}
	if entries, _ := os.ReadDir(filepath.Join(d.data, "releases", canary.BackupsDir)); len(entries) != 0 {
		t.Errorf("a file backup was taken on a cluster: %v", entries)
	}
	if !serving(d.ops, "1.0.0") || !serving("http://"+b.ops, "1.0.0") || startTime(t, b) != bStart {
		t.Fatal("after the rollback: node A or node B is not serving 1.0.0, or node B was restarted")
	}

	// A healthy 1.1.0 passes on A while B serves 1.0.0 (two versions on one
	// database), and is promoted.
	n := d.s.count()
	waitFor(t, 60*time.Second, "acknowledged messages after the rollback", func() bool { return d.s.count() >= n+20 })
	v11 := filepath.Join(d.bin, "qpcd-1.1.0")
	goBuild(t, v11, "../qpcd", "-X "+versionPkg+".Version=1.1.0")
	if _, err := release.SignFile(d.key, v11, 1); err != nil {
		t.Fatal(err)
	}
	r = ctl(t, d.data, append(append([]string{"release", "canary", "--pubkey", d.pubFile, "--bake", "2s", "--poll", "100ms", "--start-timeout", "10s"}, d.exec()...), v11)...)
	t.Logf("canary 1.1.0 on node A: exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
	if r.code != 0 || !strings.Contains(r.stdout, "gate passed") || !strings.Contains(r.stdout, "cluster:") ||
		!strings.Contains(r.stdout, "node "+rep.Peers[0].ID) || !strings.Contains(r.stdout, "on each other node in turn") {
		t.Fatalf("canary of 1.1.0 on node A: exit %d", r.code)
	}
	if !serving(d.ops, "1.1.0") || !serving("http://"+b.ops, "1.0.0") || startTime(t, b) != bStart {
		t.Fatal("node A does not serve 1.1.0 beside node B on 1.0.0")
	}
	if r := ctl(t, d.data, "release", "promote"); r.code != 0 {
		t.Fatalf("promote: exit %d: %s", r.code, r.stderr)
	}
	var rs canary.StatusReport
	ctlOK(t, d.data, &rs, "release", "status", "--ops-url", d.ops)
	if rs.Canary == nil || rs.Canary.Phase != canary.PhasePromoted || !rs.Canary.Shared || len(rs.Canary.Peers) != 1 {
		t.Fatalf("release status: %+v", rs.Canary)
	}

	// Every acknowledged message, read through node B (still 1.0.0).
	n = d.s.count()
	waitFor(t, 60*time.Second, "acknowledged messages on 1.1.0", func() bool { return d.s.count() >= n+20 })
	d.stopSender()
	acked := d.s.ackedIDs()
	t.Logf("%d messages acknowledged through node A across two canaries, %d enqueue errors", len(acked), d.s.errorCount())
	d.quicAddr = b.quic
	checkNoneLost(t, acked, d.fetchAll(t))
}

// startTime is a node's qpcd_start_time_seconds.
func startTime(t *testing.T, d *daemon) float64 {
	t.Helper()
	resp, err := http.Get("http://" + d.ops + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	s, err := canary.ParseMetrics(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return s.StartTime
}
