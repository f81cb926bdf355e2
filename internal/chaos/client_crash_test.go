package chaos

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// qpcUser is one qpc home directory, used through the real binary.
type qpcUser struct {
	t    *testing.T
	home string
}

func newQPCUser(t *testing.T) *qpcUser {
	return &qpcUser{t: t, home: filepath.Join(t.TempDir(), "home")}
}

func (u *qpcUser) command(args ...string) *exec.Cmd {
	c := exec.Command(qpcBin, append([]string{"--home", u.home}, args...)...)
	c.Env = cleanEnv()
	return c
}

// ok runs qpc to completion and fails the test on a non-zero exit.
func (u *qpcUser) ok(args ...string) string {
	u.t.Helper()
	c := u.command(args...)
	var out, errb bytes.Buffer
	c.Stdout, c.Stderr = &out, &errb
	if err := c.Run(); err != nil {
		u.t.Fatalf("qpc %s: %v\nstdout: %s\nstderr: %s", strings.Join(args, " "), err, out.String(), errb.String())
	}
	return out.String()
}

// acceptInvitations accepts every pending invitation (joining is by
// consent: a group add only invites).
func (u *qpcUser) acceptInvitations(t *testing.T) {
	t.Helper()
	type invitation struct {
		ID string `json:"id"`
	}
	invs := jsonObjects[invitation](t, u.ok("--json", "invitations"))
	if len(invs) == 0 {
		t.Fatal("no invitation to accept")
	}
	for _, in := range invs {
		u.ok("invitations", "accept", in.ID)
	}
}

// killedRun starts qpc and kills it with SIGKILL after `after` unless it
// finished first; it reports whether it completed with exit 0.
func (u *qpcUser) killedRun(after time.Duration, args ...string) (completed bool) {
	u.t.Helper()
	c := u.command(args...)
	if err := c.Start(); err != nil {
		u.t.Fatal(err)
	}
	timer := time.AfterFunc(after, func() { _ = c.Process.Signal(syscall.SIGKILL) })
	err := c.Wait()
	timer.Stop()
	var ee *exec.ExitError
	if errors.As(err, &ee) && !ee.Exited() {
		return false // killed
	}
	if err != nil {
		u.t.Fatalf("qpc %s (not killed) failed: %v", strings.Join(args, " "), err)
	}
	return true
}

// jsonObjects decodes --json output (one object per line) into T.
func jsonObjects[T any](t *testing.T, out string) []T {
	t.Helper()
	var res []T
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if line == "" {
			continue
		}
		var v T
		if err := json.Unmarshal([]byte(line), &v); err != nil {
			t.Fatalf("qpc --json line %q: %v", line, err)
		}
		res = append(res, v)
	}
	return res
}

type historyLine struct {
	MessageID string `json:"message_id"`
	Text      string `json:"text"`
	Seq       uint64 `json:"seq"`
	Outgoing  bool   `json:"outgoing"`
	// Set on a membership change the server announced (not a message).
	Event json.RawMessage `json:"event"`
}

type outboxLine struct {
	MessageID string `json:"message_id"`
	Status    string `json:"status"`
	Seq       uint64 `json:"seq"`
	LastError string `json:"last_error"`
}

// Client crash: the real qpc binary is killed with SIGKILL at random
// moments while it sends (alice) and while it receives (bob). Afterwards
// both local stores open, alice's outbox delivers everything it queued
// exactly once, and bob holds each message once.
func TestChaosClientCrash(t *testing.T) {
	forEachBackend(t, func(t *testing.T, backend string) {
		sends := pick(12, 60)
		rng := mrand.New(mrand.NewPCG(uint64(time.Now().UnixNano()), 22))
		n := newNode(t, backend)
		n.start()
		alice, bob := newQPCUser(t), newQPCUser(t)
		for i, u := range []*qpcUser{alice, bob} {
			u.ok("init", "--server", n.listen, "--pin", n.pin)
			u.ok("register", []string{"alice", "bob"}[i])
		}
		alice.ok("group", "create", "team")
		alice.ok("group", "add", "team", "bob")
		bob.acceptInvitations(t)
		bob.ok("recv")

		// The kill window is twice a send's and a recv's duration, measured
		// here: a kill within it lands before, during or after the outbox
		// write and the Enqueue (or the fetch, store and ack).
		begin := time.Now()
		alice.ok("send", "team", "calibration")
		sendTook := time.Since(begin)
		begin = time.Now()
		bob.ok("recv")
		recvTook := time.Since(begin)
		completed, killed := map[string]bool{"calibration": true}, 0
		bobKilled := 0
		for i := range sends {
			text := fmt.Sprintf("m-%03d", i)
			if alice.killedRun(time.Duration(rng.Int64N(2*int64(sendTook))), "send", "team", text) {
				completed[text] = true
			} else {
				killed++
			}
			if i%2 == 1 && !bob.killedRun(time.Duration(rng.Int64N(2*int64(recvTook))), "recv") {
				bobKilled++
			}
		}

		// Restarted, alice's outbox delivers what waits; both stores open.
		var ob []outboxLine
		waitFor(t, time.Minute, "alice's outbox empty of pending messages", func() bool {
			alice.ok("recv")
			ob = jsonObjects[outboxLine](t, alice.ok("--json", "outbox"))
			for _, e := range ob {
				if e.Status == "pending" {
					return false
				}
			}
			return true
		})
		for _, e := range ob {
			if e.Status != "sent" {
				t.Errorf("outbox entry %s: %s (%s); want sent", e.MessageID, e.Status, e.LastError)
			}
		}
		mine := map[string]historyLine{} // message id -> alice's own line
		texts := map[string]int{}
		for _, h := range jsonObjects[historyLine](t, alice.ok("--json", "history", "--limit", "100000", "team")) {
			if h.Outgoing {
				mine[h.MessageID] = h
				texts[h.Text]++
			}
		}
		for text := range completed {
			if texts[text] != 1 {
				t.Errorf("%q: qpc send exited 0 but alice's history holds it %d times", text, texts[text])
			}
		}
		for text, c := range texts {
			if c != 1 {
				t.Errorf("%q queued %d times", text, c)
			}
		}
		var got map[string]int
		waitFor(t, time.Minute, "bob received every queued message", func() bool {
			bob.ok("recv")
			got = map[string]int{}
			for _, h := range jsonObjects[historyLine](t, bob.ok("--json", "history", "--limit", "100000", "team")) {
				if h.Event == nil {
					got[h.MessageID]++
				}
			}
			for id := range mine {
				if got[id] == 0 {
					return false
				}
			}
			return true
		})
		dups := 0
		for id, c := range got {
			if _, ok := mine[id]; !ok {
				t.Errorf("bob holds message %s that alice never queued", id)
			}
			if c != 1 {
				dups++
				t.Errorf("bob holds message %s %d times", id, c)
			}
		}
		summary(t, "send takes %s, sends %d (killed %d, of which queued before the kill %d), bob's recv killed %d, delivered %d, lost 0, duplicated %d",
			sendTook.Round(time.Millisecond), sends, killed, len(mine)-len(completed), bobKilled, len(got), dups)
	})
}
