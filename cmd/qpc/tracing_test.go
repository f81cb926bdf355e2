package main

import (
	"strings"
	"testing"
	"time"

	"github.com/quicprochat/quicprochat/internal/server/servertest"
	"github.com/quicprochat/quicprochat/internal/tracing/jaegertest"
)

// TestQPCTracing (issue 18): qpc takes qpcd's tracing settings from the
// environment. With QPC_TRACING_ENDPOINT set, `qpc send` is a trace in
// Jaeger that qpcd's spans join; an invalid setting is a usage error.
func TestQPCTracing(t *testing.T) {
	j := jaegertest.Start(t)
	cfg := servertest.Config(t)
	cfg.Tracing.Endpoint = j.OTLPGRPC
	srv := servertest.Start(t, cfg)
	env := "QPC_TRACING_ENDPOINT=" + j.OTLPHTTP
	alice, bob := newUser(t, env), newUser(t, env)
	for _, u := range []*user{alice, bob} {
		u.ok("init", "--server", srv.Addr(), "--pin", srv.Pin())
	}
	alice.ok("register", "alice")
	bob.ok("register", "bob")
	alice.ok("group", "create", "team")
	alice.ok("group", "add", "team", "bob")
	acceptInvitations(t, bob)
	alice.ok("send", "team", "traced hello")
	if out := bob.ok("recv"); !strings.Contains(out, "traced hello") {
		t.Fatalf("bob recv: %q", out)
	}
	srv.Stop(t) // flushes qpcd's spans

	deadline := time.Now().Add(20 * time.Second)
	for {
		joined := false
		for _, tr := range j.Traces(t, "qpc", "client.send") {
			for _, s := range tr.Spans {
				if s.OperationName == "qpc.Enqueue" && tr.Processes[s.ProcessID].ServiceName == "qpcd" {
					joined = true
				}
			}
		}
		if joined {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no qpc send trace with qpcd's Enqueue span in Jaeger (qpc traces: %d)", len(j.Traces(t, "qpc", "")))
		}
		time.Sleep(100 * time.Millisecond)
	}

	bad := newUser(t, "QPC_TRACING_ENDPOINT="+j.OTLPHTTP, "QPC_TRACING_SAMPLE_RATIO=lots")
	if r := bad.run("init", "--server", "127.0.0.1:1", "--pin", strings.Repeat("ab", 32)); r.code != 2 || !strings.Contains(r.stderr, "QPC_TRACING_SAMPLE_RATIO") {
		t.Fatalf("bad sample ratio: exit %d, stderr %q", r.code, r.stderr)
	}
}
