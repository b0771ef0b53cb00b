-- The functions every send and every mail run plan their statements once
-- per session, as primary-key and recipient-index probes, whatever the
-- statistics and however many partitions there are (issue 27).
--
-- Left to plan_cache_mode = auto, Postgres weighs each statement's generic
-- plan, which covers every partition, against custom plans, which prune to
-- the one partition the id names. Where the other partitions look costly
-- (never analysed, a partition is taken to be at least 10 pages; or simply
-- many days retained) the custom plan wins every time, and each call plans
-- anew: measured with pg_stat_statements on a never-analysed table, the
-- claim's row lock and update were planned 130,752 times for 130,740 calls,
-- 28 s of planning in a 30 s run (0.1 ms per statement), against 78 plans
-- once the partitions were analysed. A generic plan still touches only the
-- one partition: the executor prunes the others before it starts. With
-- sequential and bitmap scans ruled out, a generic plan made while a
-- partition is small cannot turn into a scan of it once it has grown.
--
-- ALTER, not CREATE OR REPLACE: the bodies stay as 0008/0011 left them.
-- A later CREATE OR REPLACE of these functions must repeat this SET list
-- (tests/api/plans.rs checks that it is there).

ALTER FUNCTION claim_dispatch(uuid, float8, uuid, float8)
    SET plan_cache_mode = force_generic_plan
    SET enable_seqscan = off
    SET enable_bitmapscan = off;

ALTER FUNCTION accept_dispatch(uuid, uuid, text, text, text, integer, bytea, bytea,
                               integer, integer, float8)
    SET plan_cache_mode = force_generic_plan
    SET enable_seqscan = off
    SET enable_bitmapscan = off;

ALTER FUNCTION supersede_older(uuid)
    SET plan_cache_mode = force_generic_plan
    SET enable_seqscan = off
    SET enable_bitmapscan = off;
