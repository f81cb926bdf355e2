-- 0003_keydir: the KeyPackage directory (internal/keydir). Times are Unix
-- milliseconds; account and device ids are those of 0002 (no foreign keys:
-- a revoked device's KeyPackages are filtered at fetch and expire anyway).

CREATE TABLE keypackages (
    id          INTEGER PRIMARY KEY,
    account_id  TEXT    NOT NULL,
    device_id   TEXT    NOT NULL,
    ref         BLOB    NOT NULL UNIQUE,        -- KeyPackageRef (RFC 9420 §5.2): no KeyPackage is stored twice
    suite       INTEGER NOT NULL,
    last_resort INTEGER NOT NULL DEFAULT 0,     -- 1: returned only when the device's pool is empty, never consumed
    uploaded_at INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,               -- min(lifetime.not_after, uploaded_at + keypackages.ttl)
    data        BLOB    NOT NULL                -- as uploaded
);
-- Fetch takes the oldest pool KeyPackage of a device.
CREATE INDEX keypackages_device ON keypackages (device_id, last_resort, id);
CREATE INDEX keypackages_account ON keypackages (account_id, last_resort);
CREATE UNIQUE INDEX keypackages_one_last_resort ON keypackages (device_id) WHERE last_resort = 1;
CREATE INDEX keypackages_expiry ON keypackages (expires_at);
