-- 0006_account_quota (PostgreSQL): what each account has stored, for the
-- per-account quotas (see the SQLite migration of the same name).

CREATE TABLE account_usage (
    account_id    TEXT    PRIMARY KEY,
    message_bytes BIGINT  NOT NULL DEFAULT 0,
    messages      BIGINT  NOT NULL DEFAULT 0,
    inbox_bytes   BIGINT  NOT NULL DEFAULT 0,
    inbox_items   BIGINT  NOT NULL DEFAULT 0,
    channels      BIGINT  NOT NULL DEFAULT 0
);

INSERT INTO account_usage (account_id, message_bytes, messages, inbox_bytes, inbox_items, channels)
SELECT account_id, SUM(mb), SUM(mn), SUM(ib), SUM(im), SUM(ch) FROM (
    SELECT sender_account AS account_id, SUM(LENGTH(body)) AS mb, COUNT(*) AS mn, 0 AS ib, 0 AS im, 0 AS ch
        FROM messages GROUP BY sender_account
    UNION ALL
    SELECT sender_account, 0, 0, SUM(LENGTH(body)), COUNT(*), 0 FROM inbox GROUP BY sender_account
    UNION ALL
    SELECT created_by, 0, 0, 0, 0, COUNT(*) FROM channels GROUP BY created_by
) AS u GROUP BY account_id;
