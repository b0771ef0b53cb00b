-- Replay-safe and idempotent sends. A send that names itself (an
-- `Idempotency-Key` header, or for an AK/SK-signed request its signature,
-- which covers method, path, date and body) is answered once: a repeat
-- within 24 hours gets the first answer (same status, same X-Request-Id) and
-- mails nothing new. One row per (partner, key); the primary key makes two
-- concurrent repeats agree on one owner. Rows older than 24 hours are
-- ignored and deleted by the workers' sweeper.
CREATE TABLE send_replays (
    partner_id   uuid NOT NULL REFERENCES partners (id),
    key          text NOT NULL,              -- 'idem:<header>' or 'sig:<hex signature>'
    body_digest  bytea NOT NULL,             -- SHA-256 of the request body
    dispatch_id  uuid NOT NULL,              -- X-Request-Id of the first answer
    status       smallint,                   -- HTTP status of the first answer; NULL while it runs
    error_code   text,                       -- its CBC code, for an error answer
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (partner_id, key)
);
CREATE INDEX send_replays_created ON send_replays (created_at);
