-- 0001_init: migration bookkeeping and the database's identity marker.
-- SQLite here is 3.33 (SQLCipher 4.4.2): no STRICT tables.
-- The runner inserts this migration's own row into schema_migrations and sets
-- PRAGMA user_version in the same transaction.

CREATE TABLE schema_migrations (
    version    INTEGER PRIMARY KEY,
    name       TEXT    NOT NULL,
    applied_at TEXT    NOT NULL -- RFC 3339 UTC
);

CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT
);

INSERT INTO meta (key, value) VALUES ('app', 'qpcd');

-- 0x51504344 = "QPCD"; checked on every open next to meta.app.
PRAGMA application_id = 1364214596;
