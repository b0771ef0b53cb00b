#!/usr/bin/env bash
# Holds the running API to its OpenAPI document with schemathesis: starts
# `verimail all` on a fresh database and queue prefix, issues a partner token,
# and lets schemathesis generate requests from GET /openapi.json (valid and
# invalid ones) with `--checks all`: server errors, undocumented status codes,
# wrong content types, responses or headers that break their schema, valid
# data refused, invalid data accepted, missing or ignored authentication, and,
# in the stateful phase, the link from a send's 204 (its X-Request-Id) to
# GET .../dispatches/{id}. Exits non-zero on any failure.
#
#   scripts/api-fuzz.sh                     # CI: 60 examples per operation, 60 s
#   API_FUZZ_SECONDS=1800 scripts/api-fuzz.sh
#   API_FUZZ_SECONDS=0 scripts/api-fuzz.sh  # one pass, no time budget
#
# The time budget is spent, not just capped: schemathesis 4 repeats the
# fuzzing and stateful phases (new cases each time) until it runs out. One
# pass of 60 examples takes about 12 s on 2 cores, so CI's run takes a
# little over a minute with the build warm. API_FUZZ_SECONDS=0: one pass.
#
# No check is excluded. Valid data may get a 400 only as one of the two
# documented answers about state (a check with a wrong, expired or missing
# code; an Idempotency-Key reused with another body): scripts/api-fuzz.toml
# and scripts/api-fuzz-hooks.py.
#
# Needs cargo, python3 (for a venv with schemathesis), curl, Postgres on
# 127.0.0.1:5432 and RabbitMQ on 127.0.0.1:5672, like scripts/demo.sh.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

EXAMPLES=${API_FUZZ_EXAMPLES:-60}
SECONDS_BUDGET=${API_FUZZ_SECONDS:-60}
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
  if command -v dropdb >/dev/null 2>&1; then
    dropdb --if-exists --force --maintenance-db="${PG_URL%/}/postgres" "verimail_fuzz_${RUN_ID}" \
      >/dev/null 2>&1 || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

# Pinned: a new release brings new checks and generators, and the hooks use
# the check API of this one.
SCHEMATHESIS_VERSION=4.32.5
venv=target/fuzz-venv
if ! "$venv/bin/schemathesis" --version 2>/dev/null | grep -qx "schemathesis, version $SCHEMATHESIS_VERSION"; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi

cargo build -q --bin verimail
BIN=${CARGO_TARGET_DIR:-target}/debug/verimail
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
SCHEMATHESIS_HOOKS="$ROOT/scripts/api-fuzz-hooks.py" \
  "$venv/bin/schemathesis" --config-file "$ROOT/scripts/api-fuzz.toml" \
  run "http://$VERIMAIL_LISTEN/openapi.json" \
  --header "X-Auth-Token: $token" \
  --checks all \
  --max-examples "$EXAMPLES" \
  $([ "$SECONDS_BUDGET" != 0 ] && echo --max-time "$SECONDS_BUDGET") \
  --seed 1 --request-timeout 10 || status=$?
if [ "$status" != 0 ]; then
  echo "--- last lines of the verimail log ---" >&2
  tail -n 40 "$LOG" >&2
fi
exit "$status"
