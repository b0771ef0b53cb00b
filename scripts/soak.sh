#!/usr/bin/env bash
# The history soak (BENCHMARKS.md, "History soak"): does a database that
# holds days of history serve sends as fast as an empty one, and what does
# retention give back? In one run on this machine:
#
#   1. two databases, both migrated: one empty, one with ROWS rows of
#      finished dispatches spread over the last five days (daily
#      partitions, VACUUM ANALYZE'd as an aged table would be);
#   2. one intake on each (no workers: the intake alone is measured), then
#      closed-loop load at c=C, alternating empty/history ROUNDS times;
#   3. the history table's size, `verimail maintain` with
#      VERIMAIL_RETENTION, and the size after.
#
# Usage: scripts/soak.sh [--smoke]
#   --smoke (or SOAK_SMOKE=1)  100k rows, 3 s rounds (CI)
# Environment: SOAK_ROWS (10000000), SOAK_ROUNDS (2), SOAK_SECS (20),
#   SOAK_CONCURRENCY (64), SOAK_RETENTION (72h), BENCH_PG_URL, AMQP_URL,
#   SOAK_KEEP=1 (keep the databases).
# Fails on a broken step; never on a timing.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SMOKE=${SOAK_SMOKE:-0}
for arg in "$@"; do
  case $arg in
    --smoke) SMOKE=1 ;;
    -h | --help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | grep '^#' | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "soak.sh: unknown argument $arg (see --help)" >&2; exit 2 ;;
  esac
done
if [ "$SMOKE" = 1 ]; then
  ROWS=${SOAK_ROWS:-100000} SECS=${SOAK_SECS:-3} ROUNDS=${SOAK_ROUNDS:-1} WARMUP=200
else
  ROWS=${SOAK_ROWS:-10000000} SECS=${SOAK_SECS:-20} ROUNDS=${SOAK_ROUNDS:-2} WARMUP=2000
fi
C=${SOAK_CONCURRENCY:-64}
RETENTION=${SOAK_RETENTION:-72h}
PG_URL=${BENCH_PG_URL:-postgres://postgres@127.0.0.1:5432}
export AMQP_URL=${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
RUN=$(date -u +%Y%m%dT%H%M%S)-$$
RUN_ID=${RUN//[^0-9a-zA-Z]/_}
EMPTY_DB=verimail_soak_${RUN_ID,,}_empty
HIST_DB=verimail_soak_${RUN_ID,,}_history
PREFIX=soak_${RUN_ID,,}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
OUT=${SOAK_OUT:-$TARGET_DIR/soak/$RUN}
mkdir -p "$OUT"
export VERIMAIL_SECRET=dmVyaW1haWwtYmVuY2gtZml4ZWQtc2VjcmV0LTMyYiE=
# The intake-alone phases queue far more than the shedding bound.
export VERIMAIL_MAX_BACKLOG=0
export RUST_LOG=${SOAK_RUST_LOG:-warn}
export VERIMAIL_AMQP_PREFIX=$PREFIX

SCRIPT_NAME=soak.sh
# shellcheck source=scripts/lib.sh
. "$ROOT/scripts/lib.sh"
need psql "apt-get install postgresql-client"
need python3 "apt-get install python3"

PIDS=()
cleanup() {
  local status=$? pid q
  trap - EXIT INT TERM
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ "${SOAK_KEEP:-0}" != 1 ]; then
    for db in "$EMPTY_DB" "$HIST_DB"; do
      psql -q "$PG_URL/postgres" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
    done
    if command -v rabbitmqctl >/dev/null && [ "$(id -u)" = 0 ]; then
      for q in $(timeout 30 rabbitmqctl -q list_queues name 2>/dev/null | grep "^$PREFIX\." || true); do
        timeout 30 rabbitmqctl -q delete_queue "$q" >/dev/null 2>&1 || true
      done
    fi
  fi
  [ "$status" = 0 ] || echo "soak.sh: logs are in $OUT" >&2
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

{
  echo "run $RUN  smoke=$SMOKE  rows=$ROWS  rounds=$ROUNDS x ${SECS}s  c=$C  retention=$RETENTION"
  echo "cores: $(nproc)"
  echo "commit: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "load: $(uptime)"
} | tee "$OUT/machine.txt" >&2

log "release build"
export CARGO_TARGET_DIR=$TARGET_DIR
(cd "$ROOT" && cargo build --release -p verimail -p verimail-bench) || die "cargo build failed"
VERIMAIL=$TARGET_DIR/release/verimail
BENCH=$TARGET_DIR/release/verimail-bench

pg_isready -q -d "$PG_URL/postgres" || die "Postgres is not reachable at $PG_URL"
declare -A TOKEN URL
for db in "$EMPTY_DB" "$HIST_DB"; do
  psql -q -v ON_ERROR_STOP=1 "$PG_URL/postgres" -c "CREATE DATABASE $db" || die "creating $db"
  DATABASE_URL=$PG_URL/$db "$VERIMAIL" migrate >/dev/null 2>>"$OUT/cli.log" || die "migrate $db"
  partner=$(DATABASE_URL=$PG_URL/$db "$VERIMAIL" partner create --name soak 2>>"$OUT/cli.log" |
    sed -n 's/.*"partner_id":"\([^"]*\)".*/\1/p')
  [ -n "$partner" ] || die "partner create on $db"
  TOKEN[$db]=$(DATABASE_URL=$PG_URL/$db "$VERIMAIL" token issue --partner "$partner" 2>>"$OUT/cli.log" |
    sed -n 's/.*"token":"\([^"]*\)".*/\1/p')
  [ -n "${TOKEN[$db]}" ] || die "token issue on $db"
done

log "history: $ROWS finished dispatches over the last five days in $HIST_DB"
HIST=$PG_URL/$HIST_DB
started=$(date +%s)
psql -q -v ON_ERROR_STOP=1 "$HIST" <<SQL || die "creating the history"
-- Daily partitions for the five days back (migrate made yesterday onwards).
DO \$\$
DECLARE d timestamptz;
BEGIN
  FOR i IN 2..5 LOOP
    d := date_trunc('day', now(), 'UTC') - make_interval(days => i);
    EXECUTE format('CREATE TABLE %I PARTITION OF dispatches FOR VALUES FROM (%L) TO (%L)',
                   'dispatches_p' || to_char(d AT TIME ZONE 'UTC', 'YYYYMMDD'),
                   verimail_id_at(d), verimail_id_at(d + interval '1 day'));
  END LOOP;
END
\$\$;
SQL
partner=$(psql -qtA "$HIST" -c "SELECT id FROM partners LIMIT 1")
chunk=1000000
for ((from = 1; from <= ROWS; from += chunk)); do
  to=$((from + chunk - 1)); [ "$to" -le "$ROWS" ] || to=$ROWS
  # Spread evenly from five days ago to an hour ago; 2M distinct recipients
  # (none of them the load's), real digest/sealed sizes, final states.
  psql -q -v ON_ERROR_STOP=1 "$HIST" -c "
    INSERT INTO dispatches (id, partner_id, recipient, email, lang, ttl_minutes, status,
                            code_digest, next_attempt_at, created_at, expires_at, sent_at,
                            attempts, updated_at)
    SELECT (substr(verimail_id_at(at)::text, 1, 14) || substr(md5(g::text), 1, 4) || '-'
            || substr(md5(g::text), 5, 4) || '-' || substr(md5(g::text), 9, 12))::uuid,
           '$partner', r, r, 'en-us', 10,
           (ARRAY['sent', 'sent', 'sent', 'verified', 'expired', 'failed'])[1 + g % 6],
           decode(md5(g::text) || md5(g::text), 'hex'), at, at, at + interval '10 minutes', at, 1, at
      FROM generate_series($from, $to) g,
           LATERAL (SELECT now() - interval '5 days'
                           + (interval '5 days' - interval '1 hour') * (g::float8 / $ROWS) AS at,
                           'hist-' || (g % 2000000) || '@example.com' AS r) x" ||
    die "inserting rows $from..$to"
  echo "  $to rows ($(($(date +%s) - started)) s)" >&2
done
psql -q -v ON_ERROR_STOP=1 "$HIST" -c "VACUUM (ANALYZE) dispatches" || die "VACUUM ANALYZE"
# History that old is long written out: without this, the checkpoint of
# the bulk load's gigabytes would run during the first measured rounds.
psql -q -v ON_ERROR_STOP=1 "$HIST" -c "CHECKPOINT" || die "CHECKPOINT"
echo "history written and vacuumed in $(($(date +%s) - started)) s" | tee "$OUT/history.txt" >&2

size_of() { # database-url
  psql -qtA "$1" -c "SELECT coalesce(sum(pg_total_relation_size(inhrelid)), 0) FROM pg_inherits WHERE inhparent = 'dispatches'::regclass"
}
rows_of() { psql -qtA "$1" -c "SELECT count(*) FROM dispatches"; }

log "intakes"
for db in "$EMPTY_DB" "$HIST_DB"; do
  port=$(free_port)
  URL[$db]=http://127.0.0.1:$port
  DATABASE_URL=$PG_URL/$db VERIMAIL_LISTEN=127.0.0.1:$port \
    VERIMAIL_INTAKE_METRICS_LISTEN=127.0.0.1:$(free_port) \
    "$VERIMAIL" intake >"$OUT/intake-$db.out" 2>"$OUT/intake-$db.log" &
  PIDS+=("$!")
  for _ in $(seq 100); do tcp_open 127.0.0.1 "$port" && break; sleep 0.1; done
  tcp_open 127.0.0.1 "$port" || die "the intake on $db does not listen"
  "$BENCH" intake --url "${URL[$db]}" -c "$C" --token "${TOKEN[$db]}" -n "$WARMUP" --json \
    >/dev/null 2>>"$OUT/warmup.txt" || die "warm-up on $db"
done

log "closed loop, c=$C, $ROUNDS rounds of ${SECS}s each, empty then history"
: >"$OUT/rounds.txt"
for round in $(seq "$ROUNDS"); do
  for db in "$EMPTY_DB" "$HIST_DB"; do
    kind=empty; [ "$db" = "$HIST_DB" ] && kind=history
    "$BENCH" intake --url "${URL[$db]}" -c "$C" --token "${TOKEN[$db]}" -d "${SECS}s" --json \
      >"$OUT/$kind-$round.json" 2>"$OUT/$kind-$round.txt" || die "load on $kind"
    tail -n 1 "$OUT/$kind-$round.json" | python3 -c "
import json, sys
r = json.load(sys.stdin)
print('$kind', $round, r['requests_per_s'], r['latency_ms']['p99'], r['errors'])" |
      tee -a "$OUT/rounds.txt" >&2 || die "reading the $kind report"
  done
done

log "retention: verimail maintain with VERIMAIL_RETENTION=$RETENTION on $HIST_DB"
before_bytes=$(size_of "$HIST"); before_rows=$(rows_of "$HIST")
DATABASE_URL=$HIST VERIMAIL_RETENTION=$RETENTION "$VERIMAIL" maintain >"$OUT/maintain.json" 2>>"$OUT/cli.log" ||
  die "verimail maintain"
cat "$OUT/maintain.json" >&2
after_bytes=$(size_of "$HIST"); after_rows=$(rows_of "$HIST")

awk -v before="$before_bytes" -v after="$after_bytes" -v brows="$before_rows" -v arows="$after_rows" \
  -v rows="$ROWS" '
  { rps[$1] += $3; n[$1]++; if ($4 > p99[$1]) p99[$1] = $4; err[$1] += $5 }
  END {
    e = rps["empty"] / n["empty"]; h = rps["history"] / n["history"]
    printf "\nsoak: %d rows of history\n", rows
    printf "  intake, empty database    %8.1f req/s  worst p99 %6.2f ms  errors %d\n", e, p99["empty"], err["empty"]
    printf "  intake, with the history  %8.1f req/s  worst p99 %6.2f ms  errors %d\n", h, p99["history"], err["history"]
    printf "  ratio history/empty       %8.2f (goal >= 0.9)\n", h / e
    printf "  dispatches before retention %8.1f MiB, %d rows\n", before / 1048576, brows
    printf "  dispatches after retention  %8.1f MiB, %d rows\n", after / 1048576, arows
    printf "{\"empty_rps\":%.1f,\"history_rps\":%.1f,\"ratio\":%.3f,\"empty_p99_ms\":%.2f,\"history_p99_ms\":%.2f,\"bytes_before\":%d,\"bytes_after\":%d,\"rows_before\":%d,\"rows_after\":%d}\n",
      e, h, h / e, p99["empty"], p99["history"], before, after, brows, arows
  }' "$OUT/rounds.txt" | tee "$OUT/summary.txt"
