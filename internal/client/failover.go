package client

import (
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/quicprochat/quicprochat/internal/transport"
)

// A deployment may run several qpcd nodes on one database; the client is
// given all their addresses. It sticks to the node that works and moves on
// only when that node fails at the transport level (cannot be reached, the
// connection is lost or a call gets no answer), drains, or answers
// UNAVAILABLE. A failed node then sits out a cool-down that grows with its
// consecutive failures (capped exponential, full jitter, on the Backoff's
// clock), so a client does not bounce straight back to a node that just
// died; when every node is cooling down, the one whose cool-down ends first
// is tried. The cursors of a device live on the server (in the shared
// database), so a long poll resumed on another node neither skips nor
// repeats messages.

// SplitList splits a comma-separated flag or setting value ("a, b,,c")
// into its non-empty, trimmed items.
func SplitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// Addrs are the server addresses of Addr (a comma-separated list).
func (t ServerTrust) Addrs() []string { return SplitList(t.Addr) }

// Pins are the accepted certificate fingerprints of PinSHA256 (a
// comma-separated list; empty: verify with CAs).
func (t ServerTrust) Pins() []string { return SplitList(t.PinSHA256) }

// checkAddrs refuses an empty list, duplicates and what is not HOST:PORT.
func checkAddrs(addrs []string) error {
	if len(addrs) == 0 {
		return fmt.Errorf("client: no server address; run qpc init --server HOST:PORT[,HOST:PORT...]")
	}
	seen := map[string]bool{}
	for _, a := range addrs {
		if _, _, err := net.SplitHostPort(a); err != nil {
			return fmt.Errorf("client: server address %q: %w; want HOST:PORT", a, err)
		}
		if seen[a] {
			return fmt.Errorf("client: server address %q is listed twice", a)
		}
		seen[a] = true
	}
	return nil
}

// checkPins refuses a pin that is not a SHA-256 fingerprint.
func checkPins(pins []string) error {
	for _, p := range pins {
		if _, err := transport.NormalizeFingerprint(p); err != nil {
			return fmt.Errorf("client: --pin: %w; copy cert_sha256 from qpcd's start-up log", err)
		}
	}
	return nil
}

// nodeList holds a deployment's node addresses, the one in use and each
// node's cool-down. It is not safe for concurrent use (Conn locks it).
type nodeList struct {
	addrs []string
	cur   int
	fails []int       // consecutive failures per node
	until []time.Time // a failed node is avoided until then
	b     Backoff     // with defaults: Rand and Now are set
}

func newNodeList(addrs []string, b Backoff) *nodeList {
	b = b.withDefaults()
	return &nodeList{addrs: addrs, fails: make([]int, len(addrs)), until: make([]time.Time, len(addrs)), b: b}
}

// current is the node in use.
func (l *nodeList) current() (int, string) { return l.cur, l.addrs[l.cur] }

// use makes addr the node in use, if it is one of the list (a remembered
// node from an earlier run).
func (l *nodeList) use(addr string) bool {
	for i, a := range l.addrs {
		if a == addr {
			l.cur = i
			return true
		}
	}
	return false
}

// coolingDown reports whether node i is still sitting out a failure.
func (l *nodeList) coolingDown(i int) bool { return l.b.Now().Before(l.until[i]) }

// failed records that node i failed. Its cool-down is a jittered wait in
// [Base, min(Max, Base*2^(fails-1))]; if it was the node in use, the client
// moves to the next node after it (in list order, wrapping) that is not
// cooling down, or, when all are, to the one whose cool-down ends first
// (unless its own ends sooner).
// It reports whether the node in use changed.
func (l *nodeList) failed(i int) bool {
	l.fails[i]++
	wait := l.b.Delay(l.fails[i]-1, 0)
	if wait < l.b.Base {
		wait = l.b.Base
	}
	l.until[i] = l.b.Now().Add(wait)
	if i != l.cur || len(l.addrs) == 1 {
		return false
	}
	best := -1
	for k := 1; k < len(l.addrs); k++ {
		j := (i + k) % len(l.addrs)
		if !l.coolingDown(j) {
			best = j
			break
		}
		if best < 0 || l.until[j].Before(l.until[best]) {
			best = j
		}
	}
	if best >= 0 && (!l.coolingDown(best) || !l.until[i].Before(l.until[best])) {
		l.cur = best
	}
	return l.cur != i
}

// ok records that node i answered: its failures are forgotten.
func (l *nodeList) ok(i int) {
	l.fails[i] = 0
	l.until[i] = time.Time{}
}
