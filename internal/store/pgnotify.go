package store

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
)

// Broadcasts between the nodes of a PostgreSQL deployment. A node that
// commits something another node's clients wait for (a message, an inbox
// item, a revoked device) broadcasts a short payload; every other node
// receives it on its one LISTEN connection and wakes its local waiters.
//
// Broadcasts are hints, never the data: a receiver always re-reads the
// database. So the sending side favours throughput (a dedicated connection
// with synchronous_commit off, payloads coalesced into one round trip) and
// the receiving side favours never missing a wake-up: when the LISTEN
// connection is lost, it reconnects and tells every subscriber to re-check
// everything (resync), since notifications sent meanwhile are gone.

// pgChannel is the one LISTEN/NOTIFY channel qpcd uses.
const pgChannel = "qpc_events"

// Bounds of the sending side.
const (
	broadcastQueue = 8192 // pending payloads; beyond this a resync-all is sent instead
	broadcastBatch = 256  // payloads per round trip
	listenPing     = 15 * time.Second
)

// resyncTopic asks every node to wake all its waiters.
const resyncTopic = "*"

type pgEvents struct {
	cfg  func() *pgx.ConnConfig // the settings in use, a copy per call
	node string
	log  *slog.Logger

	out      chan string // payloads ready to send: "node topic payload"
	overflow atomic.Bool // a payload was dropped: send a resync-all next

	mu   sync.Mutex
	subs map[string][]func(payload string, resync bool)

	cancel context.CancelFunc
	wg     sync.WaitGroup

	listening     chan struct{} // closed once the first LISTEN is in place
	listenOnce    sync.Once
	reconnects    atomic.Int64
	notifications atomic.Int64
	up            atomic.Bool
	// flips counts the LISTEN connection's losses and re-establishments;
	// it moves before up turns true, so that a reader that sees up and the
	// same flips twice knew of every broadcast in between (ListenState).
	flips atomic.Int64
}

func startPGEvents(cfg func() *pgx.ConnConfig, node string, log *slog.Logger) *pgEvents {
	ctx, cancel := context.WithCancel(context.Background())
	e := &pgEvents{
		cfg:       cfg,
		node:      node,
		log:       log,
		out:       make(chan string, broadcastQueue),
		subs:      map[string][]func(string, bool){},
		cancel:    cancel,
		listening: make(chan struct{}),
	}
	e.wg.Add(2)
	go e.listen(ctx)
	go e.send(ctx)
	return e
}

// waitListening waits until the first LISTEN is in place, so that a node
// that reports ready hears every broadcast sent after that.
func (e *pgEvents) waitListening(ctx context.Context) error {
	select {
	case <-e.listening:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (e *pgEvents) stop() {
	if e == nil {
		return
	}
	e.cancel()
	e.wg.Wait()
}

func (e *pgEvents) stats() (reconnects int64, up bool, received int64) {
	if e == nil {
		return 0, false, 0
	}
	return e.reconnects.Load(), e.up.Load(), e.notifications.Load()
}

// connect opens a dedicated connection (not from the pool: LISTEN state
// belongs to a session, and the sender must not wait behind requests).
func (e *pgEvents) connect(ctx context.Context, params map[string]string) (*pgx.Conn, error) {
	cfg := e.cfg()
	for k, v := range params {
		cfg.RuntimeParams[k] = v
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.ConnectTimeout+time.Second)
	defer cancel()
	return pgx.ConnectConfig(ctx, cfg)
}

// listen keeps one LISTEN connection and dispatches notifications.
func (e *pgEvents) listen(ctx context.Context) {
	defer e.wg.Done()
	backoff := 50 * time.Millisecond
	connectedOnce := false
	for ctx.Err() == nil {
		conn, err := e.connect(ctx, map[string]string{"application_name": "qpcd-listen"})
		if err == nil {
			if _, err = conn.Exec(ctx, "LISTEN "+pgChannel); err != nil {
				_ = conn.Close(context.Background())
			}
		}
		if err != nil {
			if !e.retryWait(ctx, "LISTEN", err, &backoff) {
				return
			}
			continue
		}
		backoff = 50 * time.Millisecond
		e.flips.Add(1)
		e.up.Store(true)
		e.listenOnce.Do(func() { close(e.listening) })
		if connectedOnce {
			// Whatever was broadcast while the connection was down is lost:
			// every subscriber re-checks.
			e.reconnects.Add(1)
			e.log.Info("store: LISTEN connection re-established; waking every waiter to re-check")
			e.dispatchResync()
		}
		connectedOnce = true
		err = e.receive(ctx, conn)
		e.up.Store(false)
		e.flips.Add(1)
		_ = conn.Close(context.Background())
		if ctx.Err() != nil {
			return
		}
		e.log.Warn("store: LISTEN connection lost; reconnecting", "error", err)
	}
}

// receive dispatches notifications until the connection fails. An idle
// connection is pinged now and then, so a silently dead peer is noticed.
func (e *pgEvents) receive(ctx context.Context, conn *pgx.Conn) error {
	for {
		wctx, cancel := context.WithTimeout(ctx, listenPing)
		n, err := conn.WaitForNotification(wctx)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if errors.Is(err, context.DeadlineExceeded) || wctx.Err() != nil {
				pctx, pcancel := context.WithTimeout(ctx, 5*time.Second)
				err = conn.Ping(pctx)
				pcancel()
				if err == nil {
					continue
				}
			}
			return err
		}
		e.notifications.Add(1)
		node, rest, _ := strings.Cut(n.Payload, " ")
		if node == e.node {
			continue
		}
		topic, payload, _ := strings.Cut(rest, " ")
		if topic == resyncTopic {
			e.dispatchResync()
			continue
		}
		e.mu.Lock()
		subs := e.subs[topic]
		e.mu.Unlock()
		for _, fn := range subs {
			fn(payload, false)
		}
	}
}

func (e *pgEvents) dispatchResync() {
	e.mu.Lock()
	var all []func(string, bool)
	for _, subs := range e.subs {
		all = append(all, subs...)
	}
	e.mu.Unlock()
	for _, fn := range all {
		fn("", true)
	}
}

// send delivers queued broadcasts, many per round trip.
func (e *pgEvents) send(ctx context.Context) {
	defer e.wg.Done()
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			_ = conn.Close(context.Background())
		}
	}()
	backoff := 50 * time.Millisecond
	var pending []string
	for {
		if len(pending) == 0 {
			select {
			case <-ctx.Done():
				return
			case p := <-e.out:
				pending = append(pending, p)
			}
		}
	collect:
		for len(pending) < broadcastBatch {
			select {
			case p := <-e.out:
				pending = append(pending, p)
			default:
				break collect
			}
		}
		if e.overflow.Swap(false) {
			pending = append(pending[:0], e.node+" "+resyncTopic+" ")
		}
		if conn == nil {
			var err error
			// Broadcasts are hints: no need to wait for their commit to be flushed.
			conn, err = e.connect(ctx, map[string]string{"application_name": "qpcd-notify", "synchronous_commit": "off"})
			if err != nil {
				conn = nil
				if !e.retryWait(ctx, "NOTIFY", err, &backoff) {
					return
				}
				continue
			}
			backoff = 50 * time.Millisecond
		}
		b := &pgx.Batch{}
		seen := make(map[string]bool, len(pending))
		for _, p := range pending {
			if !seen[p] {
				seen[p] = true
				b.Queue("SELECT pg_notify($1, $2)", pgChannel, p)
			}
		}
		sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := conn.SendBatch(sctx, b).Close()
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			e.log.Warn("store: NOTIFY failed; reconnecting", "error", err)
			_ = conn.Close(context.Background())
			conn = nil
			continue // pending is kept and sent on the new connection
		}
		pending = pending[:0]
	}
}

func (e *pgEvents) publish(topic, payload string) {
	select {
	case e.out <- e.node + " " + topic + " " + payload:
	default:
		e.overflow.Store(true)
	}
}

func (e *pgEvents) subscribe(topic string, fn func(string, bool)) {
	e.mu.Lock()
	e.subs[topic] = append(e.subs[topic], fn)
	e.mu.Unlock()
}

// retryWait logs a failed connection attempt and waits backoff before the
// next, doubling it up to 5 s; false when ctx ended.
func (e *pgEvents) retryWait(ctx context.Context, what string, err error, backoff *time.Duration) bool {
	if ctx.Err() != nil {
		return false
	}
	e.log.Warn("store: "+what+" connection failed; retrying", "error", err, "retry_in", *backoff)
	if !sleepCtx(ctx, *backoff) {
		return false
	}
	*backoff = min(*backoff*2, 5*time.Second)
	return true
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// Broadcast tells the other nodes of the deployment that something under
// topic changed (payload: a short text without spaces, e.g. a hex id). Call
// it after the change committed. It never blocks and never fails: a
// broadcast that cannot be queued becomes a resync of every node. Topics
// and payloads carry ids only, never secrets or content. On SQLite (one
// node) it does nothing.
func (db *DB) Broadcast(topic, payload string) {
	if db.pg == nil || db.pg.events == nil {
		return
	}
	db.pg.events.publish(topic, payload)
}

// ListenState reports whether this node hears the other nodes'
// broadcasts now (up), and a counter that moves whenever the LISTEN
// connection is lost or re-established: two calls that both see up and the
// same counter bracket a time in which no broadcast was missed. On SQLite
// (one node, nothing to hear) it is always (true, 0).
func (db *DB) ListenState() (up bool, flips int64) {
	if db.pg == nil || db.pg.events == nil {
		return true, 0
	}
	e := db.pg.events
	flips = e.flips.Load()
	return e.up.Load(), flips
}

// Subscribe registers fn for broadcasts on topic from other nodes. fn runs
// on the notification goroutine and must return quickly. It is called with
// resync true (and no payload) when broadcasts may have been missed (the
// LISTEN connection was lost, or a sender's queue overflowed): the
// subscriber then re-checks everything it watches. On SQLite fn is never
// called.
func (db *DB) Subscribe(topic string, fn func(payload string, resync bool)) {
	if db.pg == nil || db.pg.events == nil {
		return
	}
	db.pg.events.subscribe(topic, fn)
}
