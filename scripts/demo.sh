#!/usr/bin/env bash
# The native quick start, end to end: build verimail, run `verimail all`
# against a local Postgres and RabbitMQ, create a partner and a token, send a
# verification code, and read it back from the .eml file the worker writes
# (SMTP_URL unset: mail goes to VERIMAIL_OUTBOX). Exits 0 when the code
# arrived; otherwise non-zero with the reason and the server's last log lines.
#
#   scripts/demo.sh
#
# Needs cargo, curl, Postgres on 127.0.0.1:5432 (user postgres, trust or a
# password in the URL) and RabbitMQ on 127.0.0.1:5672 (guest/guest).
# Everything it creates is its own: a new database (verimail_demo_<run>, created
# by `verimail all`; dropped afterwards when `dropdb` is installed), queues and
# exchanges under a new prefix (verimail-demo-<run>; left on the broker, empty),
# and a temporary outbox (removed after a successful run).
#
# Overridable: DEMO_PG_URL (server URL without database; default
# postgres://postgres@127.0.0.1:5432), AMQP_URL, DEMO_LISTEN (default
# 127.0.0.1:8080), DEMO_EMAIL, VERIMAIL_SECRET, DEMO_KEEP_DB=1.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

PG_URL=${DEMO_PG_URL:-postgres://postgres@127.0.0.1:5432}
PG_URL=${PG_URL%/}
LISTEN=${DEMO_LISTEN:-127.0.0.1:8080}
EMAIL=${DEMO_EMAIL:-demo@example.com}
RUN_ID="$(date +%Y%m%d%H%M%S)_$$"
DB_NAME="verimail_demo_${RUN_ID}"

# What `verimail` reads (see .env.example). The secret is fixed so the CLI
# and the server agree (`verimail all` would otherwise make an ephemeral one).
export DATABASE_URL="${PG_URL}/${DB_NAME}"
export AMQP_URL=${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
export VERIMAIL_AMQP_PREFIX="verimail-demo-${RUN_ID//_/-}"
# DEVELOPMENT ONLY — generate your own with: openssl rand -base64 32
export VERIMAIL_SECRET=${VERIMAIL_SECRET:-dmVyaW1haWwtZGV2ZWxvcG1lbnQtb25seS1zZWNyZXQ=}
export VERIMAIL_LISTEN="$LISTEN"
unset SMTP_URL # a configured SMTP server would take the mail away from the outbox

WORK=$(mktemp -d "${TMPDIR:-/tmp}/verimail-demo.XXXXXX")
export VERIMAIL_OUTBOX="$WORK/outbox"
SERVER_LOG="$WORK/server.log"
SERVER_PID=""
STARTED=""

say() { printf '==> %s\n' "$*" >&2; }

die() {
    printf '\ndemo FAILED: %s\n' "$*" >&2
    if [[ -s "$SERVER_LOG" ]]; then
        printf -- '--- last lines of the verimail log (%s) ---\n' "$SERVER_LOG" >&2
        tail -n 25 "$SERVER_LOG" >&2
    fi
    exit 1
}

stop_server() {
    [[ -n "$SERVER_PID" ]] || return 0
    if kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 1 150); do
            kill -0 "$SERVER_PID" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$SERVER_PID" 2>/dev/null; then
            printf 'verimail did not stop within 15s of SIGTERM; killing it\n' >&2
            kill -KILL "$SERVER_PID" 2>/dev/null || true
        fi
    fi
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
}

cleanup() {
    local status=$?
    stop_server
    if [[ "${DEMO_KEEP_DB:-}" != 1 ]] && command -v dropdb >/dev/null 2>&1; then
        dropdb --if-exists --force --maintenance-db="${PG_URL}/postgres" "$DB_NAME" \
            >/dev/null 2>&1 || true
    else
        printf 'demo database kept: %s\n' "$DATABASE_URL" >&2
    fi
    if [[ -n "$STARTED" ]]; then
        printf 'note: the run'"'"'s (empty) RabbitMQ queues and exchanges named %s.* stay on the broker\n' \
            "$VERIMAIL_AMQP_PREFIX" >&2
    fi
    if [[ $status -eq 0 ]]; then
        rm -rf "$WORK"
    else
        printf 'demo files kept for inspection: %s\n' "$WORK" >&2
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

for tool in cargo curl; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is not installed"
done

# --- build -------------------------------------------------------------------
say "building verimail (cargo build)"
cargo build --locked --bin verimail || die "cargo build failed"
TARGET_DIR=$(cargo metadata --format-version 1 --no-deps --offline |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
BIN="${TARGET_DIR:-$ROOT/target}/debug/verimail"
[[ -x "$BIN" ]] || die "built binary not found at $BIN"

# --- start -------------------------------------------------------------------
# Something already answering there would be mistaken for this run's server.
if (exec 3<>"/dev/tcp/${LISTEN%:*}/${LISTEN##*:}") 2>/dev/null; then
    die "something already listens on $LISTEN; stop it or set DEMO_LISTEN=127.0.0.1:<free port>"
fi
say "starting 'verimail all' on $LISTEN (database $DB_NAME, queue prefix $VERIMAIL_AMQP_PREFIX)"
"$BIN" all >"$SERVER_LOG" 2>&1 &
SERVER_PID=$!
STARTED=1

say "waiting for http://$LISTEN/readyz"
ready=""
for _ in $(seq 1 120); do
    kill -0 "$SERVER_PID" 2>/dev/null ||
        die "verimail all exited during start-up (is Postgres on ${PG_URL#*@} and RabbitMQ reachable, and $LISTEN free?)"
    if curl -fsS --max-time 2 "http://$LISTEN/readyz" >/dev/null 2>&1; then
        ready=1
        break
    fi
    sleep 0.5
done
[[ -n "$ready" ]] || die "http://$LISTEN/readyz did not answer 200 within 60s: $(curl -sS --max-time 2 "http://$LISTEN/readyz" 2>&1 || true)"

# --- partner and token ---------------------------------------------------------
# Each command prints one JSON object on stdout (logs go to stderr).
json_field() { sed -n "s/.*\"$1\":\"\([^\"]*\)\".*/\1/p"; }

say "creating a partner"
partner_json=$("$BIN" partner create --name "demo-$RUN_ID" 2>>"$SERVER_LOG") ||
    die "verimail partner create failed"
printf '%s\n' "$partner_json"
PARTNER_ID=$(printf '%s' "$partner_json" | json_field partner_id)
[[ -n "$PARTNER_ID" ]] || die "no partner_id in: $partner_json"

say "issuing a token"
token_json=$("$BIN" token issue --partner "$PARTNER_ID" --ttl 1h 2>>"$SERVER_LOG") ||
    die "verimail token issue failed"
TOKEN=$(printf '%s' "$token_json" | json_field token)
[[ -n "$TOKEN" ]] || die "no token in the output of verimail token issue"
printf 'token issued for partner %s, expires %s\n' "$PARTNER_ID" \
    "$(printf '%s' "$token_json" | json_field expires_at)"

# --- send --------------------------------------------------------------------
say "sending a code to $EMAIL"
headers="$WORK/send.headers"
status=$(curl -sS --max-time 10 -o "$WORK/send.body" -D "$headers" -w '%{http_code}' \
    -X POST "http://$LISTEN/v2/bases/verificationcode/send" \
    -H "X-Auth-Token: $TOKEN" \
    -H 'Content-Type: application/json' \
    -d "{\"receiver_type\":2,\"email\":\"$EMAIL\",\"timeout\":10,\"lang\":\"en-us\"}") ||
    die "the send request failed"
[[ "$status" == 204 ]] || die "send answered HTTP $status: $(cat "$WORK/send.body")"
DISPATCH_ID=$(tr -d '\r' <"$headers" | sed -n 's/^[Xx]-[Rr]equest-[Ii]d: *//p')
printf 'HTTP 204, dispatch %s\n' "${DISPATCH_ID:-?}"

# --- read the mail -------------------------------------------------------------
# Prints the body of the text/plain part of a MIME message, decoded from
# quoted-printable or base64 as its Content-Transfer-Encoding says.
plain_text_part() {
    local part encoding
    part=$(LC_ALL=C awk '
        BEGIN { in_headers = 1 }  # the message headers, then each part'"'"'s
        { sub(/\r$/, "") }
        /^--/ { in_headers = 1; plain = 0; body_done = (found != ""); next }
        in_headers && /^$/ { in_headers = 0; if (plain && found == "") found = "yes"; next }
        in_headers {
            line = tolower($0)
            if (line ~ /^content-type:[ \t]*text\/plain/) plain = 1
            if (plain && line ~ /^content-transfer-encoding:/) { sub(/^[^:]*:[ \t]*/, "", line); enc = line }
            next
        }
        found == "yes" && !body_done { print }
        END { if (found != "yes") exit 1; print "X-Encoding: " enc > "/dev/stderr" }
    ' "$1" 2>"$WORK/encoding") || return 1
    encoding=$(sed -n 's/^X-Encoding: //p' "$WORK/encoding")
    case "$encoding" in
        base64) printf '%s\n' "$part" | base64 --decode ;;
        quoted-printable)
            # Soft line breaks first, then =XX escapes.
            printf '%s\n' "$part" | LC_ALL=C awk '
                BEGIN { for (i = 0; i < 256; i++) hex[sprintf("%02X", i)] = i }
                {
                    line = $0; soft = sub(/=$/, "", line); out = ""
                    while (match(line, /=[0-9A-Fa-f][0-9A-Fa-f]/)) {
                        out = out substr(line, 1, RSTART - 1) sprintf("%c", hex[toupper(substr(line, RSTART + 1, 2))])
                        line = substr(line, RSTART + 3)
                    }
                    printf "%s%s", out line, (soft ? "" : "\n")
                }'
            ;;
        *) printf '%s\n' "$part" ;;
    esac
}

say "waiting for the mail in $VERIMAIL_OUTBOX"
CODE=""
EML=""
for _ in $(seq 1 60); do
    kill -0 "$SERVER_PID" 2>/dev/null || die "verimail all exited while sending"
    EML=$(find "$VERIMAIL_OUTBOX" -name '*.eml' -type f 2>/dev/null | head -n 1)
    if [[ -n "$EML" ]]; then
        # The file may still be being written: retry until the code is in it.
        CODE=$(plain_text_part "$EML" 2>/dev/null |
            sed -n 's/^[[:space:]]*\([0-9]\{4,10\}\)[[:space:]]*$/\1/p' | head -n 1) || true
        [[ -n "$CODE" ]] && break
    fi
    sleep 0.5
done
[[ -n "$EML" ]] || die "no .eml file appeared in $VERIMAIL_OUTBOX within 30s"
[[ -n "$CODE" ]] || die "no code line found in the text part of $EML"
printf 'mail written: %s\n' "$(basename "$EML")"
grep -i -m 3 -E '^(To|Subject|Message-ID):' "$EML" | tr -d '\r' || true

if [[ -n "$DISPATCH_ID" ]]; then
    dispatch=$(curl -sS --max-time 5 -H "X-Auth-Token: $TOKEN" \
        "http://$LISTEN/v2/bases/verificationcode/dispatches/$DISPATCH_ID" || true)
    printf 'dispatch: %s\n' "$dispatch"
fi

printf '\nverification code for %s: %s\n\n' "$EMAIL" "$CODE"

# --- stop --------------------------------------------------------------------
say "stopping verimail (SIGTERM)"
kill -TERM "$SERVER_PID"
stopped=""
for _ in $(seq 1 150); do
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
        stopped=1
        break
    fi
    sleep 0.1
done
[[ -n "$stopped" ]] || die "verimail did not exit within 15s of SIGTERM"
server_status=0
wait "$SERVER_PID" || server_status=$?
SERVER_PID=""
[[ $server_status -eq 0 ]] || die "verimail exited with status $server_status after SIGTERM"
say "done: verimail stopped cleanly"
