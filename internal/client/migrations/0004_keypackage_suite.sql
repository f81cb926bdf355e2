-- 0004_keypackage_suite: a device keeps KeyPackages of every cipher suite
-- that it and the server allow (docs/mls.md, "Negotiation"): the stock,
-- the last resort and their replacement are per suite. Rows from before
-- are suite 1, the only suite used until then.
ALTER TABLE key_packages ADD COLUMN suite INTEGER NOT NULL DEFAULT 1;
