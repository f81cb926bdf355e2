package tracing_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/quicprochat/quicprochat/internal/client"
	"github.com/quicprochat/quicprochat/internal/secret"
	"github.com/quicprochat/quicprochat/internal/server/servertest"
	"github.com/quicprochat/quicprochat/internal/tracing"
)

// jaegerBinary returns the Jaeger all-in-one binary: $QPC_JAEGER_BIN, else
// bin/jaeger of the repository (`make jaeger`), built from the tools/jaeger
// module when missing. The test is skipped only when it cannot be built.
func jaegerBinary(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("QPC_JAEGER_BIN"); p != "" {
		return p
	}
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(root, "bin", "jaeger")
	if _, err := os.Stat(bin); err == nil {
		return bin
	}
	cmd := exec.Command("go", "build", "-o", bin, "github.com/jaegertracing/jaeger/cmd/jaeger")
	cmd.Dir = filepath.Join(root, "tools", "jaeger")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Skipf("Jaeger (tools/jaeger) cannot be built here, so the real-backend tracing test does not run: %v\n%s", err, out)
	}
	return bin
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// startJaeger runs Jaeger all-in-one with in-memory storage, OTLP
// receivers and the query API on free loopback ports, and returns the
// OTLP gRPC and HTTP addresses and the query base URL.
func startJaeger(t *testing.T) (otlpGRPC, otlpHTTP, query string) {
	t.Helper()
	bin := jaegerBinary(t)
	g, h, q, qg := freePort(t), freePort(t), freePort(t), freePort(t)
	conf := fmt.Sprintf(`service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics:
      level: none
    logs:
      level: warn
extensions:
  jaeger_query:
    storage:
      traces: mem
    http:
      endpoint: 127.0.0.1:%d
    grpc:
      endpoint: 127.0.0.1:%d
  jaeger_storage:
    backends:
      mem:
        memory:
          max_traces: 10000
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:%d
      http:
        endpoint: 127.0.0.1:%d
processors:
  batch:
    timeout: 100ms
exporters:
  jaeger_storage_exporter:
    trace_storage: mem
`, q, qg, g, h)
	path := filepath.Join(t.TempDir(), "jaeger.yaml")
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	cmd := exec.Command(bin, "--config", "file:"+path)
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("jaeger output:\n%s", logs.String())
		}
	})
	query = fmt.Sprintf("http://127.0.0.1:%d", q)
	deadline := time.Now().Add(60 * time.Second)
	for {
		select {
		case err := <-exited:
			t.Fatalf("jaeger exited: %v\n%s", err, logs.String())
		default:
		}
		resp, err := http.Get(query + "/api/services")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("jaeger query API not up within 60s\n%s", logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Sprintf("127.0.0.1:%d", g), fmt.Sprintf("http://127.0.0.1:%d", h), query
}

// Jaeger's query API (v1 JSON) as far as the test reads it.
type jTrace struct {
	TraceID   string `json:"traceID"`
	Spans     []jSpan
	Processes map[string]struct {
		ServiceName string `json:"serviceName"`
	} `json:"processes"`
}

type jSpan struct {
	TraceID       string `json:"traceID"`
	SpanID        string `json:"spanID"`
	OperationName string `json:"operationName"`
	ProcessID     string `json:"processID"`
	References    []struct {
		RefType string `json:"refType"`
		TraceID string `json:"traceID"`
		SpanID  string `json:"spanID"`
	} `json:"references"`
	Tags []struct {
		Key   string `json:"key"`
		Type  string `json:"type"`
		Value any    `json:"value"`
	} `json:"tags"`
}

func queryTraces(t *testing.T, base, service, operation string) []jTrace {
	t.Helper()
	v := url.Values{"service": {service}, "limit": {"100"}, "lookback": {"1h"}}
	if operation != "" {
		v.Set("operation", operation)
	}
	resp, err := http.Get(base + "/api/traces?" + v.Encode())
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out struct{ Data []jTrace }
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatal(err)
	}
	return out.Data
}

// jaegerTags are the tags Jaeger itself derives from a span (kind,
// status, scope); everything else must be on qpc's allow-list.
var jaegerTags = map[string]bool{"span.kind": true, "otel.status_code": true, "otel.status_description": true,
	"otel.scope.name": true, "otel.scope.version": true, "error": true, "internal.span.format": true}

// TestJaegerEndToEnd (issue 18): Jaeger all-in-one (built from
// tools/jaeger), qpcd with tracing on (OTLP/gRPC), two real clients
// tracing over OTLP/HTTP; alice sends, bob long-polls it. The traces read
// back through Jaeger's query API hold the expected spans, the server's
// spans are children of the client's across the process boundary, bob's
// FetchWait links to alice's enqueue, and no tag outside the allow-list or
// carrying an account name or the message text is stored.
func TestJaegerEndToEnd(t *testing.T) {
	otlpGRPC, otlpHTTP, query := startJaeger(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	cfg := servertest.Config(t)
	cfg.Tracing.Endpoint = otlpGRPC
	cfg.Tracing.SampleRatio = 1
	srv := servertest.Start(t, cfg)

	clientTP, err := tracing.Setup(ctx, tracing.Config{Endpoint: otlpHTTP, SampleRatio: 1, ServiceName: "qpc", Version: "test"})
	if err != nil {
		t.Fatal(err)
	}
	defer clientTP.Shutdown(context.Background())
	newClient := func(name string) *client.Client {
		key := make([]byte, client.KeySize)
		for i := range key {
			key[i] = byte(len(name) + i)
		}
		o := client.Options{Home: filepath.Join(t.TempDir(), name), Tracer: clientTP.Tracer(),
			Keys: client.KeySource{Hex: secret.New([]byte(fmt.Sprintf("%x", key)))}}
		c, err := client.Init(ctx, o, client.ServerTrust{Addr: srv.Addr(), PinSHA256: srv.Pin()}, 0)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		if _, err := c.Register(ctx, client.RegisterParams{AccountName: name}); err != nil {
			t.Fatal(err)
		}
		return c
	}
	alice, bob := newClient("alicejaeger"), newClient("bobjaeger")
	if err := alice.CreateGroup(ctx, "jaegergroup"); err != nil {
		t.Fatal(err)
	}
	if err := alice.AddMembers(ctx, "jaegergroup", []string{"bobjaeger"}); err != nil {
		t.Fatal(err)
	}
	invs, err := bob.Invitations(ctx)
	if err != nil || len(invs) != 1 {
		t.Fatalf("bob's invitations %v, %v", invs, err)
	}
	if _, err := bob.AcceptInvitation(ctx, invs[0].ID); err != nil {
		t.Fatal(err)
	}
	const text = "a message for the jaeger test"
	if _, err := alice.Send(ctx, "jaegergroup", text, ""); err != nil {
		t.Fatal(err)
	}
	if _, err := bob.Sync(ctx, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	hist, err := bob.History(ctx, "jaegergroup", 10)
	if err != nil || len(hist) == 0 || hist[len(hist)-1].Text != text {
		t.Fatalf("bob did not receive the message: %v, %v", hist, err)
	}
	if err := clientTP.ForceFlush(ctx); err != nil {
		t.Fatal(err)
	}
	srv.Stop(t) // qpcd flushes its spans while shutting down

	// Poll until the send's trace holds the server's part too.
	var send jTrace
	deadline := time.Now().Add(30 * time.Second)
	for {
		for _, tr := range queryTraces(t, query, "qpc", "client.send") {
			for _, s := range tr.Spans {
				if s.OperationName == "db.commit" && tr.Processes[s.ProcessID].ServiceName == "qpcd" {
					send = tr
				}
			}
		}
		if send.TraceID != "" || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if send.TraceID == "" {
		t.Fatalf("no client.send trace with qpcd's spans in Jaeger (services: qpc %d traces, qpcd %d traces)",
			len(queryTraces(t, query, "qpc", "")), len(queryTraces(t, query, "qpcd", "")))
	}
	byID := map[string]jSpan{}
	for _, s := range send.Spans {
		byID[s.SpanID] = s
	}
	service := func(s jSpan) string { return send.Processes[s.ProcessID].ServiceName }
	parentOf := func(s jSpan) (jSpan, bool) {
		for _, r := range s.References {
			if r.RefType == "CHILD_OF" {
				p, ok := byID[r.SpanID]
				return p, ok
			}
		}
		return jSpan{}, false
	}
	want := map[string]string{"client.send": "qpc", "client.flush": "qpc", "qpc.client.Enqueue": "qpc",
		"qpc.Enqueue": "qpcd", "qpc.auth": "qpcd", "qpc.validate": "qpcd", "delivery.enqueue": "qpcd",
		"db.write": "qpcd", "db.write.wait": "qpcd", "db.commit": "qpcd"}
	seen := map[string]bool{}
	for _, s := range send.Spans {
		if svc, ok := want[s.OperationName]; ok && svc == service(s) {
			seen[s.OperationName] = true
		}
		if s.OperationName == "qpc.Enqueue" {
			p, ok := parentOf(s)
			if !ok || p.OperationName != "qpc.client.Enqueue" || service(p) != "qpc" {
				t.Errorf("qpcd's Enqueue span's parent is %+v, want qpc's qpc.client.Enqueue", p)
			}
		}
		if s.OperationName == "db.commit" && service(s) == "qpcd" {
			chain := []string{}
			for p, ok := parentOf(s); ok; p, ok = parentOf(p) {
				chain = append(chain, service(p)+":"+p.OperationName)
			}
			if got := strings.Join(chain, " < "); !strings.Contains(got, "qpcd:qpc.Enqueue < qpc:qpc.client.Enqueue") || !strings.HasSuffix(got, "qpc:client.send") {
				t.Errorf("qpcd's commit descends from %s, want ... qpcd:qpc.Enqueue < qpc:qpc.client.Enqueue < ... qpc:client.send", got)
			}
		}
	}
	for op := range want {
		if !seen[op] {
			t.Errorf("the send's trace has no %s span from %s", op, want[op])
		}
	}

	// Bob's long poll returned alice's message: its fetch_wait span links
	// to the delivery.enqueue span of alice's trace.
	var enqueueSpan string
	for _, s := range send.Spans {
		if s.OperationName == "delivery.enqueue" {
			enqueueSpan = s.SpanID
		}
	}
	linked := false
	all := append(queryTraces(t, query, "qpc", ""), queryTraces(t, query, "qpcd", "")...)
	for _, tr := range all {
		for _, s := range tr.Spans {
			if s.OperationName != "delivery.fetch_wait" {
				continue
			}
			for _, r := range s.References {
				if r.SpanID == enqueueSpan && r.TraceID == send.TraceID {
					linked = true
				}
			}
		}
	}
	if !linked {
		t.Error("no delivery.fetch_wait span links to the enqueue of the message it returned")
	}

	// Nothing stored in Jaeger carries a tag off the allow-list or a name.
	forbidden := []string{"alicejaeger", "bobjaeger", "jaegergroup", text}
	for _, tr := range all {
		for _, s := range tr.Spans {
			for _, tag := range s.Tags {
				if !tracing.Allowed(tag.Key) && !jaegerTags[tag.Key] {
					t.Errorf("span %s: tag %q is not on the allow-list", s.OperationName, tag.Key)
				}
				v := fmt.Sprint(tag.Value)
				for _, f := range forbidden {
					if strings.Contains(v, f) {
						t.Errorf("span %s: tag %s = %q carries %q", s.OperationName, tag.Key, v, f)
					}
				}
			}
		}
	}
}
