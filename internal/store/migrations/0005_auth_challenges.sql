-- 0005_auth_challenges: stateless login and re-authentication challenges
-- (internal/auth, docs/protocol.md "Challenges"). A challenge carries its own
-- expiry under a server MAC, so nothing is stored when one is handed out and
-- no number of requests can push out another device's pending challenge.
-- Single use is kept by recording a challenge when it is answered.

-- The MAC key of challenges made while this token key is active (32 random
-- bytes). Kept for the last retired key too, so a rotation does not void
-- challenges already handed out; cleared at the next rotation.
ALTER TABLE token_keys ADD COLUMN challenge_key BLOB;

-- Challenges that have been answered, until they expire (then pruned).
CREATE TABLE used_challenges (
    challenge_hash BLOB    PRIMARY KEY,         -- SHA-256 of the 32-byte challenge
    expires_at     INTEGER NOT NULL
);
CREATE INDEX used_challenges_expiry ON used_challenges (expires_at);

-- Stored login nonces are gone: a flood of challenges for one device used to
-- evict its pending nonce (issue 23, "login lockout").
DROP TABLE login_challenges;
