-- 0011_keylog (issue 19): the key transparency log. An append-only list of
-- entries (account -> identity key, device certificates), the signed tree
-- heads over it and the log's signing keys. See docs/protocol.md, "Key log".

-- Ed25519 keys that sign tree heads. The seed sits in the encrypted
-- database like the token-signing keys; one is active.
CREATE TABLE keylog_keys (
    id          TEXT    PRIMARY KEY,            -- 16 hex characters, named in every head
    private_key BLOB    NOT NULL,               -- Ed25519 seed (32 bytes)
    public_key  BLOB    NOT NULL,
    created_at  INTEGER NOT NULL,
    active      INTEGER NOT NULL DEFAULT 0
);

-- Leaf seq (0, 1, 2, ...) of the Merkle tree; never updated or deleted.
CREATE TABLE keylog_entries (
    seq          INTEGER PRIMARY KEY,
    kind         INTEGER NOT NULL,              -- 1 identity key, 2 device certificate
    account_name TEXT    NOT NULL,
    device_id    TEXT    NOT NULL DEFAULT '',   -- kind 2 only
    data         BLOB    NOT NULL,              -- the identity key or the certificate
    entry        BLOB    NOT NULL,              -- the encoded entry (what is hashed)
    leaf_hash    BLOB    NOT NULL,              -- SHA-256(0x00 || entry)
    created_at   INTEGER NOT NULL
);
CREATE INDEX keylog_entries_account ON keylog_entries (account_name, kind, device_id, seq);

-- One signed head per tree size, written in the transaction that appends.
CREATE TABLE keylog_heads (
    tree_size  INTEGER PRIMARY KEY,
    root_hash  BLOB    NOT NULL,
    key_id     TEXT    NOT NULL,
    head       BLOB    NOT NULL,                -- the encoded signed head
    created_at INTEGER NOT NULL
);
