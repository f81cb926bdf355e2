-- 0010_identity (issue 19): account identity keys, device certificates and
-- pending device links. See docs/protocol.md, "Account identity and device
-- certificates".

-- The account's Ed25519 identity public key; NULL for accounts registered
-- before identity keys (their KeyPackages are not required to be certified).
ALTER TABLE accounts ADD COLUMN identity_key BLOB;

-- The device's certificate signed by the account identity key; NULL until
-- CertifyDevice.
ALTER TABLE devices ADD COLUMN certificate BLOB;

-- A new device asking to join an account (qpc device link), until an
-- existing device approves it or it expires (10 minutes).
CREATE TABLE link_requests (
    signature_key BLOB    PRIMARY KEY,  -- the new device's Ed25519 public key
    account_id    TEXT    NOT NULL REFERENCES accounts (id),
    device_name   TEXT    NOT NULL DEFAULT '',
    created_at    INTEGER NOT NULL,
    expires_at    INTEGER NOT NULL
);
CREATE INDEX link_requests_account ON link_requests (account_id, expires_at);
