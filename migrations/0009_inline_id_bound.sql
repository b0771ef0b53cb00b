-- verimail_id_at (0006) made inlinable: the same value for every instant,
-- computed only from immutable functions.
--
-- Postgres inlines a LANGUAGE sql function only when the expression it
-- becomes is no more volatile than the function claims to be. 0006's body
-- used extract(epoch FROM timestamptz), which is STABLE, so the function was
-- never inlined: every statement that bounds `id` with it (the rate-limit
-- count, claim_dispatch's scans, supersede_older) called it through the SQL
-- function executor while pruning partitions, which parses and plans the body
-- again on every execution. That was about a fifth of a claim's CPU in
-- Postgres. The difference of two timestamptz is an interval, and the epoch
-- of an interval is IMMUTABLE, so this body inlines; its value is the same
-- (tests/schema.rs compares both on random instants, and the
-- partition bounds already stored were made by the same arithmetic).
CREATE OR REPLACE FUNCTION verimail_id_at(p_at timestamptz) RETURNS uuid
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT (lpad(to_hex(floor(extract(epoch FROM (p_at - timestamptz '1970-01-01 00:00:00+00'))
                              * 1000)::bigint), 12, '0')
            || '00000000000000000000')::uuid
$$;
