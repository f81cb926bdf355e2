-- 0007_nodes: the node registry. Every qpcd node upserts its row when it
-- starts and on each heartbeat (cluster.heartbeat), and marks it stopped
-- on a clean shutdown, so `qpcctl status` can list the nodes of a
-- deployment and show those that stopped answering. Times are Unix
-- milliseconds. Rows of nodes gone for a week are pruned by the others.

CREATE TABLE nodes (
    id           TEXT    PRIMARY KEY,           -- hostname-pid-random, new on every start
    hostname     TEXT    NOT NULL,
    address      TEXT    NOT NULL,              -- QUIC address as bound (host:port)
    ops_address  TEXT    NOT NULL DEFAULT '',   -- ops HTTP address as bound; '' when disabled
    version      TEXT    NOT NULL,
    started_at   INTEGER NOT NULL,
    last_seen_at INTEGER NOT NULL,              -- last heartbeat
    heartbeat_ms INTEGER NOT NULL,              -- the node's heartbeat interval: stale after three missed
    stopped_at   INTEGER NOT NULL DEFAULT 0     -- 0 while running; set by a clean shutdown
);
