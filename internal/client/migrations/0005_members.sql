-- 0005_members: invitations this device was told about, and server events
-- (membership changes) kept in the history beside the messages.

-- Pending invitations as the inbox notices announced them; the server's
-- list (qpc invitations) is the authority, this only drives "new" notices.
CREATE TABLE invitations (
    id           TEXT    PRIMARY KEY,
    channel_id   BLOB    NOT NULL,
    channel_type TEXT    NOT NULL, -- 'group' or 'dm'
    inviter      TEXT    NOT NULL, -- account name
    created_ms   INTEGER NOT NULL,
    expires_ms   INTEGER NOT NULL,
    shown        INTEGER NOT NULL DEFAULT 0 -- printed by recv/watch
);

-- A row of messages with event set is a membership change the server
-- announced (JSON of client.Event); text is its human form.
ALTER TABLE messages ADD COLUMN event TEXT NOT NULL DEFAULT '';
