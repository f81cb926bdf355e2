-- Nothing to do on SQLite. The PostgreSQL step of the same number keeps
-- the enqueue batch's generic plans on indexes
-- (migrations_pg/0015_expand_index_lookups.sql); SQLite's planner uses the
-- primary key for these lookups whatever the table's size. The step exists
-- so that both engines keep the same schema versions.
SELECT 1;
