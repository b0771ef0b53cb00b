-- A sweep that finds nothing overdue reads nothing (issue 27).
--
-- The sweeper looks for open dispatches whose `next_attempt_at` is more than
-- the grace behind. 0010 keyed its index on `id` so that claims, renewals and
-- retries, which all move `next_attempt_at`, stay HOT; the price was that
-- every sweep read every open row's heap tuple to test `next_attempt_at`,
-- overdue or not (33,000 buffers and 220-360 ms per sweep at 500k open rows;
-- BENCHMARKS.md).
--
-- `sweep_at` is a lower bound of `next_attempt_at` that moves only when it
-- must: **every open row has `sweep_at <= next_attempt_at`**, so a row can be
-- overdue only once its `sweep_at` is, and the sweeper's index is keyed on
-- `sweep_at`. The default and the triggers below keep the bound on every
-- write, whoever makes it (functions, stores, workers not yet upgraded): an
-- insert starts it at the transaction's start, which is at or before the
-- `next_attempt_at` of every insert `accept_dispatch` makes (its
-- clock_timestamp()), so the insert trigger's WHEN is false there and no
-- function runs; any other insert starts it at `next_attempt_at`. An update
-- of an open row that would leave it above `next_attempt_at` lowers it to
-- that. No other write touches it. Claims,
-- renewals and retries set `next_attempt_at` to a time ahead of now, and
-- `sweep_at` is at or behind the row's first `next_attempt_at`, so they
-- leave `sweep_at` alone and stay HOT (HOT compares values, and the
-- trigger's WHEN keeps it from running at all). Only the sweeper raises it:
-- to the pushed `next_attempt_at` when it re-publishes a row, and to
-- `next_attempt_at` when it finds a row whose bound fell behind but which
-- is not overdue (a retry waiting, a renewed lease). So a sweep reads the
-- overdue rows plus, once each, the rows whose bound fell behind since the
-- last sweep; with nothing overdue and nothing newly behind it reads none.
-- A claim of a row the sweeper pushed ahead lowers `sweep_at` to the lease
-- end (not HOT, once per re-published row).
--
-- Legacy rows: the column is added without a rewrite (the default is
-- evaluated once, so closed rows read the migration's time; the index holds
-- only open rows, and no trigger touches closed ones); open rows are given
-- their `next_attempt_at` here.
SET LOCAL lock_timeout = '10s';

ALTER TABLE dispatches ADD COLUMN sweep_at timestamptz DEFAULT now();
COMMENT ON COLUMN dispatches.sweep_at IS
    'the sweeper''s bound: never later than next_attempt_at on an open row (triggers dispatches_sweep_at_*); raised only by the sweeper';

CREATE FUNCTION dispatches_sweep_at_floor() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.sweep_at := NEW.next_attempt_at;
    RETURN NEW;
END;
$$;

CREATE TRIGGER dispatches_sweep_at_insert BEFORE INSERT ON dispatches
    FOR EACH ROW WHEN (NEW.sweep_at IS NULL OR NEW.sweep_at > NEW.next_attempt_at)
    EXECUTE FUNCTION dispatches_sweep_at_floor();
CREATE TRIGGER dispatches_sweep_at_update BEFORE UPDATE ON dispatches
    FOR EACH ROW WHEN (NEW.code_sealed IS NOT NULL
                       AND (NEW.sweep_at IS NULL OR NEW.sweep_at > NEW.next_attempt_at))
    EXECUTE FUNCTION dispatches_sweep_at_floor();

UPDATE dispatches SET sweep_at = next_attempt_at WHERE code_sealed IS NOT NULL;

DROP INDEX dispatches_unsent;
CREATE INDEX dispatches_unsent ON dispatches (sweep_at) WHERE code_sealed IS NOT NULL;
