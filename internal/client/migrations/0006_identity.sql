-- 0006_identity (issue 19): the account identity key, this device's
-- certificate, and what this device knows about other accounts' identity
-- keys and devices (trust on first use, verification). See docs/client.md,
-- "Verifying contacts".

-- The account identity private key: only on the device that registered
-- the account (it certifies the account's devices). One row.
CREATE TABLE account_identity (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    seed        BLOB    NOT NULL, -- Ed25519 seed (32 bytes)
    public_key  BLOB    NOT NULL,
    created_ms  INTEGER NOT NULL
);

-- This device's certificate, signed by the account identity key. One row.
CREATE TABLE device_certificate (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    certificate BLOB    NOT NULL
);

-- Another account's identity key as first seen (pinned), and whether the
-- user compared safety numbers with it.
CREATE TABLE contacts (
    account       TEXT    PRIMARY KEY,
    identity_key  BLOB    NOT NULL,
    first_seen_ms INTEGER NOT NULL,
    verified      INTEGER NOT NULL DEFAULT 0,
    verified_ms   INTEGER NOT NULL DEFAULT 0,
    changed_key   BLOB              -- a different identity key seen since; NULL if none
);

-- The devices of those accounts seen certified by the pinned key.
-- confirmed = 0: first seen after the contact was verified and not yet
-- confirmed (a new device of a verified contact).
CREATE TABLE contact_devices (
    account       TEXT    NOT NULL,
    device_id     TEXT    NOT NULL,
    device_key    BLOB    NOT NULL,
    first_seen_ms INTEGER NOT NULL,
    confirmed     INTEGER NOT NULL DEFAULT 1,
    PRIMARY KEY (account, device_id)
);

-- What recv/watch show once: identity key changes, new devices of verified
-- contacts, uncertified devices in groups.
CREATE TABLE trust_events (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    kind       TEXT    NOT NULL, -- identity_changed, new_device, uncertified
    account    TEXT    NOT NULL,
    device_id  TEXT    NOT NULL DEFAULT '',
    key_fp     TEXT    NOT NULL DEFAULT '', -- fingerprint of the key concerned
    grp        TEXT    NOT NULL DEFAULT '', -- the group it was seen in, if any
    created_ms INTEGER NOT NULL,
    shown      INTEGER NOT NULL DEFAULT 0,
    UNIQUE (kind, account, device_id, key_fp)
);
