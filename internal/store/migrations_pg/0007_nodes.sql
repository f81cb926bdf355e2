-- 0007_nodes (PostgreSQL): the node registry (see the SQLite migration of
-- the same name).

CREATE TABLE nodes (
    id           TEXT    PRIMARY KEY,           -- hostname-pid-random, new on every start
    hostname     TEXT    NOT NULL,
    address      TEXT    NOT NULL,              -- QUIC address as bound (host:port)
    ops_address  TEXT    NOT NULL DEFAULT '',   -- ops HTTP address as bound; '' when disabled
    version      TEXT    NOT NULL,
    started_at   BIGINT  NOT NULL,
    last_seen_at BIGINT  NOT NULL,              -- last heartbeat
    heartbeat_ms BIGINT  NOT NULL,              -- the node's heartbeat interval: stale after three missed
    stopped_at   BIGINT  NOT NULL DEFAULT 0     -- 0 while running; set by a clean shutdown
);
