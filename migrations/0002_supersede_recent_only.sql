-- Supersession only ever concerns codes that can still be pending: a code
-- lives at most 60 minutes. Bounding the UPDATE by created_at keeps it on the
-- (recipient, created_at) index even when the planner's statistics are stale
-- (a new or never-analysed table made it scan every open dispatch).
CREATE OR REPLACE FUNCTION accept_dispatch(
    p_id uuid, p_partner uuid, p_recipient text, p_email text, p_lang text,
    p_ttl_minutes integer, p_code_digest bytea, p_code_sealed bytea,
    p_per_hour integer, p_per_day integer
) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    v_now timestamptz;
    v_hour integer;
    v_day integer;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended(p_recipient, 0));
    v_now := clock_timestamp();
    SELECT count(*) FILTER (WHERE created_at > v_now - interval '1 hour'), count(*)
      INTO v_hour, v_day
      FROM dispatches
     WHERE recipient = p_recipient
       AND counts_toward_limit
       AND created_at > v_now - interval '1 day';
    IF v_hour >= p_per_hour OR v_day >= p_per_day THEN
        RETURN 'rate_limited';
    END IF;
    UPDATE dispatches
       SET status = 'superseded', code_sealed = NULL, lease_until = NULL, updated_at = v_now
     WHERE recipient = p_recipient AND partner_id = p_partner
       AND created_at > v_now - interval '61 minutes'
       AND status IN ('queued', 'retrying');
    INSERT INTO dispatches (id, partner_id, recipient, email, lang, ttl_minutes, status,
                            code_digest, code_sealed, next_attempt_at, created_at, expires_at,
                            updated_at)
    VALUES (p_id, p_partner, p_recipient, p_email, p_lang, p_ttl_minutes, 'queued',
            p_code_digest, p_code_sealed, v_now, v_now,
            v_now + make_interval(mins => p_ttl_minutes), v_now);
    RETURN 'accepted';
END;
$$;
