-- 0002_auth: accounts, devices, login challenges, refresh tokens, invites and
-- the access-token signing keys (internal/auth). Times are Unix milliseconds.
-- IDs are 32 lower-case hex characters (16 random bytes).

CREATE TABLE accounts (
    id         TEXT    PRIMARY KEY,
    name       TEXT    NOT NULL UNIQUE,         -- never reused: accounts are disabled, not deleted
    status     TEXT    NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'disabled')),
    created_at INTEGER NOT NULL
);

CREATE TABLE devices (
    id            TEXT    PRIMARY KEY,
    account_id    TEXT    NOT NULL REFERENCES accounts (id),
    name          TEXT    NOT NULL DEFAULT '',
    signature_key BLOB    NOT NULL UNIQUE,      -- Ed25519 public key, 32 bytes
    status        TEXT    NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'revoked')),
    -- Access tokens carry the generation they were issued under; bumping it
    -- (refresh-token reuse, revocation) rejects every earlier token.
    token_gen     INTEGER NOT NULL DEFAULT 0,
    created_at    INTEGER NOT NULL,
    last_seen_at  INTEGER NOT NULL DEFAULT 0,
    revoked_at    INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX devices_account ON devices (account_id);

-- Outstanding login nonces (single use), stored hashed.
CREATE TABLE login_challenges (
    nonce_hash BLOB    PRIMARY KEY,             -- SHA-256 of the nonce
    device_id  TEXT    NOT NULL REFERENCES devices (id),
    expires_at INTEGER NOT NULL
);
CREATE INDEX login_challenges_device ON login_challenges (device_id);

-- Refresh tokens, stored hashed; one family per login, rotated on each refresh.
CREATE TABLE refresh_tokens (
    token_hash BLOB    PRIMARY KEY,             -- SHA-256 of the 32-byte token
    device_id  TEXT    NOT NULL REFERENCES devices (id),
    family_id  TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    used_at    INTEGER NOT NULL DEFAULT 0,      -- 0: not used yet
    revoked    INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX refresh_tokens_device ON refresh_tokens (device_id);

CREATE TABLE invites (
    id         TEXT    PRIMARY KEY,             -- 16 hex characters; names the invite without revealing it
    code_hash  BLOB    NOT NULL UNIQUE,         -- SHA-256 of the code
    created_by TEXT    NOT NULL,                -- operator label (admin API)
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    used_by    TEXT,                            -- account id, once used
    used_at    INTEGER NOT NULL DEFAULT 0,
    revoked    INTEGER NOT NULL DEFAULT 0
);

-- Access-token signing keys. The private key sits in the SQLCipher-encrypted
-- file; it is cleared once the key can no longer have valid tokens.
CREATE TABLE token_keys (
    id          TEXT    PRIMARY KEY,            -- 16 hex characters, carried in every token
    private_key BLOB,                           -- Ed25519 private key (64 bytes); NULL once pruned
    public_key  BLOB    NOT NULL,
    created_at  INTEGER NOT NULL,
    retired_at  INTEGER NOT NULL DEFAULT 0,     -- 0 while active
    active      INTEGER NOT NULL DEFAULT 0
);
