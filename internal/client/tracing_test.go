package client

import (
	"database/sql"
	"encoding/base64"
	"encoding/hex"
	"regexp"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/quicprochat/quicprochat/internal/config"
	"github.com/quicprochat/quicprochat/internal/secret"
	"github.com/quicprochat/quicprochat/internal/server/servertest"
	"github.com/quicprochat/quicprochat/internal/store"
	"github.com/quicprochat/quicprochat/internal/store/pgtest"
	"github.com/quicprochat/quicprochat/internal/store/storetest"
	"github.com/quicprochat/quicprochat/internal/tracing"
)

// tracedClient is registered with spans going to tp.
func tracedClient(t *testing.T, srv *servertest.Server, tp *tracing.Provider, name string) *Client {
	t.Helper()
	o := Options{Home: t.TempDir() + "/home", Keys: testKey(t), Backoff: fastBackoff, Tracer: tp.Tracer()}
	c, err := Init(ctxT(t), o, ServerTrust{Addr: srv.Addr(), PinSHA256: srv.Pin()}, 0)
	if err != nil {
		t.Fatalf("Init: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	if _, err := c.Register(ctxT(t), RegisterParams{AccountName: name}); err != nil {
		t.Fatalf("register %s: %v", name, err)
	}
	return c
}

// secretsOf is everything of c that must never appear in a span: its
// account name, account and device ids, tokens, device key and the
// ciphertexts it sent (hex and base64 forms of the binary ones).
func secretsOf(t *testing.T, c *Client) []string {
	t.Helper()
	ctx := ctxT(t)
	id, err := c.Identity(ctx)
	if err != nil {
		t.Fatal(err)
	}
	out := []string{id.AccountName, id.AccountID, id.DeviceID, hex.EncodeToString(id.key.Reveal())}
	id.key.Wipe()
	var access string
	var refresh []byte
	if err := c.db.ReadTx(ctx, func(tx *sql.Tx) error {
		if err := tx.QueryRow(`SELECT access_token, refresh_token FROM tokens WHERE id = 1`).Scan(&access, &refresh); err != nil {
			return err
		}
		rows, err := tx.Query(`SELECT mls_message FROM outbox`)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var ct []byte
			if err := rows.Scan(&ct); err != nil {
				return err
			}
			out = append(out, binForms(ct)...)
		}
		return rows.Err()
	}); err != nil {
		t.Fatal(err)
	}
	out = append(out, access)
	out = append(out, binForms(refresh)...)
	return out
}

// binForms are the textual forms a byte string could take in a span,
// cut to 16 characters so a prefix is caught too.
func binForms(b []byte) []string {
	var out []string
	for _, s := range []string{hex.EncodeToString(b), base64.StdEncoding.EncodeToString(b), base64.RawURLEncoding.EncodeToString(b)} {
		if len(s) > 16 {
			s = s[:16]
		}
		if s != "" {
			out = append(out, s)
		}
	}
	return out
}

// enumValue is what every string attribute, span name and status
// description must look like: a name from the code, never data.
var enumValue = regexp.MustCompile(`^[A-Za-z0-9_.]{1,64}$`)

// TestSpanAttributesAllowListed (issue 18) runs a whole client session
// (register, login, KeyPackages, a group with an add and a Welcome, a DM,
// sends and long-poll receives) against the real server with tracing on,
// then walks every span of both sides: every attribute key is on the
// allow-list, every string is an enumeration, and no account name, id,
// token, key or ciphertext appears anywhere. It also checks that the
// client's trace continues on the server and that a FetchWait that
// returned a message links to the span that enqueued it.
func TestSpanAttributesAllowListed(t *testing.T) {
	backends, err := storetest.Backends()
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range backends {
		t.Run(b, func(t *testing.T) { spanSession(t, b) })
	}
}

func spanSession(t *testing.T, backend string) {
	rec := tracetest.NewSpanRecorder()
	serverTP := tracing.NewWithProcessor(rec, map[string]string{"service.name": "qpcd"})
	clientTP := tracing.NewWithProcessor(rec, map[string]string{"service.name": "qpc"})
	t.Cleanup(func() { _ = clientTP.Shutdown(ctxT(t)) })
	cfg := servertest.Config(t)
	if backend == store.BackendPostgres {
		cfg.Store.Backend = config.BackendPostgres
		cfg.Postgres.DSN = secret.New([]byte(pgtest.NewDatabase(t)))
	}
	srv := &servertest.Server{Config: cfg, Tracing: serverTP}
	srv.Start(t)
	t.Cleanup(func() { srv.Stop(t) })

	alice := tracedClient(t, srv, clientTP, "alicetracer")
	bob := tracedClient(t, srv, clientTP, "bobtracer")
	ctx := ctxT(t)
	if err := alice.CreateGroup(ctx, "tracegroup"); err != nil {
		t.Fatal(err)
	}
	if err := alice.AddMembers(ctx, "tracegroup", []string{"bobtracer"}); err != nil {
		t.Fatal(err)
	}
	acceptAll(t, bob)
	const text = "the quick secret text"
	send(t, alice, "tracegroup", text)
	// Bob long-polls (FetchWait) and gets the message.
	if _, err := bob.Sync(ctx, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if _, err := bob.DM(ctx, "alicetracer"); err != nil {
		t.Fatal(err)
	}
	send(t, bob, "@alicetracer", "dm secret text")
	if _, err := alice.Sync(ctx, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if got := texts(t, bob, "tracegroup"); strings.Join(got, "|") != text {
		t.Fatalf("bob's history %q", got)
	}

	forbidden := []string{text, "dm secret text", "tracegroup"}
	forbidden = append(forbidden, secretsOf(t, alice)...)
	forbidden = append(forbidden, secretsOf(t, bob)...)
	srv.Stop(t) // ends and flushes every server span

	spans := rec.Ended()
	t.Logf("%d spans", len(spans))
	if len(spans) < 50 {
		t.Fatalf("only %d spans recorded for a whole session", len(spans))
	}
	check := func(where, s string) {
		t.Helper()
		if !enumValue.MatchString(s) {
			t.Errorf("%s: %q is not an enumeration value", where, s)
		}
		for _, f := range forbidden {
			if f != "" && strings.Contains(s, f) {
				t.Errorf("%s: %q contains a forbidden value", where, s)
			}
		}
	}
	checkAttrs := func(where string, kvs []attribute.KeyValue) {
		t.Helper()
		for _, kv := range kvs {
			if !tracing.Allowed(string(kv.Key)) {
				t.Errorf("%s: attribute %q is not on the allow-list", where, kv.Key)
			}
			if kv.Value.Type() == attribute.STRING {
				check(where+" "+string(kv.Key), kv.Value.AsString())
			}
		}
	}
	byID := map[string]sdktrace.ReadOnlySpan{}
	names := map[string]int{}
	for _, s := range spans {
		byID[s.SpanContext().SpanID().String()] = s
		names[s.Name()]++
	}
	for _, s := range spans {
		where := s.Name()
		check("span name", s.Name())
		checkAttrs(where, s.Attributes())
		if d := s.Status().Description; d != "" {
			check(where+" status", d)
		}
		for _, e := range s.Events() {
			t.Errorf("%s: event %q (events can carry error text; spans use statuses)", where, e.Name)
		}
		for _, l := range s.Links() {
			checkAttrs(where+" link", l.Attributes)
		}
	}
	for _, want := range []string{"client.send", "client.flush", "client.sync", "qpc.client.Enqueue", "qpc.Enqueue",
		"qpc.FetchWait", "qpc.auth", "qpc.validate", "delivery.enqueue", "delivery.fetch_wait", "db.write", "db.write.wait",
		"db.commit", "db.read", "keydir.upload", "keydir.fetch", "delivery.send_to_inbox"} {
		if names[want] == 0 {
			t.Errorf("no %q span in the session (have %v)", want, names)
		}
	}

	// The server's Enqueue span is the child of the client's call span,
	// in the client's trace, under client.send.
	joined, linked := 0, 0
	for _, s := range spans {
		switch s.Name() {
		case "qpc.Enqueue":
			p, ok := byID[s.Parent().SpanID().String()]
			if !ok || p.Name() != "qpc.client.Enqueue" || p.SpanContext().TraceID() != s.SpanContext().TraceID() {
				t.Errorf("server Enqueue span's parent is %v, want the client's qpc.client.Enqueue span", s.Parent())
				continue
			}
			joined++
		case "delivery.fetch_wait":
			for _, l := range s.Links() {
				if e, ok := byID[l.SpanContext.SpanID().String()]; ok && e.Name() == "delivery.enqueue" {
					linked++
				}
			}
		}
	}
	if joined == 0 {
		t.Error("no server Enqueue span continued a client trace")
	}
	if linked == 0 {
		t.Error("no FetchWait links to the span that enqueued what it returned")
	}
}
