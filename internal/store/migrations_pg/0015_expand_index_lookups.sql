-- qpc_enqueue_lock as in 0013, plus one setting for the rest of the
-- batch's transaction: enable_seqscan off (set_config(..., true) lasts
-- until COMMIT). Expand-only: it replaces a function body with one of the
-- same signature and touches no table, so a qpcd one release older runs on
-- the migrated database (docs/release.md, "Mixed versions").
--
-- Why: the batch runs on generic plans (0013), which cannot know that the
-- senders' array holds one or a few accounts. For the usage rows, locked
-- here with account_id = ANY(...) and updated by the batch's last
-- statement through a join with unnest(...), the planner then estimated
-- ten rows and found a sequential scan of account_usage cheaper than ten
-- index probes while the table holds up to a few thousand accounts (the
-- size of most deployments; a larger table gets the index): every enqueue
-- batch read every account's usage row, twice. With 1 000 accounts that
-- was 0.25 ms per batch, a third of the enqueue's database time, and the
-- 15-21 % found in docs/benchmarks.md, "10 million stored messages" (whose
-- load spreads its senders over 1 000 accounts). Every statement of the batch finds
-- its rows by key (channel, members, message ids, usage rows, the message
-- insert), so an index is always the right plan here; with sequential
-- scans priced out the planner takes the primary key and a nested loop
-- (TestEnqueueBatchUsesIndexes).

CREATE OR REPLACE FUNCTION qpc_enqueue_lock(p_channel BYTEA, p_accounts TEXT[], p_devices TEXT[], p_ids TEXT[], p_usage_accounts TEXT[])
RETURNS TABLE (what TEXT, a TEXT, b TEXT, n1 BIGINT, n2 BIGINT, n3 BIGINT, n4 BIGINT, n5 BIGINT, g BYTEA)
LANGUAGE plpgsql AS $fn$
DECLARE
    v_kind INTEGER;
    v_group BYTEA;
    v_epoch BIGINT;
    v_head BIGINT;
    v_ttl BIGINT;
    v_found BIGINT;
BEGIN
    PERFORM set_config('plan_cache_mode', 'force_generic_plan', true);
    -- Every statement of the batch finds its rows by key; see the top.
    PERFORM set_config('enable_seqscan', 'off', true);
    SELECT c.kind, c.group_id, c.epoch, c.head_seq, c.ttl_ms INTO v_kind, v_group, v_epoch, v_head, v_ttl
        FROM channels c WHERE c.id = p_channel FOR UPDATE;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    RETURN QUERY SELECT 'c'::TEXT, NULL::TEXT, NULL::TEXT, v_kind::BIGINT, v_epoch, v_head, v_ttl, NULL::BIGINT, v_group;
    RETURN QUERY SELECT 'm'::TEXT, t.acc, t.dev, NULL::BIGINT, NULL::BIGINT, NULL::BIGINT, NULL::BIGINT, NULL::BIGINT, NULL::BYTEA
        FROM unnest(p_accounts, p_devices) AS t(acc, dev)
        WHERE EXISTS (SELECT 1 FROM channel_members m WHERE m.channel_id = p_channel AND m.account_id = t.acc AND m.device_id IN ('', t.dev));
    -- One by one on the (channel_id, message_id) index: with
    -- message_id = ANY(...) the planner, on stale statistics, scanned the
    -- channel's whole log.
    RETURN QUERY SELECT 'd'::TEXT, i.mid, d.sender_device, d.seq, NULL::BIGINT, NULL::BIGINT, NULL::BIGINT, NULL::BIGINT, NULL::BYTEA
        FROM unnest(p_ids) AS i(mid)
        CROSS JOIN LATERAL (SELECT m.sender_device, m.seq FROM messages m WHERE m.channel_id = p_channel AND m.message_id = i.mid LIMIT 1) d;
    -- p_usage_accounts: the batch's distinct senders, sorted by the caller
    -- (every enqueue locks usage rows in account order).
    RETURN QUERY SELECT 'u'::TEXT, u.account_id, NULL::TEXT, u.message_bytes, u.messages, u.inbox_bytes, u.inbox_items, u.channels, NULL::BYTEA
        FROM account_usage u WHERE u.account_id = ANY(p_usage_accounts) ORDER BY u.account_id FOR UPDATE;
    GET DIAGNOSTICS v_found = ROW_COUNT;
    IF v_found < cardinality(p_usage_accounts) THEN
        -- A sender without a usage row yet: create it (a concurrent
        -- creator makes this wait for its commit) and lock again (the
        -- rows already returned come again, unchanged: they are locked).
        INSERT INTO account_usage (account_id) SELECT unnest(p_usage_accounts) ON CONFLICT (account_id) DO NOTHING;
        RETURN QUERY SELECT 'u'::TEXT, u.account_id, NULL::TEXT, u.message_bytes, u.messages, u.inbox_bytes, u.inbox_items, u.channels, NULL::BYTEA
            FROM account_usage u WHERE u.account_id = ANY(p_usage_accounts) ORDER BY u.account_id FOR UPDATE;
    END IF;
END
$fn$;
