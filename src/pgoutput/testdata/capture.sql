-- Produces src/pgoutput/testdata/capture.hex: real pgoutput v1 bytes covering every message
-- kind. Run on a scratch cluster with wal_level=logical after sql/setup.sql:
--   psql -X -At -f capture.sql > capture.hex
\set QUIET on
CREATE TYPE mood AS ENUM ('sad', 'happy');
CREATE TABLE items (id int PRIMARY KEY, name text, m mood, big text);
ALTER TABLE items ALTER COLUMN big SET STORAGE EXTERNAL;
CREATE TABLE full_t (id int, v text);
ALTER TABLE full_t REPLICA IDENTITY FULL;
CREATE PUBLICATION capture_pub FOR ALL TABLES;
SELECT 'slot' FROM pg_create_logical_replication_slot('capture', 'pgoutput') \g /dev/null
BEGIN;
INSERT INTO outbox (id, aggregatetype, aggregateid, type, payload)
  VALUES ('6f1c0e2a-6c1b-4b7e-9d1e-0a5d3c2b1a00', 'order', 'o-1', 'OrderCreated', '{"total": 42}');
INSERT INTO outbox (id, aggregatetype, aggregateid, type, payload)
  VALUES ('6f1c0e2a-6c1b-4b7e-9d1e-0a5d3c2b1a01', 'order', 'o-1', 'OrderDeleted', NULL);
SELECT pg_logical_emit_message(true, 'outbox', '{"aggregatetype":"order"}') \g /dev/null
COMMIT;
INSERT INTO items VALUES (1, 'a', 'happy', repeat('x', 3000));
UPDATE items SET name = 'b' WHERE id = 1;
UPDATE items SET id = 2 WHERE id = 1;
DELETE FROM items;
INSERT INTO full_t VALUES (1, 'x');
UPDATE full_t SET v = 'y';
TRUNCATE full_t;
SELECT pg_logical_emit_message(false, 'pgoutbox.heartbeat', '') \g /dev/null
SELECT pg_replication_origin_create('elsewhere') \g /dev/null
SELECT pg_replication_origin_session_setup('elsewhere') \g /dev/null
BEGIN;
SELECT pg_replication_origin_xact_setup('0/AB', now()) \g /dev/null
INSERT INTO full_t VALUES (2, 'from elsewhere');
COMMIT;
SELECT pg_replication_origin_session_reset() \g /dev/null
\set QUIET off
SELECT encode(data, 'hex') FROM pg_logical_slot_get_binary_changes('capture', NULL, NULL,
  'proto_version', '1', 'publication_names', 'capture_pub', 'messages', 'true');
