-- 0011_keylog (issue 19): the key transparency log; the same step as
-- migrations/0011_keylog.sql.

CREATE TABLE keylog_keys (
    id          TEXT    PRIMARY KEY,
    private_key BYTEA   NOT NULL,
    public_key  BYTEA   NOT NULL,
    created_at  BIGINT  NOT NULL,
    active      INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE keylog_entries (
    seq          BIGINT  PRIMARY KEY,
    kind         INTEGER NOT NULL,
    account_name TEXT    NOT NULL,
    device_id    TEXT    NOT NULL DEFAULT '',
    data         BYTEA   NOT NULL,
    entry        BYTEA   NOT NULL,
    leaf_hash    BYTEA   NOT NULL,
    created_at   BIGINT  NOT NULL
);
CREATE INDEX keylog_entries_account ON keylog_entries (account_name, kind, device_id, seq);

CREATE TABLE keylog_heads (
    tree_size  BIGINT  PRIMARY KEY,
    root_hash  BYTEA   NOT NULL,
    key_id     TEXT    NOT NULL,
    head       BYTEA   NOT NULL,
    created_at BIGINT  NOT NULL
);
