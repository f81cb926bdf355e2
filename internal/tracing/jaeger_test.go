package tracing_test

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/quicprochat/quicprochat/internal/client"
	"github.com/quicprochat/quicprochat/internal/secret"
	"github.com/quicprochat/quicprochat/internal/server/servertest"
	"github.com/quicprochat/quicprochat/internal/tracing"
	"github.com/quicprochat/quicprochat/internal/tracing/jaegertest"
)

// TestJaegerEndToEnd (issue 18): Jaeger all-in-one (built from
// tools/jaeger), qpcd with tracing on (OTLP/gRPC), two real clients
// tracing over OTLP/HTTP; alice sends, bob long-polls it. The traces read
// back through Jaeger's query API hold the expected spans, the server's
// spans are children of the client's across the process boundary, bob's
// FetchWait links to alice's enqueue, and no tag outside the allow-list or
// carrying an account name or the message text is stored.
func TestJaegerEndToEnd(t *testing.T) {
	j := jaegertest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	cfg := servertest.Config(t)
	cfg.Tracing.Endpoint = j.OTLPGRPC
	cfg.Tracing.SampleRatio = 1
	srv := servertest.Start(t, cfg)

	clientTP, err := tracing.Setup(ctx, tracing.Config{Endpoint: j.OTLPHTTP, SampleRatio: 1, ServiceName: "qpc", Version: "test"})
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
	var send jaegertest.Trace
	deadline := time.Now().Add(30 * time.Second)
	for {
		for _, tr := range j.Traces(t, "qpc", "client.send") {
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
			len(j.Traces(t, "qpc", "")), len(j.Traces(t, "qpcd", "")))
	}
	byID := map[string]jaegertest.Span{}
	services := map[string]int{}
	for _, s := range send.Spans {
		byID[s.SpanID] = s
		services[send.Processes[s.ProcessID].ServiceName]++
	}
	t.Logf("Jaeger holds the send's trace %s: %d spans by service %v", send.TraceID, len(send.Spans), services)
	service := func(s jaegertest.Span) string { return send.Processes[s.ProcessID].ServiceName }
	parentOf := func(s jaegertest.Span) (jaegertest.Span, bool) {
		for _, r := range s.References {
			if r.RefType == "CHILD_OF" {
				p, ok := byID[r.SpanID]
				return p, ok
			}
		}
		return jaegertest.Span{}, false
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
	all := append(j.Traces(t, "qpc", ""), j.Traces(t, "qpcd", "")...)
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
	tags := 0
	defer func() { t.Logf("checked %d tags of %d traces against the allow-list", tags, len(all)) }()

	// Nothing stored in Jaeger carries a tag off the allow-list or a name.
	forbidden := []string{"alicejaeger", "bobjaeger", "jaegergroup", text}
	for _, tr := range all {
		for _, s := range tr.Spans {
			for _, tag := range s.Tags {
				tags++
				if !tracing.Allowed(tag.Key) && !jaegertest.DerivedTags[tag.Key] {
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
