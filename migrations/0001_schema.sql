-- verimail schema. Postgres is the source of truth; the broker only carries
-- dispatch ids. Secrets are stored as digests or sealed (AEAD) values only.

-- Accounts that may call the API. `kind = 'customer'` accounts authenticate
-- but are refused with CBC.99000035; suspended partners get CBC.0151.
CREATE TABLE partners (
    id          uuid PRIMARY KEY,
    name        text NOT NULL,
    kind        text NOT NULL CHECK (kind IN ('partner', 'customer')),
    status      text NOT NULL CHECK (status IN ('active', 'suspended')),
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Tokens are looked up by their keyed digest (HMAC with a key derived from
-- VERIMAIL_SECRET), so a copy of this table grants nothing.
CREATE TABLE tokens (
    digest      bytea PRIMARY KEY,
    partner_id  uuid NOT NULL REFERENCES partners (id),
    expires_at  timestamptz NOT NULL,
    revoked_at  timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- AK/SK pairs. The SK must be recoverable to check HMAC signatures, so it is
-- sealed (XChaCha20-Poly1305, the access key as associated data).
CREATE TABLE access_keys (
    access_key     text PRIMARY KEY,
    partner_id     uuid NOT NULL REFERENCES partners (id),
    secret_sealed  bytea NOT NULL,
    revoked_at     timestamptz,
    created_at     timestamptz NOT NULL DEFAULT now()
);

-- One row per accepted (or hand-off-failed) send request.
CREATE TABLE dispatches (
    id                   uuid PRIMARY KEY,             -- also the X-Request-Id of the 204
    partner_id           uuid NOT NULL REFERENCES partners (id),
    recipient            text NOT NULL,                -- normalised: trimmed, lower-case
    email                text NOT NULL,                -- the address as given, trimmed
    lang                 text NOT NULL CHECK (lang IN ('zh-cn', 'en-us')),
    ttl_minutes          integer NOT NULL CHECK (ttl_minutes BETWEEN 1 AND 60),
    status               text NOT NULL CHECK (status IN ('queued', 'sending', 'retrying', 'sent',
                                 'failed', 'expired', 'superseded', 'verified')),
    code_digest          bytea NOT NULL,               -- HMAC(dispatch id || code)
    code_sealed          bytea,                        -- for the worker; wiped once terminal
    -- false once the hand-off to the broker failed: such rows never count
    -- toward the rate limit (SPEC §2, CBC.99004003).
    counts_toward_limit  boolean NOT NULL DEFAULT true,
    attempts             integer NOT NULL DEFAULT 0,   -- SMTP attempts started
    check_failures       integer NOT NULL DEFAULT 0,   -- wrong codes entered
    last_error           text,
    lease_until          timestamptz,                  -- a worker's claim while `sending`
    next_attempt_at      timestamptz NOT NULL,         -- when the broker should deliver it
    created_at           timestamptz NOT NULL,
    expires_at           timestamptz NOT NULL,
    sent_at              timestamptz,
    updated_at           timestamptz NOT NULL DEFAULT now()
);

-- Rate limit and supersession scan one recipient's recent rows.
CREATE INDEX dispatches_recipient_recent ON dispatches (recipient, created_at DESC);
-- The sweeper looks only at open dispatches.
CREATE INDEX dispatches_open ON dispatches (next_attempt_at)
    WHERE status IN ('queued', 'sending', 'retrying');

-- Accepts a dispatch if the recipient's rate limit allows it, in one round
-- trip. A per-recipient advisory lock serialises concurrent requests for one
-- address across every intake process; inside PL/pgSQL each statement takes
-- a fresh snapshot, so the count sees every row committed before the lock
-- was granted. clock_timestamp() (not now()) orders rows by lock order.
-- Returns 'accepted' or 'rate_limited'.
CREATE FUNCTION accept_dispatch(
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
    -- Only the newest code of a recipient is worth mailing or checking.
    UPDATE dispatches
       SET status = 'superseded', code_sealed = NULL, lease_until = NULL, updated_at = v_now
     WHERE recipient = p_recipient AND partner_id = p_partner
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
