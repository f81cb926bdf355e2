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

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// startServer runs a real nats-server with JetStream on loopback, storing
// on disk and fsyncing every write, as bench-peers.sh's nats-sync does.
func startServer(t *testing.T) *server.Server {
	t.Helper()
	s, err := server.NewServer(&server.Options{
		Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(), SyncAlways: true,
		NoLog: true, NoSigs: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server not ready in 10 s")
	}
	t.Cleanup(s.Shutdown)
	return s
}

// A short run end to end: every acknowledged message reaches the consumer,
// the report is complete and consistent, and the stream is gone afterwards.
func TestRunEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a server")
	}
	s := startServer(t)
	out := filepath.Join(t.TempDir(), "r.json")
	var stdout bytes.Buffer
	err := run(context.Background(), []string{"-url", s.ClientURL(), "-n", "4", "-size", "1024",
		"-duration", "1s", "-warmup", "200ms", "-json", out, "-stream", "TESTBENCH"}, &stdout)
	if err != nil {
		t.Fatalf("run: %v (%s)", err, stdout.String())
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	var rs []report
	if err := json.Unmarshal(b, &rs); err != nil || len(rs) != 1 {
		t.Fatalf("json: %v %s", err, b)
	}
	r := rs[0]
	switch {
	case r.Requests == 0 || r.Errors != 0:
		t.Fatalf("requests %d, errors %d (%s)", r.Requests, r.Errors, r.FirstError)
	case r.Sent < r.Requests || r.Delivered != r.Sent:
		t.Fatalf("sent %d, counted %d, delivered %d: want every sent message delivered", r.Sent, r.Requests, r.Delivered)
	case r.Delivery.Count != r.RPC.Count:
		t.Fatalf("%d delivery samples for %d acknowledged in the window", r.Delivery.Count, r.RPC.Count)
	case !(r.RPC.P50 > 0 && r.RPC.P50 <= r.RPC.P99 && r.RPC.P99 <= r.RPC.P999 && r.RPC.P999 <= r.RPC.Max):
		t.Fatalf("ack latency not ordered: %+v", r.RPC)
	case r.CPUPerReq <= 0:
		t.Fatalf("no CPU figure: %+v", r)
	case r.Throughput != float64(r.Requests)/r.Seconds:
		t.Fatalf("throughput %v for %d in %v s", r.Throughput, r.Requests, r.Seconds)
	}
	if !strings.Contains(stdout.String(), "msg/s") {
		t.Fatalf("no summary line: %q", stdout.String())
	}
	nc, err := nats.Connect(s.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	if _, err := js.Stream(context.Background(), "TESTBENCH"); err == nil {
		t.Fatal("the run left its stream behind")
	}
}

func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		{"-n", "0"},
		{"-size", "1"},
		{"-duration", "0s"},
		{"extra"},
	} {
		if err := run(context.Background(), args, &bytes.Buffer{}); err == nil {
			t.Errorf("%q: no error", args)
		}
	}
}
