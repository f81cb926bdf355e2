// Package jaegertest runs Jaeger all-in-one (built from the tools/jaeger
// module) for tests that read their traces back from a real backend.
package jaegertest

import (
	"bytes"
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
)

// repoRoot is the directory of the main module's go.mod.
func repoRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", err
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", fmt.Errorf("jaegertest: not inside the module")
	}
	return filepath.Dir(mod), nil
}

// Binary returns the Jaeger all-in-one binary: $QPC_JAEGER_BIN, else
// bin/jaeger of the repository (`make jaeger`). When it is missing it is
// built from the tools/jaeger module only under QPC_JAEGER_BUILD=1 (set by
// `make trace-e2e`, which fails if it cannot be built): Jaeger is some 2 300
// packages, about four times this project, and building it on a fresh
// machine would more than double `make test`. Otherwise the test is skipped
// and says how to run it.
func Binary(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("QPC_JAEGER_BIN"); p != "" {
		return p
	}
	root, err := repoRoot()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(root, "bin", "jaeger")
	if _, err := os.Stat(bin); err == nil {
		return bin
	}
	if os.Getenv("QPC_JAEGER_BUILD") != "1" {
		t.Skip("Jaeger is not built (bin/jaeger): the real-backend tracing tests run with `make trace-e2e` (nightly CI), or after `make jaeger`")
	}
	cmd := exec.Command("go", "build", "-o", bin, "github.com/jaegertracing/jaeger/cmd/jaeger")
	cmd.Dir = filepath.Join(root, "tools", "jaeger")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building Jaeger from tools/jaeger: %v\n%s", err, out)
	}
	return bin
}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// Jaeger is a running Jaeger all-in-one.
type Jaeger struct {
	OTLPGRPC string // host:port of the OTLP/gRPC receiver
	OTLPHTTP string // http://host:port of the OTLP/HTTP receiver
	Query    string // http://host:port of the query API and UI
}

// Start runs Jaeger all-in-one with in-memory storage, OTLP receivers and
// the query API on free loopback ports until the test ends.
func Start(t testing.TB) *Jaeger {
	t.Helper()
	bin := Binary(t)
	g, h, q, qg := freePort(t), freePort(t), freePort(t), freePort(t)
	conf := Config(Ports{OTLPGRPC: g, OTLPHTTP: h, Query: q, QueryGRPC: qg}, 10000)
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
	query := fmt.Sprintf("http://127.0.0.1:%d", q)
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
	return &Jaeger{OTLPGRPC: fmt.Sprintf("127.0.0.1:%d", g), OTLPHTTP: fmt.Sprintf("http://127.0.0.1:%d", h), Query: query}
}

// Trace is a trace from Jaeger's query API (v1 JSON), as far as tests read it.
type Trace struct {
	TraceID   string `json:"traceID"`
	Spans     []Span
	Processes map[string]struct {
		ServiceName string `json:"serviceName"`
	} `json:"processes"`
}

// Span is one span of a Trace; ProcessID keys Trace.Processes.
type Span struct {
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

// Traces returns the traces of service (and operation, if not "") stored
// in the last hour.
func (j *Jaeger) Traces(t testing.TB, service, operation string) []Trace {
	t.Helper()
	v := url.Values{"service": {service}, "limit": {"100"}, "lookback": {"1h"}}
	if operation != "" {
		v.Set("operation", operation)
	}
	resp, err := http.Get(j.Query + "/api/traces?" + v.Encode())
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out struct{ Data []Trace }
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatal(err)
	}
	return out.Data
}

// DerivedTags are the tags Jaeger itself derives from a span (kind,
// status, scope); everything else must be on qpc's allow-list.
var DerivedTags = map[string]bool{"span.kind": true, "otel.status_code": true, "otel.status_description": true,
	"otel.scope.name": true, "otel.scope.version": true, "error": true, "internal.span.format": true}

// Ports are the loopback ports of a Jaeger all-in-one.
type Ports struct {
	OTLPGRPC, OTLPHTTP int // OTLP receivers
	Query, QueryGRPC   int // query API and UI; its gRPC API
}

// Config is the Jaeger all-in-one configuration the tests and the local
// testnet (qpc-testnet jaeger-config) run: OTLP receivers and the query
// API on loopback ports, traces kept in memory (at most maxTraces).
func Config(p Ports, maxTraces int) string {
	return fmt.Sprintf(`service:
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
          max_traces: %d
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
`, p.Query, p.QueryGRPC, maxTraces, p.OTLPGRPC, p.OTLPHTTP)
}
