-- 0004_delivery: channels, their append-only message logs, members, per-device
-- cursors and inboxes (internal/delivery). Times are Unix milliseconds;
-- account and device ids are those of 0002 (not foreign keys: the delivery
-- tables are pruned by retention, accounts are never deleted).

CREATE TABLE channels (
    id               BLOB    PRIMARY KEY,      -- 16 bytes; random for groups, derived from both accounts for DMs
    kind             INTEGER NOT NULL,         -- 1 group, 2 dm
    group_id         BLOB    NOT NULL UNIQUE,  -- 32-byte MLS group id
    epoch            INTEGER NOT NULL,         -- the next commit must carry this epoch
    head_seq         INTEGER NOT NULL DEFAULT 0, -- seq of the last message
    ttl_ms           INTEGER NOT NULL DEFAULT 0, -- message lifetime; 0: retention.messages
    created_by       TEXT    NOT NULL,         -- account id
    created_at       INTEGER NOT NULL
);

-- Kept apart from channels so that the row every enqueue updates stays small.
CREATE TABLE channel_group_info (
    channel_id BLOB    PRIMARY KEY,
    epoch      INTEGER NOT NULL,
    group_info BLOB    NOT NULL                -- latest MLSMessage(GroupInfo) a committer supplied
) WITHOUT ROWID;

-- device_id '' makes every device of the account a member.
CREATE TABLE channel_members (
    channel_id BLOB    NOT NULL,
    account_id TEXT    NOT NULL,
    device_id  TEXT    NOT NULL DEFAULT '',
    from_seq   INTEGER NOT NULL,               -- head_seq when added: earlier messages are not delivered
    added_by   TEXT    NOT NULL,
    added_at   INTEGER NOT NULL,
    PRIMARY KEY (channel_id, account_id, device_id)
) WITHOUT ROWID;
CREATE INDEX channel_members_account ON channel_members (account_id, channel_id);

-- One row per message however many members the channel has. No expiry
-- index (it would cost every enqueue one more b-tree insert): within a
-- channel expires_at grows with seq, so the retention sweep deletes each
-- channel's expired prefix through messages_seq.
CREATE TABLE messages (
    id             INTEGER PRIMARY KEY,
    channel_id     BLOB    NOT NULL,
    seq            INTEGER NOT NULL,
    message_id     TEXT    NOT NULL,           -- client-generated; makes enqueue idempotent
    sender_account TEXT    NOT NULL,
    sender_device  TEXT    NOT NULL,
    epoch          INTEGER NOT NULL,
    content_type   INTEGER NOT NULL,           -- MLS content type: 1 application, 2 proposal, 3 commit
    created_at     INTEGER NOT NULL,
    expires_at     INTEGER NOT NULL,
    body           BLOB    NOT NULL            -- the MLSMessage as enqueued
);
CREATE UNIQUE INDEX messages_seq ON messages (channel_id, seq);
CREATE UNIQUE INDEX messages_message_id ON messages (channel_id, message_id);

-- A device's read position in a channel: everything up to acked_seq is done.
CREATE TABLE cursors (
    device_id  TEXT    NOT NULL,
    channel_id BLOB    NOT NULL,
    account_id TEXT    NOT NULL,
    acked_seq  INTEGER NOT NULL,
    PRIMARY KEY (device_id, channel_id)
) WITHOUT ROWID;
CREATE INDEX cursors_channel ON cursors (channel_id, acked_seq);

-- Per-device payloads (Welcomes and others); deleted once acknowledged.
CREATE TABLE inbox (
    id             INTEGER PRIMARY KEY,
    device_id      TEXT    NOT NULL,
    seq            INTEGER NOT NULL,
    kind           INTEGER NOT NULL,           -- 1 welcome, 2 other
    channel_id     BLOB    NOT NULL,
    sender_account TEXT    NOT NULL,
    sender_device  TEXT    NOT NULL,
    created_at     INTEGER NOT NULL,
    expires_at     INTEGER NOT NULL,
    body           BLOB    NOT NULL
);
CREATE UNIQUE INDEX inbox_seq ON inbox (device_id, seq);
CREATE INDEX inbox_expiry ON inbox (expires_at);

CREATE TABLE inbox_heads (
    device_id TEXT    PRIMARY KEY,
    head_seq  INTEGER NOT NULL DEFAULT 0,
    acked_seq INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
