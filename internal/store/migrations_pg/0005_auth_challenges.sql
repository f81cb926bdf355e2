-- 0005_auth_challenges (PostgreSQL): stateless login and re-authentication
-- challenges; see the SQLite migration of the same number.

ALTER TABLE token_keys ADD COLUMN challenge_key BYTEA;

CREATE TABLE used_challenges (
    challenge_hash BYTEA   PRIMARY KEY,
    expires_at     BIGINT  NOT NULL
);
CREATE INDEX used_challenges_expiry ON used_challenges (expires_at);

DROP TABLE login_challenges;
