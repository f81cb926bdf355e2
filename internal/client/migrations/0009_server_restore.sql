-- 0009_server_restore: the server may be restored from a backup, rolling
-- its channels back (docs/client.md, "After a server restore").
-- restore_lost: a message past the restored channel head that its sender
-- has not sent again (yet): history shows it as lost in a server restore.
-- outbox_replay: an outbox entry the server had accepted before the
-- restore, queued again exactly as it was (same message id, same MLS
-- message): a replayed commit is already merged into the group state.
-- Tables of their own (not columns) so the step can run again on a home a
-- test turned back to an older schema: SQLite 3.33 has no DROP COLUMN.
CREATE TABLE IF NOT EXISTS restore_lost (
    channel_id BLOB NOT NULL,
    message_id TEXT NOT NULL,
    PRIMARY KEY (channel_id, message_id)
);
CREATE TABLE IF NOT EXISTS outbox_replay (
    outbox_id INTEGER PRIMARY KEY -- outbox.id
);
