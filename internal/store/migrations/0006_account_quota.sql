-- 0006_account_quota: what each account has stored, kept beside the data so
-- that per-account quotas (internal/delivery quota.go) are checked without
-- scanning. Every write that stores or deletes an account's messages, inbox
-- items or channels updates its row in the same transaction; the retention
-- sweep and inbox acknowledgements decrement it. RecountUsage rebuilds a
-- row from the tables should it ever drift.

CREATE TABLE account_usage (
    account_id    TEXT    PRIMARY KEY,
    message_bytes INTEGER NOT NULL DEFAULT 0,  -- bodies of stored channel messages the account sent
    messages      INTEGER NOT NULL DEFAULT 0,  -- how many
    inbox_bytes   INTEGER NOT NULL DEFAULT 0,  -- bodies of inbox items it put into devices' inboxes, not yet acknowledged or expired
    inbox_items   INTEGER NOT NULL DEFAULT 0,  -- how many
    channels      INTEGER NOT NULL DEFAULT 0   -- channels it created (groups and DMs)
) WITHOUT ROWID;

-- Accounts with data stored before this step start with what they have.
INSERT INTO account_usage (account_id, message_bytes, messages, inbox_bytes, inbox_items, channels)
SELECT account_id, SUM(mb), SUM(mn), SUM(ib), SUM(im), SUM(ch) FROM (
    SELECT sender_account AS account_id, SUM(LENGTH(body)) AS mb, COUNT(*) AS mn, 0 AS ib, 0 AS im, 0 AS ch
        FROM messages GROUP BY sender_account
    UNION ALL
    SELECT sender_account, 0, 0, SUM(LENGTH(body)), COUNT(*), 0 FROM inbox GROUP BY sender_account
    UNION ALL
    SELECT created_by, 0, 0, 0, 0, COUNT(*) FROM channels GROUP BY created_by
) GROUP BY account_id;
