-- 0001_init (PostgreSQL): migration bookkeeping and the database's identity
-- marker. Versions and names match the SQLite migrations one for one, so a
-- schema version means the same tables on either backend.

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
