-- claim_dispatch (0011) now also says when a claim took a dispatch over:
-- its `wait_secs`, unused by a 'claimed' answer until now, is how long ago
-- the previous claim's lease ran out when the dispatch was still `sending`
-- (its worker died or stalled), and NULL otherwise. Workers count these
-- (verimail_claims_taken_over_total). Same signature; workers that are not
-- upgraded ignore the column on a claim, and upgraded workers read NULL from
-- the old function, so neither order of upgrade miscounts.

CREATE OR REPLACE FUNCTION claim_dispatch(p_id uuid, p_lease_secs float8, p_token uuid,
                                          p_takeover_secs float8)
RETURNS TABLE (outcome text, status text, wait_secs float8, email text, lang text,
               ttl_minutes integer, code_sealed bytea, attempts integer,
               created_at timestamptz, expires_at timestamptz)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    r dispatches%ROWTYPE;
    v_now timestamptz := now();
    v_decided boolean;
    v_undecided_until timestamptz;
    v_older_waiting boolean;
    v_taken_over_secs float8;
BEGIN
    SELECT * INTO r FROM dispatches d WHERE d.id = p_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'missing', NULL::text, NULL::float8, NULL::text, NULL::text,
            NULL::integer, NULL::bytea, NULL::integer, NULL::timestamptz, NULL::timestamptz;
        RETURN;
    END IF;
    IF r.status NOT IN ('queued', 'sending', 'retrying') THEN
        RETURN QUERY SELECT 'finished', r.status, NULL::float8, NULL::text, NULL::text,
            NULL::integer, NULL::bytea, NULL::integer, NULL::timestamptz, NULL::timestamptz;
        RETURN;
    END IF;
    IF r.status = 'sending'
       AND r.lease_until + make_interval(secs => p_takeover_secs) > v_now THEN
        RETURN QUERY SELECT 'leased', r.status,
            extract(epoch FROM r.lease_until + make_interval(secs => p_takeover_secs) - v_now)::float8,
            NULL::text, NULL::text, NULL::integer, NULL::bytea, NULL::integer,
            NULL::timestamptz, NULL::timestamptz;
        RETURN;
    END IF;
    IF r.status = 'sending' THEN
        v_taken_over_secs := coalesce(extract(epoch FROM v_now - r.lease_until)::float8, 0);
    END IF;
    IF r.expires_at <= v_now THEN
        UPDATE dispatches d
           SET status = 'expired', code_sealed = NULL, lease_until = NULL, claim_token = NULL,
               last_error = 'the code expired before it could be sent', updated_at = v_now
         WHERE d.id = p_id;
        RETURN QUERY SELECT 'expired', 'expired'::text, NULL::float8, NULL::text, NULL::text,
            NULL::integer, NULL::bytea, NULL::integer, NULL::timestamptz, NULL::timestamptz;
        RETURN;
    END IF;
    -- Newer codes for the same recipient and partner that were not a failed
    -- hand-off: decided ones void this code, undecided ones make it wait.
    -- One scan of the recipient's rows answers that and whether older
    -- codes still wait (voided below once this one is claimed).
    SELECT bool_or(n.status <> 'queued' OR n.handoff_by IS NULL OR n.handoff_by <= v_now)
               FILTER (WHERE n.created_at > r.created_at AND n.counts_toward_limit),
           max(n.handoff_by) FILTER (WHERE n.created_at > r.created_at AND n.counts_toward_limit
                                       AND n.status = 'queued' AND n.handoff_by > v_now),
           coalesce(bool_or(n.status IN ('queued', 'retrying'))
                        FILTER (WHERE n.created_at < r.created_at), false)
      INTO v_decided, v_undecided_until, v_older_waiting
      FROM dispatches n
     WHERE n.recipient = r.recipient AND n.partner_id = r.partner_id
       AND n.created_at > r.created_at - interval '61 minutes' AND n.created_at <= r.expires_at
       AND n.id >= verimail_id_at(r.created_at - interval '66 minutes')
       AND n.id < verimail_id_at(r.expires_at + interval '5 minutes');
    IF v_decided THEN
        UPDATE dispatches d
           SET status = 'superseded', code_sealed = NULL, lease_until = NULL,
               claim_token = NULL, updated_at = v_now
         WHERE d.id = p_id;
        RETURN QUERY SELECT 'superseded', 'superseded'::text, NULL::float8, NULL::text,
            NULL::text, NULL::integer, NULL::bytea, NULL::integer, NULL::timestamptz,
            NULL::timestamptz;
        RETURN;
    END IF;
    IF v_undecided_until IS NOT NULL THEN
        RETURN QUERY SELECT 'held', r.status,
            extract(epoch FROM v_undecided_until - v_now)::float8, NULL::text, NULL::text,
            NULL::integer, NULL::bytea, NULL::integer, NULL::timestamptz, NULL::timestamptz;
        RETURN;
    END IF;
    UPDATE dispatches d
       SET status = 'sending', attempts = d.attempts + 1, claim_token = p_token,
           lease_until = v_now + make_interval(secs => p_lease_secs),
           next_attempt_at = v_now + make_interval(secs => p_lease_secs),
           updated_at = v_now
     WHERE d.id = p_id
    RETURNING * INTO r;
    -- This code is on its way: older ones still waiting are void. (One that
    -- started waiting after the scan is voided by its own claim, which finds
    -- this newer code decided.)
    IF v_older_waiting THEN
        UPDATE dispatches o
           SET status = 'superseded', code_sealed = NULL, lease_until = NULL,
               claim_token = NULL, updated_at = v_now
         WHERE o.recipient = r.recipient AND o.partner_id = r.partner_id
           AND o.created_at < r.created_at
           AND o.created_at > r.created_at - interval '61 minutes'
           AND o.id >= verimail_id_at(r.created_at - interval '66 minutes')
           AND o.status IN ('queued', 'retrying');
    END IF;
    RETURN QUERY SELECT 'claimed', r.status, v_taken_over_secs, r.email, r.lang, r.ttl_minutes,
        r.code_sealed, r.attempts, r.created_at, r.expires_at;
END;
$$;
