#!/usr/bin/env bash
# Measures verimail beside the limits of what it is built on, in one run on
# this machine (issue 7; the figures and their reading are in BENCHMARKS.md):
#
#   1. pgbench: the intake's rate-limit check + insert as separate
#      statements in one transaction, at the same concurrency as the load;
#   2. intake alone (no workers): closed loop, C connections;
#   3. two workers draining the backlog that left (worker capacity alone);
#   4. end to end, closed loop: intake + 2 workers + SMTP sink, mails/s;
#   5. end to end, open loop at a fixed offered rate: request→SMTP latency;
#   then peak RSS of every process and the ratios.
#
# Usage: scripts/bench.sh [--smoke] [--perf] [--keep]
#                        [--compare-stats | --compare-with BIN | --compare-dkim[=ed25519]
#                         | --compare-tracing]
#   --smoke (or BENCH_SMOKE=1)  every phase for a couple of seconds (CI)
#   --compare-stats             the whole run twice, with ANALYZE after the
#                               warm-ups and without (what a newborn daily
#                               partition meets), then both side by side
#   --compare-with BIN          the whole run twice: the verimail binary BIN
#                               (e.g. built from an older commit) first, then
#                               this checkout's, on the same harness, side by
#                               side (BENCH_COMMIT names BIN in the table)
#   --compare-dkim[=ed25519]    the whole run twice: unsigned mail first, then
#                               every mail DKIM-signed (RSA-2048, or Ed25519)
#                               with a key `verimail dkim keygen` makes for the
#                               VERIMAIL_MAIL_FROM domain, side by side
#   --compare-tracing           the whole run twice: no span export first, then
#                               every intake and worker exporting its spans over
#                               OTLP/HTTP to a receiver this script runs
#                               (OTEL_EXPORTER_OTLP_ENDPOINT), side by side
#   --compare-webhooks          the whole run twice: no webhook endpoint first,
#                               then the bench partner's endpoint set to a
#                               receiver that accepts connections and never
#                               answers (every event times out and is retried),
#                               side by side
#   --perf  (or BENCH_PERF=1)   perf-record the intake in phase 2, a worker and
#                               the whole machine in phase 4 (needs `perf`; the
#                               release build's symbols and unwind tables are
#                               enough); never take figures from such a run
#   --keep  (or BENCH_KEEP=1)   keep the databases afterwards
# Environment: BENCH_CONCURRENCY (64), BENCH_RATE (1000), BENCH_*_SECS,
#   BENCH_AUTH (token|aksk), BENCH_RUST_LOG (info), BENCH_OUT (run directory),
#   BENCH_ANALYZE=0 (skip the ANALYZE after the warm-ups),
#   BENCH_AUTO_EXPLAIN=MS (log to the server log the plan of every statement,
#   also those inside functions, that runs longer than MS on the run's database),
#   BENCH_COMMIT (what to call the code measured when $ROOT is no git checkout,
#   or when BENCH_VERIMAIL is set),
#   BENCH_VERIMAIL (a verimail binary to measure instead of this checkout's
#   release build, e.g. one built from an older commit: a before/after on the
#   same harness and schema; the bench's own tools still come from here),
#   BENCH_PG_URL (postgres://postgres@127.0.0.1:5432), AMQP_URL,
#   PGSSLMODE (disable: pgbench without TLS, as verimail connects).
# Needs: cargo, psql, pgbench, and Postgres and RabbitMQ running locally.
# Fails on the first broken step; never on a timing.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SMOKE=${BENCH_SMOKE:-0}
PERF=${BENCH_PERF:-0}
KEEP=${BENCH_KEEP:-0}
COMPARE=0
COMPARE_WITH=""
COMPARE_DKIM=""
COMPARE_TRACING=""
COMPARE_WEBHOOKS=""
want_with=0
for arg in "$@"; do
  if [ "$want_with" = 1 ]; then COMPARE_WITH=$arg want_with=0; continue; fi
  case $arg in
    --compare-stats) COMPARE=1 ;;
    --compare-with) want_with=1 ;;
    --compare-with=*) COMPARE_WITH=${arg#*=} ;;
    --compare-dkim) COMPARE_DKIM=rsa ;;
    --compare-dkim=ed25519) COMPARE_DKIM=ed25519 ;;
    --compare-tracing) COMPARE_TRACING=1 ;;
    --compare-webhooks) COMPARE_WEBHOOKS=1 ;;
    --smoke) SMOKE=1 ;;
    --perf) PERF=1 ;;
    --keep) KEEP=1 ;;
    -h | --help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | grep '^#' | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench.sh: unknown argument $arg (see --help)" >&2; exit 2 ;;
  esac
done
[ "$want_with" = 0 ] || { echo "bench.sh: --compare-with needs a verimail binary" >&2; exit 2; }

C=${BENCH_CONCURRENCY:-64}
RATE=${BENCH_RATE:-1000}
if [ "$SMOKE" = 1 ]; then
  PG_SECS=${BENCH_PG_SECS:-2} INTAKE_SECS=${BENCH_INTAKE_SECS:-2}
  E2E_SECS=${BENCH_E2E_SECS:-2} OPEN_SECS=${BENCH_OPEN_SECS:-2} WARMUP=200 PG_SETTLE=1
else
  PG_SECS=${BENCH_PG_SECS:-30} INTAKE_SECS=${BENCH_INTAKE_SECS:-30}
  E2E_SECS=${BENCH_E2E_SECS:-60} OPEN_SECS=${BENCH_OPEN_SECS:-30} WARMUP=2000 PG_SETTLE=11
fi
PG_URL=${BENCH_PG_URL:-postgres://postgres@127.0.0.1:5432}
export AMQP_URL=${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
AUTH=${BENCH_AUTH:-token}
RUN=$(date -u +%Y%m%dT%H%M%S)-$$
RUN_ID=${RUN//[^0-9a-zA-Z]/_}
DB=verimail_bench_${RUN_ID,,}
PGB_DB=${DB}_pgbench
PREFIX=bench_${RUN_ID,,}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
OUT=${BENCH_OUT:-$TARGET_DIR/bench/$RUN}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
if [ "$COMPARE" = 1 ]; then
  # Each run is a whole bench of its own (fresh databases and queues); the
  # analysed one first, so the second finds the release build done.
  pass=()
  [ "$SMOKE" = 1 ] && pass+=(--smoke)
  [ "$KEEP" = 1 ] && pass+=(--keep)
  BENCH_ANALYZE=1 BENCH_OUT=$OUT/analysed "${BASH_SOURCE[0]}" "${pass[@]}" || exit $?
  BENCH_ANALYZE=0 BENCH_OUT=$OUT/no-stats "${BASH_SOURCE[0]}" "${pass[@]}" || exit $?
  "$TARGET_DIR/release/verimail-bench" compare --analysed "$OUT/analysed" --no-stats "$OUT/no-stats" |
    tee "$OUT/compare.txt"
  echo "run directory: $OUT" >&2
  exit 0
fi
if [ -n "$COMPARE_WITH$COMPARE_DKIM$COMPARE_TRACING$COMPARE_WEBHOOKS" ]; then
  pass=()
  [ "$SMOKE" = 1 ] && pass+=(--smoke)
  [ "$KEEP" = 1 ] && pass+=(--keep)
  if [ -n "$COMPARE_WITH" ]; then
    [ -x "$COMPARE_WITH" ] || { echo "bench.sh: --compare-with $COMPARE_WITH: no executable" >&2; exit 2; }
    base_label=${BENCH_COMMIT:-$(basename "$COMPARE_WITH")} other_label=this
    BENCH_VERIMAIL=$(cd "$(dirname "$COMPARE_WITH")" && pwd)/$(basename "$COMPARE_WITH") \
      BENCH_COMMIT=$base_label BENCH_OUT=$OUT/base "${BASH_SOURCE[0]}" "${pass[@]}" || exit $?
    env -u BENCH_COMMIT BENCH_OUT=$OUT/other "${BASH_SOURCE[0]}" "${pass[@]}" || exit $?
  elif [ -n "$COMPARE_WEBHOOKS" ]; then
    base_label=no-webhooks other_label=dead-endpoint
    env -u BENCH_WEBHOOK_URL BENCH_OUT=$OUT/base "${BASH_SOURCE[0]}" "${pass[@]}" || exit $?
    # A receiver that accepts every connection and never says a word.
    hole_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    python3 - "$hole_port" <<'PY' &
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen(4096)
held = []
while True:
    held.append(s.accept()[0])
    held = held[-20000:]
PY
    hole_pid=$!
    BENCH_WEBHOOK_URL=http://127.0.0.1:$hole_port/hooks \
      BENCH_OUT=$OUT/other "${BASH_SOURCE[0]}" "${pass[@]}" || { kill "$hole_pid"; exit 1; }
    kill "$hole_pid" 2>/dev/null || true
  elif [ -n "$COMPARE_TRACING" ]; then
    base_label=no-export other_label=otlp-export
    env -u OTEL_EXPORTER_OTLP_ENDPOINT -u OTEL_EXPORTER_OTLP_TRACES_ENDPOINT \
      BENCH_OUT=$OUT/base "${BASH_SOURCE[0]}" "${pass[@]}" || exit $?
    # An OTLP/HTTP receiver that takes every export and counts it (what a
    # collector costs is the collector's; this measures what verimail pays).
    otlp_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    python3 - "$otlp_port" "$OUT/otlp-received.txt" <<'PY' &
import http.server, sys, threading
port, out = int(sys.argv[1]), sys.argv[2]
seen = {"requests": 0, "bytes": 0}
lock = threading.Lock()
class Receiver(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with lock:
            seen["requests"] += 1
            seen["bytes"] += len(body)
            with open(out, "w") as f:
                f.write("otlp exports received: %(requests)d requests, %(bytes)d bytes\n" % seen)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", port), Receiver).serve_forever()
PY
    otlp_pid=$!
    OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:$otlp_port \
      BENCH_OUT=$OUT/other "${BASH_SOURCE[0]}" "${pass[@]}" || { kill "$otlp_pid"; exit 1; }
    kill "$otlp_pid" 2>/dev/null || true
    cat "$OUT/otlp-received.txt" 2>/dev/null || echo "otlp exports received: none"
  else
    base_label=unsigned other_label="dkim-$COMPARE_DKIM"
    env -u VERIMAIL_DKIM_KEYS BENCH_OUT=$OUT/base "${BASH_SOURCE[0]}" "${pass[@]}" || exit $?
    # The key for the sender's domain, made by the build the first run left.
    keys=$OUT/dkim-keys
    from=${VERIMAIL_MAIL_FROM:-verimail <no-reply@verimail.localhost>}
    domain=${from##*@}
    domain=${domain%%>*}
    rm -rf "$keys"
    keygen=(dkim keygen --domain "$domain")
    [ "$COMPARE_DKIM" = ed25519 ] && keygen+=(--ed25519)
    VERIMAIL_DKIM_KEYS=$keys "$TARGET_DIR/release/verimail" "${keygen[@]}" >"$OUT/dkim-record.json" ||
      { echo "bench.sh: dkim keygen failed" >&2; exit 1; }
    VERIMAIL_DKIM_KEYS=$keys BENCH_OUT=$OUT/other "${BASH_SOURCE[0]}" "${pass[@]}" || exit $?
  fi
  "$TARGET_DIR/release/verimail-bench" compare --base "$OUT/base" --other "$OUT/other" \
    --base-label "$base_label" --other-label "$other_label" | tee "$OUT/compare.txt"
  echo "run directory: $OUT" >&2
  exit 0
fi
# A fixed master secret (base64 of 32 bytes) shared by intake and workers.
export VERIMAIL_SECRET=dmVyaW1haWwtYmVuY2gtZml4ZWQtc2VjcmV0LTMyYiE=
# The intake-alone phases queue far more than the shedding bound.
export VERIMAIL_MAX_BACKLOG=0
export RUST_LOG=${BENCH_RUST_LOG:-info}
export VERIMAIL_AMQP_PREFIX=$PREFIX

SCRIPT_NAME=bench.sh
# shellcheck source=scripts/lib.sh
. "$ROOT/scripts/lib.sh"

need cargo "rustup"
need psql "apt-get install postgresql-client"
need pgbench "apt-get install postgresql-client (or postgresql-contrib)"
need curl "apt-get install curl"
if [ "$PERF" = 1 ]; then need perf "apt-get install linux-perf"; fi

PIDS=()
NAMES=()
cleanup() {
  local status=$?
  trap - EXIT INT TERM
  local i
  for i in "${!PIDS[@]}"; do
    kill -TERM "${PIDS[$i]}" 2>/dev/null || true
  done
  for i in "${!PIDS[@]}"; do
    # Workers drain in-flight mail on SIGTERM; give them their grace.
    for _ in $(seq 100); do kill -0 "${PIDS[$i]}" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "${PIDS[$i]}" 2>/dev/null || true
    wait "${PIDS[$i]}" 2>/dev/null || true
  done
  if [ "$KEEP" != 1 ]; then
    psql -q "$PG_URL/postgres" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
    psql -q "$PG_URL/postgres" -c "DROP DATABASE IF EXISTS $PGB_DB WITH (FORCE)" >/dev/null 2>&1 || true
    # The run's queues (its prefix is unique); exchanges are left, empty.
    if command -v rabbitmqctl >/dev/null && [ "$(id -u)" = 0 ]; then
      local q
      for q in $(timeout 30 rabbitmqctl -q list_queues name 2>/dev/null | grep "^$PREFIX\." || true); do
        timeout 30 rabbitmqctl -q delete_queue "$q" >/dev/null 2>&1 || true
      done
    fi
  fi
  if [ "$status" != 0 ]; then
    echo "bench.sh: logs are in $OUT" >&2
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# start NAME command... : runs it in the background, logs to $OUT/NAME.log.
start() {
  local name=$1
  shift
  "$@" >"$OUT/$name.out" 2>"$OUT/$name.log" &
  PIDS+=("$!")
  NAMES+=("$name")
}
pid_of() {
  local i
  for i in "${!NAMES[@]}"; do
    if [ "${NAMES[$i]}" = "$1" ]; then echo "${PIDS[$i]}"; return; fi
  done
  die "no process named $1"
}
alive() { # name
  kill -0 "$(pid_of "$1")" 2>/dev/null ||
    { tail -n 30 "$OUT/$1.log" >&2 || true; die "$1 exited early (log: $OUT/$1.log)"; }
}
# Peak RSS: VmHWM at the end of each phase, plus VmRSS/VmHWM sampled every
# 0.25 s while it runs (VmHWM as /proc shows it can lag the true peak a little,
# because the kernel folds the current RSS into it only at certain points).
record_rss() { # phase
  local i kib
  for i in "${!PIDS[@]}"; do
    case ${NAMES[$i]} in intake | worker-*) ;; *) continue ;; esac
    alive "${NAMES[$i]}"
    kib=$(awk '/^VmHWM:/ {print $2}' "/proc/${PIDS[$i]}/status")
    echo "${NAMES[$i]} $kib" >>"$OUT/rss.txt"
    echo "${NAMES[$i]} $kib $1" >>"$OUT/rss-by-phase.txt"
  done
}
sample_rss() { # name pid : runs in the background until the process ends
  # Shell builtins only (one `sleep` per sample), so sampling costs the
  # measured machine next to nothing.
  local key value _ peak
  while [ -r "/proc/$2/status" ]; do
    peak=0
    while read -r key value _; do
      case $key in VmHWM: | VmRSS:) [ "$value" -gt "$peak" ] && peak=$value ;; esac
    done <"/proc/$2/status" 2>/dev/null || true
    [ "$peak" -gt 0 ] && echo "$1 $peak" >>"$OUT/rss.txt"
    sleep 0.25
  done
}
watch_rss() { # name
  sample_rss "$1" "$(pid_of "$1")" &
  PIDS+=("$!")
  NAMES+=("rss-$1")
}
# CPU accounting per phase, always on (perf or not): CPU seconds of every
# process from /proc/*/stat (own + reaped children), keyed by our names for
# the processes this script started and by command name for the rest
# (postgres, beam.smp = RabbitMQ, ...), plus the machine's busy share.
cpu_snapshot() { # file
  local map="$$=bench.sh+client" i
  for i in "${!PIDS[@]}"; do map+=" ${PIDS[$i]}=${NAMES[$i]}"; done
  {
    awk '/^cpu / {busy = $2 + $3 + $4 + $7 + $8 + $9; print "@busy", busy, "@all", busy + $5 + $6}' /proc/stat
    # Processes come and go while this reads: a vanished one is skipped.
    cat /proc/[0-9]*/stat 2>/dev/null || true
  } | awk -v map="$map" -v hz="$(getconf CLK_TCK)" -v postmaster="${POSTMASTER_PID:-0}" '
    BEGIN { n = split(map, parts, " "); for (i = 1; i <= n; i++) { split(parts[i], kv, "="); name[kv[1]] = kv[2] } }
    /^@busy/ { printf "@busy %.2f\n@all %.2f\n", $2 / hz, $4 / hz; next }
    {
      open_ = index($0, "("); close_ = 0
      for (j = length($0); j > open_; j--) if (substr($0, j, 1) == ")") { close_ = j; break }
      if (!open_ || !close_) next
      pid = substr($0, 1, open_ - 2); comm = substr($0, open_ + 1, close_ - open_ - 1)
      gsub(/ /, "_", comm)
      # After ") ": state is field 3, so utime (14) .. cstime (17) are f[12] .. f[15].
      split(substr($0, close_ + 2), f, " ")
      key = (pid in name) ? name[pid] : comm
      # Postgres counts only the measured cluster (its postmaster and its
      # children): another cluster on the machine is other load.
      if (comm == "postgres" && postmaster != 0 && pid != postmaster && f[2] != postmaster) key = "postgres-elsewhere"
      t[key] += (f[12] + f[13] + f[14] + f[15]) / hz
    }
    END { for (k in t) printf "%s %.2f\n", k, t[k] }' >"$1"
}
cpu_report() { # phase before after
  awk -v phase="$1" -v cores="$(nproc)" '
    FNR == NR { before[$1] = $2; next }
    # Test membership before reading before[$1]: reading would create it.
    ($1 in before) { d = $2 - before[$1]; if (d > 0) delta[$1] = d }
    END {
      if ("@all" in delta) {
        printf "%s: machine %.0f%% busy; CPU seconds by process (%% of one core):\n", phase, 100 * delta["@busy"] / delta["@all"]
      }
      n = 0
      for (k in delta) if (k !~ /^@/) { keys[++n] = k }
      for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (delta[keys[j]] > delta[keys[i]]) { x = keys[i]; keys[i] = keys[j]; keys[j] = x }
      for (i = 1; i <= n && i <= 10; i++) {
        k = keys[i]
        if (delta["@all"] > 0) printf "  %-28s %8.2f s  %5.1f%%\n", k, delta[k], 100 * delta[k] / (delta["@all"] / cores)
      }
    }' "$2" "$3"
}
# What Postgres did: commits and row changes in the phase's database, WAL
# records, bytes and fsyncs of the whole cluster (other users of the server
# show up here too).
pg_snapshot() { # database-url file
  psql -qtAX -F ' ' "$1" -c "
    SELECT 'commits', xact_commit FROM pg_stat_database WHERE datname = current_database()
    UNION ALL SELECT 'rows_inserted', tup_inserted FROM pg_stat_database WHERE datname = current_database()
    UNION ALL SELECT 'rows_updated', tup_updated FROM pg_stat_database WHERE datname = current_database()
    UNION ALL SELECT 'wal_records', wal_records FROM pg_stat_wal
    UNION ALL SELECT 'wal_bytes', wal_bytes FROM pg_stat_wal
    UNION ALL SELECT 'wal_fsyncs', wal_sync FROM pg_stat_wal
    UNION ALL SELECT 'dispatch_updates', coalesce(sum(n_tup_upd), 0) FROM pg_stat_user_tables
               WHERE relid IN (SELECT inhrelid FROM pg_inherits WHERE inhparent = 'dispatches'::regclass)
    UNION ALL SELECT 'hot_updates', coalesce(sum(n_tup_hot_upd), 0) FROM pg_stat_user_tables
               WHERE relid IN (SELECT inhrelid FROM pg_inherits WHERE inhparent = 'dispatches'::regclass)
    UNION ALL SELECT 'dispatches_unsent_entries_read', coalesce(sum(idx_tup_read), 0) FROM pg_stat_user_indexes
               WHERE indexrelid IN (SELECT inhrelid FROM pg_inherits WHERE inhparent = 'dispatches_unsent'::regclass)" >"$2" 2>/dev/null || true
}
pg_report() { # before after
  awk 'FNR == NR { before[$1] = $2; next } ($1 in before) { printf "%s%s +%d", sep, $1, $2 - before[$1]; sep = ", " }
       END { print "" }' "$1" "$2"
}
# measure PHASE DATABASE-URL command... : runs the command between two
# snapshots of CPU time and Postgres counters, and prints the difference.
measure() {
  local phase=$1 db=$2
  shift 2
  cpu_snapshot "$OUT/cpu-$phase.before"
  pg_snapshot "$db" "$OUT/pg-$phase.before"
  "$@"
  cpu_snapshot "$OUT/cpu-$phase.after"
  # Idle backends publish their counters up to 10 s late (PGSTAT_IDLE_INTERVAL);
  # a smoke run does not wait for that, so its Postgres counts are partial.
  sleep "$PG_SETTLE"
  pg_snapshot "$db" "$OUT/pg-$phase.after"
  {
    cpu_report "$phase" "$OUT/cpu-$phase.before" "$OUT/cpu-$phase.after"
    printf '  postgres: '
    pg_report "$OUT/pg-$phase.before" "$OUT/pg-$phase.after"
  } | tee "$OUT/cpu-$phase.txt" >&2
}
analyze() { # database-url ; BENCH_ANALYZE=0 measures the newborn table instead
  if [ "${BENCH_ANALYZE:-1}" != 0 ]; then
    psql -q -v ON_ERROR_STOP=1 "$1" -c "ANALYZE dispatches" || die "ANALYZE on $1"
  fi
}
json_field() { # file key : a top-level string field of the last JSON line
  tail -n 1 "$1" | sed -n "s/.*\"$2\":\"\([^\"]*\)\".*/\1/p"
}

log "machine"
{
  echo "run $RUN  smoke=$SMOKE  concurrency=$C  open rate=$RATE/s"
  echo "cores: $(nproc)"
  free -m | sed -n '1,2p'
  echo "load: $(uptime)"
  echo "busiest processes:"
  ps -eo pcpu,pid,comm --sort=-pcpu | head -n 6
  if [ -n "${BENCH_COMMIT:-}" ]; then
    echo "commit: $BENCH_COMMIT"
  elif [ -n "${BENCH_VERIMAIL:-}" ]; then
    echo "commit: $BENCH_VERIMAIL (set BENCH_COMMIT to name it)"
  else
    echo "commit: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$ROOT" diff --quiet HEAD 2>/dev/null || echo ' (with uncommitted changes)')"
  fi
  busy=0
  for comm in cargo rustc cc ld; do busy=$((busy + $(pgrep -c -x "$comm" || true))); done
  if [ "$busy" != 0 ]; then
    echo "WARNING: $busy compiler processes are running: figures will be distorted"
  fi
} | tee "$OUT/machine.txt" >&2

log "release build"
export CARGO_TARGET_DIR=$TARGET_DIR
(cd "$ROOT" && cargo build --release -p verimail -p verimail-bench) || die "cargo build failed"
VERIMAIL=${BENCH_VERIMAIL:-$TARGET_DIR/release/verimail}
[ -x "$VERIMAIL" ] || die "BENCH_VERIMAIL=$VERIMAIL is no executable"
BENCH=$TARGET_DIR/release/verimail-bench

log "databases $DB and $PGB_DB"
pg_isready -q -d "$PG_URL/postgres" || die "Postgres is not reachable at $PG_URL"
tcp_open 127.0.0.1 5672 || echo "warning: nothing listens on 127.0.0.1:5672 (AMQP_URL=$AMQP_URL)" >&2
for db in "$DB" "$PGB_DB"; do
  psql -q -v ON_ERROR_STOP=1 "$PG_URL/postgres" -c "CREATE DATABASE $db" || die "creating $db"
  if [ -n "${BENCH_AUTO_EXPLAIN:-}" ]; then
    # Sessions opened from now on load auto_explain; only this run's databases.
    psql -q -v ON_ERROR_STOP=1 "$PG_URL/postgres" \
      -c "ALTER DATABASE $db SET session_preload_libraries = 'auto_explain'" \
      -c "ALTER DATABASE $db SET auto_explain.log_min_duration = '${BENCH_AUTO_EXPLAIN}ms'" \
      -c "ALTER DATABASE $db SET auto_explain.log_nested_statements = on" || die "auto_explain on $db"
  fi
  DATABASE_URL=$PG_URL/$db "$VERIMAIL" migrate >/dev/null 2>"$OUT/migrate-$db.log" ||
    die "verimail migrate on $db (log: $OUT/migrate-$db.log)"
done
export DATABASE_URL=$PG_URL/$DB
# The measured cluster's postmaster (the checkpointer's parent), so the CPU
# accounting leaves out other clusters' processes.
CHECKPOINTER=$(psql -qtAX "$PG_URL/postgres" -c "SELECT pid FROM pg_stat_activity WHERE backend_type = 'checkpointer'" 2>/dev/null || true)
POSTMASTER_PID=$(awk '{ sub(/^.*\) /, ""); print $2 }' "/proc/${CHECKPOINTER:-0}/stat" 2>/dev/null || echo 0)

log "pgbench: the rate-limit transaction as separate statements, c=$C, ${PG_SECS}s"
PGB_PARTNER=$(psql -qtA -v ON_ERROR_STOP=1 "$PG_URL/$PGB_DB" -c \
  "INSERT INTO partners (id, name, kind, status) VALUES (gen_random_uuid(), 'pgbench', 'partner', 'active') RETURNING id" | head -n 1)
[ -n "$PGB_PARTNER" ] || die "creating the pgbench partner"
# Mirrors accept_dispatch (migrations/0008_partitioned_dispatches.sql)
# statement by statement, one round trip each, with a fresh random recipient
# per transaction (distinct, as in the HTTP load) and code digest/sealed
# values of the real sizes (32 and 46 bytes). Ids are UUIDv7-like (the
# current millisecond, then random bits), as the partitions need.
cat >"$OUT/accept.sql" <<SQL
\set n random(1, 1000000000000)
BEGIN;
SELECT pg_advisory_xact_lock(hashtextextended('pgb-' || :client_id || '-' || :n || '@example.com', 0));
SELECT count(*) FILTER (WHERE created_at > clock_timestamp() - interval '1 hour'), count(*), coalesce(bool_or(partner_id = '$PGB_PARTNER' AND status IN ('queued', 'retrying')), false) FROM dispatches WHERE recipient = 'pgb-' || :client_id || '-' || :n || '@example.com' AND counts_toward_limit AND created_at > clock_timestamp() - interval '1 day' AND id >= verimail_id_at(clock_timestamp() - interval '1 day 5 minutes');
INSERT INTO dispatches (id, partner_id, recipient, email, lang, ttl_minutes, status, code_digest, code_sealed, next_attempt_at, created_at, expires_at, handoff_by, updated_at) VALUES ((substr(verimail_id_at(clock_timestamp())::text, 1, 14) || substr(gen_random_uuid()::text, 15))::uuid, '$PGB_PARTNER', 'pgb-' || :client_id || '-' || :n || '@example.com', 'pgb-' || :client_id || '-' || :n || '@example.com', 'en-us', 10, 'queued', decode(repeat('ab', 32), 'hex'), decode(repeat('cd', 46), 'hex'), clock_timestamp(), clock_timestamp(), clock_timestamp() + interval '10 minutes', clock_timestamp() + interval '4 seconds', clock_timestamp());
COMMIT;
SQL
# Without TLS, as verimail's own connections (its Postgres client is built
# without TLS): libpq's default `prefer` would encrypt pgbench's traffic on a
# cluster that offers TLS, and the ratios would flatter verimail.
export PGSSLMODE=${PGSSLMODE:-disable}
run_pgbench() {
  pgbench -n -M prepared -c "$C" -j 2 -T "$PG_SECS" -P 5 -f "$OUT/accept.sql" "$PG_URL/$PGB_DB" \
    >"$OUT/pgbench.txt" 2>"$OUT/pgbench.log" || { cat "$OUT/pgbench.log" >&2; die "pgbench"; }
}
# Steady state, not a newborn table: a warm-up, then ANALYZE. Without
# statistics the planner supersedes through a scan of every open dispatch
# (see BENCHMARKS.md), which would make both sides slow down as they run.
pgbench -n -M prepared -c "$C" -j 2 -t 40 -f "$OUT/accept.sql" "$PG_URL/$PGB_DB" >"$OUT/pgbench-warmup.txt" 2>&1 ||
  { cat "$OUT/pgbench-warmup.txt" >&2; die "pgbench warm-up"; }
analyze "$PG_URL/$PGB_DB"
measure pgbench "$PG_URL/$PGB_DB" run_pgbench
cat "$OUT/pgbench.txt" >&2
failed=$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' "$OUT/pgbench.txt")
[ "${failed:-0}" = 0 ] || die "$failed pgbench transactions failed"
sed -n 's/^tps = \([0-9.]*\) .*/\1/p' "$OUT/pgbench.txt" | tail -n 1 >"$OUT/pgbench.tps"
[ -s "$OUT/pgbench.tps" ] || die "no tps in pgbench's output"

log "SMTP sink, intake"
start sink "$BENCH" sink --listen 127.0.0.1:0
for _ in $(seq 50); do [ -s "$OUT/sink.out" ] && break; alive sink; sleep 0.1; done
SINK_ADDR=$(json_field "$OUT/sink.out" listening)
[ -n "$SINK_ADDR" ] || die "the sink did not say where it listens"
export SMTP_URL=smtp://$SINK_ADDR

PARTNER_JSON=$("$VERIMAIL" partner create --name bench 2>>"$OUT/cli.log") || die "verimail partner create"
PARTNER=$(echo "$PARTNER_JSON" | sed -n 's/.*"partner_id":"\([^"]*\)".*/\1/p')
[ -n "$PARTNER" ] || die "no partner_id in: $PARTNER_JSON"
if [ -n "${BENCH_WEBHOOK_URL:-}" ]; then
  # Every worker delivers to it too, though it is on loopback.
  export VERIMAIL_WEBHOOK_ALLOW_INSECURE=true
  "$VERIMAIL" webhook set --partner "$PARTNER" --url "$BENCH_WEBHOOK_URL" >/dev/null 2>>"$OUT/cli.log" ||
    die "verimail webhook set"
  echo "webhook endpoint of the bench partner: $BENCH_WEBHOOK_URL"
fi
case $AUTH in
  token)
    TOKEN_JSON=$("$VERIMAIL" token issue --partner "$PARTNER" --ttl 24h 2>>"$OUT/cli.log") || die "verimail token issue"
    TOKEN=$(echo "$TOKEN_JSON" | sed -n 's/.*"token":"\([^"]*\)".*/\1/p')
    [ -n "$TOKEN" ] || die "no token in: $TOKEN_JSON"
    AUTH_ARGS=(--token "$TOKEN")
    ;;
  aksk)
    KEY_JSON=$("$VERIMAIL" key create --partner "$PARTNER" 2>>"$OUT/cli.log") || die "verimail key create"
    AK=$(echo "$KEY_JSON" | sed -n 's/.*"access_key":"\([^"]*\)".*/\1/p')
    SK=$(echo "$KEY_JSON" | sed -n 's/.*"secret_key":"\([^"]*\)".*/\1/p')
    DOMAIN=$(echo "$KEY_JSON" | sed -n 's/.*"domain_id":"\([^"]*\)".*/\1/p')
    if [ -z "$AK" ] || [ -z "$SK" ]; then die "no access_key/secret_key in: $KEY_JSON"; fi
    AUTH_ARGS=(--ak "$AK" --sk "$SK" --domain-id "$DOMAIN")
    ;;
  *) die "BENCH_AUTH must be token or aksk" ;;
esac

INTAKE_PORT=$(free_port)
URL=http://127.0.0.1:$INTAKE_PORT
VERIMAIL_LISTEN=127.0.0.1:$INTAKE_PORT VERIMAIL_INTAKE_METRICS_LISTEN=127.0.0.1:$(free_port) \
  start intake "$VERIMAIL" intake
for _ in $(seq 100); do tcp_open 127.0.0.1 "$INTAKE_PORT" && break; alive intake; sleep 0.1; done
tcp_open 127.0.0.1 "$INTAKE_PORT" || die "the intake does not listen on $INTAKE_PORT"
watch_rss intake

# load SUBCOMMAND NAME [options...]: the JSON line goes to $OUT/NAME.json,
# the human report to the terminal and $OUT/NAME.txt.
load() {
  local sub=$1 name=$2
  shift 2
  "$BENCH" "$sub" --url "$URL" -c "$C" "${AUTH_ARGS[@]}" --json "$@" \
    >"$OUT/$name.json" 2> >(tee "$OUT/$name.txt" >&2) ||
    die "verimail-bench $sub ($name); see $OUT/$name.txt"
}

log "intake alone: closed loop, c=$C, ${INTAKE_SECS}s (after $WARMUP warm-up requests)"
# Warm-up fills the Postgres pool, the AMQP channel and the caches.
load intake warmup -n "$WARMUP" --run-id "warm$$"
# As for pgbench; ANALYZE also invalidates the plans cached in the pool's sessions.
analyze "$DATABASE_URL"
if [ "$PERF" = 1 ]; then
  perf record -e cpu-clock -F 499 --call-graph dwarf,16384 -p "$(pid_of intake)" -o "$OUT/intake.perf.data" \
    -- sleep "$INTAKE_SECS" >/dev/null 2>"$OUT/perf-intake.log" &
  PERF_PID=$!
fi
measure intake "$DATABASE_URL" load intake intake -d "${INTAKE_SECS}s"
if [ "$PERF" = 1 ]; then wait "$PERF_PID"; fi
record_rss intake
alive intake

log "2 workers draining the backlog the intake left"
SINCE=$(date -u +%Y-%m-%dT%H:%M:%S.%6NZ)
WORKER_METRICS=()
for n in 1 2; do
  # Distinct metrics ports; read back at the end (which mails were signed).
  WORKER_METRICS+=("$(free_port)")
  VERIMAIL_METRICS_LISTEN=127.0.0.1:${WORKER_METRICS[-1]} start "worker-$n" "$VERIMAIL" worker
done
watch_rss worker-1
watch_rss worker-2
sleep 0.5
alive worker-1
alive worker-2
drain() {
  "$BENCH" drain --since "$SINCE" --json >"$OUT/drain.json" 2> >(tee "$OUT/drain.txt" >&2) ||
    die "the backlog did not drain"
}
measure drain "$DATABASE_URL" drain
record_rss drain

log "end to end, closed loop: c=$C, ${E2E_SECS}s"
if [ "$PERF" = 1 ]; then
  perf record -e cpu-clock -F 499 --call-graph dwarf,16384 -p "$(pid_of worker-1)" -o "$OUT/worker.perf.data" \
    -- sleep "$E2E_SECS" >/dev/null 2>"$OUT/perf-worker.log" &
  PERF_PID=$!
  # The whole machine without call chains: where Postgres and RabbitMQ spend it.
  perf record -a -e cpu-clock -F 199 -o "$OUT/system.perf.data" \
    -- sleep "$E2E_SECS" >/dev/null 2>"$OUT/perf-system.log" &
  PERF_SYSTEM_PID=$!
fi
measure e2e "$DATABASE_URL" load e2e e2e -d "${E2E_SECS}s"
if [ "$PERF" = 1 ]; then wait "$PERF_PID" "$PERF_SYSTEM_PID"; fi
record_rss e2e

log "end to end, open loop: $RATE req/s offered for ${OPEN_SECS}s"
measure e2e-open "$DATABASE_URL" load e2e e2e-open --rate "$RATE" -d "${OPEN_SECS}s"
record_rss e2e-open

# What the workers say of signing, so a signed run shows it signed: mails
# without a DKIM signature (every mail when VERIMAIL_DKIM_KEYS is unset).
unsigned=0
for port in "${WORKER_METRICS[@]}"; do
  if metrics=$(curl -fsS "http://127.0.0.1:$port/metrics"); then
    n=$(awk '$1 ~ /^verimail_mails_unsigned_total/ {s += $2} END {printf "%d", s}' <<<"$metrics")
    unsigned=$((unsigned + n))
  else
    unsigned="unknown (no /metrics on $port)"
    break
  fi
done
echo "dkim: VERIMAIL_DKIM_KEYS=${VERIMAIL_DKIM_KEYS:-unset}, mails sent unsigned by the workers: $unsigned" |
  tee -a "$OUT/machine.txt" >&2

# Stop the sink first so its own count is part of the summary.
kill -TERM "$(pid_of sink)"
wait "$(pid_of sink)" || die "the sink did not stop cleanly"
tail -n 1 "$OUT/sink.out" >"$OUT/sink.json"

if [ "$PERF" = 1 ]; then
  for p in intake worker; do
    # Flat (self) and inclusive (children) views, without call chains.
    perf report -i "$OUT/$p.perf.data" --no-children --sort symbol -g none --stdio 2>/dev/null |
      grep -v '^$' | head -n 80 >"$OUT/$p.perf.txt" || true
    perf report -i "$OUT/$p.perf.data" --children --sort symbol -g none --stdio 2>/dev/null |
      grep -v '^$' | head -n 150 >"$OUT/$p.perf-inclusive.txt" || true
    perf report -i "$OUT/$p.perf.data" --no-children --sort dso -g none --stdio 2>/dev/null |
      grep -v '^#' | grep -v '^$' | head -n 30 >"$OUT/$p.perf-dso.txt" || true
  done
  cat >"$OUT/buckets.awk" <<'AWK'
# Buckets perf-script call stacks (leaf first) by the first frame that names a
# component; a stack that passes through sqlx's connection release counts as
# the release ping wherever its leaf is.
function bucket(frame) {
  if (frame ~ /tracing_subscriber|tracing_core::event|nu_ansi_term/) return "logging (tracing fmt to stderr)"
  if (frame ~ /metrics(_util|_exporter_prometheus)?::|quanta/) return "metrics"
  if (frame ~ /sqlx/) return "postgres client (sqlx)"
  if (frame ~ /lapin|amq_protocol/) return "amqp client (lapin)"
  if (frame ~ /lettre::transport|mail::transport/) return "smtp client (lettre)"
  if (frame ~ /askama|lettre::message|mail::render/) return "mail rendering (askama, lettre builder)"
  if (frame ~ /chacha|poly1305|hmac|sha2::|hkdf|verimail_domain::secrets/) return "crypto (code digest, seal, open)"
  if (frame ~ /serde_json|verimail_domain::request|email_address/) return "json and request rules"
  if (frame ~ /hyper::|axum|http::/) return "http server (hyper, axum; inlined handler code)"
  if (frame ~ /verimail_/) return "verimail code"
  if (frame ~ /tokio::runtime::(scheduler|time|io::driver)|park_internal|park_timeout/) return "tokio runtime, idle wake-ups"
  return ""
}
function flush() {
  if (!inside) return
  if (ping) b = "postgres client: release ping (sqlx return_to_pool)"
  else if (b == "") b = "other (kernel, malloc, unattributed)"
  count[b]++; total++
  inside = 0
}
/^[^ \t]/ { flush(); inside = 1; b = ""; ping = 0; next }
/^[ \t]*$/ { flush(); next }
{
  if ($0 ~ /return_to_pool/) ping = 1
  if (b == "") b = bucket($0)
}
END {
  flush()
  printf "%d samples\n", total
  for (k in count) printf "%5.1f%%  %s\n", 100 * count[k] / total, k | "sort -rn"
}
AWK
  for p in intake worker; do
    perf script -i "$OUT/$p.perf.data" -F comm,tid,ip,sym 2>/dev/null |
      awk -f "$OUT/buckets.awk" >"$OUT/$p.perf-buckets.txt" || true
    echo "-- $p: share of its CPU samples by component" >&2
    cat "$OUT/$p.perf-buckets.txt" >&2
  done
  perf report -i "$OUT/system.perf.data" --sort comm --stdio 2>/dev/null |
    grep -v '^#' | grep -v '^$' | head -n 20 >"$OUT/system.perf-comm.txt" || true
  for comm in postgres beam.smp; do
    perf report -i "$OUT/system.perf.data" --comms "$comm" --sort dso,symbol --stdio 2>/dev/null |
      grep -v '^#' | grep -v '^$' | head -n 60 >"$OUT/system.perf-$comm.txt" || true
  done
  echo "perf reports: $OUT/*.perf*.txt" >&2
fi

log "results"
"$BENCH" summary "$OUT" | tee "$OUT/summary.txt"
echo "run directory: $OUT" >&2
