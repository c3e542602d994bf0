-- Polling publisher (`source = poll`): the columns pgoutbox polls on, added to the outbox
-- table from sql/setup.sql. Run it after setup.sql; it is idempotent.
--
-- * seq: commit-order-ish sequence (a bigserial): rows are sent in seq order. Note that a
--   sequence is assigned at insert, not at commit, so a long transaction's row can appear
--   after rows with higher seq were sent: per-key order holds only if one aggregate's events
--   are not written by concurrent transactions (logical replication has no such caveat).
-- * status: 0 = pending, 1 = sent (with poll_cleanup = mark; `delete` removes sent rows).
-- * The partial index keeps each poll an index scan over pending rows only.
ALTER TABLE public.outbox
    ADD COLUMN IF NOT EXISTS seq    bigserial,
    ADD COLUMN IF NOT EXISTS status smallint NOT NULL DEFAULT 0;
CREATE INDEX IF NOT EXISTS outbox_pending ON public.outbox (seq) WHERE status = 0;
-- The pgoutbox role must read, mark and (with poll_cleanup = delete) remove rows.
GRANT SELECT, UPDATE, DELETE ON public.outbox TO pgoutbox;
