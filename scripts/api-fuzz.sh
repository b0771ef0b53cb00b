#!/usr/bin/env bash
# Holds the running API to its OpenAPI document with schemathesis: starts
# `verimail all` on a fresh database and queue prefix, issues a partner token,
# and lets schemathesis generate requests from GET /openapi.json (valid and
# invalid ones) within a bounded number of examples and time, checking for
# server errors, undocumented status codes, wrong content types and responses
# that break their schema. Exits non-zero on any failure.
#
#   scripts/api-fuzz.sh                 # CI's bound: 60 examples, 300 s
#   API_FUZZ_EXAMPLES=500 API_FUZZ_SECONDS=1800 scripts/api-fuzz.sh
#
# Needs cargo, python3 (for a venv with schemathesis 4), curl, Postgres on
# 127.0.0.1:5432 and RabbitMQ on 127.0.0.1:5672, like scripts/demo.sh.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

EXAMPLES=${API_FUZZ_EXAMPLES:-60}
SECONDS_BUDGET=${API_FUZZ_SECONDS:-300}
PG_URL=${API_FUZZ_PG_URL:-postgres://postgres@127.0.0.1:5432}
RUN_ID="$(date +%Y%m%d%H%M%S)_$$"
export DATABASE_URL="${PG_URL%/}/verimail_fuzz_${RUN_ID}"
export AMQP_URL=${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
export VERIMAIL_AMQP_PREFIX="verimail-fuzz-${RUN_ID//_/-}"
# DEVELOPMENT ONLY.
export VERIMAIL_SECRET=dmVyaW1haWwtZGV2ZWxvcG1lbnQtb25seS1zZWNyZXQ=
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export VERIMAIL_LISTEN="127.0.0.1:$PORT"
export VERIMAIL_INTAKE_METRICS_LISTEN=127.0.0.1:0
# Generated addresses repeat; the limit is not what is under test here.
export VERIMAIL_RATE_LIMIT=100000/100000
unset SMTP_URL
WORK=$(mktemp -d "${TMPDIR:-/tmp}/verimail-fuzz.XXXXXX")
export VERIMAIL_OUTBOX="$WORK/outbox"
LOG="$WORK/server.log"
PID=""
cleanup() {
  [ -n "$PID" ] && kill -TERM "$PID" 2>/dev/null && wait "$PID" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

venv=target/fuzz-venv
if [ ! -x "$venv/bin/schemathesis" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "schemathesis>=4,<5"
fi

cargo build -q --bin verimail
BIN=target/debug/verimail
"$BIN" all >"$LOG" 2>&1 &
PID=$!
for _ in $(seq 60); do
  curl -fsS "http://$VERIMAIL_LISTEN/readyz" >/dev/null 2>&1 && break
  kill -0 "$PID" 2>/dev/null || { tail -n 30 "$LOG" >&2; echo "verimail all exited" >&2; exit 1; }
  sleep 1
done
partner=$("$BIN" partner create --name fuzz | python3 -c 'import json,sys; print(json.load(sys.stdin)["partner_id"])')
token=$("$BIN" token issue --partner "$partner" | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')

status=0
"$venv/bin/schemathesis" run "http://$VERIMAIL_LISTEN/openapi.json" \
  --header "X-Auth-Token: $token" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance \
  --max-examples "$EXAMPLES" --max-time "$SECONDS_BUDGET" \
  --seed 1 --request-timeout 10 || status=$?
if [ "$status" != 0 ]; then
  echo "--- last lines of the verimail log ---" >&2
  tail -n 40 "$LOG" >&2
fi
exit "$status"
