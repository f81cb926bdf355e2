-- The ratchet tree a committer sends beside a GroupInfo that lacks the
-- ratchet_tree extension (EnqueueRequest.ratchet_tree, RFC 9420
-- §12.4.3.3), returned with the GroupInfo by GetGroupInfo, and the epoch
-- it belongs to. A tree is served only when ratchet_tree_epoch equals the
-- row's epoch: a qpcd one release older replaces group_info and epoch
-- without touching these columns, and its stale tree must not be handed
-- out beside a newer GroupInfo (docs/protocol.md, "Ratchet tree beside
-- the GroupInfo"). Nullable columns: expand-only, so a qpcd one release
-- older runs on the migrated database (docs/release.md, "Mixed versions").
ALTER TABLE channel_group_info ADD COLUMN ratchet_tree BLOB;
ALTER TABLE channel_group_info ADD COLUMN ratchet_tree_epoch INTEGER;
