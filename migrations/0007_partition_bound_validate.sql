-- Time-partitioned dispatches, step 2 of 3 (see 0006): the scan that proves
-- every existing row lies below the bound. SHARE UPDATE EXCLUSIVE: sends,
-- claims and checks go on while it runs.
ALTER TABLE dispatches VALIDATE CONSTRAINT dispatches_legacy_bound;
