// Package logstore keeps qpcd's key transparency log in the store: the
// entries, a signed tree head per size and the log's signing key, appended
// inside the transactions that change identity keys and certificates, with
// the proofs served to clients and the operator's full re-check (Verify).
package logstore

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/quicprochat/quicprochat/internal/identity"
	"github.com/quicprochat/quicprochat/internal/keylog"
	"github.com/quicprochat/quicprochat/internal/secret"
	"github.com/quicprochat/quicprochat/internal/store"
)

var (
	// ErrNoHead: no signed head of the asked size (NOT_FOUND).
	ErrNoHead = errors.New("keylog: no tree head of that size")
	// ErrBadRange: a consistency proof from a larger to a smaller size
	// (INVALID_ARGUMENT).
	ErrBadRange = errors.New("keylog: consistency proof range invalid")
)

// Options configures Open.
type Options struct {
	DB     *store.DB
	Logger *slog.Logger     // nil: discard
	Now    func() time.Time // nil: time.Now
}

// Log is safe for concurrent use.
type Log struct {
	db  *store.DB
	log *slog.Logger
	now func() time.Time

	signer *keylog.Signer
	// mu guards tree, the committed log as last read (never anything a
	// transaction that may still roll back wrote).
	mu   sync.Mutex
	tree keylog.Tree
}

// Open loads (or makes, on first start) the log key, writes the empty
// head of a new log, and appends entries for identity keys and
// certificates stored before the log existed (accounts of migration 0010,
// or a restored older backup).
func Open(ctx context.Context, o Options) (*Log, error) {
	if o.DB == nil {
		return nil, errors.New("keylog: Options.DB is nil")
	}
	l := &Log{db: o.DB, log: o.Logger, now: o.Now}
	if l.log == nil {
		l.log = slog.New(slog.DiscardHandler)
	}
	if l.now == nil {
		l.now = time.Now
	}
	if err := l.loadKey(ctx); err != nil {
		return nil, err
	}
	if err := l.backfill(ctx); err != nil {
		return nil, err
	}
	return l, nil
}

func (l *Log) loadKey(ctx context.Context) error {
	var seed []byte
	err := l.db.WriteTx(ctx, func(tx *sql.Tx) error {
		seed = nil
		err := tx.QueryRowContext(ctx, "SELECT private_key FROM keylog_keys WHERE active = 1").Scan(&seed)
		if err == nil || !errors.Is(err, sql.ErrNoRows) {
			return err
		}
		pub, priv, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			return err
		}
		defer secret.Wipe(priv)
		seed = append([]byte(nil), priv.Seed()...)
		_, err = tx.ExecContext(ctx, "INSERT INTO keylog_keys (id, private_key, public_key, created_at, active) VALUES (?, ?, ?, ?, 1)",
			keylog.KeyIDOf(pub).String(), seed, []byte(pub), l.now().UnixMilli())
		return err
	})
	if err != nil {
		return fmt.Errorf("keylog: load log key: %w", err)
	}
	defer secret.Wipe(seed)
	l.signer, err = keylog.NewSigner(seed)
	return err
}

// backfill appends what the accounts and devices tables hold but the log
// does not, and writes the size-0 head of an empty log.
func (l *Log) backfill(ctx context.Context) error {
	n := 0
	err := l.db.WriteTx(ctx, func(tx *sql.Tx) error {
		n = 0
		type missing struct {
			name, device string
			data         []byte
		}
		var keys, certs []missing
		collect := func(q string, dst *[]missing, withDevice bool) error {
			rows, err := tx.QueryContext(ctx, q)
			if err != nil {
				return err
			}
			defer rows.Close()
			for rows.Next() {
				var m missing
				var err error
				if withDevice {
					err = rows.Scan(&m.name, &m.device, &m.data)
				} else {
					err = rows.Scan(&m.name, &m.data)
				}
				if err != nil {
					return err
				}
				*dst = append(*dst, m)
			}
			return rows.Err()
		}
		if err := collect(`SELECT a.name, a.identity_key FROM accounts a WHERE a.identity_key IS NOT NULL
			AND NOT EXISTS (SELECT 1 FROM keylog_entries e WHERE e.kind = 1 AND e.account_name = a.name AND e.data = a.identity_key)
			ORDER BY a.created_at, a.id`, &keys, false); err != nil {
			return err
		}
		if err := collect(`SELECT a.name, d.id, d.certificate FROM devices d JOIN accounts a ON a.id = d.account_id WHERE d.certificate IS NOT NULL
			AND NOT EXISTS (SELECT 1 FROM keylog_entries e WHERE e.account_name = a.name AND e.kind = 2 AND e.device_id = d.id AND e.data = d.certificate)
			ORDER BY d.created_at, d.id`, &certs, true); err != nil {
			return err
		}
		now := l.now()
		for _, k := range keys {
			pk, err := identity.ParsePublicKey(k.data)
			if err != nil {
				l.log.Warn("keylog: stored identity key unusable; not logged", "account_name", k.name, "err", err)
				continue
			}
			if err := l.AppendTx(ctx, tx, keylog.IdentityKeyEntry(k.name, pk, now), ""); err != nil {
				return err
			}
			n++
		}
		for _, c := range certs {
			if err := l.AppendTx(ctx, tx, keylog.CertificateEntry(c.name, c.data, now), c.device); err != nil {
				l.log.Warn("keylog: stored certificate unusable; not logged", "account_name", c.name, "device_id", c.device, "err", err)
				return err
			}
			n++
		}
		var heads int
		if err := tx.QueryRowContext(ctx, "SELECT count(*) FROM keylog_heads").Scan(&heads); err != nil {
			return err
		}
		if heads == 0 {
			h := l.signer.Sign(0, mustRoot(&keylog.Tree{}, 0), now)
			return insertHead(ctx, tx, h)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("keylog: backfill: %w", err)
	}
	if n > 0 {
		l.log.Info("keylog: logged identity keys and certificates stored before the log", "entries", n)
	}
	return nil
}

func mustRoot(t *keylog.Tree, size uint64) keylog.Hash {
	r, _ := t.RootAt(size) // size 0 cannot fail
	return r
}

func insertHead(ctx context.Context, tx *sql.Tx, h *keylog.Head) error {
	_, err := tx.ExecContext(ctx, "INSERT INTO keylog_heads (tree_size, root_hash, key_id, head, created_at) VALUES (?, ?, ?, ?, ?)",
		int64(h.Size), h.Root[:], h.KeyID.String(), h.Marshal(), h.Time.UnixMilli())
	return err
}

// PublicKey is the log key clients pin.
func (l *Log) PublicKey() ed25519.PublicKey { return l.signer.Public() }

// KeyID names the active log key.
func (l *Log) KeyID() keylog.KeyID { return l.signer.KeyID() }

// AppendTx appends e inside tx, the transaction that makes the change it
// records, and signs the new tree head there too: the change and its log
// entry commit together or not at all. deviceID is the certified device
// (kind 2).
func (l *Log) AppendTx(ctx context.Context, tx *sql.Tx, e keylog.Entry, deviceID string) error {
	raw, err := e.Marshal()
	if err != nil {
		return err
	}
	var size int64
	if err := tx.QueryRowContext(ctx, "SELECT COALESCE(MAX(seq) + 1, 0) FROM keylog_entries").Scan(&size); err != nil {
		return err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	// The committed tree in memory covers [0, k); leaves [k, size) are read
	// from tx (rows this transaction or its batch wrote are among them and
	// must not reach l.tree before they commit).
	k := min(l.tree.Size(), uint64(size))
	extra, err := leavesTx(ctx, tx, k, uint64(size))
	if err != nil {
		return err
	}
	leaf := keylog.LeafHash(raw)
	root, err := l.tree.RootAfter(k, append(extra, leaf)...)
	if err != nil {
		return err
	}
	now := l.now()
	h := l.signer.Sign(uint64(size)+1, root, now)
	if _, err := tx.ExecContext(ctx, `INSERT INTO keylog_entries (seq, kind, account_name, device_id, data, entry, leaf_hash, created_at)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?)`, size, int(e.Kind), e.AccountName, deviceID, e.Data, raw, leaf[:], now.UnixMilli()); err != nil {
		return err
	}
	return insertHead(ctx, tx, h)
}

// Append appends e in a transaction of its own. qpcd itself only appends
// inside the transaction that stores what the entry records (AppendTx);
// this is for tools and for tests in which the operator is the attacker.
func (l *Log) Append(ctx context.Context, e keylog.Entry, deviceID string) error {
	return l.db.WriteTx(ctx, func(tx *sql.Tx) error { return l.AppendTx(ctx, tx, e, deviceID) })
}

// Signer is the log's signing key. A dishonest operator holds it; tests of
// what clients detect sign forged heads with it.
func (l *Log) Signer() *keylog.Signer { return l.signer }

// Entries returns every encoded entry in order (tests build forked trees
// from them; qpcctl keylog verify reads the table itself).
func (l *Log) Entries(ctx context.Context) ([][]byte, error) {
	var out [][]byte
	err := l.db.ReadTx(ctx, func(tx *sql.Tx) error {
		rows, err := tx.QueryContext(ctx, "SELECT entry FROM keylog_entries ORDER BY seq")
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var e []byte
			if err := rows.Scan(&e); err != nil {
				return err
			}
			out = append(out, e)
		}
		return rows.Err()
	})
	return out, err
}

func leavesTx(ctx context.Context, tx *sql.Tx, from, to uint64) ([]keylog.Hash, error) {
	if from >= to {
		return nil, nil
	}
	rows, err := tx.QueryContext(ctx, "SELECT seq, entry FROM keylog_entries WHERE seq >= ? AND seq < ? ORDER BY seq", int64(from), int64(to))
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []keylog.Hash
	next := from
	for rows.Next() {
		var seq int64
		var entry []byte
		if err := rows.Scan(&seq, &entry); err != nil {
			return nil, err
		}
		if uint64(seq) != next {
			return nil, fmt.Errorf("keylog: entry %d missing (found %d)", next, seq)
		}
		out = append(out, keylog.LeafHash(entry))
		next++
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	if next != to {
		return nil, fmt.Errorf("keylog: entries %d..%d missing", next, to-1)
	}
	return out, nil
}

// syncLocked brings the in-memory tree up to size from a read transaction
// (committed rows only). l.mu is held.
func (l *Log) syncLocked(ctx context.Context, tx *sql.Tx, size uint64) error {
	leaves, err := leavesTx(ctx, tx, l.tree.Size(), size)
	if err != nil {
		return err
	}
	for _, h := range leaves {
		l.tree.Append(h)
	}
	return nil
}

func latestHead(ctx context.Context, tx *sql.Tx) (*keylog.Head, error) {
	var raw []byte
	if err := tx.QueryRowContext(ctx, "SELECT head FROM keylog_heads ORDER BY tree_size DESC LIMIT 1").Scan(&raw); err != nil {
		if errors.Is(err, sql.ErrNoRows) {
			return nil, ErrNoHead
		}
		return nil, err
	}
	return keylog.ParseHead(raw)
}

// Head is the latest signed tree head.
func (l *Log) Head(ctx context.Context) (*keylog.Head, error) {
	var h *keylog.Head
	err := l.db.ReadTx(ctx, func(tx *sql.Tx) error {
		var err error
		h, err = latestHead(ctx, tx)
		return err
	})
	return h, err
}

// Proof is an entry with its inclusion proof against a head.
type Proof struct {
	Index uint64
	Entry []byte
	Path  [][]byte
}

// AccountProofs is what a key lookup of one account returns: the latest
// head, and proofs of the account's newest identity key entry and of the
// newest certificate entry of each asked device (absent ones are left out:
// the client refuses what the log does not prove).
type AccountProofs struct {
	Head     *keylog.Head
	Identity *Proof
	Devices  map[string]*Proof
}

// ProveAccount proves the account's identity key and the certificates of
// the named devices against the latest head.
func (l *Log) ProveAccount(ctx context.Context, account string, deviceIDs []string) (*AccountProofs, error) {
	out := &AccountProofs{Devices: map[string]*Proof{}}
	want := map[string]bool{}
	for _, d := range deviceIDs {
		want[d] = true
	}
	err := l.db.ReadTx(ctx, func(tx *sql.Tx) error {
		h, err := latestHead(ctx, tx)
		if err != nil {
			return err
		}
		out.Head = h
		rows, err := tx.QueryContext(ctx, "SELECT seq, kind, device_id, entry FROM keylog_entries WHERE account_name = ? AND seq < ? ORDER BY seq",
			account, int64(h.Size))
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var seq int64
			var kind int
			var dev string
			var entry []byte
			if err := rows.Scan(&seq, &kind, &dev, &entry); err != nil {
				return err
			}
			p := &Proof{Index: uint64(seq), Entry: entry}
			switch {
			case keylog.Kind(kind) == keylog.KindIdentityKey:
				out.Identity = p
			case keylog.Kind(kind) == keylog.KindDeviceCertificate && want[dev]:
				out.Devices[dev] = p
			}
		}
		if err := rows.Err(); err != nil {
			return err
		}
		l.mu.Lock()
		defer l.mu.Unlock()
		if err := l.syncLocked(ctx, tx, h.Size); err != nil {
			return err
		}
		for _, p := range append([]*Proof{out.Identity}, mapValues(out.Devices)...) {
			if p == nil {
				continue
			}
			if p.Path, err = l.tree.InclusionProof(p.Index, h.Size); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("keylog: prove %s: %w", account, err)
	}
	return out, nil
}

func mapValues(m map[string]*Proof) []*Proof {
	out := make([]*Proof, 0, len(m))
	for _, p := range m {
		out = append(out, p)
	}
	return out
}

// Consistency proves the head of size from a prefix of the head of size
// to (0: the latest) and returns that head.
func (l *Log) Consistency(ctx context.Context, from, to uint64) (*keylog.Head, [][]byte, error) {
	var h *keylog.Head
	var p [][]byte
	err := l.db.ReadTx(ctx, func(tx *sql.Tx) error {
		var err error
		if to == 0 {
			h, err = latestHead(ctx, tx)
		} else {
			var raw []byte
			err = tx.QueryRowContext(ctx, "SELECT head FROM keylog_heads WHERE tree_size = ?", int64(to)).Scan(&raw)
			if errors.Is(err, sql.ErrNoRows) {
				return fmt.Errorf("%w: %d", ErrNoHead, to)
			}
			if err == nil {
				h, err = keylog.ParseHead(raw)
			}
		}
		if err != nil {
			return err
		}
		if from > h.Size {
			return fmt.Errorf("%w: from %d is beyond %d", ErrBadRange, from, h.Size)
		}
		l.mu.Lock()
		defer l.mu.Unlock()
		if err := l.syncLocked(ctx, tx, h.Size); err != nil {
			return err
		}
		p, err = l.tree.ConsistencyProof(from, h.Size)
		return err
	})
	if err != nil {
		return nil, nil, err
	}
	return h, p, nil
}

// Status is what qpcctl keylog status shows.
type Status struct {
	Size       uint64    `json:"size"`
	Root       string    `json:"root"` // hex
	KeyID      string    `json:"key_id"`
	PublicKey  string    `json:"public_key"` // hex
	LastHeadAt time.Time `json:"last_head_at"`
	Heads      int64     `json:"heads"`
}

// ReadStatus reads the latest head of the log in db.
func ReadStatus(ctx context.Context, db *store.DB) (Status, error) {
	var st Status
	err := db.ReadTx(ctx, func(tx *sql.Tx) error {
		h, err := latestHead(ctx, tx)
		if err != nil {
			return err
		}
		st.Size, st.Root, st.KeyID, st.LastHeadAt = h.Size, hex.EncodeToString(h.Root[:]), h.KeyID.String(), h.Time.UTC()
		var pub []byte
		if err := tx.QueryRowContext(ctx, "SELECT public_key FROM keylog_keys WHERE id = ?", h.KeyID.String()).Scan(&pub); err != nil && !errors.Is(err, sql.ErrNoRows) {
			return err
		}
		st.PublicKey = hex.EncodeToString(pub)
		return tx.QueryRowContext(ctx, "SELECT count(*) FROM keylog_heads").Scan(&st.Heads)
	})
	if err != nil {
		return Status{}, fmt.Errorf("keylog: status: %w", err)
	}
	return st, nil
}
