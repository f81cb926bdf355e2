-- 0002_state: the client's state. Times are Unix milliseconds.

-- Where the server is and how it is trusted. One row.
CREATE TABLE settings (
    id           INTEGER PRIMARY KEY CHECK (id = 1),
    server_addr  TEXT    NOT NULL,
    pin_sha256   TEXT    NOT NULL DEFAULT '', -- empty: CA verification
    ca_file      TEXT    NOT NULL DEFAULT '', -- empty: system roots
    server_name  TEXT    NOT NULL DEFAULT '', -- TLS name; empty: the host of server_addr
    kp_stock     INTEGER NOT NULL DEFAULT 10
);

-- This device. One row once registered.
CREATE TABLE identity (
    id           INTEGER PRIMARY KEY CHECK (id = 1),
    account_name TEXT    NOT NULL,
    account_id   TEXT    NOT NULL,
    device_id    TEXT    NOT NULL,
    device_name  TEXT    NOT NULL,
    display_name TEXT    NOT NULL,
    sig_seed     BLOB    NOT NULL, -- Ed25519 seed (32 bytes): device key and MLS signature key
    created_ms   INTEGER NOT NULL
);

-- The current tokens. One row once logged in.
CREATE TABLE tokens (
    id              INTEGER PRIMARY KEY CHECK (id = 1),
    access_token    TEXT    NOT NULL,
    access_expires  INTEGER NOT NULL,
    refresh_token   BLOB    NOT NULL,
    refresh_expires INTEGER NOT NULL
);

-- KeyPackages this device generated: the private keys needed when a
-- Welcome for one arrives. Deleted once used or long expired.
CREATE TABLE key_packages (
    ref          BLOB    PRIMARY KEY, -- KeyPackageRef
    key_package  BLOB    NOT NULL,    -- MLSMessage(KeyPackage) as uploaded
    bundle       BLOB    NOT NULL,    -- mls.KeyPackageBundle: the KeyPackage and its private keys
    last_resort  INTEGER NOT NULL DEFAULT 0,
    created_ms   INTEGER NOT NULL,
    expires_ms   INTEGER NOT NULL,    -- when the server drops it (upload + TTL, or not_after)
    uploaded     INTEGER NOT NULL DEFAULT 0
);

-- Channels and their MLS groups. state is the exported MLS group state,
-- replaced in the same transaction as the cursor that moved it.
CREATE TABLE groups (
    channel_id  BLOB    PRIMARY KEY,
    group_id    BLOB    NOT NULL UNIQUE,
    name        TEXT    NOT NULL UNIQUE,
    kind        TEXT    NOT NULL, -- 'group' or 'dm'
    peer        TEXT    NOT NULL DEFAULT '', -- the other account of a DM
    epoch       INTEGER NOT NULL DEFAULT 0,
    state       BLOB,
    status      TEXT    NOT NULL DEFAULT 'active', -- active, left, removed, rejoin
    updated_ms  INTEGER NOT NULL
);

-- Per-channel cursors: the last sequence number stored locally (seq) and
-- the last one acknowledged to the server (acked).
CREATE TABLE cursors (
    channel_id BLOB    PRIMARY KEY,
    seq        INTEGER NOT NULL,
    acked      INTEGER NOT NULL DEFAULT 0,
    processed  INTEGER NOT NULL DEFAULT 0, -- last seq applied to the group state (same transaction as the state)
    gap_from   INTEGER NOT NULL DEFAULT 0, -- >0: messages after this seq expired unread
    gap_to     INTEGER NOT NULL DEFAULT 0
);

-- Channel messages received but not yet processed by the MLS layer.
CREATE TABLE inbound (
    channel_id  BLOB    NOT NULL,
    seq         INTEGER NOT NULL,
    message_id  TEXT    NOT NULL,
    sender_account_id TEXT NOT NULL,
    sender_device_id  TEXT NOT NULL,
    mls_message BLOB    NOT NULL,
    epoch       INTEGER NOT NULL,
    server_ms   INTEGER NOT NULL,
    PRIMARY KEY (channel_id, seq)
);

-- Inbox items (Welcomes) received but not yet processed.
CREATE TABLE inbox (
    seq         INTEGER PRIMARY KEY,
    kind        INTEGER NOT NULL,
    channel_id  BLOB    NOT NULL,
    sender_account_id TEXT NOT NULL,
    sender_device_id  TEXT NOT NULL,
    payload     BLOB    NOT NULL,
    server_ms   INTEGER NOT NULL
);

-- Decrypted history.
CREATE TABLE messages (
    channel_id  BLOB    NOT NULL,
    message_id  TEXT    NOT NULL,
    seq         INTEGER NOT NULL DEFAULT 0, -- 0: not yet delivered (outgoing)
    sender      TEXT    NOT NULL, -- "<account_name>/<device_id>"
    display     TEXT    NOT NULL DEFAULT '',
    text        TEXT    NOT NULL,
    reply_to    TEXT    NOT NULL DEFAULT '',
    sent_ms     INTEGER NOT NULL,
    server_ms   INTEGER NOT NULL DEFAULT 0,
    outgoing    INTEGER NOT NULL DEFAULT 0,
    shown       INTEGER NOT NULL DEFAULT 0, -- printed by recv/watch
    PRIMARY KEY (channel_id, message_id)
);
CREATE INDEX messages_by_time ON messages (channel_id, sent_ms);

-- Outgoing MLS messages. A row is written before the first send attempt
-- and marked sent when the server has the message; the client-generated
-- message_id makes a repeated Enqueue a no-op on the server.
CREATE TABLE outbox (
    id          INTEGER PRIMARY KEY AUTOINCREMENT, -- send order
    message_id  TEXT    NOT NULL UNIQUE,
    channel_id  BLOB    NOT NULL,
    mls_message BLOB    NOT NULL,
    group_info  BLOB,
    kind        TEXT    NOT NULL DEFAULT 'raw', -- raw, app, commit, proposal
    intent      BLOB,   -- what to redo after STALE_EPOCH: the AppMessage, or a JSON commit intent
    welcome     BLOB,   -- a commit's Welcome, sent only after the server accepted the commit
    welcome_to  TEXT,   -- JSON [{account_name, device_id}]
    welcome_sent INTEGER NOT NULL DEFAULT 0,
    after_done  INTEGER NOT NULL DEFAULT 0, -- channel membership change of a remove or leave done
    status      TEXT    NOT NULL DEFAULT 'pending', -- pending, sent, failed, stale
    seq         INTEGER NOT NULL DEFAULT 0,
    attempts    INTEGER NOT NULL DEFAULT 0,
    last_error  TEXT    NOT NULL DEFAULT '',
    created_ms  INTEGER NOT NULL,
    sent_ms     INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX outbox_pending ON outbox (status, id);

-- Small counters: the inbox cursor.
CREATE TABLE kv (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
