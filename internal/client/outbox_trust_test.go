package client

import (
	"context"
	"database/sql"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/quicprochat/quicprochat/internal/server/servertest"
	"github.com/quicprochat/quicprochat/internal/transport"
	"github.com/quicprochat/quicprochat/internal/wire"
	"github.com/quicprochat/quicprochat/internal/wire/qpcv1"
)

// rotateCert gives srv a new self-signed certificate (as `qpcctl rotate
// tls` does after the files are replaced) and returns its fingerprint.
func rotateCert(t *testing.T, srv *servertest.Server) string {
	t.Helper()
	tmp := t.TempDir()
	cert, key := filepath.Join(tmp, "cert.pem"), filepath.Join(tmp, "key.pem")
	if _, err := transport.EnsureDevCertificate(cert, key, time.Now()); err != nil {
		t.Fatal(err)
	}
	for _, f := range []struct{ src, dst string }{{key, "key.pem"}, {cert, "cert.pem"}} {
		b, err := os.ReadFile(f.src)
		if err != nil {
			t.Fatal(err)
		}
		dst := filepath.Join(srv.Config.DataDir, "tls", f.dst)
		if err := os.WriteFile(dst+".new", b, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(dst+".new", dst); err != nil {
			t.Fatal(err)
		}
	}
	if err := srv.Server().ReloadTLS(); err != nil {
		t.Fatal(err)
	}
	pin := srv.Server().CertFingerprint()
	if pin == srv.Pin() {
		t.Fatal("the certificate did not change")
	}
	return pin
}

func outboxStatus(t *testing.T, c *Client, messageID string) string {
	t.Helper()
	var status string
	if err := c.db.ReadTx(ctxT(t), func(tx *sql.Tx) error {
		return tx.QueryRow(`SELECT status FROM outbox WHERE message_id = ?`, messageID).Scan(&status)
	}); err != nil {
		t.Fatal(err)
	}
	return status
}

func historyOf(t *testing.T, c *Client, channel string) map[string]Message {
	t.Helper()
	ms, err := c.History(ctxT(t), channel, 1000)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]Message{}
	for _, m := range ms {
		out[m.Text] = m
	}
	return out
}

// TestOutboxKeepsMessageWhenCertificateChanges: after the operator rotates
// the server's certificate, a message sent by a client with the old pin
// stays pending (it used to be marked failed for good), the error says the
// certificate changed and names the new fingerprint, and after re-pinning
// the message goes out exactly once.
func TestOutboxKeepsMessageWhenCertificateChanges(t *testing.T) {
	srv := servertest.Start(t, servertest.Config(t))
	ctx := ctxT(t)
	alice, o := newTestClient(t, srv, testKey(t))
	if _, err := alice.Register(ctx, RegisterParams{AccountName: "alice"}); err != nil {
		t.Fatal(err)
	}
	bob := registered(t, srv, "bob")
	if err := alice.CreateGroup(ctx, "team"); err != nil {
		t.Fatal(err)
	}
	if err := alice.AddMembers(ctx, "team", []string{"bob"}); err != nil {
		t.Fatal(err)
	}
	acceptAll(t, bob)
	send(t, alice, "team", "before")

	newPin := rotateCert(t, srv)
	// A new qpc process dials again and meets the new certificate.
	_ = alice.Close()
	alice, err := Open(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	id, err := alice.Send(ctx, "team", "after rotation", "")
	var ns *NotSentError
	var te *TrustError
	if id == "" || !errors.As(err, &ns) || !errors.As(err, &te) || errors.Is(err, ErrRefused) {
		t.Fatalf("send with the old pin: id %q, err %v; want a queued message and a certificate error", id, err)
	}
	if msg := err.Error(); !strings.Contains(msg, "certificate changed") || !strings.Contains(msg, "--pin "+newPin) {
		t.Fatalf("error %q does not say the certificate changed and how to re-pin", msg)
	}
	// Trying again changes nothing: still pending, never failed.
	if _, err := alice.Flush(ctx); !errors.As(err, &te) {
		t.Fatalf("second flush: %v", err)
	}
	if s := outboxStatus(t, alice, id); s != OutboxPending {
		t.Fatalf("outbox status %q after a certificate mismatch, want pending", s)
	}
	if h := historyOf(t, alice, "team"); h["after rotation"].Delivery != DeliveryPending || h["before"].Delivery != DeliveryDelivered {
		t.Fatalf("history: %+v", h)
	}

	// Re-pin (qpc init --pin NEW on the same home) and flush.
	_ = alice.Close()
	alice, err = Init(ctx, o, ServerTrust{Addr: srv.Addr(), PinSHA256: newPin}, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = alice.Close() })
	rep, err := alice.Flush(ctx)
	if err != nil || rep.Sent != 1 || rep.Failed != 0 {
		t.Fatalf("flush after re-pin: %+v, %v", rep, err)
	}
	if got := texts(t, bob, "team"); strings.Join(got, "|") != "before|after rotation" {
		t.Fatalf("bob's history %q", got)
	}
	if rep, err := alice.Flush(ctx); err != nil || rep.Sent != 0 {
		t.Fatalf("a second flush sent again: %+v, %v", rep, err)
	}
	if got := texts(t, bob, "team"); strings.Join(got, "|") != "before|after rotation" {
		t.Fatalf("bob's history after a second flush %q", got)
	}
	if h := historyOf(t, alice, "team"); h["after rotation"].Delivery != DeliveryDelivered {
		t.Fatalf("alice's history after delivery: %+v", h["after rotation"])
	}
}

// TestOutboxRetryAndDiscard: a message an older qpc marked failed after a
// transport failure is sent by RetryOutbox; a discarded one never goes out
// and history says so; a refusal by the server shows as refused.
func TestOutboxRetryAndDiscard(t *testing.T) {
	srv := servertest.Start(t, servertest.Config(t))
	ctx := ctxT(t)
	alice := registered(t, srv, "alice")
	bob := registered(t, srv, "bob")
	carol := registered(t, srv, "carol")
	if err := alice.CreateGroup(ctx, "team"); err != nil {
		t.Fatal(err)
	}
	if err := alice.AddMembers(ctx, "team", []string{"bob", "carol"}); err != nil {
		t.Fatal(err)
	}
	acceptAll(t, bob, carol)
	send(t, alice, "team", "hello")
	if got := texts(t, carol, "team"); strings.Join(got, "|") != "hello" {
		t.Fatalf("carol's history %q", got)
	}

	srv.Stop(t)
	short, cancel := context.WithTimeout(ctx, 3*time.Second)
	old, err := alice.Send(short, "team", "marked failed by an old qpc", "")
	cancel()
	if old == "" || IsRefusal(err) || errors.Is(err, ErrRefused) {
		t.Fatalf("send with the server down: %q, %v", old, err)
	}
	short, cancel = context.WithTimeout(ctx, 3*time.Second)
	drop, _ := alice.Send(short, "team", "discarded", "")
	cancel()
	if drop == "" {
		t.Fatal("no message id for a queued message")
	}
	// What older versions did on a transport failure.
	if err := alice.db.WriteTx(ctx, func(tx *sql.Tx) error {
		_, err := tx.Exec(`UPDATE outbox SET status = 'failed', last_error = 'transport: dial' WHERE message_id = ?`, old)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if err := alice.DiscardOutbox(ctx, drop); err != nil {
		t.Fatal(err)
	}
	if err := alice.DiscardOutbox(ctx, drop); !errors.Is(err, ErrNoOutboxEntry) {
		t.Fatalf("discard twice: %v", err)
	}
	srv.Start(t)
	if h := historyOf(t, alice, "team"); h["discarded"].Delivery != DeliveryDiscarded || h["marked failed by an old qpc"].Delivery != DeliveryRefused {
		t.Fatalf("history before retry: %+v", h)
	}
	if n, err := alice.RetryOutbox(ctx, old); err != nil || n != 1 {
		t.Fatalf("retry: %d, %v", n, err)
	}
	if rep, err := alice.Flush(ctx); err != nil || rep.Sent != 1 {
		t.Fatalf("flush after retry: %+v, %v", rep, err)
	}
	if got := texts(t, bob, "team"); strings.Join(got, "|") != "hello|marked failed by an old qpc" {
		t.Fatalf("bob's history %q", got)
	}
	if _, err := alice.RetryOutbox(ctx, old); !errors.Is(err, ErrNoOutboxEntry) {
		t.Fatalf("retry of a delivered message: %v", err)
	}
	ob, err := alice.Outbox(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ob {
		if e.Channel != "team" {
			t.Fatalf("outbox entry without its channel: %+v", e)
		}
	}

	// A real refusal: carol was removed, her message is refused and
	// history shows it as not delivered.
	if err := alice.RemoveMember(ctx, "team", "carol"); err != nil {
		t.Fatal(err)
	}
	if _, err := carol.Send(ctx, "team", "refused", ""); !errors.Is(err, ErrRefused) {
		t.Fatalf("send by a removed member: %v", err)
	}
	if h := historyOf(t, carol, "team"); h["refused"].Delivery != DeliveryRefused || h["refused"].DeliveryError == "" {
		t.Fatalf("carol's history: %+v", h["refused"])
	}
}

// TestIsRefusal: only real refusals are final; INTERNAL (a disk-full
// server used to answer it), rate limits, draining, auth and transport
// failures keep a message pending.
func TestIsRefusal(t *testing.T) {
	st := func(c qpcv1.Status, ra time.Duration) error {
		return &wire.StatusError{Code: c, Message: "x", RetryAfter: ra}
	}
	for _, c := range []struct {
		err  error
		want bool
	}{
		{st(qpcv1.Status_STATUS_INVALID_ARGUMENT, 0), true},
		{st(qpcv1.Status_STATUS_PERMISSION_DENIED, 0), true},
		{st(qpcv1.Status_STATUS_NOT_FOUND, 0), true},
		{st(qpcv1.Status_STATUS_ALREADY_EXISTS, 0), true},
		{st(qpcv1.Status_STATUS_RESOURCE_EXHAUSTED, 0), true},
		{st(qpcv1.Status_STATUS_RESOURCE_EXHAUSTED, time.Second), false},
		{st(qpcv1.Status_STATUS_UNAVAILABLE, 0), false},
		{st(qpcv1.Status_STATUS_DRAINING, 0), false},
		{st(qpcv1.Status_STATUS_INTERNAL, 0), false},
		{st(qpcv1.Status_STATUS_UNAUTHENTICATED, 0), false},
		{st(qpcv1.Status_STATUS_UNSUPPORTED_VERSION, 0), false},
		{&TrustError{pinned: true, err: transport.ErrPinMismatch}, false},
		{&dialError{err: errors.New("no route")}, false},
		{context.DeadlineExceeded, false},
	} {
		if got := IsRefusal(c.err); got != c.want {
			t.Errorf("IsRefusal(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}
