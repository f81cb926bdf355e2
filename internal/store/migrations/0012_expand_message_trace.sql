-- The W3C traceparent of the sampled span that enqueued the message (NULL
-- when tracing was off or the span not sampled), so that a fetch on any
-- node of a deployment links to it (docs/operations.md, "Distributed
-- tracing"). A nullable column: expand-only, so a qpcd one release older
-- runs on the migrated database (docs/release.md, "Mixed versions").
ALTER TABLE messages ADD COLUMN trace_parent TEXT;
