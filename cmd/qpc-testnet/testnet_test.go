package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestTestnetUpDown runs `scripts/testnet.sh up` (what `make testnet`
// runs) with two nodes on the real binaries, checks that every node is
// ready, that the nodes list each other, that Prometheus scrapes each of
// them (up == 1 through its query API), that the clients chat through both
// nodes, and that `scripts/testnet.sh down` leaves no process and no state
// behind.
func TestTestnetUpDown(t *testing.T) {
	prom, err := exec.LookPath("prometheus")
	if err != nil {
		t.Fatalf("prometheus not found (Debian's prometheus package; make deps-test installs it): %v", err)
	}
	bin := t.TempDir()
	for _, c := range []string{"qpcd", "qpcctl", "qpc", "qpc-testnet"} {
		if out, err := exec.Command("go", "build", "-o", filepath.Join(bin, c), "../"+c).CombinedOutput(); err != nil {
			t.Fatalf("building %s: %v\n%s", c, err, out)
		}
	}
	// With Jaeger built (make jaeger, or QPC_JAEGER_BIN), the testnet runs
	// with TRACING=1 and the traces are checked too; make trace-e2e runs it so.
	tracingOn := false
	jaegerBin := os.Getenv("QPC_JAEGER_BIN")
	if jaegerBin == "" {
		jaegerBin, _ = filepath.Abs("../../bin/jaeger")
	}
	if _, err := os.Stat(jaegerBin); err == nil {
		if err := os.Symlink(jaegerBin, filepath.Join(bin, "jaeger")); err != nil {
			t.Fatal(err)
		}
		tracingOn = true
	} else {
		t.Log("Jaeger is not built: the testnet runs without TRACING (make trace-e2e checks it with)")
	}
	// A short path: the nodes' admin sockets live in their data dirs.
	tmp, err := os.MkdirTemp("", "tn")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(tmp) })
	state := filepath.Join(tmp, "state")
	script, err := filepath.Abs("../../scripts/testnet.sh")
	if err != nil {
		t.Fatal(err)
	}
	const nodes = 2
	testnet := func(arg string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, script, arg)
		cmd.Env = append(os.Environ(), "NODES="+strconv.Itoa(nodes), "BIN="+bin, "TESTNET_STATE="+state, "PROMETHEUS="+prom,
			"TESTNET_SCRAPE_INTERVAL=1s", "TESTNET_CHAT_EVERY=1", "TESTNET_STOP_TIMEOUT=15")
		if tracingOn {
			cmd.Env = append(cmd.Env, "TRACING=1")
		}
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	downDone := false
	t.Cleanup(func() {
		if !downDone {
			out, err := testnet("down")
			t.Logf("testnet down (cleanup): %v\n%s", err, out)
		}
	})
	logs := func() string {
		var b strings.Builder
		files, _ := filepath.Glob(filepath.Join(state, "logs", "*.log"))
		for _, f := range files {
			body, _ := os.ReadFile(f)
			if len(body) > 3000 {
				body = body[len(body)-3000:]
			}
			fmt.Fprintf(&b, "--- %s\n%s\n", filepath.Base(f), body)
		}
		return b.String()
	}

	out, err := testnet("up")
	if err != nil {
		t.Fatalf("testnet up: %v\n%s", err, out)
	}
	t.Logf("testnet up:\n%s", out)
	env := readEnv(t, filepath.Join(state, "testnet.env"))

	var ops []string
	for i := 1; i <= nodes; i++ {
		addr := env[fmt.Sprintf("TESTNET_NODE%d_OPS", i)]
		if addr == "" {
			t.Fatalf("testnet.env names no ops address for node %d: %v", i, env)
		}
		ops = append(ops, addr)
		resp, err := http.Get("http://" + addr + "/readyz")
		if err != nil {
			t.Fatalf("node %d /readyz: %v", i, err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("node %d /readyz: %s", i, resp.Status)
		}
	}

	// The node registry, through qpcctl on node 1's admin socket.
	st, err := exec.Command(filepath.Join(bin, "qpcctl"), "--data-dir", env["TESTNET_NODE1_DATA_DIR"], "status", "--json").Output()
	if err != nil {
		t.Fatalf("qpcctl status: %v", err)
	}
	var status struct {
		Nodes []struct{ State string } `json:"nodes"`
	}
	if err := json.Unmarshal(st, &status); err != nil {
		t.Fatalf("qpcctl status --json: %v\n%s", err, st)
	}
	running := 0
	for _, n := range status.Nodes {
		if n.State == "running" {
			running++
		}
	}
	if running != nodes {
		t.Errorf("qpcctl status lists %d running nodes, want %d: %s", running, nodes, st)
	}

	// Prometheus scrapes every node, and every node carries chat traffic
	// (client i talks to node i mod NODES).
	promURL := env["TESTNET_PROMETHEUS"]
	waitFor(t, 60*time.Second, "Prometheus: up == 1 for every node", func() bool {
		got := instances(t, promURL, `up{job="qpcd"} == 1`)
		for _, a := range ops {
			if !got[a] {
				return false
			}
		}
		return len(got) == nodes
	}, logs)
	waitFor(t, 90*time.Second, "Enqueue traffic on every node", func() bool {
		got := instances(t, promURL, `sum by (instance) (qpcd_rpc_requests_total{job="qpcd",method="Enqueue",status="ok"}) > 0`)
		return len(got) == nodes
	}, logs)

	if tracingOn {
		// Every node and client sends its traces to the testnet's Jaeger.
		jaeger := env["TESTNET_JAEGER"]
		if jaeger == "" {
			t.Fatalf("TRACING=1 but testnet.env names no Jaeger: %v", env)
		}
		waitFor(t, 90*time.Second, "traces of qpcd and qpc in Jaeger", func() bool {
			resp, err := http.Get(jaeger + "/api/services")
			if err != nil {
				return false
			}
			defer resp.Body.Close()
			var got struct{ Data []string }
			if json.NewDecoder(resp.Body).Decode(&got) != nil {
				return false
			}
			return slices.Contains(got.Data, "qpcd") && slices.Contains(got.Data, "qpc")
		}, logs)
	}

	// Everything down must be gone afterwards: the process groups of the
	// pid files and the PostgreSQL server (its own pid file).
	var groups []int
	pidFiles, _ := filepath.Glob(filepath.Join(state, "pids", "*.pid"))
	for _, f := range pidFiles {
		groups = append(groups, readPid(t, f))
	}
	want := 1 + nodes + 1 + nodes // postgres, nodes, prometheus, clients (CLIENTS defaults to NODES)
	if tracingOn {
		want++ // jaeger
	}
	if len(groups) != want {
		t.Errorf("%d pid files: %v", len(groups), pidFiles)
	}
	pgDir := strings.TrimSpace(readFile(t, filepath.Join(state, "postgres.dir")))
	postmaster := readPid(t, filepath.Join(pgDir, "data", "postmaster.pid"))

	downDone = true
	if out, err := testnet("down"); err != nil {
		t.Fatalf("testnet down: %v\n%s", err, out)
	}
	for _, g := range groups {
		if err := syscall.Kill(-g, 0); !errors.Is(err, syscall.ESRCH) && !allZombies(g) {
			t.Errorf("process group %d still has processes after down", g)
		}
	}
	if err := syscall.Kill(postmaster, 0); !errors.Is(err, syscall.ESRCH) && !allZombies(postmaster) {
		t.Errorf("PostgreSQL (pid %d) still runs after down", postmaster)
	}
	for _, d := range []string{state, pgDir} {
		if _, err := os.Stat(d); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s still exists after down (%v)", d, err)
		}
	}
}

// waitFor polls cond until it holds, failing with the testnet's logs.
func waitFor(t *testing.T, within time.Duration, what string, cond func() bool, logs func() string) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s\n%s", what, within, logs())
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// instances runs an instant query and returns the instance labels of its result.
func instances(t *testing.T, base, expr string) map[string]bool {
	t.Helper()
	resp, err := http.Get(base + "/api/v1/query?query=" + url.QueryEscape(expr))
	if err != nil {
		t.Fatalf("query %s: %v", expr, err)
	}
	defer resp.Body.Close()
	var r struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			Result []struct {
				Metric map[string]string `json:"metric"`
			} `json:"result"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		t.Fatalf("query %s: %v", expr, err)
	}
	if r.Status != "success" {
		t.Fatalf("query %s: %s", expr, r.Error)
	}
	got := map[string]bool{}
	for _, s := range r.Data.Result {
		got[s.Metric["instance"]] = true
	}
	return got
}

func readEnv(t *testing.T, path string) map[string]string {
	t.Helper()
	env := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(readFile(t, path)))
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), "="); ok {
			env[k] = v
		}
	}
	return env
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func readPid(t *testing.T, path string) int {
	t.Helper()
	first, _, _ := strings.Cut(readFile(t, path), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(first))
	if err != nil || pid <= 1 {
		t.Fatalf("%s: pid %q", path, first)
	}
	return pid
}

// allZombies reports whether every process of group (or the process) pid
// has exited and only waits to be reaped by init.
func allZombies(pid int) bool {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return false
	}
	for _, e := range entries {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid pgrp ...: comm may hold spaces, so split after ")".
		i := bytes.LastIndexByte(stat, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(stat[i+1:]))
		if len(f) < 3 {
			continue
		}
		pgrp, _ := strconv.Atoi(f[2])
		if (p == pid || pgrp == pid) && f[0] != "Z" {
			return false
		}
	}
	return true
}

// The command's own parts: usage errors and a free port.
func TestRunUsage(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run(nil, &out, &errb); code != exitUsage {
		t.Errorf("no arguments: exit %d", code)
	}
	if code := run([]string{"nope"}, &out, &errb); code != exitUsage || !strings.Contains(errb.String(), `unknown command "nope"`) {
		t.Errorf("unknown command: exit %d, %q", code, errb.String())
	}
	errb.Reset()
	if code := run([]string{"postgres"}, &out, &errb); code != exitUsage || !strings.Contains(errb.String(), "--dsn-file is required") {
		t.Errorf("postgres without --dsn-file: exit %d, %q", code, errb.String())
	}
	out.Reset()
	errb.Reset()
	if code := run([]string{"postgres", "--dsn-file", "x", "--standby", "hot"}, &out, &errb); code != exitUsage || !strings.Contains(errb.String(), "want sync or async") {
		t.Errorf("postgres --standby hot: exit %d, %q", code, errb.String())
	}
	errb.Reset()
	if code := run([]string{"jaeger-config", "--otlp-grpc", "1"}, &out, &errb); code != exitUsage || !strings.Contains(errb.String(), "required ports") {
		t.Errorf("jaeger-config without every port: exit %d, %q", code, errb.String())
	}
	out.Reset()
	if code := run([]string{"jaeger-config", "--otlp-grpc", "4317", "--otlp-http", "4318", "--query", "16686", "--query-grpc", "16685"}, &out, &errb); code != exitOK ||
		!strings.Contains(out.String(), "endpoint: 127.0.0.1:4317") || !strings.Contains(out.String(), "endpoint: 127.0.0.1:16686") {
		t.Errorf("jaeger-config: exit %d, %q", code, out.String())
	}
	out.Reset()
	if code := run([]string{"port"}, &out, &errb); code != exitOK {
		t.Fatalf("port: exit %d", code)
	}
	if p, err := strconv.Atoi(strings.TrimSpace(out.String())); err != nil || p <= 0 || p > 65535 {
		t.Errorf("port printed %q", out.String())
	}

	// cert writes a certificate once and keeps it afterwards.
	dir := t.TempDir()
	out.Reset()
	if code := run([]string{"cert", "--dir", dir}, &out, &errb); code != exitOK || !strings.Contains(out.String(), "wrote") {
		t.Fatalf("cert: exit %d, %q %q", code, out.String(), errb.String())
	}
	first := readFile(t, filepath.Join(dir, "cert.pem"))
	out.Reset()
	if code := run([]string{"cert", "--dir", dir}, &out, &errb); code != exitOK || !strings.Contains(out.String(), "kept") {
		t.Fatalf("cert again: exit %d, %q", code, out.String())
	}
	if readFile(t, filepath.Join(dir, "cert.pem")) != first {
		t.Error("cert replaced an existing certificate")
	}
	if code := run([]string{"cert"}, &out, &errb); code != exitUsage {
		t.Errorf("cert without --dir: exit %d", code)
	}
}
