-- Time-partitioned dispatches, step 1 of 3 (ARCHITECTURE.md, "Data
-- lifecycle"). `dispatches` becomes a table partitioned by ranges of `id`:
-- ids are UUIDv7, whose first 48 bits are the Unix time in milliseconds, and
-- uuid compares byte by byte, so a range of ids is a range of time. Lookups by
-- id then touch one partition, the primary key stays (id), and old data goes
-- by dropping whole partitions instead of a DELETE.
--
-- The three steps are separate migrations, so each commits on its own and no
-- long lock is held on a populated table:
--   0006 adds `id < bound` as NOT VALID: instant, whatever the table holds;
--   0007 validates it: a full scan, under SHARE UPDATE EXCLUSIVE, which lets
--        reads and writes go on;
--   0008 renames the table, creates the partitioned one and attaches the old
--        table as its first partition: catalogue changes only, as the
--        validated constraint spares Postgres the scan.
-- The bound is the start of the UTC day after tomorrow, so rows written
-- between these steps satisfy it. If 0008 cannot run before that moment,
-- sends fail on the constraint: finish `verimail migrate` the same day.

-- The smallest UUIDv7 of an instant: the lower bound of the ids made from it on.
CREATE FUNCTION verimail_id_at(p_at timestamptz) RETURNS uuid
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT (lpad(to_hex(floor(extract(epoch FROM p_at) * 1000)::bigint), 12, '0')
            || '00000000000000000000')::uuid
$$;

-- The instant a UUIDv7 was made (its first 48 bits, milliseconds).
CREATE FUNCTION verimail_id_time(p_id uuid) RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT to_timestamp(('x' || lpad(substr(replace(p_id::text, '-', ''), 1, 12), 16, '0'))::bit(64)::bigint
                        / 1000.0)
$$;

DO $$
BEGIN
    EXECUTE format(
        'ALTER TABLE dispatches ADD CONSTRAINT dispatches_legacy_bound CHECK (id < %L::uuid) NOT VALID',
        verimail_id_at(date_trunc('day', now(), 'UTC') + interval '2 days'));
END
$$;
