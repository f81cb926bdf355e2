package auth

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/base32"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"
)

// Invite is a single-use registration code as the admin sees it; the code
// itself is only returned by CreateInvite (the database keeps its hash).
type Invite struct {
	ID        string
	CreatedBy string
	CreatedAt time.Time
	ExpiresAt time.Time
	UsedBy    string // account id; "" while unused
	UsedAt    time.Time
	Revoked   bool
}

// inviteEncoding writes codes as lower-case base32 without padding: easy to
// read out and type.
var inviteEncoding = base32.StdEncoding.WithPadding(base32.NoPadding)

// normalizeInvite accepts codes typed in either case, with spaces or dashes.
func normalizeInvite(code string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r == ' ' || r == '-':
			return -1
		case r >= 'A' && r <= 'Z':
			return r + ('a' - 'A')
		}
		return r
	}, code)
}

// MaxInviteTTL bounds an invite's lifetime.
const MaxInviteTTL = 90 * 24 * time.Hour

// CreateInvite makes a single-use invite valid for ttl. The code is shown
// once; store only its hash.
func (s *Service) CreateInvite(ctx context.Context, createdBy string, ttl time.Duration) (code string, inv Invite, err error) {
	if ttl <= 0 || ttl > MaxInviteTTL {
		return "", Invite{}, fmt.Errorf("auth: invite lifetime %s; want more than 0 and at most %s", ttl, MaxInviteTTL)
	}
	raw := make([]byte, 20)
	if _, err := rand.Read(raw); err != nil {
		return "", Invite{}, fmt.Errorf("auth: random: %w", err)
	}
	code = strings.ToLower(inviteEncoding.EncodeToString(raw))
	id, err := newID(8)
	if err != nil {
		return "", Invite{}, err
	}
	now := s.now()
	inv = Invite{ID: id, CreatedBy: createdBy, CreatedAt: fromMS(ms(now)), ExpiresAt: fromMS(ms(now.Add(ttl)))}
	err = s.db.WriteTx(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, "INSERT INTO invites (id, code_hash, created_by, created_at, expires_at) VALUES (?, ?, ?, ?, ?)",
			id, hash([]byte(code)), createdBy, ms(inv.CreatedAt), ms(inv.ExpiresAt))
		return err
	})
	if err != nil {
		return "", Invite{}, fmt.Errorf("auth: create invite: %w", err)
	}
	s.event(ctx, "invite.create", slog.String("invite_id", id), slog.String("created_by", createdBy),
		slog.Time("expires", inv.ExpiresAt))
	return code, inv, nil
}

// ListInvites lists every invite, newest first.
func (s *Service) ListInvites(ctx context.Context) ([]Invite, error) {
	var out []Invite
	err := s.db.ReadTx(ctx, func(tx *sql.Tx) error {
		rows, err := tx.QueryContext(ctx, `SELECT id, created_by, created_at, expires_at, COALESCE(used_by, ''), used_at, revoked
			FROM invites ORDER BY created_at DESC, id`)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var inv Invite
			var created, expires, used int64
			if err := rows.Scan(&inv.ID, &inv.CreatedBy, &created, &expires, &inv.UsedBy, &used, &inv.Revoked); err != nil {
				return err
			}
			inv.CreatedAt, inv.ExpiresAt, inv.UsedAt = fromMS(created), fromMS(expires), fromMS(used)
			out = append(out, inv)
		}
		return rows.Err()
	})
	if err != nil {
		return nil, fmt.Errorf("auth: list invites: %w", err)
	}
	return out, nil
}

// RevokeInvite makes an unused invite unusable.
func (s *Service) RevokeInvite(ctx context.Context, id string) error {
	err := s.db.WriteTx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, "UPDATE invites SET revoked = 1 WHERE id = ?", id)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return fmt.Errorf("%w: invite %s", ErrNotFound, id)
		}
		return nil
	})
	if err != nil {
		if errors.Is(err, ErrNotFound) {
			return err
		}
		return fmt.Errorf("auth: revoke invite: %w", err)
	}
	s.event(ctx, "invite.revoke", slog.String("invite_id", id))
	return nil
}

// Registration is the registration policy in force: config.RegistrationOpen,
// RegistrationInvite or RegistrationClosed.
func (s *Service) Registration() string { return s.registration }
