-- The frozen-plan cliff of issue 27 (BENCHMARKS.md, "Issue 27: no cliff
-- without statistics"), on a scratch database with migrations/ applied and
-- never analysed:
--   psql -d plan_scratch -f scripts/plan-cliff-scratch.sql
-- Seven outcome batches of 8 run while the day's partition holds 50 rows,
-- as the worker's statement before migration 0015 (prepared: Postgres
-- caches its generic plan after five runs) and through finish_dispatches;
-- then 300,000 rows arrive with no ANALYZE, and each runs once more.
\set ON_ERROR_STOP on
\pset pager off
INSERT INTO partners (id, name, kind, status)
VALUES ('00000000-0000-0000-0000-000000000001', 'p', 'partner', 'active') ON CONFLICT DO NOTHING;
CREATE FUNCTION pg_temp.fill(n int) RETURNS void LANGUAGE sql AS $$
INSERT INTO dispatches (id, partner_id, recipient, email, lang, ttl_minutes, status, code_digest,
                        code_sealed, next_attempt_at, created_at, expires_at, handoff_by,
                        updated_at, claim_token)
SELECT (substr(verimail_id_at(clock_timestamp())::text, 1, 14) || substr(gen_random_uuid()::text, 15))::uuid,
       '00000000-0000-0000-0000-000000000001', 'r' || g || random(), 'e', 'en-us', 10, 'sending',
       '\x00', '\x00', now(), now(), now() + interval '10 min', now(), now(), gen_random_uuid()
  FROM generate_series(1, n) g $$;
SELECT pg_temp.fill(50);
PREPARE old_batch(uuid[], uuid[], text[], text[], float8[], bool[], text, text) AS
UPDATE dispatches d
   SET status = v.status, last_error = v.reason, lease_until = NULL, claim_token = NULL,
       sent_at = CASE WHEN v.status = $7 THEN now() ELSE d.sent_at END,
       code_sealed = CASE WHEN v.terminal THEN NULL ELSE d.code_sealed END,
       next_attempt_at = COALESCE(now() + make_interval(secs => v.retry_secs), d.next_attempt_at),
       updated_at = now()
  FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::float8[], $6::bool[])
       AS v(id, token, status, reason, retry_secs, terminal)
 WHERE d.id = v.id AND d.claim_token = v.token AND d.status = $8
RETURNING d.id;
PREPARE new_batch(uuid[], uuid[], text[], text[], float8[], bool[], text, text) AS
SELECT id FROM finish_dispatches($1, $2, $3, $4, $5, $6, $7, $8) AS id;
-- Batches of 8 open rows; each run is rolled back so the rows stay open.
SELECT array_agg(id)::text AS ids, array_agg(claim_token)::text AS toks
  FROM (SELECT id, claim_token FROM dispatches ORDER BY id LIMIT 8) s \gset
BEGIN; EXECUTE old_batch(:'ids', :'toks', array_fill('sent'::text, ARRAY[8]), array_fill(NULL::text, ARRAY[8]), array_fill(NULL::float8, ARRAY[8]), array_fill(true, ARRAY[8]), 'sent', 'sending') \g /dev/null
EXECUTE new_batch(:'ids', :'toks', array_fill('sent'::text, ARRAY[8]), array_fill(NULL::text, ARRAY[8]), array_fill(NULL::float8, ARRAY[8]), array_fill(true, ARRAY[8]), 'sent', 'sending') \g /dev/null
ROLLBACK;
\o /dev/null
BEGIN; EXECUTE old_batch(:'ids', :'toks', array_fill('sent'::text, ARRAY[8]), array_fill(NULL::text, ARRAY[8]), array_fill(NULL::float8, ARRAY[8]), array_fill(true, ARRAY[8]), 'sent', 'sending'); EXECUTE new_batch(:'ids', :'toks', array_fill('sent'::text, ARRAY[8]), array_fill(NULL::text, ARRAY[8]), array_fill(NULL::float8, ARRAY[8]), array_fill(true, ARRAY[8]), 'sent', 'sending'); ROLLBACK;
BEGIN; EXECUTE old_batch(:'ids', :'toks', array_fill('sent'::text, ARRAY[8]), array_fill(NULL::text, ARRAY[8]), array_fill(NULL::float8, ARRAY[8]), array_fill(true, ARRAY[8]), 'sent', 'sending'); EXECUTE new_batch(:'ids', :'toks', array_fill('sent'::text, ARRAY[8]), array_fill(NULL::text, ARRAY[8]), array_fill(NULL::float8, ARRAY[8]), array_fill(true, ARRAY[8]), 'sent', 'sending'); ROLLBACK;
BEGIN; EXECUTE old_batch(:'ids', :'toks', array_fill('sent'::text, ARRAY[8]), array_fill(NULL::text, ARRAY[8]), array_fill(NULL::float8, ARRAY[8]), array_fill(true, ARRAY[8]), 'sent', 'sending'); EXECUTE new_batch(:'ids', :'toks', array_fill('sent'::text, ARRAY[8]), array_fill(NULL::text, ARRAY[8]), array_fill(NULL::float8, ARRAY[8]), array_fill(true, ARRAY[8]), 'sent', 'sending'); ROLLBACK;
BEGIN; EXECUTE old_batch(:'ids', :'toks', array_fill('sent'::text, ARRAY[8]), array_fill(NULL::text, ARRAY[8]), array_fill(NULL::float8, ARRAY[8]), array_fill(true, ARRAY[8]), 'sent', 'sending'); EXECUTE new_batch(:'ids', :'toks', array_fill('sent'::text, ARRAY[8]), array_fill(NULL::text, ARRAY[8]), array_fill(NULL::float8, ARRAY[8]), array_fill(true, ARRAY[8]), 'sent', 'sending'); ROLLBACK;
BEGIN; EXECUTE old_batch(:'ids', :'toks', array_fill('sent'::text, ARRAY[8]), array_fill(NULL::text, ARRAY[8]), array_fill(NULL::float8, ARRAY[8]), array_fill(true, ARRAY[8]), 'sent', 'sending'); EXECUTE new_batch(:'ids', :'toks', array_fill('sent'::text, ARRAY[8]), array_fill(NULL::text, ARRAY[8]), array_fill(NULL::float8, ARRAY[8]), array_fill(true, ARRAY[8]), 'sent', 'sending'); ROLLBACK;
BEGIN; EXECUTE old_batch(:'ids', :'toks', array_fill('sent'::text, ARRAY[8]), array_fill(NULL::text, ARRAY[8]), array_fill(NULL::float8, ARRAY[8]), array_fill(true, ARRAY[8]), 'sent', 'sending'); EXECUTE new_batch(:'ids', :'toks', array_fill('sent'::text, ARRAY[8]), array_fill(NULL::text, ARRAY[8]), array_fill(NULL::float8, ARRAY[8]), array_fill(true, ARRAY[8]), 'sent', 'sending'); ROLLBACK;
\o
SELECT pg_temp.fill(300000);
SELECT array_agg(id)::text AS ids, array_agg(claim_token)::text AS toks
  FROM (SELECT id, claim_token FROM dispatches ORDER BY id DESC LIMIT 8) s \gset
\echo '== the statement before 0015, its generic plan cached at 50 rows, on 300,000:'
BEGIN;
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF, TIMING OFF, SUMMARY ON) EXECUTE old_batch(:'ids', :'toks', array_fill('sent'::text, ARRAY[8]), array_fill(NULL::text, ARRAY[8]), array_fill(NULL::float8, ARRAY[8]), array_fill(true, ARRAY[8]), 'sent', 'sending');
ROLLBACK;
\echo '== finish_dispatches, after the same seven runs at 50 rows, on 300,000 (the function, then the UPDATE inside it):'
LOAD 'auto_explain';
SET auto_explain.log_min_duration = 0;
SET auto_explain.log_nested_statements = on;
SET auto_explain.log_analyze = on;
SET auto_explain.log_buffers = on;
SET auto_explain.log_timing = off;
SET auto_explain.log_level = notice;
SET client_min_messages = notice;
BEGIN;
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF, TIMING OFF, SUMMARY ON) EXECUTE new_batch(:'ids', :'toks', array_fill('sent'::text, ARRAY[8]), array_fill(NULL::text, ARRAY[8]), array_fill(NULL::float8, ARRAY[8]), array_fill(true, ARRAY[8]), 'sent', 'sending');
ROLLBACK;
