package client

import (
	"context"
	"crypto/ed25519"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"

	"google.golang.org/protobuf/proto"

	"github.com/quicprochat/quicprochat/internal/keylog"
	"github.com/quicprochat/quicprochat/internal/wire"
	"github.com/quicprochat/quicprochat/internal/wire/qpcv1"
)

// The key transparency log, as a client audits it (docs/client.md, "The
// key log"; docs/protocol.md, "Key log"). The client pins the log's key on
// first use, accepts a key (an account's identity key, a device
// certificate) only with an inclusion proof against a head signed by that
// key, keeps every head it accepted consistent with the largest it holds,
// and checks the heads other group members gossip the same way. Two heads
// that cannot both be views of one append-only log are evidence that the
// server showed different people different logs: they are recorded as an
// alarm and shown loudly, never dropped.

var (
	// ErrKeyLogProof: a key came without a valid inclusion proof in the
	// key log (the server's answer is refused; --allow-unverified does not
	// change that).
	ErrKeyLogProof = fmt.Errorf("%w: not proven in the server's key log", ErrUntrustedDevice)
	// ErrKeyLogFork: two signed heads of the log disagree; the server
	// showed different logs to different people (or to this device over
	// time). The error names both heads.
	ErrKeyLogFork = errors.New("client: key log: the server showed different key logs")
	// ErrKeyLogKey: a head signed by another key than the pinned log key.
	ErrKeyLogKey = errors.New("client: key log: tree head not signed by the pinned log key")
)

// KeyLogAlarm is evidence of a forked log, shown as "[keylog]".
type KeyLogAlarm struct {
	Kind    string `json:"kind"` // fork (same size, two roots) | inconsistent (no proof joins them)
	Detail  string `json:"detail"`
	HeadA   string `json:"head_a"` // hex of the encoded signed head
	SourceA string `json:"source_a"`
	HeadB   string `json:"head_b"`
	SourceB string `json:"source_b"`
	AtMs    int64  `json:"unix_ms"`
}

// keyLogPin returns the pinned log key, pinning the server's on first use.
func (c *Client) keyLogPin(ctx context.Context) (ed25519.PublicKey, error) {
	var pub []byte
	err := c.db.ReadTx(ctx, func(tx *sql.Tx) error {
		return tx.QueryRowContext(ctx, `SELECT public_key FROM keylog_pin WHERE id = 1`).Scan(&pub)
	})
	if err == nil {
		return pub, nil
	}
	if !errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("client: read key log pin: %w", err)
	}
	var resp qpcv1.GetKeyLogHeadResponse
	if err := c.call(ctx, "GetKeyLogHead", &qpcv1.GetKeyLogHeadRequest{}, &resp); err != nil {
		if olderServer(err) {
			return nil, errNoKeyLog
		}
		return nil, fmt.Errorf("client: key log head: %w", err)
	}
	pub = resp.GetLogPublicKey()
	if len(pub) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("%w: the server's log key is %d bytes", ErrKeyLogKey, len(pub))
	}
	h, err := keylog.ParseHead(resp.GetTreeHead())
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrKeyLogProof, err)
	}
	if err := h.Verify(pub); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrKeyLogKey, err)
	}
	err = c.db.WriteTx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `INSERT INTO keylog_pin (id, key_id, public_key, pinned_ms) VALUES (1, ?, ?, ?) ON CONFLICT DO NOTHING`,
			h.KeyID.String(), pub, c.now().UnixMilli()); err != nil {
			return err
		}
		return tx.QueryRowContext(ctx, `SELECT public_key FROM keylog_pin WHERE id = 1`).Scan(&pub)
	})
	if err != nil {
		return nil, fmt.Errorf("client: pin key log key: %w", err)
	}
	if _, err := c.acceptHead(ctx, resp.GetTreeHead(), "server"); err != nil {
		return nil, err
	}
	return pub, nil
}

// errNoKeyLog: the server is older than the key log (it does not know
// GetKeyLogHead) and nothing was pinned yet.
var errNoKeyLog = errors.New("client: the server has no key log")

// PinKeyLog pins the server's log key (Register and Link call it; a home
// made before the key log pins on its first key lookup). A server older
// than the key log is no error: nothing is pinned, and the client checks
// no proofs until it meets a server with a log; once pinned, a log is
// required from then on.
func (c *Client) PinKeyLog(ctx context.Context) error {
	_, err := c.keyLogPin(ctx)
	if errors.Is(err, errNoKeyLog) {
		return nil
	}
	return err
}

type heldHead struct {
	head   *keylog.Head
	raw    []byte
	source string
}

func (c *Client) heldHeads(ctx context.Context, size uint64) (same, largest *heldHead, err error) {
	err = c.db.ReadTx(ctx, func(tx *sql.Tx) error {
		load := func(q string, args ...any) (*heldHead, error) {
			var raw []byte
			var src string
			if err := tx.QueryRowContext(ctx, q, args...).Scan(&raw, &src); err != nil {
				if errors.Is(err, sql.ErrNoRows) {
					return nil, nil
				}
				return nil, err
			}
			h, err := keylog.ParseHead(raw)
			if err != nil {
				return nil, err
			}
			return &heldHead{h, raw, src}, nil
		}
		var err error
		if same, err = load(`SELECT head, source FROM keylog_heads WHERE tree_size = ?`, int64(size)); err != nil {
			return err
		}
		largest, err = load(`SELECT head, source FROM keylog_heads ORDER BY tree_size DESC LIMIT 1`)
		return err
	})
	if err != nil {
		return nil, nil, fmt.Errorf("client: read key log heads: %w", err)
	}
	return same, largest, nil
}

// acceptHead verifies a head under the pinned key and checks it is
// consistent with the heads this device holds: the same root as a held
// head of its size, and a consistency proof (from the server) joining it
// to the largest held head. A disagreement is recorded as an alarm and
// returned as ErrKeyLogFork; a server that cannot be asked returns its
// error (nothing is concluded).
func (c *Client) acceptHead(ctx context.Context, raw []byte, source string) (*keylog.Head, error) {
	var pub []byte
	err := c.db.ReadTx(ctx, func(tx *sql.Tx) error {
		return tx.QueryRowContext(ctx, `SELECT public_key FROM keylog_pin WHERE id = 1`).Scan(&pub)
	})
	if errors.Is(err, sql.ErrNoRows) {
		if pub, err = c.keyLogPin(ctx); err != nil {
			return nil, err
		}
	} else if err != nil {
		return nil, fmt.Errorf("client: read key log pin: %w", err)
	}
	h, err := keylog.ParseHead(raw)
	if err != nil {
		return nil, fmt.Errorf("%w: %s sent %w", ErrKeyLogProof, source, err)
	}
	if err := h.Verify(pub); err != nil {
		return nil, fmt.Errorf("%w (from %s): %w", ErrKeyLogKey, source, err)
	}
	same, largest, err := c.heldHeads(ctx, h.Size)
	if err != nil {
		return nil, err
	}
	if same != nil {
		if err := keylog.VerifyConsistency(same.head, h, nil); err != nil {
			return nil, c.alarm(ctx, "fork", err, same, &heldHead{h, raw, source})
		}
		return h, nil
	}
	if largest != nil {
		lo, hi := largest, &heldHead{h, raw, source}
		if lo.head.Size > hi.head.Size {
			lo, hi = hi, lo
		}
		var resp qpcv1.GetKeyLogConsistencyResponse
		if err := c.call(ctx, "GetKeyLogConsistency", &qpcv1.GetKeyLogConsistencyRequest{FromSize: lo.head.Size, ToSize: hi.head.Size}, &resp); err != nil {
			var se *wire.StatusError
			if errors.As(err, &se) && se.Code == qpcv1.Status_STATUS_NOT_FOUND {
				// The server has no head of that size: it never signed the
				// larger head in its own log, yet it carries its signature.
				return nil, c.alarm(ctx, "inconsistent", fmt.Errorf("%w: the server has no tree of size %d: %v", keylog.ErrInconsistent, hi.head.Size, err), lo, hi)
			}
			return nil, fmt.Errorf("client: key log consistency %d..%d: %w", lo.head.Size, hi.head.Size, err)
		}
		if err := keylog.VerifyConsistency(lo.head, hi.head, resp.GetProof()); err != nil {
			return nil, c.alarm(ctx, "inconsistent", err, lo, hi)
		}
	}
	err = c.db.WriteTx(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO keylog_heads (tree_size, root, head, source, seen_ms) VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING`,
			int64(h.Size), h.Root[:], raw, source, c.now().UnixMilli())
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("client: save key log head: %w", err)
	}
	return h, nil
}

// alarm records the evidence of a fork and returns ErrKeyLogFork naming it.
func (c *Client) alarm(ctx context.Context, kind string, cause error, a, b *heldHead) error {
	detail := cause.Error()
	err := c.db.WriteTx(ctx, func(tx *sql.Tx) error {
		var n int
		if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM keylog_alarms WHERE (head_a = ? AND head_b = ?) OR (head_a = ? AND head_b = ?)`,
			a.raw, b.raw, b.raw, a.raw).Scan(&n); err != nil || n > 0 {
			return err
		}
		_, err := tx.ExecContext(ctx, `INSERT INTO keylog_alarms (kind, detail, head_a, source_a, head_b, source_b, created_ms) VALUES (?, ?, ?, ?, ?, ?, ?)`,
			kind, detail, a.raw, a.source, b.raw, b.source, c.now().UnixMilli())
		return err
	})
	if err != nil {
		c.log.Error("client: could not record key log evidence", "err", err)
	}
	c.log.Warn("client: key log fork", "kind", kind, "a", a.head.String(), "source_a", a.source, "b", b.head.String(), "source_b", b.source)
	return fmt.Errorf("%w: %v (from %s) and %v (from %s): %w", ErrKeyLogFork, a.head, a.source, b.head, b.source, cause)
}

// KeyLogAlarms returns the fork evidence not shown yet and marks it shown.
func (c *Client) KeyLogAlarms(ctx context.Context) ([]KeyLogAlarm, error) {
	var out []KeyLogAlarm
	err := c.db.WriteTx(ctx, func(tx *sql.Tx) error {
		out = out[:0]
		rows, err := tx.QueryContext(ctx, `SELECT kind, detail, head_a, source_a, head_b, source_b, created_ms FROM keylog_alarms WHERE shown = 0 ORDER BY id`)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var a KeyLogAlarm
			var ha, hb []byte
			if err := rows.Scan(&a.Kind, &a.Detail, &ha, &a.SourceA, &hb, &a.SourceB, &a.AtMs); err != nil {
				return err
			}
			a.HeadA, a.HeadB = hex.EncodeToString(ha), hex.EncodeToString(hb)
			out = append(out, a)
		}
		if err := rows.Err(); err != nil {
			return err
		}
		_, err = tx.ExecContext(ctx, `UPDATE keylog_alarms SET shown = 1 WHERE shown = 0`)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("client: key log alarms: %w", err)
	}
	return out, nil
}

// KeyLogHead is the newest head this device holds (nil: none yet).
func (c *Client) KeyLogHead(ctx context.Context) (*keylog.Head, error) {
	_, largest, err := c.heldHeads(ctx, 0)
	if err != nil || largest == nil {
		return nil, err
	}
	return largest.head, nil
}

// newestHeadRaw is the encoded newest held head, for gossip (nil: none).
func newestHeadRaw(ctx context.Context, tx *sql.Tx) []byte {
	var raw []byte
	if err := tx.QueryRowContext(ctx, `SELECT head FROM keylog_heads ORDER BY tree_size DESC LIMIT 1`).Scan(&raw); err != nil {
		return nil
	}
	return raw
}

// proveKeys checks a key lookup's inclusion proofs: the head (accepted as
// above), the account's identity key (when there is one) and each
// device's certificate, every one an entry of the log binding exactly
// that account and those bytes. Anything unproven is refused.
func (c *Client) proveKeys(ctx context.Context, incl *qpcv1.KeyLogInclusion, account string, identityKey []byte, certs map[string][]byte) error {
	if len(identityKey) == 0 && len(certs) == 0 {
		return nil // an account from before identity keys: nothing to prove
	}
	if incl == nil || len(incl.GetTreeHead()) == 0 {
		// Only a server older than the key log may answer without proofs,
		// and only to a client that never pinned a log key.
		if _, err := c.keyLogPin(ctx); errors.Is(err, errNoKeyLog) {
			return nil
		} else if err != nil {
			return err
		}
		return fmt.Errorf("%w: the server sent no key log proof for %s", ErrKeyLogProof, account)
	}
	h, err := c.acceptHead(ctx, incl.GetTreeHead(), "server")
	if err != nil {
		return err
	}
	check := func(p *qpcv1.KeyLogProof, kind keylog.Kind, data []byte, what string) error {
		if p == nil {
			return fmt.Errorf("%w: no log entry for %s's %s", ErrKeyLogProof, account, what)
		}
		if err := keylog.VerifyInclusion(p.GetEntry(), p.GetIndex(), p.GetPath(), h); err != nil {
			return fmt.Errorf("%w: %s's %s: %w", ErrKeyLogProof, account, what, err)
		}
		e, err := keylog.ParseEntry(p.GetEntry())
		if err != nil {
			return fmt.Errorf("%w: %s's %s: %w", ErrKeyLogProof, account, what, err)
		}
		if !e.Binds(kind, account, data) {
			return fmt.Errorf("%w: the log entry the server proved for %s's %s binds another key", ErrKeyLogProof, account, what)
		}
		return nil
	}
	if len(identityKey) > 0 {
		if err := check(incl.GetIdentity(), keylog.KindIdentityKey, identityKey, "identity key"); err != nil {
			return err
		}
	}
	for dev, cert := range certs {
		if err := check(incl.GetDevices()[dev], keylog.KindDeviceCertificate, cert, "certificate of device "+dev); err != nil {
			return err
		}
	}
	return nil
}

// queueGossip stores a head another member sent, inside the transaction
// that processes their message; checkGossip checks it afterwards.
func queueGossip(ctx context.Context, tx *sql.Tx, raw []byte, source string, nowMs int64) error {
	if len(raw) != keylog.HeadSize {
		return nil // not a head: ignored like any payload not understood
	}
	_, err := tx.ExecContext(ctx, `INSERT INTO keylog_gossip (head, source, received_ms) VALUES (?, ?, ?)`, raw, source, nowMs)
	return err
}

// gossipRetryMs is how long a gossiped head waits for a server that
// cannot be asked before it is dropped.
const gossipRetryMs = 7 * 24 * 3600 * 1000

// checkGossip checks the heads other members sent. A fork is recorded (an
// alarm) and the head dropped; a head the server could not be asked about
// stays queued for the next sync.
func (c *Client) checkGossip(ctx context.Context) error {
	type pending struct {
		id       int64
		raw      []byte
		source   string
		received int64
	}
	var ps []pending
	err := c.db.ReadTx(ctx, func(tx *sql.Tx) error {
		rows, err := tx.QueryContext(ctx, `SELECT id, head, source, received_ms FROM keylog_gossip ORDER BY id LIMIT 64`)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var p pending
			if err := rows.Scan(&p.id, &p.raw, &p.source, &p.received); err != nil {
				return err
			}
			ps = append(ps, p)
		}
		return rows.Err()
	})
	if err != nil {
		return fmt.Errorf("client: key log gossip: %w", err)
	}
	for _, p := range ps {
		_, err := c.acceptHead(ctx, p.raw, p.source)
		settled := err == nil || errors.Is(err, ErrKeyLogFork) || errors.Is(err, ErrKeyLogKey) || errors.Is(err, ErrKeyLogProof) || errors.Is(err, errNoKeyLog)
		if !settled && c.now().UnixMilli()-p.received < gossipRetryMs {
			// The server could not be asked: try again on the next sync.
			c.log.Info("client: key log gossip not checked yet", "source", p.source, "err", err)
			continue
		}
		if err != nil && !errors.Is(err, ErrKeyLogFork) {
			c.log.Warn("client: a gossiped key log head was refused", "source", p.source, "err", err)
		}
		if err := c.db.WriteTx(ctx, func(tx *sql.Tx) error {
			_, err := tx.ExecContext(ctx, `DELETE FROM keylog_gossip WHERE id = ?`, p.id)
			return err
		}); err != nil {
			return fmt.Errorf("client: key log gossip: %w", err)
		}
	}
	return nil
}

// GossipKeyLog sends the group a control message carrying only this
// device's newest key log head (members handle it silently). Every
// message Send writes carries the head already; this is for a group in
// which nobody has anything to say.
func (c *Client) GossipKeyLog(ctx context.Context, channel string) error {
	mid, err := c.newMessageID()
	if err != nil {
		return err
	}
	now := c.now()
	c.groupMu.Lock()
	err = c.db.WriteTx(ctx, func(tx *sql.Tx) error {
		head := newestHeadRaw(ctx, tx)
		if head == nil {
			return fmt.Errorf("client: no key log head to gossip yet")
		}
		r, g, err := openGroup(ctx, tx, channel, nil)
		if err != nil {
			return err
		}
		payload, err := proto.Marshal(&qpcv1.AppMessage{Version: 1, MessageId: mid, SentUnixMs: now.UnixMilli(), KeyLog: &qpcv1.KeyLogGossip{TreeHead: head}})
		if err != nil {
			return err
		}
		ct, err := g.Protect(payload, nil)
		if err != nil {
			return fmt.Errorf("client: encrypt: %w", err)
		}
		if err := saveGroup(ctx, tx, r.channelID, g, now.UnixMilli()); err != nil {
			return err
		}
		_, err = tx.ExecContext(ctx, `INSERT INTO outbox (message_id, channel_id, mls_message, kind, intent, created_ms) VALUES (?, ?, ?, 'app', ?, ?)`,
			mid, r.channelID, ct, payload, now.UnixMilli())
		return err
	})
	c.groupMu.Unlock()
	if err != nil {
		return err
	}
	fctx, cancel := context.WithTimeout(ctx, sendFlushTimeout)
	defer cancel()
	_, err = c.Flush(fctx)
	return err
}
