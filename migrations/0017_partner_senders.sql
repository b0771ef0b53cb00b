-- Per-partner sender and brand (issue 25): `verimail partner set` stores a
-- partner's own brand, From, Reply-To and support URL; NULL is the
-- operator's default (VERIMAIL_BRAND, VERIMAIL_MAIL_FROM, none, none).
-- The CLI checks each value (a mailbox whose domain the operator allows, an
-- http(s) URL) and stores it normalised; workers check the stored values
-- again before use, so a setting the operator no longer allows falls back
-- to the default instead of being sent. The CHECKs below only keep out
-- what no check could have let through. Nullable columns without a
-- default: adding them rewrites nothing.

ALTER TABLE partners
    ADD COLUMN brand text CHECK (length(brand) BETWEEN 1 AND 100),
    ADD COLUMN mail_from text CHECK (length(mail_from) BETWEEN 3 AND 320),
    ADD COLUMN reply_to text CHECK (length(reply_to) BETWEEN 3 AND 320),
    ADD COLUMN support_url text CHECK (support_url ~ '^https?://' AND length(support_url) <= 2000);

COMMENT ON COLUMN partners.brand IS 'shown in the mail''s subject and body; NULL: VERIMAIL_BRAND';
COMMENT ON COLUMN partners.mail_from IS 'From mailbox, its domain one the operator allows; NULL: VERIMAIL_MAIL_FROM';
COMMENT ON COLUMN partners.reply_to IS 'Reply-To mailbox; NULL: no Reply-To';
COMMENT ON COLUMN partners.support_url IS 'http(s) URL shown in both parts of the mail; NULL: none';

-- The worker needs the dispatch's partner to pick its sender. The claim
-- already holds the row, so its answer carries `partner_id`: no second
-- statement per mail (workers cache each partner's settings for a few
-- seconds). Adding a column changes the function's result type, which
-- CREATE OR REPLACE cannot do and which would break the prepared claim of
-- every worker not yet upgraded ("cached plan must not change result
-- type"), so the body moves to a function of its own name, as 0013 left
-- it plus that column, and `claim_dispatch` becomes a wrapper with the
-- same answer as before for those workers.

CREATE FUNCTION claim_dispatch_with_partner(p_id uuid, p_lease_secs float8, p_token uuid,
                                            p_takeover_secs float8)
RETURNS TABLE (outcome text, status text, wait_secs float8, email text, lang text,
               ttl_minutes integer, code_sealed bytea, attempts integer,
               created_at timestamptz, expires_at timestamptz, partner_id uuid)
LANGUAGE plpgsql
-- As 0016 set for claim_dispatch (tests/api/plans.rs checks it).
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
SET enable_bitmapscan = off
AS $$
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
            NULL::integer, NULL::bytea, NULL::integer, NULL::timestamptz, NULL::timestamptz,
            NULL::uuid;
        RETURN;
    END IF;
    IF r.status NOT IN ('queued', 'sending', 'retrying') THEN
        RETURN QUERY SELECT 'finished', r.status, NULL::float8, NULL::text, NULL::text,
            NULL::integer, NULL::bytea, NULL::integer, NULL::timestamptz, NULL::timestamptz,
            NULL::uuid;
        RETURN;
    END IF;
    IF r.status = 'sending'
       AND r.lease_until + make_interval(secs => p_takeover_secs) > v_now THEN
        RETURN QUERY SELECT 'leased', r.status,
            extract(epoch FROM r.lease_until + make_interval(secs => p_takeover_secs) - v_now)::float8,
            NULL::text, NULL::text, NULL::integer, NULL::bytea, NULL::integer,
            NULL::timestamptz, NULL::timestamptz, NULL::uuid;
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
            NULL::integer, NULL::bytea, NULL::integer, NULL::timestamptz, NULL::timestamptz,
            NULL::uuid;
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
            NULL::timestamptz, NULL::uuid;
        RETURN;
    END IF;
    IF v_undecided_until IS NOT NULL THEN
        RETURN QUERY SELECT 'held', r.status,
            extract(epoch FROM v_undecided_until - v_now)::float8, NULL::text, NULL::text,
            NULL::integer, NULL::bytea, NULL::integer, NULL::timestamptz, NULL::timestamptz,
            NULL::uuid;
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
        r.code_sealed, r.attempts, r.created_at, r.expires_at, r.partner_id;
END;
$$;

-- Same signature and answer as before, for workers not yet upgraded; one
-- body to keep. CREATE OR REPLACE drops a SET list it does not repeat, so
-- 0016's is repeated here.
CREATE OR REPLACE FUNCTION claim_dispatch(p_id uuid, p_lease_secs float8, p_token uuid,
                                          p_takeover_secs float8)
RETURNS TABLE (outcome text, status text, wait_secs float8, email text, lang text,
               ttl_minutes integer, code_sealed bytea, attempts integer,
               created_at timestamptz, expires_at timestamptz)
LANGUAGE sql
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
SET enable_bitmapscan = off
AS $$
    SELECT c.outcome, c.status, c.wait_secs, c.email, c.lang, c.ttl_minutes, c.code_sealed,
           c.attempts, c.created_at, c.expires_at
      FROM claim_dispatch_with_partner(p_id, p_lease_secs, p_token, p_takeover_secs) c
$$;
