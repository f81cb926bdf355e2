-- 0009_invitations (PostgreSQL): consent-based joining and blocks
-- (internal/delivery); see the SQLite step for the meaning of each column.

CREATE TABLE invitations (
    id             TEXT    PRIMARY KEY,
    channel_id     BYTEA   NOT NULL,
    account_id     TEXT    NOT NULL,
    device_id      TEXT    NOT NULL DEFAULT '',
    inviter_id     TEXT    NOT NULL,
    inviter_device TEXT    NOT NULL,
    from_seq       BIGINT  NOT NULL,
    status         INTEGER NOT NULL,
    created_at     BIGINT  NOT NULL,
    expires_at     BIGINT  NOT NULL,
    decided_at     BIGINT  NOT NULL DEFAULT 0
);
CREATE INDEX invitations_invitee ON invitations (account_id, status);
CREATE INDEX invitations_inviter ON invitations (inviter_id, created_at);
CREATE INDEX invitations_channel ON invitations (channel_id, account_id);
CREATE INDEX invitations_expiry ON invitations (expires_at);

CREATE TABLE invitation_welcomes (
    invitation_id  TEXT    NOT NULL,
    device_id      TEXT    NOT NULL,
    sender_account TEXT    NOT NULL,
    sender_device  TEXT    NOT NULL,
    created_at     BIGINT  NOT NULL,
    body           BYTEA   NOT NULL,
    PRIMARY KEY (invitation_id, device_id)
);

CREATE TABLE blocks (
    account_id TEXT    NOT NULL,
    blocked_id TEXT    NOT NULL,
    created_at BIGINT  NOT NULL,
    PRIMARY KEY (account_id, blocked_id)
);
