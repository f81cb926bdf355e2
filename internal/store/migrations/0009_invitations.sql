-- 0009_invitations: consent-based joining and blocks (internal/delivery).
-- An invitation is what AddMembers and CreateDMChannel make for another
-- account: it reads nothing of the channel until it accepts. Rows stay
-- after an answer until they expire, so per-inviter limits count them.

CREATE TABLE invitations (
    id             TEXT    PRIMARY KEY,        -- random, 32 hex characters
    channel_id     BLOB    NOT NULL,
    account_id     TEXT    NOT NULL,           -- the invitee
    device_id      TEXT    NOT NULL DEFAULT '', -- '' every device of the invitee
    inviter_id     TEXT    NOT NULL,           -- account id
    inviter_device TEXT    NOT NULL,
    from_seq       INTEGER NOT NULL,           -- head_seq when invited: the member reads from here once accepted
    status         INTEGER NOT NULL,           -- 1 pending, 2 accepted, 3 declined, 4 cancelled
    created_at     INTEGER NOT NULL,
    expires_at     INTEGER NOT NULL,
    decided_at     INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX invitations_invitee ON invitations (account_id, status);
CREATE INDEX invitations_inviter ON invitations (inviter_id, created_at);
CREATE INDEX invitations_channel ON invitations (channel_id, account_id);
CREATE INDEX invitations_expiry ON invitations (expires_at);

-- Welcomes sent to a pending invitee's devices, held until it answers
-- (accept: moved to the inbox; decline: deleted). The latest per device.
CREATE TABLE invitation_welcomes (
    invitation_id  TEXT    NOT NULL,
    device_id      TEXT    NOT NULL,
    sender_account TEXT    NOT NULL,
    sender_device  TEXT    NOT NULL,
    created_at     INTEGER NOT NULL,
    body           BLOB    NOT NULL,
    PRIMARY KEY (invitation_id, device_id)
) WITHOUT ROWID;

-- account_id refuses invitations, DMs and inbox items from blocked_id.
CREATE TABLE blocks (
    account_id TEXT    NOT NULL,
    blocked_id TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (account_id, blocked_id)
) WITHOUT ROWID;
