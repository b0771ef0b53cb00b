-- The open dispatches in id order (= creation order, ids are UUIDv7), for
-- the age of the oldest one waiting for a worker: the gauge
-- verimail_oldest_queued_dispatch_age_seconds, which workers sample on their
-- housekeeping interval (store::dispatches::waiting). `dispatches_unsent` is
-- keyed on the sweeper's `sweep_at`, which the sweeper raises, so it cannot
-- say which open row is oldest without reading all of them.
--
-- Keyed on the immutable `id` with the open set's predicate, like
-- `dispatches_unsent`: claims, renewals and retries change neither, so they
-- stay HOT; a send adds one entry at the right edge of the index, and the
-- final outcome (not HOT already) takes the row out.
--
-- Building it reads every partition while sends wait, like 0010 (README,
-- "Upgrading"); the lock timeout makes a busy table fail it quickly instead
-- (run `verimail migrate` again).
SET LOCAL lock_timeout = '10s';

CREATE INDEX dispatches_open_by_id ON dispatches (id) WHERE code_sealed IS NOT NULL;
