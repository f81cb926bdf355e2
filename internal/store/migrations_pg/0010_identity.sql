-- 0010_identity (issue 19): account identity keys, device certificates and
-- pending device links; the same step as migrations/0010_identity.sql.

ALTER TABLE accounts ADD COLUMN identity_key BYTEA;

ALTER TABLE devices ADD COLUMN certificate BYTEA;

CREATE TABLE link_requests (
    signature_key BYTEA   PRIMARY KEY,
    account_id    TEXT    NOT NULL REFERENCES accounts (id),
    device_name   TEXT    NOT NULL DEFAULT '',
    created_at    BIGINT  NOT NULL,
    expires_at    BIGINT  NOT NULL
);
CREATE INDEX link_requests_account ON link_requests (account_id, expires_at);
