-- 0007_server_nodes (issue 15): a deployment may run several qpcd nodes.
-- settings.server_addr and settings.pin_sha256 hold comma-separated lists
-- (a single address or pin, as before, is a list of one); the node the
-- client used last is remembered here so the next run starts from it
-- rather than from a node that may be down. Empty: the first of the list.
ALTER TABLE settings ADD COLUMN current_node TEXT NOT NULL DEFAULT '';
