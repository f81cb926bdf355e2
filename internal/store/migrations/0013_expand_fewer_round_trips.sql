-- Nothing to do on SQLite. The PostgreSQL step of the same number adds two
-- server-side functions that save round trips to the database server
-- (migrations_pg/0013_expand_fewer_round_trips.sql); SQLite runs in qpcd's
-- process, where a statement costs no round trip. The step exists so that
-- both engines keep the same schema versions ("version 13" means the same
-- on both; internal/store checks it).
SELECT 1;
