-- 0001_init: migration bookkeeping and the database's identity marker
-- (the qpc client's own file; see internal/store.App).

CREATE TABLE schema_migrations (
    version    INTEGER PRIMARY KEY,
    name       TEXT    NOT NULL,
    applied_at TEXT    NOT NULL -- RFC 3339 UTC
);

CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT
);

INSERT INTO meta (key, value) VALUES ('app', 'qpc-client');

-- 0x51504343 = "QPCC".
PRAGMA application_id = 1364214595;
