-- Time-partitioned dispatches, step 3 of 3 (see 0006). Catalogue changes
-- only; the lock timeout makes a busy table fail this step quickly (run
-- `verimail migrate` again) rather than queue every send behind it.
SET LOCAL lock_timeout = '10s';

DO $$
DECLARE
    v_bound uuid;
    v_from timestamptz;
    v_day timestamptz;
    v_name text;
BEGIN
    LOCK TABLE dispatches IN ACCESS EXCLUSIVE MODE;
    SELECT substring(pg_get_constraintdef(oid) FROM '''([0-9a-f-]{36})''')::uuid INTO v_bound
      FROM pg_constraint
     WHERE conrelid = 'dispatches'::regclass AND conname = 'dispatches_legacy_bound';

    ALTER TABLE dispatches RENAME TO dispatches_legacy;
    ALTER INDEX dispatches_pkey RENAME TO dispatches_legacy_pkey;
    ALTER INDEX dispatches_recipient_recent RENAME TO dispatches_legacy_recipient_recent;
    ALTER INDEX dispatches_open RENAME TO dispatches_legacy_open;

    -- Same columns, defaults, NOT NULL and CHECK constraints (same names,
    -- which ATTACH matches), comments.
    CREATE TABLE dispatches (LIKE dispatches_legacy
        INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING COMMENTS)
        PARTITION BY RANGE (id);
    ALTER TABLE dispatches DROP CONSTRAINT dispatches_legacy_bound;
    ALTER TABLE dispatches ADD CONSTRAINT dispatches_pkey PRIMARY KEY (id);
    ALTER TABLE dispatches ADD CONSTRAINT dispatches_partner_id_fkey
        FOREIGN KEY (partner_id) REFERENCES partners (id);
    -- Rate limit and supersession scan one recipient's recent rows.
    CREATE INDEX dispatches_recipient_recent ON dispatches (recipient, created_at DESC);
    -- The sweeper looks only at open dispatches.
    CREATE INDEX dispatches_open ON dispatches (next_attempt_at)
        WHERE status IN ('queued', 'sending', 'retrying');
    COMMENT ON TABLE dispatches IS
        'one row per accepted (or hand-off-failed) send; partitioned by ranges of the UUIDv7 id, one UTC day each; `verimail maintain` creates and drops partitions';

    IF EXISTS (SELECT 1 FROM dispatches_legacy) THEN
        -- The old table becomes the partition of everything below the bound:
        -- its validated constraint implies the partition constraint, its
        -- indexes and foreign key match the parent's and are adopted as they are.
        EXECUTE format('ALTER TABLE dispatches ATTACH PARTITION dispatches_legacy
                        FOR VALUES FROM (MINVALUE) TO (%L)', v_bound);
        v_from := verimail_id_time(v_bound);
    ELSE
        -- A new installation (or one that holds nothing): daily partitions only.
        DROP TABLE dispatches_legacy;
        v_from := date_trunc('day', now(), 'UTC') - interval '1 day';
    END IF;

    -- Daily partitions through three days ahead; `verimail maintain` (run by
    -- every worker, one at a time) keeps that margin from now on. Each
    -- carries its range as a CHECK constraint too, for when it is detached.
    v_day := v_from;
    WHILE v_day < date_trunc('day', now(), 'UTC') + interval '4 days' LOOP
        v_name := 'dispatches_p' || to_char(v_day AT TIME ZONE 'UTC', 'YYYYMMDD');
        EXECUTE format('CREATE TABLE %I PARTITION OF dispatches FOR VALUES FROM (%L) TO (%L)',
                       v_name, verimail_id_at(v_day), verimail_id_at(v_day + interval '1 day'));
        EXECUTE format('ALTER TABLE %I ADD CONSTRAINT %I CHECK (id >= %L::uuid AND id < %L::uuid)',
                       v_name, v_name || '_bound',
                       verimail_id_at(v_day), verimail_id_at(v_day + interval '1 day'));
        v_day := v_day + interval '1 day';
    END LOOP;
END
$$;

-- The functions below are those of 0004, redefined against the partitioned
-- table: recompiled (claim_dispatch's row type is the new table's), and each
-- scan of one recipient's rows also bounds `id`, so Postgres skips the
-- partitions that cannot hold them. Those bounds are exact because
-- accept_dispatch refuses an id more than 5 minutes away from the database
-- clock (an intake host whose clock is that far off gets 500s and a log line
-- saying so), so `id` and `created_at` never disagree by more.

CREATE OR REPLACE FUNCTION accept_dispatch(
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
    IF verimail_id_time(p_id) NOT BETWEEN v_now - interval '5 minutes'
                                      AND v_now + interval '5 minutes' THEN
        RAISE EXCEPTION 'dispatch id % was made at %, more than 5 minutes away from the database clock (%): check the intake host''s clock',
            p_id, verimail_id_time(p_id), v_now
            USING ERRCODE = 'data_exception';
    END IF;
    SELECT count(*) FILTER (WHERE created_at > v_now - interval '1 hour'), count(*),
           coalesce(bool_or(partner_id = p_partner AND status IN ('queued', 'retrying')), false)
      INTO v_hour, v_day, v_older_waiting
      FROM dispatches
     WHERE recipient = p_recipient
       AND counts_toward_limit
       AND created_at > v_now - interval '1 day'
       AND id >= verimail_id_at(v_now - interval '1 day 5 minutes');
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

CREATE OR REPLACE FUNCTION supersede_older(p_id uuid) RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    n record;
    v_count integer;
BEGIN
    SELECT recipient, partner_id, created_at INTO n FROM dispatches WHERE id = p_id;
    IF NOT FOUND THEN
        RETURN 0;
    END IF;
    UPDATE dispatches o
       SET status = 'superseded', code_sealed = NULL, lease_until = NULL,
           claim_token = NULL, updated_at = now()
     WHERE o.recipient = n.recipient AND o.partner_id = n.partner_id
       AND o.created_at < n.created_at
       AND o.created_at > n.created_at - interval '61 minutes'
       AND o.id >= verimail_id_at(n.created_at - interval '66 minutes')
       AND o.status IN ('queued', 'retrying');
    GET DIAGNOSTICS v_count = ROW_COUNT;
    RETURN v_count;
END;
$$;

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
       AND n.id >= verimail_id_at(r.created_at - interval '5 minutes')
       AND n.id < verimail_id_at(r.expires_at + interval '5 minutes')
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
    -- This code is on its way: older ones still waiting are void.
    UPDATE dispatches o
       SET status = 'superseded', code_sealed = NULL, lease_until = NULL,
           claim_token = NULL, updated_at = v_now
     WHERE o.recipient = r.recipient AND o.partner_id = r.partner_id
       AND o.created_at < r.created_at
       AND o.created_at > r.created_at - interval '61 minutes'
       AND o.id >= verimail_id_at(r.created_at - interval '66 minutes')
       AND o.status IN ('queued', 'retrying');
    RETURN QUERY SELECT 'claimed', r.status, NULL::float8, r.email, r.lang, r.ttl_minutes,
        r.code_sealed, r.attempts, r.created_at, r.expires_at;
END;
$$;
