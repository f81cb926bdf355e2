-- Two server-side functions that cut round trips on the two hot paths of
-- PostgreSQL (docs/storage.md, "Enqueue on PostgreSQL" and "Fetch on
-- PostgreSQL: one statement"). Expand-only: it adds functions and touches
-- no table, so a qpcd one release older (which does not call them) runs on
-- the migrated database (docs/release.md, "Mixed versions").

-- qpc_enqueue_lock is steps 1-3 of an enqueue batch in one call, inside the
-- batch's READ COMMITTED transaction: lock the channel row, read which
-- callers are members and which message ids are stored (after the lock, so
-- another node's committed batch is seen), then lock the senders' usage
-- rows in account order, creating missing ones. It decides nothing: the
-- rules stay in Go (internal/delivery/enqueue_pg.go), which reads the rows:
--   'c': kind, epoch, head_seq, ttl_ms in n1-n4, group_id in g
--        (no row at all: no such channel);
--   'm': a member caller (a = account, b = device);
--   'd': a stored id (a = message id, b = sender device, n1 = seq);
--   'u': a usage row (a = account, n1-n5 = message_bytes, messages,
--        inbox_bytes, inbox_items, channels).
-- VOLATILE (the default), so each statement sees rows committed before it,
-- as the separate statements did. It also switches the rest of the
-- transaction to generic plans (set_config(..., true) lasts until COMMIT):
-- the batch's statements take arrays, and custom plans were re-made for
-- every small batch.
CREATE FUNCTION qpc_enqueue_lock(p_channel BYTEA, p_accounts TEXT[], p_devices TEXT[], p_ids TEXT[], p_usage_accounts TEXT[])
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

-- qpc_fetch is a device's whole fetch in one statement: its channels with
-- their heads and read positions, then the messages after each position
-- and the unacknowledged inbox items, cut by a count and a byte budget
-- exactly as the Go loop of internal/delivery/fetch.go cuts them (the
-- SQLite path runs that loop; the same tests run on both engines). STABLE,
-- so every query in it reads the snapshot of the calling statement: the
-- whole fetch is one consistent snapshot, as the REPEATABLE READ read-only
-- transaction of several statements was, and it cannot write. Rows:
--   'c': a channel the device reads (ch, kind, seq = position, head);
--   'm': a message of channel ch;
--   'i': an inbox item (ch = its channel, kind, seq);
--   'M': more is waiting than the limit or the budget let through.
-- p_after_* are the client's read-ahead positions, p_inbox_after its inbox
-- position, both already clipped to 2^62 by the caller.
CREATE FUNCTION qpc_fetch(p_account TEXT, p_device TEXT, p_after_ids BYTEA[], p_after_seqs BIGINT[], p_inbox_after BIGINT,
    p_now BIGINT, p_limit INTEGER, p_budget BIGINT)
RETURNS TABLE (what TEXT, ch BYTEA, kind INTEGER, seq BIGINT, head BIGINT, message_id TEXT, sender_account TEXT,
    sender_device TEXT, epoch BIGINT, created_at BIGINT, body BYTEA, trace_parent TEXT)
LANGUAGE plpgsql STABLE
-- Generic plans: a custom plan per call was most of the function's cost
-- (the plans use the same indexes either way).
SET plan_cache_mode = force_generic_plan
AS $fn$
DECLARE
    c RECORD;
    r RECORD;
    v_left INTEGER := p_limit;
    v_budget BIGINT := p_budget;
    v_items INTEGER := 0;
    v_n INTEGER;
    v_more BOOLEAN := false;
    v_done BOOLEAN := false;
BEGIN
    FOR c IN SELECT cc.id, cc.kind, cc.head_seq, GREATEST(MIN(m.from_seq), COALESCE(MAX(cu.acked_seq), 0)) AS pos
        FROM channel_members m JOIN channels cc ON cc.id = m.channel_id
        LEFT JOIN cursors cu ON cu.device_id = p_device AND cu.channel_id = m.channel_id
        WHERE m.account_id = p_account AND m.device_id IN ('', p_device)
        GROUP BY cc.id ORDER BY cc.id
    LOOP
        -- The later of membership start, cursor and read-ahead position,
        -- never past the head.
        c.pos := LEAST(GREATEST(c.pos, COALESCE(p_after_seqs[array_position(p_after_ids, c.id)], 0)), c.head_seq);
        what := 'c'; ch := c.id; kind := c.kind; seq := c.pos; head := c.head_seq; message_id := NULL;
        sender_account := NULL; sender_device := NULL; epoch := NULL; created_at := NULL; body := NULL; trace_parent := NULL;
        RETURN NEXT;
        CONTINUE WHEN v_done OR c.head_seq <= c.pos;
        IF v_left = 0 OR v_budget <= 0 THEN
            v_more := true;
            v_done := true;
            CONTINUE;
        END IF;
        v_n := 0;
        FOR r IN SELECT x.seq, x.message_id, x.sender_account, x.sender_device, x.epoch, x.created_at, x.body, x.trace_parent
            FROM messages x WHERE x.channel_id = c.id AND x.seq > c.pos AND x.expires_at > p_now ORDER BY x.seq LIMIT v_left + 1
        LOOP
            IF v_n = v_left OR (v_budget <= 0 AND v_n > 0) OR (v_budget < length(r.body) AND v_items > 0) THEN
                v_more := true;
                EXIT;
            END IF;
            what := 'm'; ch := c.id; kind := NULL; seq := r.seq; head := NULL; message_id := r.message_id;
            sender_account := r.sender_account; sender_device := r.sender_device; epoch := r.epoch;
            created_at := r.created_at; body := r.body; trace_parent := r.trace_parent;
            RETURN NEXT;
            v_budget := v_budget - length(r.body);
            v_items := v_items + 1;
            v_n := v_n + 1;
        END LOOP;
        v_left := v_left - v_n;
    END LOOP;
    IF v_left = 0 OR v_budget <= 0 THEN
        IF NOT v_more THEN
            v_more := EXISTS (SELECT 1 FROM inbox i JOIN inbox_heads h ON h.device_id = i.device_id
                WHERE i.device_id = p_device AND i.seq > h.acked_seq AND i.seq > p_inbox_after AND i.expires_at > p_now);
        END IF;
    ELSE
        v_n := 0;
        FOR r IN SELECT i.seq, i.kind, i.channel_id, i.sender_account, i.sender_device, i.created_at, i.body
            FROM inbox i JOIN inbox_heads h ON h.device_id = i.device_id
            WHERE i.device_id = p_device AND i.seq > h.acked_seq AND i.seq > p_inbox_after AND i.expires_at > p_now
            ORDER BY i.seq LIMIT v_left + 1
        LOOP
            IF v_n = v_left OR (v_budget < length(r.body) AND v_items > 0) THEN
                v_more := true;
                EXIT;
            END IF;
            what := 'i'; ch := r.channel_id; kind := r.kind; seq := r.seq; head := NULL; message_id := NULL;
            sender_account := r.sender_account; sender_device := r.sender_device; epoch := NULL;
            created_at := r.created_at; body := r.body; trace_parent := NULL;
            RETURN NEXT;
            v_budget := v_budget - length(r.body);
            v_items := v_items + 1;
            v_n := v_n + 1;
        END LOOP;
    END IF;
    IF v_more THEN
        what := 'M'; ch := NULL; kind := NULL; seq := NULL; head := NULL; message_id := NULL; sender_account := NULL;
        sender_device := NULL; epoch := NULL; created_at := NULL; body := NULL; trace_parent := NULL;
        RETURN NEXT;
    END IF;
END
$fn$;
