-- Delivery guarantees under faults (see ARCHITECTURE.md, "Invariants").
--
-- claim_token  fences a worker's writes: every claim draws a fresh token and
--              every outcome or lease renewal must present it, so a worker
--              whose lease ran out changes nothing once another has claimed.
-- handoff_by   until when the intake may still record a failed hand-off
--              (CBC.99004003). After it, the dispatch will be mailed: the
--              intake's failure record refuses, and a newer code may void
--              older ones. NULL for rows written by an older intake.
-- sweeps       how often the sweeper re-published the dispatch; it backs off
--              exponentially, so a backlog is not re-published every minute.
-- All three are added without a table rewrite (no default, or a constant one).
ALTER TABLE dispatches ADD COLUMN claim_token uuid;
ALTER TABLE dispatches ADD COLUMN handoff_by timestamptz;
ALTER TABLE dispatches ADD COLUMN sweeps integer NOT NULL DEFAULT 0;

-- The rate-limited insert, now without supersession: a new code voids older
-- ones only once its own hand-off is confirmed (the intake then calls
-- supersede_older; claim_dispatch does it too, in case the intake died
-- first). It answers 'accepted_older_waiting' when older codes of the same
-- recipient and partner wait for a worker, so the intake knows whether that
-- call is needed, at no extra cost: the rate-limit scan reads those rows.
-- The ten-argument version of 0002 stays for intakes not upgraded yet.
-- The count runs under the per-recipient advisory lock with a snapshot taken
-- after the lock; verimail's connections force READ COMMITTED (see
-- verimail_core::db), which PL/pgSQL needs for that fresh snapshot.
CREATE FUNCTION accept_dispatch(
    p_id uuid, p_partner uuid, p_recipient text, p_email text, p_lang text,
    p_ttl_minutes integer, p_code_digest bytea, p_code_sealed bytea,
    p_per_hour integer, p_per_day integer, p_handoff_secs float8
) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    v_now timestamptz;
    v_hour integer;
    v_day integer;
    v_older_waiting boolean;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended(p_recipient, 0));
    v_now := clock_timestamp();
    SELECT count(*) FILTER (WHERE created_at > v_now - interval '1 hour'), count(*),
           coalesce(bool_or(partner_id = p_partner AND status IN ('queued', 'retrying')), false)
      INTO v_hour, v_day, v_older_waiting
      FROM dispatches
     WHERE recipient = p_recipient
       AND counts_toward_limit
       AND created_at > v_now - interval '1 day';
    IF v_hour >= p_per_hour OR v_day >= p_per_day THEN
        RETURN 'rate_limited';
    END IF;
    INSERT INTO dispatches (id, partner_id, recipient, email, lang, ttl_minutes, status,
                            code_digest, code_sealed, next_attempt_at, created_at, expires_at,
                            handoff_by, updated_at)
    VALUES (p_id, p_partner, p_recipient, p_email, p_lang, p_ttl_minutes, 'queued',
            p_code_digest, p_code_sealed, v_now, v_now,
            v_now + make_interval(mins => p_ttl_minutes),
            v_now + make_interval(secs => p_handoff_secs), v_now);
    RETURN CASE WHEN v_older_waiting THEN 'accepted_older_waiting' ELSE 'accepted' END;
END;
$$;

-- After a confirmed hand-off: the codes of the same recipient and partner
-- that still wait for a worker are void (a code lives at most 60 minutes,
-- which bounds the scan). Returns how many were superseded.
CREATE FUNCTION supersede_older(p_id uuid) RETURNS integer LANGUAGE sql AS $$
    WITH newer AS (SELECT recipient, partner_id, created_at FROM dispatches WHERE id = p_id),
    voided AS (
        UPDATE dispatches o
           SET status = 'superseded', code_sealed = NULL, lease_until = NULL,
               claim_token = NULL, updated_at = now()
          FROM newer n
         WHERE o.recipient = n.recipient AND o.partner_id = n.partner_id
           AND o.created_at < n.created_at
           AND o.created_at > n.created_at - interval '61 minutes'
           AND o.status IN ('queued', 'retrying')
        RETURNING 1)
    SELECT count(*)::integer FROM voided;
$$;

-- A worker's claim of one dispatch, in one round trip. Returns one row:
--   outcome 'claimed'    the caller owns it until lease_until (the other
--                        columns describe it); older waiting codes of the
--                        same recipient and partner are superseded;
--           'leased'     another worker's lease is live: look again after
--                        wait_secs;
--           'held'       a newer code's hand-off is not decided yet: look
--                        again after wait_secs (it may fail, and then this
--                        code is still the one to mail);
--           'superseded' a newer code was handed off: this one is void now;
--           'expired'    the code expired before it could be sent (recorded);
--           'finished'   already final (status says which);
--           'missing'    no such dispatch.
-- An expired lease is taken over only p_takeover_secs after it ran out, so
-- a live holder that lost Postgres for a moment can renew or record first.
CREATE FUNCTION claim_dispatch(p_id uuid, p_lease_secs float8, p_token uuid,
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
    SELECT bool_or(n.status <> 'queued' OR n.handoff_by IS NULL OR n.handoff_by <= v_now),
           max(n.handoff_by) FILTER (WHERE n.status = 'queued' AND n.handoff_by > v_now)
      INTO v_decided, v_undecided_until
      FROM dispatches n
     WHERE n.recipient = r.recipient AND n.partner_id = r.partner_id
       AND n.created_at > r.created_at AND n.created_at <= r.expires_at
       AND n.counts_toward_limit;
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
    -- This code is on its way: older ones still waiting are void. (A code
    -- lives at most 60 minutes, which bounds the scan.)
    UPDATE dispatches o
       SET status = 'superseded', code_sealed = NULL, lease_until = NULL,
           claim_token = NULL, updated_at = v_now
     WHERE o.recipient = r.recipient AND o.partner_id = r.partner_id
       AND o.created_at < r.created_at
       AND o.created_at > r.created_at - interval '61 minutes'
       AND o.status IN ('queued', 'retrying');
    RETURN QUERY SELECT 'claimed', r.status, NULL::float8, r.email, r.lang, r.ttl_minutes,
        r.code_sealed, r.attempts, r.created_at, r.expires_at;
END;
$$;
