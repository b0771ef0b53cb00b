-- Webhook endpoints (issue 24, first part): one per partner, set with
-- `verimail webhook set` and removed with `verimail webhook remove`. The
-- signing secret is sealed like AK secret keys (XChaCha20-Poly1305 under a
-- subkey of VERIMAIL_SECRET, the partner id as associated data). Setting
-- an endpoint again rotates the secret: the previous one keeps signing
-- beside the new one until `previous_until` (24 h), so receivers can move
-- to the new secret without refusing a delivery. `disabled_at` is set when
-- the endpoint answers 410 Gone; setting it again enables it.

CREATE TABLE partner_webhooks (
    partner_id uuid PRIMARY KEY REFERENCES partners (id) ON DELETE CASCADE,
    url text NOT NULL CHECK (url ~ '^https?://' AND length(url) <= 2000),
    secret_sealed bytea NOT NULL,
    previous_secret_sealed bytea,
    previous_until timestamptz,
    disabled_at timestamptz,
    disabled_reason text CHECK (length(disabled_reason) <= 500),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CHECK ((previous_secret_sealed IS NULL) = (previous_until IS NULL))
);

COMMENT ON TABLE partner_webhooks IS 'each partner''s webhook endpoint (README, "Webhooks")';
COMMENT ON COLUMN partner_webhooks.previous_secret_sealed IS 'the secret before the last rotation; signs beside the new one until previous_until';
COMMENT ON COLUMN partner_webhooks.disabled_at IS 'set when the endpoint answered 410 Gone; `webhook set` clears it';
