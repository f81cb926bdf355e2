package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestUsageErrorsExit2(t *testing.T) {
	for _, args := range [][]string{
		{"-mode", "nope"},
		{"-n", "0"},
		{"-addr", "192.0.2.1:7443", "-mode", "enqueue"}, // not loopback
		{"-size", "1"},
		{"-channels", "0"},
		{"-batch", "0"},
		{"-batch", "65"},
		{"-mode", "idle"}, // no -ops to read qpcd's metrics from
		{"-mode", "idle", "-serve", "-n", "10", "-fanout", "11"},
		{"-mode", "enqueue", "-fanout", "1"},
		{"-cpu-tree", "-1"},
		{"extra"},
	} {
		var out, errb bytes.Buffer
		if code := run(context.Background(), args, &out, &errb); code != exitUsage {
			t.Errorf("%q: exit %d, want %d (%s)", args, code, exitUsage, errb.String())
		}
	}
}

// Both modes end to end, briefly: the baseline echo loop and the enqueue
// path against an in-process qpcd over real QUIC.
func TestBothModesInProcess(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a server")
	}
	out := filepath.Join(t.TempDir(), "r.json")
	var stdout, stderr bytes.Buffer
	code := run(context.Background(), []string{"-mode", "both", "-serve", "-n", "4", "-receivers", "2",
		"-duration", "500ms", "-warmup", "100ms", "-json", out}, &stdout, &stderr)
	if code != exitOK {
		t.Fatalf("exit %d: %s %s", code, stdout.String(), stderr.String())
	}
	if !strings.Contains(stdout.String(), "enqueue/baseline throughput") {
		t.Fatalf("no ratio line:\n%s", stdout.String())
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	var rs []report
	if err := json.Unmarshal(b, &rs); err != nil || len(rs) != 2 {
		t.Fatalf("json: %v %s", err, b)
	}
	if rs[0].Requests == 0 || rs[1].Requests == 0 || rs[1].Delivered == 0 || rs[1].Errors != 0 {
		t.Fatalf("reports: %+v", rs)
	}
}

// runReport runs qpc-bench with args plus -json and returns its one
// report and what it printed.
func runReport(t *testing.T, args ...string) (report, string) {
	t.Helper()
	if testing.Short() {
		t.Skip("starts a server")
	}
	out := filepath.Join(t.TempDir(), "r.json")
	var stdout, stderr bytes.Buffer
	code := run(context.Background(), append(args, "-json", out), &stdout, &stderr)
	if code != exitOK {
		t.Fatalf("exit %d: %s %s", code, stdout.String(), stderr.String())
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	var rs []report
	if err := json.Unmarshal(b, &rs); err != nil || len(rs) != 1 {
		t.Fatalf("json: %v %s", err, b)
	}
	return rs[0], stdout.String()
}

// Senders spread over several channels: every message still reaches the
// receivers, who are members of all of them.
func TestEnqueueChannels(t *testing.T) {
	r, _ := runReport(t, "-mode", "enqueue", "-serve", "-n", "4", "-channels", "3", "-receivers", "1", "-duration", "500ms", "-warmup", "100ms")
	if r.Channels != 3 || r.Requests == 0 || r.Errors != 0 || r.Delivered == 0 || r.Sent < r.Requests {
		t.Fatalf("report: %+v", r)
	}
}

// With -batch each sender sends EnqueueBatch; messages are counted one by
// one and all reach the receiver.
func TestEnqueueBatchMode(t *testing.T) {
	r, stdout := runReport(t, "-mode", "enqueue", "-serve", "-n", "3", "-batch", "8", "-receivers", "1", "-duration", "500ms", "-warmup", "100ms")
	if r.Batch != 8 || r.Requests == 0 || r.Requests%8 != 0 || r.Sent%8 != 0 || r.Errors != 0 || r.Delivered < r.Requests || r.RPC.Count*8 != int(r.Requests) {
		t.Fatalf("report: %+v", r)
	}
	if !strings.Contains(stdout, "8 messages per EnqueueBatch") {
		t.Fatalf("the table does not say the batch: %s", stdout)
	}
}

func TestSummarize(t *testing.T) {
	var d []time.Duration
	for i := 1; i <= 1000; i++ {
		d = append(d, time.Duration(i)*time.Millisecond)
	}
	s := summarize(d)
	if s.P50 != 500 || s.P99 != 990 || s.P999 != 999 || s.Max != 1000 || s.Count != 1000 {
		t.Fatalf("%+v", s)
	}
	if (summarize(nil) != summary{}) {
		t.Fatal("empty")
	}
}

// Idle mode end to end against an in-process qpcd: every device's poll is
// held, the per-device figures come from qpcd's own metrics, the profiles
// are saved, and the connections are gone once the devices leave.
func TestIdleModeInProcess(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a server")
	}
	dir := t.TempDir()
	r, stdout := runIdleJSON(t, dir, "-n", "20", "-duration", "300ms", "-after", "1s", "-profile-dir", filepath.Join(dir, "prof"))
	switch {
	case r.Devices != 20 || r.Idle.InFlight < 20 || r.Idle.Connections < 20:
		t.Fatalf("want 20 devices connected and polling: %+v", r.Idle)
	case r.GoroutinesPerDevice <= 0 || r.HeapPerDevice <= 0 || r.IdleLive == nil || r.LiveHeapPerDevice <= 0:
		t.Fatalf("no per-device cost: %+v", r)
	case len(r.After) == 0:
		t.Fatal("no samples after the devices left")
	case r.After[len(r.After)-1].Connections != r.Before.Connections:
		t.Fatalf("%v connections after the devices left, %v before", r.After[len(r.After)-1].Connections, r.Before.Connections)
	case r.Errors != 0:
		t.Fatalf("%d poll errors: %s", r.Errors, r.FirstError)
	}
	for _, f := range []string{"heap.pb.gz", "goroutines.txt"} {
		if fi, err := os.Stat(filepath.Join(dir, "prof", f)); err != nil || fi.Size() == 0 {
			t.Fatalf("profile %s: %v", f, err)
		}
	}
	if !strings.Contains(stdout.String(), "per device:") {
		t.Fatalf("no summary: %s", stdout.String())
	}
}

// The fan-out step: receivers that joined one channel, among other idle
// devices, each get every message the sender enqueues, once.
func TestIdleFanoutInProcess(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a server")
	}
	r, stdout := runIdleJSON(t, t.TempDir(), "-n", "12", "-fanout", "8", "-fanout-messages", "3", "-duration", "100ms", "-after", "0s")
	f := r.Fanout
	switch {
	case f == nil:
		t.Fatalf("no fan-out report: %s", stdout.String())
	case f.Receivers != 8 || f.Messages != 3 || f.Missing != 0:
		t.Fatalf("fan-out: %+v", f)
	case f.Receipt.Count != 24 || f.Last.Count != 3 || f.Enqueue.Count != 3:
		t.Fatalf("want 24 receipts of 3 messages: %+v", f)
	case f.Receipt.Max <= 0 || f.Last.P50 < f.Receipt.P50:
		t.Fatalf("latencies: %+v", f)
	case r.Errors != 0:
		t.Fatalf("%d poll errors: %s", r.Errors, r.FirstError)
	}
	if !strings.Contains(stdout.String(), "fan-out: 3 messages to 8 receivers") {
		t.Fatalf("no fan-out line: %s", stdout.String())
	}
}

// runIdleJSON runs qpc-bench -mode idle against an in-process qpcd with args,
// writing its JSON into dir, and returns the decoded report and stdout.
func runIdleJSON(t *testing.T, dir string, args ...string) (idleReport, *bytes.Buffer) {
	t.Helper()
	out := filepath.Join(dir, "idle.json")
	var stdout, stderr bytes.Buffer
	code := run(context.Background(), append([]string{"-mode", "idle", "-serve", "-json", out}, args...), &stdout, &stderr)
	if code != exitOK {
		t.Fatalf("exit %d: %s %s", code, stdout.String(), stderr.String())
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	var r idleReport
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatalf("json: %v %s", err, b)
	}
	return r, &stdout
}
