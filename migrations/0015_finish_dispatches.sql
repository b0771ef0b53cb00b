-- The worker's outcome batch as a function whose plan cannot depend on
-- statistics (issue 27). As a prepared statement of its own, Postgres
-- cached a generic plan for it after five runs; chosen while the day's
-- partition was small, that plan was a Hash Join over a Seq Scan of every
-- partition, and nothing but ANALYZE (or DDL) ever replaced it: on a
-- partition no one had analysed yet, each batch of 8 outcomes read the
-- whole day (78 ms at 300,000 rows, against 0.5 ms). A batch is at most a
-- few hundred rows, each found by its primary key, so the only right plan
-- is a nested loop of primary-key probes; the SET list below leaves the
-- planner no other, whatever it believes about the table's size, and the
-- executor still prunes each probe to the one partition holding the id.
-- That plan is made once per session (force_generic_plan): see 0016 for
-- why leaving the choice to Postgres plans it anew at every call.
-- Same columns and fencing as the statement it replaces, which workers not
-- yet upgraded keep running.

CREATE FUNCTION finish_dispatches(p_ids uuid[], p_tokens uuid[], p_statuses text[],
                                  p_reasons text[], p_retry_secs float8[], p_terminal boolean[],
                                  p_sent text, p_sending text)
RETURNS SETOF uuid
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
SET enable_bitmapscan = off
SET enable_hashjoin = off
SET enable_mergejoin = off
AS $$
BEGIN
    RETURN QUERY
    UPDATE dispatches d
       SET status = v.status,
           last_error = v.reason,
           lease_until = NULL,
           claim_token = NULL,
           sent_at = CASE WHEN v.status = p_sent THEN now() ELSE d.sent_at END,
           code_sealed = CASE WHEN v.terminal THEN NULL ELSE d.code_sealed END,
           next_attempt_at = COALESCE(now() + make_interval(secs => v.retry_secs),
                                      d.next_attempt_at),
           updated_at = now()
      FROM unnest(p_ids, p_tokens, p_statuses, p_reasons, p_retry_secs, p_terminal)
           AS v(id, token, status, reason, retry_secs, terminal)
     WHERE d.id = v.id AND d.claim_token = v.token AND d.status = p_sending
    RETURNING d.id;
END
$$;

COMMENT ON FUNCTION finish_dispatches(uuid[], uuid[], text[], text[], float8[], boolean[], text, text) IS
    'Records attempt outcomes under their claim tokens; answers the ids whose row changed. Plans only primary-key probes, whatever the statistics (issue 27).';
