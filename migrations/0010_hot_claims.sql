-- Claims, lease renewals and retries as HOT updates.
--
-- An UPDATE is HOT (a new row version on the same page, no new index
-- entries) only if it changes no column that any index uses, predicates
-- included. `dispatches_open` was keyed on `next_attempt_at` and filtered on
-- `status`, both of which every claim changes, so no update of a dispatch was
-- ever HOT: each claim and each outcome added an entry to all three indexes
-- and left a dead one behind for vacuum (0 HOT updates of ~400k in a bench
-- run; BENCHMARKS.md).
--
-- The sweeper's index now says only what it needs: the dispatches that may
-- still be mailed, which are exactly those that still hold a sealed code.
-- Every move to a final state wipes `code_sealed` in the same statement
-- (outcome, supersession, expiry, verification, failed hand-off), and no
-- open dispatch is without one, so `code_sealed IS NOT NULL` is the open set
-- (tests/schema.rs and the pipeline tests check that no row says otherwise).
-- Keyed on the immutable `id`, the index leaves a claim, a lease renewal, a
-- retry and the sweeper's bookkeeping nothing to change; only the final
-- outcome, which takes the row out of the index, is not HOT.
--
-- On an installation with a long history this builds the new index over
-- every partition while sends wait (README, "Upgrading"); the lock timeout
-- makes a busy table fail it quickly instead (run `verimail migrate` again).
SET LOCAL lock_timeout = '10s';

DROP INDEX dispatches_open;
CREATE INDEX dispatches_unsent ON dispatches (id) WHERE code_sealed IS NOT NULL;

-- Room on each page for the updated versions: a row is updated twice
-- shortly after its insert, and a HOT update needs the new version on the
-- same page. Partitioned tables take no storage parameters, so each
-- partition gets it (new pages only; `verimail maintain` creates new
-- partitions with it).
DO $$
DECLARE
    v_part regclass;
BEGIN
    FOR v_part IN SELECT inhrelid::regclass FROM pg_inherits WHERE inhparent = 'dispatches'::regclass LOOP
        EXECUTE format('ALTER TABLE %s SET (fillfactor = 70)', v_part);
    END LOOP;
END
$$;
