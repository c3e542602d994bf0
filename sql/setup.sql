-- pgoutbox setup: the outbox table, its publication and a least-privilege role.
-- Idempotent: safe to run any number of times with plain `psql -f sql/setup.sql`.
-- Run it as a superuser (or the database owner with CREATEROLE) in the application's database.

-- The outbox. Column names follow Debezium's outbox event router, so existing consumers and
-- tooling keep working. Applications INSERT one row per event in the same transaction as
-- their business change; pgoutbox reads the row from the WAL, not from this table.
CREATE TABLE IF NOT EXISTS public.outbox (
    id            uuid        PRIMARY KEY DEFAULT gen_random_uuid(), -- header `id`: the dedupe key
    aggregatetype text        NOT NULL,  -- topic: outbox.event.<aggregatetype>
    aggregateid   text        NOT NULL,  -- record key: same aggregate, same partition, in order
    type          text        NOT NULL,  -- header `type`
    payload       jsonb,                 -- record value (jsonb's text form); NULL = empty value
    created_at    timestamptz NOT NULL DEFAULT now()
);

-- Rows may be deleted right after insert (even in the same transaction): pgoutbox only needs
-- the WAL. The publication carries inserts only, so those deletes never reach Kafka.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = 'pgoutbox_pub') THEN
        CREATE PUBLICATION pgoutbox_pub FOR TABLE public.outbox WITH (publish = 'insert');
    ELSIF NOT EXISTS (SELECT 1 FROM pg_publication_tables
                      WHERE pubname = 'pgoutbox_pub'
                        AND schemaname = 'public' AND tablename = 'outbox') THEN
        ALTER PUBLICATION pgoutbox_pub ADD TABLE public.outbox;
    END IF;
END
$$;
ALTER PUBLICATION pgoutbox_pub SET (publish = 'insert');

-- Which slots pgoutbox has streamed from, and how far it had confirmed. Physical replication
-- carries this table to standbys and backups, so after a failover to a standby without the
-- slot (or a restored backup, or a dropped slot) pgoutbox tells a missing slot from a first
-- start and refuses to create a new one over the gap. `pgoutbox slot forget` deletes a row.
CREATE TABLE IF NOT EXISTS public.pgoutbox_state (
    slot          text        PRIMARY KEY,
    confirmed_lsn pg_lsn      NOT NULL,
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- The role pgoutbox connects as. Least privilege:
--   * LOGIN + REPLICATION: open a replication connection, create and stream its slot;
--   * CONNECT on this database;
--   * nothing on the outbox table itself: streaming reads the WAL, not the table;
--   * read and write on public.pgoutbox_state, its slot record.
-- It has no password here (no secret in a SQL file); give it one before use:
--   ALTER ROLE pgoutbox PASSWORD '...';
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'pgoutbox') THEN
        CREATE ROLE pgoutbox LOGIN REPLICATION;
    END IF;
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO pgoutbox', current_database());
END
$$;
-- Its only table privilege: the state record above.
GRANT SELECT, INSERT, UPDATE, DELETE ON public.pgoutbox_state TO pgoutbox;
