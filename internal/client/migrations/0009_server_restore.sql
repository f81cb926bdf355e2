-- 0009_server_restore: the server may be restored from a backup, rolling
-- its channels back (docs/client.md, "After a server restore").
-- messages.lost: 1 on a message past the restored channel head that its
-- sender has not sent again (yet): history shows it as lost in a server
-- restore. outbox.replay: 1 on an entry the server had accepted before the
-- restore and that is queued again exactly as it was (same message id, same
-- MLS message): a replayed commit is already merged into the group state.
ALTER TABLE messages ADD COLUMN lost INTEGER NOT NULL DEFAULT 0;
ALTER TABLE outbox ADD COLUMN replay INTEGER NOT NULL DEFAULT 0;
