#!/usr/bin/env bash
# The alert rules against live processes, without Docker: Debian's Prometheus
# scrapes a real `verimail intake` and `verimail worker` (jobs named as
# deploy/prometheus/prometheus.yml names them) with
# deploy/prometheus/verimail-rules.yml loaded, and this script checks that
#
#   1. both targets are up and no alert fires while all is well;
#   2. after the worker is killed (SIGKILL), VerimailNoWorker fires.
#
#   scripts/alerts-live.sh
#
# About 90 s (the alert's `for: 1m` is most of it). Needs cargo, curl,
# python3, Postgres on 127.0.0.1:5432 and RabbitMQ on 127.0.0.1:5672 as the
# README's tests do (scripts/dev-services.sh), and a `prometheus` binary: on
# PATH, or the one scripts/alert-rules-test.sh unpacks into target/promtool/.
# Everything it makes is its own: a database verimail_alerts_<run> (dropped
# afterwards), queues under the prefix verimail-alerts-<run> (left on the
# broker, empty), free ports, a temporary directory.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
SCRIPT_NAME=alerts-live
. scripts/lib.sh

need curl "apt-get install curl"
need python3 "apt-get install python3"
PROMETHEUS=$(command -v prometheus || true)
if [ -z "$PROMETHEUS" ]; then
  [ -x target/promtool/usr/bin/prometheus ] || scripts/alert-rules-test.sh >/dev/null
  PROMETHEUS=$ROOT/target/promtool/usr/bin/prometheus
  [ -x "$PROMETHEUS" ] || die "no prometheus binary (apt-get install prometheus, or put one on PATH)"
fi

log "building verimail (cargo build)"
cargo build --locked --bin verimail
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/debug/verimail"

RUN_ID="$(date +%Y%m%d%H%M%S)_$$"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/verimail-alerts.XXXXXX")
PG_URL=${ALERTS_PG_URL:-postgres://postgres@127.0.0.1:5432}
export DATABASE_URL="${PG_URL%/}/verimail_alerts_${RUN_ID}"
export AMQP_URL=${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
export VERIMAIL_AMQP_PREFIX="verimail-alerts-${RUN_ID//_/-}"
# DEVELOPMENT ONLY: a fixed secret so the CLI and the processes agree.
export VERIMAIL_SECRET=dmVyaW1haWwtZGV2ZWxvcG1lbnQtb25seS1zZWNyZXQ=
export VERIMAIL_OUTBOX="$WORK/outbox"
export VERIMAIL_SWEEP_INTERVAL=1s
unset SMTP_URL
API_PORT=$(free_port)
INTAKE_METRICS=127.0.0.1:$(free_port)
WORKER_METRICS=127.0.0.1:$(free_port)
PROM=127.0.0.1:$(free_port)
PIDS=()

cleanup() {
  local status=$? pid
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ "$status" != 0 ]; then
    for f in "$WORK"/*.log; do printf -- '--- last lines of %s ---\n' "$f" >&2; tail -n 15 "$f" >&2; done
  fi
  command -v dropdb >/dev/null && dropdb --if-exists --force \
    --maintenance-db="${PG_URL%/}/postgres" "verimail_alerts_${RUN_ID}" 2>/dev/null || true
  rm -rf "$WORK"
  exit "$status"
}
trap cleanup EXIT

"$BIN" migrate >/dev/null
VERIMAIL_LISTEN=127.0.0.1:$API_PORT VERIMAIL_INTAKE_METRICS_LISTEN=$INTAKE_METRICS \
  "$BIN" intake >"$WORK/intake.log" 2>&1 &
PIDS+=($!)
VERIMAIL_METRICS_LISTEN=$WORKER_METRICS "$BIN" worker >"$WORK/worker.log" 2>&1 &
WORKER_PID=$!
PIDS+=("$WORKER_PID")

cat >"$WORK/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - $ROOT/deploy/prometheus/verimail-rules.yml
scrape_configs:
  - job_name: verimail-intake
    static_configs:
      - targets: ["$INTAKE_METRICS"]
  - job_name: verimail-worker
    static_configs:
      - targets: ["$WORKER_METRICS"]
EOF
"$PROMETHEUS" --config.file="$WORK/prometheus.yml" --storage.tsdb.path="$WORK/tsdb" \
  --web.listen-address="$PROM" >"$WORK/prometheus.log" 2>&1 &
PIDS+=($!)

api() { curl -fsS --max-time 5 "http://$PROM/api/v1/$1" 2>/dev/null; }
targets_up() {
  api targets | python3 -c 'import json, sys
t = json.load(sys.stdin)["data"]["activeTargets"]
up = sorted(x["labels"]["job"] for x in t if x["health"] == "up")
sys.exit(0 if up == ["verimail-intake", "verimail-worker"] else 1)' 2>/dev/null
}
firing() { # prints the names of firing alerts, one a line
  api alerts | python3 -c 'import json, sys
for a in json.load(sys.stdin)["data"]["alerts"]:
    if a["state"] == "firing":
        print(a["labels"]["alertname"])' 2>/dev/null
}

log "both targets up, nothing firing"
for _ in $(seq 60); do targets_up && break; sleep 0.5; done
targets_up || die "the intake and the worker are not both up in Prometheus"
sleep 3 # a few rule evaluations over real series
now_firing=$(firing)
[ -z "$now_firing" ] || die "alerts fire while all is well: $now_firing"
echo "  verimail-intake and verimail-worker up; no alert firing"

log "the worker is killed: VerimailNoWorker fires"
kill -KILL "$WORKER_PID"
{ wait "$WORKER_PID"; } 2>/dev/null || true
started=$(date +%s)
for _ in $(seq 120); do
  firing | grep -qx VerimailNoWorker && break
  sleep 1
done
firing | grep -qx VerimailNoWorker || die "VerimailNoWorker did not fire within 120 s of the kill"
echo "  VerimailNoWorker firing $(($(date +%s) - started)) s after the kill (its for: 1m)"
echo "alerts live: passed"
