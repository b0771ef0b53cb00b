-- Webhook events (issue 24): a transactional outbox. A trigger on
-- `dispatches` writes the event in the transaction that changes the row, so
-- there is no event without its change and no change without its event,
-- whichever statement made it (the worker's outcomes, the intake's
-- supersession and failed hand-offs, `/check`, a waited send's refusal).
-- Only partners with an enabled endpoint get rows; workers deliver them
-- (crates/verimail-worker/src/webhooks.rs).
--
-- The body is written once, here: every retry sends the same bytes under
-- the same `webhook-id`, and no code or address is ever in it.

CREATE TABLE webhook_events (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),  -- webhook-id: msg_<hex>
    partner_id      uuid NOT NULL REFERENCES partner_webhooks (partner_id) ON DELETE CASCADE,
    dispatch_id     uuid NOT NULL,
    type            text NOT NULL,
    body            text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    attempts        integer NOT NULL DEFAULT 0,
    -- When a worker may next try it. A claim moves it past the attempt's
    -- timeout, so the claim is also the lease: a worker killed mid-delivery
    -- leaves the event due again once that time passes.
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    delivered_at    timestamptz,
    -- Given up: past the retry window, or the endpoint answered 410 Gone.
    abandoned_at    timestamptz,
    last_error      text CHECK (length(last_error) <= 500)
);

-- Claims walk the partners with undelivered events (a skip scan: one probe
-- per partner) and take each one's due events in time order, so a partner
-- whose dead endpoint holds a million events costs a claim one probe, not
-- a scan past all of them.
CREATE INDEX webhook_events_due ON webhook_events (partner_id, next_attempt_at)
    WHERE delivered_at IS NULL AND abandoned_at IS NULL;
-- `verimail forget` removes a recipient's events with its dispatches.
CREATE INDEX webhook_events_dispatch ON webhook_events (dispatch_id);
-- Maintenance drops events past the dispatches' retention.
CREATE INDEX webhook_events_created ON webhook_events (created_at);

COMMENT ON TABLE webhook_events IS 'the webhook outbox: one row per event per partner endpoint (README, "Webhooks")';

-- 3 is MAX_CHECK_FAILURES (crates/verimail-infra/src/store/dispatches/check.rs):
-- the wrong try that voids a code is the one that reaches it.
CREATE FUNCTION dispatch_webhook_event() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    kind text;
    at text := to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"');
BEGIN
    IF NEW.check_failures >= 3 AND OLD.check_failures < 3 THEN
        kind := 'code.locked';
    ELSE
        kind := CASE NEW.status
            WHEN 'sent' THEN 'dispatch.sent'
            WHEN 'retrying' THEN 'dispatch.deferred'
            WHEN 'failed' THEN 'dispatch.failed'
            WHEN 'expired' THEN 'dispatch.expired'
            WHEN 'superseded' THEN 'dispatch.superseded'
            WHEN 'verified' THEN 'code.verified'
        END;
    END IF;
    INSERT INTO webhook_events (partner_id, dispatch_id, type, body)
    SELECT w.partner_id, NEW.id, kind,
           jsonb_build_object(
               'type', kind,
               'timestamp', at,
               'data', jsonb_strip_nulls(jsonb_build_object(
                   'dispatch_id', NEW.id,
                   'status', NEW.status,
                   'attempts', NEW.attempts,
                   'reason', CASE WHEN kind IN ('dispatch.deferred', 'dispatch.failed')
                                  THEN NEW.last_error END,
                   'next_attempt_at', CASE WHEN kind = 'dispatch.deferred'
                       THEN to_char(NEW.next_attempt_at AT TIME ZONE 'UTC',
                                    'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') END,
                   'occurred_at', at)))::text
      FROM partner_webhooks w
     WHERE w.partner_id = NEW.partner_id AND w.disabled_at IS NULL;
    RETURN NULL;
END
$$;

-- The WHEN runs without calling the function: lease renewals, claims and
-- other updates that raise no event cost nothing.
CREATE TRIGGER dispatches_webhook_events
    AFTER UPDATE ON dispatches
    FOR EACH ROW
    WHEN ((NEW.status IS DISTINCT FROM OLD.status
           AND NEW.status IN ('sent', 'retrying', 'failed', 'expired', 'superseded', 'verified'))
          OR (NEW.check_failures >= 3 AND OLD.check_failures < 3))
    EXECUTE FUNCTION dispatch_webhook_event();
