-- 0002_auth (PostgreSQL): accounts, devices, login challenges, refresh
-- tokens, invites and the access-token signing keys (internal/auth). Times
-- are Unix milliseconds (BIGINT); flags are 0/1 integers as on SQLite, so
-- the services' SQL is the same on both backends.

CREATE TABLE accounts (
    id         TEXT    PRIMARY KEY,
    name       TEXT    NOT NULL UNIQUE,
    status     TEXT    NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'disabled')),
    created_at BIGINT  NOT NULL
);

CREATE TABLE devices (
    id            TEXT    PRIMARY KEY,
    account_id    TEXT    NOT NULL REFERENCES accounts (id),
    name          TEXT    NOT NULL DEFAULT '',
    signature_key BYTEA   NOT NULL UNIQUE,
    status        TEXT    NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'revoked')),
    token_gen     BIGINT  NOT NULL DEFAULT 0,
    created_at    BIGINT  NOT NULL,
    last_seen_at  BIGINT  NOT NULL DEFAULT 0,
    revoked_at    BIGINT  NOT NULL DEFAULT 0
);
CREATE INDEX devices_account ON devices (account_id);

CREATE TABLE login_challenges (
    nonce_hash BYTEA   PRIMARY KEY,
    device_id  TEXT    NOT NULL REFERENCES devices (id),
    expires_at BIGINT  NOT NULL
);
CREATE INDEX login_challenges_device ON login_challenges (device_id);

CREATE TABLE refresh_tokens (
    token_hash BYTEA   PRIMARY KEY,
    device_id  TEXT    NOT NULL REFERENCES devices (id),
    family_id  TEXT    NOT NULL,
    created_at BIGINT  NOT NULL,
    expires_at BIGINT  NOT NULL,
    used_at    BIGINT  NOT NULL DEFAULT 0,
    revoked    INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX refresh_tokens_device ON refresh_tokens (device_id);

CREATE TABLE invites (
    id         TEXT    PRIMARY KEY,
    code_hash  BYTEA   NOT NULL UNIQUE,
    created_by TEXT    NOT NULL,
    created_at BIGINT  NOT NULL,
    expires_at BIGINT  NOT NULL,
    used_by    TEXT,
    used_at    BIGINT  NOT NULL DEFAULT 0,
    revoked    INTEGER NOT NULL DEFAULT 0
);

-- On PostgreSQL the signing keys are protected by the database's own access
-- control and TLS (and its disk encryption), not by SQLCipher.
CREATE TABLE token_keys (
    id          TEXT    PRIMARY KEY,
    private_key BYTEA,
    public_key  BYTEA   NOT NULL,
    created_at  BIGINT  NOT NULL,
    retired_at  BIGINT  NOT NULL DEFAULT 0,
    active      INTEGER NOT NULL DEFAULT 0
);
