-- The sweeper's benchmark table (BENCHMARKS.md, "Issue 27"): 1M dispatches
-- over the last hour, 500k of them open and spread as a backlog would be
-- (10 % within the grace, 60 % re-published by the sweeper and pushed up to
-- an hour ahead, 20 % retrying up to 30 minutes ahead, 10 % leased), none
-- overdue. Run on a scratch database with migrations/ applied:
--   psql -d sweep_scratch -f scripts/sweep-scratch.sql
INSERT INTO partners (id, name, kind, status) VALUES ('00000000-0000-0000-0000-000000000001','p','partner','active') ON CONFLICT DO NOTHING;
-- 1M rows over the last hour: even g closed (sent), odd g open, spread as a backlog
INSERT INTO dispatches (id, partner_id, recipient, email, lang, ttl_minutes, status, code_digest, code_sealed,
                        attempts, lease_until, next_attempt_at, created_at, expires_at, updated_at, handoff_by, sweeps)
SELECT (left(replace(verimail_id_at(ts)::text,'-',''),12) || left(md5(g::text),20))::uuid,
       '00000000-0000-0000-0000-000000000001', '+8613' || (g % 100000), 'x@example.com', 'en-us', 60,
       CASE WHEN g % 2 = 0 THEN 'sent' WHEN k < 10 THEN 'queued' WHEN k < 70 THEN 'queued' WHEN k < 90 THEN 'retrying' ELSE 'sending' END,
       '\x00', CASE WHEN g % 2 = 0 THEN NULL ELSE '\x0102'::bytea END,
       CASE WHEN k >= 70 THEN 1 ELSE 0 END,
       CASE WHEN g % 2 = 1 AND k >= 90 THEN now() + interval '10 s' END,
       CASE WHEN g % 2 = 0 THEN ts
            WHEN k < 10 THEN ts                                   -- recent: within the grace
            WHEN k < 70 THEN now() + (random() * 3500) * interval '1 s'   -- swept, pushed ahead
            WHEN k < 90 THEN now() + (random() * 1800) * interval '1 s'   -- retrying
            ELSE now() + interval '10 s' END,                     -- leased
       ts, ts + interval '60 min', ts, ts + interval '2 s',
       CASE WHEN g % 2 = 1 AND k >= 10 AND k < 70 THEN 1 + (g % 6) ELSE 0 END
  FROM (SELECT g, (g / 2) % 100 AS k,
               CASE WHEN (g / 2) % 100 < 10 AND g % 2 = 1 THEN now() - random() * interval '50 s'
                    ELSE now() - interval '70 s' - random() * interval '58 min' END AS ts
          FROM generate_series(1, 1000000) g) s;
-- Nothing overdue (the inserts above take a while), and the heap in id
-- order, as real inserts leave it.
UPDATE dispatches SET next_attempt_at = next_attempt_at + interval '30 min'
 WHERE code_sealed IS NOT NULL AND next_attempt_at < now() + interval '20 min';
DO $$
DECLARE v_part regclass;
BEGIN
    FOR v_part IN SELECT inhrelid::regclass FROM pg_inherits WHERE inhparent = 'dispatches'::regclass LOOP
        EXECUTE format('CLUSTER %s USING %I', v_part, v_part::text || '_pkey');
    END LOOP;
END
$$;
VACUUM ANALYZE dispatches;
