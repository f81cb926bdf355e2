-- 0003_account_events: notices from the server about this account's
-- devices (a device added or revoked), kept until shown and then for the
-- record. See docs/client.md, "Devices".
CREATE TABLE account_events (
    seq          INTEGER PRIMARY KEY, -- the inbox seq it arrived with
    kind         TEXT    NOT NULL,    -- 'device_added' or 'device_revoked'
    device_id    TEXT    NOT NULL,    -- the device added or revoked
    device_name  TEXT    NOT NULL,
    key_sha256   TEXT    NOT NULL,    -- hex SHA-256 of its signature key
    by_device_id TEXT    NOT NULL,    -- '' when the operator did it
    server_ms    INTEGER NOT NULL,
    shown        INTEGER NOT NULL DEFAULT 0
);
