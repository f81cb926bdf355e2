-- 0008_keylog (issue 19): what this device knows of the server's key
-- transparency log. See docs/client.md, "The key log".

-- The log's Ed25519 public key, pinned on first use (like the TLS pin).
CREATE TABLE keylog_pin (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    key_id      TEXT    NOT NULL,
    public_key  BLOB    NOT NULL,
    pinned_ms   INTEGER NOT NULL
);

-- Signed tree heads this device accepted (each consistent with the
-- largest held before it), with where they came from.
CREATE TABLE keylog_heads (
    tree_size   INTEGER PRIMARY KEY,
    root        BLOB    NOT NULL,
    head        BLOB    NOT NULL,
    source      TEXT    NOT NULL,
    seen_ms     INTEGER NOT NULL
);

-- Heads other group members gossiped, waiting to be checked (the check
-- asks the server for a consistency proof, outside the message's
-- transaction).
CREATE TABLE keylog_gossip (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    head        BLOB    NOT NULL,
    source      TEXT    NOT NULL,   -- "<account>/<device> in <group>"
    received_ms INTEGER NOT NULL
);

-- Evidence that the server showed different logs: two signed heads that
-- cannot both be views of one append-only log.
CREATE TABLE keylog_alarms (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    kind        TEXT    NOT NULL,   -- fork | inconsistent
    detail      TEXT    NOT NULL,
    head_a      BLOB    NOT NULL,
    source_a    TEXT    NOT NULL,
    head_b      BLOB    NOT NULL,
    source_b    TEXT    NOT NULL,
    created_ms  INTEGER NOT NULL,
    shown       INTEGER NOT NULL DEFAULT 0
);
