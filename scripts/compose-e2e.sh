#!/usr/bin/env bash
# The Docker Compose stack, end to end, as the README describes it:
#
#   1. builds the images: verimail from the project's Dockerfile, and (unless
#      E2E_UPSTREAM=1) local stand-ins for postgres, rabbitmq, the MailDev
#      mail catcher and Prometheus, from Debian's packages on a debootstrap
#      base, for machines that can pull no image (.ci/compose/);
#   2. `docker compose --profile observability up` of docker-compose.yml
#      (plus the CI override .ci/compose/docker-compose.ci.yml), waits until
#      every container is healthy and prints the time from `up` to ready;
#   3. creates a partner, a token and an access key with `docker compose
#      exec`, and also uses the development bootstrap credentials the
#      shipped stack's `migrate` makes (VERIMAIL_DEV_*);
#   4. sends from the host with curl and with Huawei Cloud's official Python
#      SDK (http://127.0.0.1:8080), reads each code from MailDev's REST API
#      (GET http://127.0.0.1:1080/email?to.address=...), checks it at
#      POST /v2/bases/verificationcode/check;
#   5. Prometheus (profile `observability`): every target (the intake, each
#      worker replica) is up, the alert rules are loaded and none fires;
#      then the workers are stopped (`docker compose stop worker`) while
#      requests stream in, VerimailNoWorker must fire (the time it took is
#      printed) and the backlog show in verimail_queue_depth; the workers
#      are started again and every request answered 204 must end `sent`;
#   6. scales to three workers, kills one (SIGKILL) while requests stream in,
#      restarts the rabbitmq container while requests stream in, and checks
#      that every request answered 204 ends `sent`
#      (GET /v2/bases/verificationcode/dispatches/{id});
#   7. tears the stack down with `down -v` and prints `N passed, M failed`.
#
# Exits non-zero when a check failed or a container did not become healthy;
# then it prints `docker compose ps` and every container's recent logs.
#
#   scripts/compose-e2e.sh
#
# Needs: a running Docker engine, Docker Compose 2.24+ (`docker compose`, or
# `docker-compose` v2 on PATH or in target/compose-venv/, which .ci/run
# installs), curl, python3, and for the stand-ins debootstrap (root), npm and
# the Rust toolchain; the Python SDK comes from VERIMAIL_SDK_PYTHON or
# target/sdk-venv (made here when missing, as .ci/run does). Host ports
# 127.0.0.1:8080, 127.0.0.1:1080 and 127.0.0.1:9099 (Prometheus) must be free.
#
# Environment: E2E_UPSTREAM=1 uses the upstream images docker-compose.yml
# names (needs a registry) instead of the stand-ins; E2E_KEEP=1 leaves the
# stack running (tear it down with the `down -v` command printed at the end);
# E2E_LOAD (requests per disruption, default 60).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

WORK="$ROOT/target/compose-e2e"
mkdir -p "$WORK"
RUN_ID="$(date +%Y%m%d%H%M%S)-$$"
PROJECT=verimail-e2e
API=http://127.0.0.1:8080
MAIL_API=http://127.0.0.1:1080
PROM_API=http://127.0.0.1:9099
LOAD=${E2E_LOAD:-60}
# The shipped stack's development bootstrap (docker-compose.yml, `migrate`).
DEV_TOKEN=vmt_dev_only_e2e_token_not_a_secret
DEV_AK=DEVONLYE2EACCESSKEY0
DEV_SK=devOnlyE2eSecretKeyNotASecret00000000000
DEV_DOMAIN_ID=00000000000040008000000000000001

# The classic builder: BuildKit would try to pull its frontend image offline,
# and Compose's bake mode needs buildx.
export DOCKER_BUILDKIT=0 COMPOSE_BAKE=false
export COMPOSE_PROJECT_NAME=$PROJECT

BASE_IMAGE=verimail-ci/debian:bookworm
export VERIMAIL_CI_BASE_IMAGE=$BASE_IMAGE
export VERIMAIL_CI_POSTGRES_IMAGE=verimail-ci/postgres:15
export VERIMAIL_CI_RABBITMQ_IMAGE=verimail-ci/rabbitmq:3-management
export VERIMAIL_CI_MAILDEV_IMAGE=verimail-ci/maildev:2.2.1
export VERIMAIL_CI_PROMETHEUS_IMAGE=verimail-ci/prometheus:2.42
export VERIMAIL_CI_RUST_IMAGE="" # set by build_rust_builder

PASSED=0
FAILED=0
FAILURES=()
STACK_UP=""
TIMINGS=()

say() { printf '==> %s\n' "$*" >&2; }
pass() {
    PASSED=$((PASSED + 1))
    printf 'PASS  %s\n' "$*"
}
fail() {
    FAILED=$((FAILED + 1))
    FAILURES+=("$*")
    printf 'FAIL  %s\n' "$*"
}
timing() { TIMINGS+=("$1: ${2}s"); }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# --- tools -------------------------------------------------------------------

COMPOSE=()
find_compose() {
    if docker compose version >/dev/null 2>&1; then
        COMPOSE=(docker compose)
    elif command -v docker-compose >/dev/null 2>&1 && docker-compose version 2>/dev/null | grep -q 'v2\.'; then
        COMPOSE=(docker-compose)
    elif [[ -x "$ROOT/target/compose-venv/bin/docker-compose" ]]; then
        # The Go binary the PyPI package ships: its bin/docker-compose wrapper
        # exits 0 whatever Compose returned, which would hide every failed
        # `compose` command below.
        local shipped
        shipped=$(find "$ROOT/target/compose-venv/lib" -path '*/site-packages/compose/docker-compose' -type f 2>/dev/null | head -n 1)
        if [[ -n "$shipped" && -x "$shipped" ]]; then
            COMPOSE=("$shipped")
        else
            say "warning: using target/compose-venv/bin/docker-compose, whose exit status is always 0"
            COMPOSE=("$ROOT/target/compose-venv/bin/docker-compose")
        fi
    else
        echo "compose-e2e: Docker Compose v2 not found (docker compose, docker-compose, target/compose-venv)" >&2
        exit 1
    fi
    local version
    version=$("${COMPOSE[@]}" version --short 2>/dev/null | sed 's/^v//')
    if [[ "$(printf '2.24.0\n%s\n' "$version" | sort -V | head -n1)" != 2.24.0 ]]; then
        echo "compose-e2e: Docker Compose $version is too old; 2.24 or newer is needed (env_file 'required')" >&2
        exit 1
    fi
    say "using ${COMPOSE[*]} (Compose $version)"
}

# The stack in use: its project name, compose files and profiles (the
# README example at the end brings up a second one, without Prometheus).
FILES=(-f "$ROOT/docker-compose.yml")
PROFILES=(--profile observability)
compose() { "${COMPOSE[@]}" -p "$COMPOSE_PROJECT_NAME" "${FILES[@]}" "${PROFILES[@]}" "$@"; }

for tool in docker curl python3; do
    command -v "$tool" >/dev/null 2>&1 || {
        echo "compose-e2e: $tool is not installed" >&2
        exit 1
    }
done
docker info >/dev/null 2>&1 || {
    echo "compose-e2e: no Docker engine answers (docker info failed)" >&2
    exit 1
}
find_compose
if [[ "${E2E_UPSTREAM:-}" != 1 ]]; then
    FILES+=(-f "$ROOT/.ci/compose/docker-compose.ci.yml")
fi

SDK_PYTHON=${VERIMAIL_SDK_PYTHON:-$ROOT/target/sdk-venv/bin/python}
if ! "$SDK_PYTHON" -c 'import huaweicloudsdkbssintl' 2>/dev/null; then
    say "making target/sdk-venv with huaweicloudsdkbssintl (as .ci/run does)"
    python3 -m venv "$ROOT/target/sdk-venv"
    "$ROOT/target/sdk-venv/bin/pip" install -q --disable-pip-version-check huaweicloudsdkbssintl==3.1.219
    SDK_PYTHON=$ROOT/target/sdk-venv/bin/python
fi

# --- diagnostics and teardown ------------------------------------------------------

dump_logs() {
    printf '\n---- docker compose ps -a ----\n' >&2
    compose ps -a >&2 || true
    local id name
    for id in $(compose ps -a -q 2>/dev/null); do
        name=$(docker inspect --format '{{.Name}}' "$id" | sed 's#^/##')
        printf '\n---- %s: state %s, health log ----\n' "$name" \
            "$(docker inspect --format '{{.State.Status}} (exit {{.State.ExitCode}}){{if .State.Health}}, {{.State.Health.Status}}{{end}}' "$id")" >&2
        docker inspect --format '{{if .State.Health}}{{range .State.Health.Log}}{{.ExitCode}}: {{.Output}}{{end}}{{end}}' "$id" |
            tail -n 6 >&2 || true
        printf -- '---- %s: last 60 log lines ----\n' "$name" >&2
        docker logs --tail 60 "$id" >&2 2>&1 || true
    done
}

die() {
    printf '\ncompose-e2e FAILED: %s\n' "$*" >&2
    [[ -n "$STACK_UP" ]] && dump_logs
    FAILED=$((FAILED + 1))
    summary
    exit 1
}

summary() {
    printf '\n== compose e2e summary ==\n'
    local t
    for t in "${TIMINGS[@]}"; do printf '  %s\n' "$t"; done
    if ((${#FAILURES[@]})); then
        printf '  failed: %s\n' "${FAILURES[@]}"
    fi
    printf '%d passed, %d failed\n' "$PASSED" "$FAILED"
}

teardown() {
    local status=$?
    if [[ -n "$STACK_UP" ]]; then
        if [[ "${E2E_KEEP:-}" == 1 ]]; then
            say "E2E_KEEP=1: the stack stays up; remove it with:"
            printf '  %s -p %s %s down -v\n' "${COMPOSE[*]}" "$COMPOSE_PROJECT_NAME" "${FILES[*]}" >&2
        else
            say "docker compose down -v"
            compose down -v --remove-orphans >/dev/null 2>&1 || compose down -v --remove-orphans || true
        fi
    fi
    exit "$status"
}
trap teardown EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- images --------------------------------------------------------------------

# A Debian bookworm base from debootstrap, kept by name between runs.
build_base() {
    if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
        say "base image $BASE_IMAGE exists (remove it to rebuild)"
        return
    fi
    command -v debootstrap >/dev/null 2>&1 || die "debootstrap is not installed (apt-get install debootstrap)"
    local start rootfs="$WORK/rootfs"
    start=$(now)
    say "debootstrap --variant=minbase bookworm (about a minute)"
    rm -rf "$rootfs"
    nice -n 19 debootstrap --variant=minbase bookworm "$rootfs" >"$WORK/debootstrap.log" 2>&1 ||
        die "debootstrap failed; see $WORK/debootstrap.log: $(tail -n 5 "$WORK/debootstrap.log")"
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*
    tar -C "$rootfs" -c . | docker import - "$BASE_IMAGE" >/dev/null
    rm -rf "$rootfs"
    timing "base image (debootstrap + import)" "$(since "$start")"
}

docker_build() { # what, log name, docker build args...
    local what=$1 log="$WORK/build-$2.log" start
    shift 2
    start=$(now)
    nice -n 19 docker build "$@" >"$log" 2>&1 || die "building $what failed; see $log: $(tail -n 15 "$log")"
    timing "$what image" "$(since "$start")"
}

build_standins() {
    docker_build "postgres stand-in" postgres --build-arg "BASE_IMAGE=$BASE_IMAGE" \
        -t "$VERIMAIL_CI_POSTGRES_IMAGE" .ci/compose/postgres
    docker_build "rabbitmq stand-in" rabbitmq --build-arg "BASE_IMAGE=$BASE_IMAGE" \
        -t "$VERIMAIL_CI_RABBITMQ_IMAGE" .ci/compose/rabbitmq
    # MailDev from npm on the host (the container has no CA bundle for the
    # registry), pinned by package-lock.json.
    local ctx="$WORK/maildev-context"
    mkdir -p "$ctx"
    cp .ci/compose/maildev/Dockerfile .ci/compose/maildev/package.json .ci/compose/maildev/package-lock.json "$ctx/"
    if [[ ! -d "$ctx/node_modules/maildev" ]] || ! cmp -s "$ctx/package-lock.json" "$ctx/node_modules/.package-lock.json.used"; then
        command -v npm >/dev/null 2>&1 || die "npm is needed to install MailDev for its stand-in image"
        say "npm ci (MailDev for the catcher stand-in)"
        (cd "$ctx" && npm ci --omit=dev --no-audit --no-fund --loglevel=error) >"$WORK/npm.log" 2>&1 ||
            die "npm ci for MailDev failed: $(tail -n 10 "$WORK/npm.log")"
        cp "$ctx/package-lock.json" "$ctx/node_modules/.package-lock.json.used"
    fi
    docker_build "maildev stand-in" maildev --build-arg "BASE_IMAGE=$BASE_IMAGE" \
        -t "$VERIMAIL_CI_MAILDEV_IMAGE" "$ctx"
    docker_build "prometheus stand-in" prometheus --build-arg "BASE_IMAGE=$BASE_IMAGE" \
        -t "$VERIMAIL_CI_PROMETHEUS_IMAGE" .ci/compose/prometheus
}

# The machine's own Rust toolchain and crates cache on the base image, for the
# Dockerfile's RUST_IMAGE; tagged by toolchain and Cargo.lock, kept between runs.
build_rust_builder() {
    local sysroot cargo_home key
    sysroot=$(rustc --print sysroot)
    cargo_home=${CARGO_HOME:-$HOME/.cargo}
    key=$( (rustc -vV; cat Cargo.lock; cat .ci/compose/rust-builder/Dockerfile) | sha256sum | cut -c1-16)
    VERIMAIL_CI_RUST_IMAGE="verimail-ci/rust-builder:$key"
    if docker image inspect "$VERIMAIL_CI_RUST_IMAGE" >/dev/null 2>&1; then
        say "builder image $VERIMAIL_CI_RUST_IMAGE exists"
        return
    fi
    say "cargo fetch --locked (fills the crates cache the builder image copies)"
    cargo fetch --locked >"$WORK/cargo-fetch.log" 2>&1 || die "cargo fetch failed: $(tail -n 10 "$WORK/cargo-fetch.log")"
    local ctx="$WORK/rust-builder-context"
    rm -rf "$ctx"
    mkdir -p "$ctx/rust" "$ctx/cargo-registry"
    # Hard links where possible: the context is read once, by docker build.
    cp -al "$sysroot/bin" "$sysroot/lib" "$ctx/rust/" 2>/dev/null ||
        cp -a "$sysroot/bin" "$sysroot/lib" "$ctx/rust/"
    cp -al "$cargo_home/registry/index" "$cargo_home/registry/cache" "$ctx/cargo-registry/" 2>/dev/null ||
        cp -a "$cargo_home/registry/index" "$cargo_home/registry/cache" "$ctx/cargo-registry/"
    cp .ci/compose/rust-builder/Dockerfile "$ctx/"
    docker_build "rust builder" rust-builder --build-arg "BASE_IMAGE=$BASE_IMAGE" \
        -t "$VERIMAIL_CI_RUST_IMAGE" "$ctx"
    rm -rf "$ctx"
    # Builders for an older toolchain or Cargo.lock are not used again (the
    # week-old prune above then takes the stages built on them).
    local old
    for old in $(docker images verimail-ci/rust-builder --format '{{.Repository}}:{{.Tag}}'); do
        [[ "$old" == "$VERIMAIL_CI_RUST_IMAGE" ]] || docker rmi "$old" >/dev/null 2>&1 || true
    done
}

# --- HTTP helpers ----------------------------------------------------------------

json_field() { # field: prints JSON field of stdin ('' when absent)
    python3 -c 'import json, sys
try:
    v = json.load(sys.stdin).get(sys.argv[1])
except Exception:
    v = None
print("" if v is None else v)' "$1"
}

# send AUTH-HEADER EMAIL: prints "<http status> <dispatch id>"
send_curl() {
    local hdr="$WORK/send.$BASHPID.headers" status id
    status=$(curl -sS --max-time 10 -o "$WORK/send.$BASHPID.body" -D "$hdr" -w '%{http_code}' \
        -X POST "$API/v2/bases/verificationcode/send" -H "$1" \
        -H 'Content-Type: application/json' \
        -d "{\"receiver_type\":2,\"email\":\"$2\",\"timeout\":10,\"lang\":\"en-us\"}" 2>/dev/null) || status=000
    id=$(tr -d '\r' <"$hdr" 2>/dev/null | sed -n 's/^[Xx]-[Rr]equest-[Ii]d: *//p' | head -n1)
    printf '%s %s\n' "$status" "${id:-none}"
}

send_sdk() { # AK SK DOMAIN_ID EMAIL: prints "<status> <request id>"
    local out
    out=$(VERIMAIL_ENDPOINT=$API SDK_AK=$1 SDK_SK=$2 SDK_DOMAIN_ID=$3 SDK_EMAIL=$4 \
        "$SDK_PYTHON" tests/sdk/send_with_sdk.py 2>"$WORK/sdk.stderr") || out='{}'
    printf '%s %s\n' "$(json_field status_code <<<"$out")" "$(json_field request_id <<<"$out")"
    [[ "$(json_field status_code <<<"$out")" == 204 ]] || printf 'SDK said: %s %s\n' "$out" "$(tail -n 3 "$WORK/sdk.stderr")" >&2
}

# The latest code MailDev holds for EMAIL, the way the README shows it:
# GET /email?to.address=EMAIL, last message, the code line of its text.
# Prints "<code> <dispatch id>" (the id from the Message-ID,
# <dispatch-id@sender-domain>). Waits up to 30s; with DISPATCH_ID, for the
# message of that dispatch to be the latest.
latest_code() { # EMAIL [DISPATCH_ID]
    local found
    for _ in $(seq 1 60); do
        found=$(curl -sS --max-time 5 -G "$MAIL_API/email" --data-urlencode "to.address=$1" 2>/dev/null |
            python3 -c 'import json, re, sys
mails = json.load(sys.stdin)
if not mails:
    sys.exit(1)
last = mails[-1]
message_id = (last.get("messageId") or "").strip("<>").split("@")[0]
if len(sys.argv) > 1 and sys.argv[1] not in ("none", "") and sys.argv[1] != message_id:
    sys.exit(1)
m = re.search(r"^\s*(\d{4,10})\s*$", last.get("text") or "", re.M)
if not m:
    sys.exit(1)
print(m.group(1), message_id or "none")' ${2:+"$2"} 2>/dev/null) && [[ -n "$found" ]] && {
            printf '%s\n' "$found"
            return 0
        }
        sleep 0.5
    done
    return 1
}

check_code() { # AUTH-HEADER EMAIL CODE: prints the HTTP status
    curl -sS --max-time 10 -o "$WORK/check.body" -w '%{http_code}' \
        -X POST "$API/v2/bases/verificationcode/check" -H "$1" \
        -H 'Content-Type: application/json' \
        -d "{\"email\":\"$2\",\"verification_code\":\"$3\"}" 2>/dev/null || printf '000'
}

dispatch_status() { # ID [AUTH-HEADER]: prints the dispatch's status ('' when unknown)
    curl -sS --max-time 5 -H "${2:-X-Auth-Token: $TOKEN}" \
        "$API/v2/bases/verificationcode/dispatches/$1" 2>/dev/null | json_field status
}

# One full round: send, read the code from MailDev, check it.
round_trip() { # label AUTH-HEADER EMAIL SEND-RESULT("status id")
    local label=$1 auth=$2 email=$3 status id code checked
    read -r status id <<<"$4"
    [[ "$id" != none ]] || id=""
    if [[ "$status" != 204 ]]; then
        fail "$label: send answered $status (expected 204)"
        return
    fi
    pass "$label: send answered 204${id:+ (X-Request-Id $id)}"
    local found mail_id
    if ! found=$(latest_code "$email" "$id"); then
        fail "$label: no mail for $email${id:+ with Message-ID <$id@…>} in MailDev within 30s"
        return
    fi
    read -r code mail_id <<<"$found"
    # The SDK does not expose a success response's headers: the dispatch id
    # then comes from the mail's Message-ID.
    [[ -n "$id" && "$id" != none ]] || id=$mail_id
    pass "$label: MailDev GET /email?to.address=$email has the code (dispatch $id)"
    checked=$(check_code "$auth" "$email" "$code")
    if [[ "$checked" == 204 ]]; then
        pass "$label: /check accepted the code (204)"
    else
        fail "$label: /check answered $checked: $(cat "$WORK/check.body")"
    fi
    local final
    final=$(dispatch_status "$id" "$auth")
    [[ "$final" == verified ]] && pass "$label: dispatch $id is now verified" ||
        fail "$label: dispatch status is '$final', expected verified"
}

# --- waiting for the stack ---------------------------------------------------------

# Waits until every container of the stack is healthy (migrate: exited 0);
# fails loudly on a container that exits, turns unhealthy or takes too long.
wait_healthy() { # seconds expected-worker-count
    local deadline=$(($(date +%s) + $1)) workers=$2
    while :; do
        local pending="" bad="" id svc state health code running_workers=0
        for id in $(compose ps -a -q); do
            svc=$(docker inspect --format '{{index .Config.Labels "com.docker.compose.service"}}' "$id")
            state=$(docker inspect --format '{{.State.Status}}' "$id")
            code=$(docker inspect --format '{{.State.ExitCode}}' "$id")
            health=$(docker inspect --format '{{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}' "$id")
            if [[ "$svc" == migrate ]]; then
                [[ "$state" == exited && "$code" == 0 ]] && continue
                [[ "$state" == exited ]] && bad+=" migrate(exit $code)"
                pending+=" migrate($state)"
                continue
            fi
            [[ "$state" == running ]] || {
                bad+=" $svc($state, exit $code)"
                continue
            }
            [[ "$health" == unhealthy ]] && bad+=" $svc(unhealthy)"
            [[ "$health" == healthy ]] || pending+=" $svc($health)"
            [[ "$svc" == worker && "$health" == healthy ]] && running_workers=$((running_workers + 1))
        done
        [[ -z "$bad" ]] || die "containers failed:$bad"
        if [[ -z "$pending" && $running_workers -ge $workers ]] &&
            curl -fsS --max-time 2 "$API/readyz" >/dev/null 2>&1; then
            return 0
        fi
        (($(date +%s) < deadline)) || die "not healthy within ${1}s:${pending:- (workers healthy: $running_workers of $workers; or $API/readyz not 200)}"
        sleep 0.5
    done
}

# --- load under disruption -----------------------------------------------------------

# Sends $LOAD requests, one every PAUSE seconds, to fresh addresses; one
# line "<status> <id>" each into FILE.
stream_sends() { # FILE TAG PAUSE
    local i
    : >"$1"
    for i in $(seq 1 "$LOAD"); do
        send_curl "X-Auth-Token: $TOKEN" "load-$2-$i-$RUN_ID@example.com" >>"$1"
        sleep "$3"
    done
}

# Every 204 in FILE must end `sent` within SECONDS.
expect_all_sent() { # FILE LABEL SECONDS
    local file=$1 label=$2 deadline=$(($(date +%s) + $3))
    local accepted others
    accepted=$(awk '$1 == 204 { print $2 }' "$file")
    others=$(awk '$1 != 204 { n[$1]++ } END { for (s in n) printf "%s%d answered %s", (k++ ? ", " : ""), n[s], s }' "$file")
    local n_accepted
    n_accepted=$(printf '%s\n' "$accepted" | grep -c . || true)
    ((n_accepted > 0)) || {
        fail "$label: no request answered 204 (others: $others)"
        return
    }
    local open=$accepted id st left
    while :; do
        left=""
        for id in $open; do
            st=$(dispatch_status "$id")
            case "$st" in
                sent) ;;
                failed | expired | superseded) left+=" $id:$st" ;;
                *) left+=" $id" ;;
            esac
        done
        open=$(printf '%s\n' $left | grep -v ':' || true)
        if [[ -z "$open" ]]; then
            break
        fi
        (($(date +%s) < deadline)) || break
        sleep 2
    done
    local not_sent
    not_sent=$(printf '%s\n' $left | grep -c . || true)
    if [[ -z "$left" ]]; then
        pass "$label: all $n_accepted accepted (204) dispatches ended sent${others:+ (not accepted: $others)}"
    else
        fail "$label: $not_sent of $n_accepted accepted dispatches did not end sent:$(printf ' %s' $left | cut -c1-400)"
    fi
}

# --- Prometheus (profile observability) ---------------------------------------------------

prom_api() { # PATH [curl args...]: the JSON answer of Prometheus's HTTP API
    local path=$1
    shift
    curl -fsS --max-time 5 -G "$PROM_API/api/v1/$path" "$@" 2>/dev/null
}

# One line per active target: "<job> <health> <instance> <last error>".
prom_targets() {
    prom_api targets | python3 -c 'import json, sys
for t in json.load(sys.stdin)["data"]["activeTargets"]:
    labels = t["labels"]
    print(labels.get("job", "?"), t["health"], labels.get("instance", "?"), t.get("lastError") or "-")'
}

# The names of the alerts in state STATE (firing, pending), on one line;
# fails when Prometheus does not answer.
prom_alerts() { # STATE
    prom_api alerts | python3 -c 'import json, sys
names = {a["labels"]["alertname"] for a in json.load(sys.stdin)["data"]["alerts"] if a["state"] == sys.argv[1]}
print(" ".join(sorted(names)))' "$1"
}

# Every target up: the intake, and each running worker container by its
# address (what Compose's DNS answers for `worker`), nothing else. Waits up
# to SECONDS.
expect_targets_up() { # SECONDS LABEL
    local deadline=$(($(date +%s) + $1)) label=$2 targets workers intake_up worker_up total id
    while :; do
        workers=""
        for id in $(compose ps -q --status running worker); do
            workers+="$(docker inspect --format '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$id"):9091"$'\n'
        done
        workers=$(grep . <<<"$workers" | sort | paste -sd ' ' -)
        targets=$(prom_targets 2>/dev/null) || targets=""
        intake_up=$(awk '$1 == "verimail-intake" && $2 == "up" { print $3 }' <<<"$targets" | paste -sd ' ' -)
        worker_up=$(awk '$1 == "verimail-worker" && $2 == "up" { print $3 }' <<<"$targets" | sort | paste -sd ' ' -)
        total=$(grep -c . <<<"$targets" || true)
        if [[ "$intake_up" == intake:9090 && -n "$workers" && "$worker_up" == "$workers" &&
            "$total" == $((1 + $(wc -w <<<"$workers"))) ]]; then
            pass "$label: all $total targets up (verimail-intake $intake_up; verimail-worker $worker_up: each running worker container)"
            return 0
        fi
        if (($(date +%s) >= deadline)); then
            fail "$label: not every target up within ${1}s (expected verimail-intake intake:9090 and verimail-worker ${workers:-(no worker running)}, all up); Prometheus has: $(paste -sd ';' - <<<"${targets:-no answer from $PROM_API/api/v1/targets}")"
            return 1
        fi
        sleep 1
    done
}

# --- the run ---------------------------------------------------------------------------

say "docker compose config (the shipped file, then with the override)"
"${COMPOSE[@]}" -f docker-compose.yml config -q && pass "docker compose config: docker-compose.yml is valid" ||
    fail "docker compose config rejects docker-compose.yml"
# The default stack stays as it was: Prometheus only with its profile.
default_services=$("${COMPOSE[@]}" -f docker-compose.yml config --services 2>/dev/null | sort | paste -sd ' ' -)
observability_services=$("${COMPOSE[@]}" -f docker-compose.yml --profile observability config --services 2>/dev/null |
    sort | paste -sd ' ' -)
[[ " $default_services " != *" prometheus "* && " $observability_services " == *" prometheus "* ]] &&
    pass "prometheus is in profile observability only (default: $default_services)" ||
    fail "prometheus should start only with --profile observability; default: '$default_services', with the profile: '$observability_services'"

for port in 8080 1080 9099; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        die "something already listens on 127.0.0.1:$port; the stack publishes it"
    fi
done
# A stack left over from an interrupted run.
compose down -v --remove-orphans >/dev/null 2>&1 || true

if [[ "${E2E_UPSTREAM:-}" != 1 ]]; then
    # The classic builder keeps each superseded builder stage as an untagged
    # image; drop those older than a week (labelled by the rust-builder
    # image), so that the build cache does not grow without bound.
    docker image prune -f --filter "label=org.verimail.ci.builder-cache=true" \
        --filter "until=168h" >/dev/null 2>&1 || true
    build_base
    build_standins
    build_rust_builder
fi
compose config -q || die "docker compose config rejects the files ${FILES[*]}"

# migrate, intake and worker share the image verimail:dev; building it once
# (through `migrate`) spares the classic builder two parallel copies of the
# same build. `up` then finds the image and builds nothing.
say "docker compose build migrate (the verimail image, from the Dockerfile)"
start=$(now)
nice -n 19 "${COMPOSE[@]}" "${FILES[@]}" build migrate >"$WORK/build-verimail.log" 2>&1 ||
    die "docker compose build failed; see $WORK/build-verimail.log: $(tail -n 25 "$WORK/build-verimail.log")"
timing "verimail image (docker compose build)" "$(since "$start")"
pass "docker compose build: the verimail image builds from the Dockerfile"
user=$(docker image inspect --format '{{.Config.User}}' verimail:dev)
[[ -n "$user" && "$user" != root && "$user" != 0 && "$user" != 0:0 ]] &&
    pass "the verimail image runs as a non-root user ($user)" || fail "the verimail image's user is '$user'"
[[ -n "$(docker image inspect --format '{{if .Config.Healthcheck}}yes{{end}}' verimail:dev)" ]] &&
    pass "the verimail image has a HEALTHCHECK" || fail "the verimail image has no HEALTHCHECK"

say "docker compose up -d --wait"
STACK_UP=1
start=$(now)
compose up -d --wait --wait-timeout 240 >"$WORK/up.log" 2>&1 || {
    cat "$WORK/up.log" >&2
    die "docker compose up -d --wait failed"
}
wait_healthy 60 2
UP_TO_READY=$(since "$start")
timing "docker compose up to ready (all healthy, /readyz 200)" "$UP_TO_READY"
pass "stack healthy: postgres, rabbitmq, maildev, migrate (exit 0), intake, 2 workers, prometheus"
for svc in postgres rabbitmq maildev intake worker prometheus; do
    uid=$(compose exec -T "$svc" id -u 2>/dev/null | tr -d '\r' | head -n1) || uid="?"
    [[ "$uid" =~ ^[0-9]+$ && "$uid" != 0 ]] && pass "$svc runs as uid $uid (non-root)" ||
        fail "$svc runs as uid '$uid'"
done

# --- credentials ------------------------------------------------------------------------
say "partner, token and access key through docker compose exec"
partner_json=$(compose exec -T intake verimail partner create --name "e2e-$RUN_ID" 2>"$WORK/exec.err") ||
    die "verimail partner create failed: $(cat "$WORK/exec.err")"
PARTNER_ID=$(json_field partner_id <<<"$partner_json")
TOKEN=$(compose exec -T intake verimail token issue --partner "$PARTNER_ID" --ttl 1h 2>"$WORK/exec.err" | json_field token) ||
    die "verimail token issue failed: $(cat "$WORK/exec.err")"
key_json=$(compose exec -T intake verimail key create --partner "$PARTNER_ID" 2>"$WORK/exec.err") ||
    die "verimail key create failed: $(cat "$WORK/exec.err")"
AK=$(json_field access_key <<<"$key_json")
SK=$(json_field secret_key <<<"$key_json")
DOMAIN_ID=$(json_field domain_id <<<"$key_json")
[[ -n "$PARTNER_ID" && -n "$TOKEN" && -n "$AK" && -n "$SK" ]] &&
    pass "docker compose exec: partner $PARTNER_ID, a token and access key $AK" ||
    die "exec gave no usable credentials"

# --- sends ----------------------------------------------------------------------------------
say "curl and the Python SDK, codes from MailDev, /check"
email="curl-$RUN_ID@example.com"
round_trip "curl + token" "X-Auth-Token: $TOKEN" "$email" "$(send_curl "X-Auth-Token: $TOKEN" "$email")"
email="sdk-$RUN_ID@example.com"
round_trip "SDK + AK/SK" "X-Auth-Token: $TOKEN" "$email" "$(send_sdk "$AK" "$SK" "$DOMAIN_ID" "$email")"
email="dev-curl-$RUN_ID@example.com"
round_trip "curl + dev bootstrap token" "X-Auth-Token: $DEV_TOKEN" "$email" \
    "$(send_curl "X-Auth-Token: $DEV_TOKEN" "$email")"
email="dev-sdk-$RUN_ID@example.com"
round_trip "SDK + dev bootstrap AK/SK" "X-Auth-Token: $DEV_TOKEN" "$email" \
    "$(send_sdk "$DEV_AK" "$DEV_SK" "$DEV_DOMAIN_ID" "$email")"

email="wrong-$RUN_ID@example.com"
read -r st _ <<<"$(send_curl "X-Auth-Token: $TOKEN" "$email")"
if [[ "$st" == 204 ]] && found=$(latest_code "$email"); then
    code=${found%% *}
    wrong=$(printf '%0*d' "${#code}" $(((10#$code + 1) % 10 ** ${#code})))
    st=$(check_code "X-Auth-Token: $TOKEN" "$email" "$wrong")
    [[ "$st" == 400 && "$(json_field error_code <"$WORK/check.body")" == CBC.99004010 ]] &&
        pass "a wrong code is refused (400 CBC.99004010)" || fail "a wrong code answered $st: $(cat "$WORK/check.body")"
else
    fail "wrong-code case: the send or its mail failed"
fi

# --- Prometheus: targets, rules, and an alert when the workers stop -----------------------------
# Before the worker kill below: that one must (and does) raise
# VerimailClaimsTakenOver, which would spoil "nothing fires while all is well".
say "Prometheus ($PROM_API): every target up, the rules loaded, nothing firing"
prom_start=$(now)
expect_targets_up 60 "Prometheus scrapes the stack" || true
expected_rules=$(sed -n 's/^ *- alert: *//p' deploy/prometheus/verimail-rules.yml | sort | paste -sd ' ' -)
loaded_rules=$(prom_api rules --data-urlencode type=alert | python3 -c 'import json, sys
for g in json.load(sys.stdin)["data"]["groups"]:
    for r in g["rules"]:
        print(r["name"])' 2>/dev/null | sort | paste -sd ' ' -) || loaded_rules=""
[[ -n "$expected_rules" && "$loaded_rules" == "$expected_rules" ]] &&
    pass "Prometheus loaded the $(wc -w <<<"$expected_rules") alert rules of deploy/prometheus/verimail-rules.yml" ||
    fail "Prometheus's alert rules differ from deploy/prometheus/verimail-rules.yml: loaded '${loaded_rules:-none}', expected '$expected_rules'"
firing=$(prom_alerts firing 2>/dev/null) || firing="(no answer from $PROM_API/api/v1/alerts)"
[[ -z "$firing" ]] && pass "Prometheus: no alert firing while all is well" ||
    fail "Prometheus: alerts firing while all is well: $firing"

say "stopping the workers (docker compose stop worker) while $LOAD requests stream in"
stream_sends "$WORK/load-noworker.txt" noworker 1 &
loader=$!
sleep 2
compose stop worker >"$WORK/stop-worker.log" 2>&1 && stopped=$(now) ||
    fail "docker compose stop worker failed: $(tail -n 5 "$WORK/stop-worker.log")"
running=$(compose ps -q --status running worker | wc -l)
[[ "$running" == 0 ]] && pass "docker compose stop worker: no worker running" ||
    fail "docker compose stop worker left $running workers running"
# VerimailNoWorker has `for: 1m`; scrape and evaluation every 5 s. A backlog
# alert would do too, though none can fire this soon (2 min and more).
alert=""
for _ in $(seq 1 150); do
    alert=$(prom_alerts firing 2>/dev/null | tr ' ' '\n' |
        grep -E '^(VerimailNoWorker|VerimailBacklog[A-Za-z]*|VerimailDispatchWaiting)$' | paste -sd ' ' -) || true
    [[ -n "$alert" ]] && break
    sleep 1
done
if [[ -n "$alert" ]]; then
    to_firing=$(since "${stopped:-$prom_start}")
    timing "workers stopped to $alert firing (for: 1m, 5 s scrape and evaluation)" "$to_firing"
    pass "Prometheus: $alert firing ${to_firing}s after the workers stopped under load"
else
    fail "Prometheus: neither VerimailNoWorker nor a backlog alert fired within 150s of the workers stopping (pending: $(prom_alerts pending 2>/dev/null || echo '?'); firing: $(prom_alerts firing 2>/dev/null || echo '?'); targets: $(prom_targets 2>/dev/null | paste -sd ';' - || echo '?'))"
fi
# The intake keeps sampling the queue: the backlog is there to be seen.
depth=$(prom_api query --data-urlencode 'query=max(verimail_queue_depth{queue=~".+\\.dispatch"})' |
    python3 -c 'import json, sys
r = json.load(sys.stdin)["data"]["result"]
print(r[0]["value"][1] if r else "")' 2>/dev/null) || depth=""
[[ "$depth" =~ ^[0-9]+$ && "$depth" -gt 0 ]] &&
    pass "Prometheus: the backlog shows, $depth messages wait in the dispatch queue (verimail_queue_depth)" ||
    fail "Prometheus: verimail_queue_depth of the dispatch queue is '${depth}', expected the waiting sends"
wait "$loader"
compose start worker >"$WORK/start-worker.log" 2>&1 ||
    fail "docker compose start worker failed: $(tail -n 5 "$WORK/start-worker.log")"
wait_healthy 120 2
expect_all_sent "$WORK/load-noworker.txt" "workers stopped under load, then started" 120
expect_targets_up 30 "Prometheus after the workers started" || true
for _ in $(seq 1 30); do
    firing=$(prom_alerts firing 2>/dev/null) || firing="(no answer from $PROM_API/api/v1/alerts)"
    [[ " $firing " == *" VerimailNoWorker "* || "$firing" == "(no answer"* ]] || break
    sleep 1
done
[[ " $firing " != *" VerimailNoWorker "* && "$firing" != "(no answer"* ]] &&
    pass "Prometheus: VerimailNoWorker resolved once the workers were back${firing:+ (still firing: $firing)}" ||
    fail "Prometheus: VerimailNoWorker not resolved 30s after the workers started: firing $firing"
timing "Prometheus checks (targets, rules, workers stopped to alert, back)" "$(since "$prom_start")"

# --- start-to-ready of one image ------------------------------------------------------------
say "restart intake: the image's start-to-ready time"
start=$(now)
compose restart intake >/dev/null 2>&1 || die "docker compose restart intake failed"
for _ in $(seq 1 300); do
    curl -fsS --max-time 1 "$API/readyz" >/dev/null 2>&1 && break
    sleep 0.1
done
curl -fsS --max-time 2 "$API/readyz" >/dev/null 2>&1 || die "the intake was not ready 30s after a restart"
timing "intake restart to /readyz 200 (image start-to-ready)" "$(since "$start")"
pass "intake restarted and ready"

# --- three workers, one killed under load ----------------------------------------------------
say "docker compose up -d --scale worker=3"
compose up -d --scale worker=3 --no-recreate >"$WORK/scale.log" 2>&1 || {
    cat "$WORK/scale.log" >&2
    die "scaling to three workers failed"
}
wait_healthy 120 3
n=$(compose ps -q worker | wc -l)
[[ "$n" == 3 ]] && pass "scaled to 3 workers" || fail "expected 3 worker containers, found $n"
# Compose's DNS answers `worker` with the new replica too (refreshed every 5 s).
expect_targets_up 30 "Prometheus after scaling to 3 workers" || true

say "killing a worker (SIGKILL) while $LOAD requests stream in"
stream_sends "$WORK/load-kill.txt" kill 0.1 &
loader=$!
sleep 2
victim=$(compose ps -q worker | head -n 1)
docker kill "$victim" >/dev/null && pass "killed worker $(docker inspect --format '{{.Name}}' "$victim" | sed 's#^/##') mid-load" ||
    fail "docker kill of a worker failed"
wait "$loader"
expect_all_sent "$WORK/load-kill.txt" "worker killed under load" 150
# Back to three (whether or not Docker restarted the killed one).
compose up -d --scale worker=3 --no-recreate >/dev/null 2>&1 || true
docker start "$victim" >/dev/null 2>&1 || true

# Slower, so that requests keep coming through the outage and after it.
say "restarting the rabbitmq container while $LOAD requests stream in"
stream_sends "$WORK/load-rabbit.txt" rabbit 0.4 &
loader=$!
sleep 2
compose restart rabbitmq >"$WORK/restart-rabbit.log" 2>&1 && pass "rabbitmq container restarted mid-load" ||
    fail "docker compose restart rabbitmq failed: $(cat "$WORK/restart-rabbit.log")"
wait "$loader"
wait_healthy 180 3
expect_all_sent "$WORK/load-rabbit.txt" "rabbitmq restarted under load" 180
email="after-restart-$RUN_ID@example.com"
round_trip "after the rabbitmq restart" "X-Auth-Token: $TOKEN" "$email" \
    "$(send_curl "X-Auth-Token: $TOKEN" "$email")"

# Final state of the stack after all that: still healthy.
wait_healthy 60 3
pass "stack healthy at the end"
((FAILED == 0)) || dump_logs
say "docker compose down -v"
compose down -v --remove-orphans >"$WORK/down.log" 2>&1 && pass "docker compose down -v" ||
    fail "docker compose down -v failed: $(tail -n 5 "$WORK/down.log")"
STACK_UP=""
left=$(docker ps -a -q --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME" | wc -l)
vols=$(docker volume ls -q --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME" | wc -l)
[[ "$left" == 0 && "$vols" == 0 ]] && pass "nothing left after down -v" ||
    fail "after down -v: $left containers, $vols volumes left"

# --- the README's copy-paste example, as it is ----------------------------------------------
# "Using verimail in your compose e2e tests": its compose file (which
# `include`s this repository's docker-compose.yml from vendor/verimail) and
# its shell block, taken from README.md. Its `app` service builds `.`: here a
# placeholder image. `docker compose` in that block gets the CI override
# added by a wrapper on PATH (nothing else changes).
readme_example() {
    local dir="$WORK/readme-example" real_docker
    rm -rf "$dir"
    mkdir -p "$dir/vendor" "$dir/bin"
    ln -s "$ROOT" "$dir/vendor/verimail"
    python3 - "$ROOT/README.md" "$dir" <<'PY' || return 1
import pathlib, re, sys
readme = pathlib.Path(sys.argv[1]).read_text()
section = readme.split("### Using verimail in your compose e2e tests", 1)[1].split("\n## ", 1)[0]
compose = re.search(r"```yaml\n(# compose\.e2e\.yml.*?)```", section, re.S)
script = re.search(r"```sh\n(docker compose -f compose\.e2e\.yml up.*?)```", section, re.S)
if not compose or not script:
    sys.exit("README.md: the compose e2e example blocks were not found")
out = pathlib.Path(sys.argv[2])
(out / "compose.e2e.yml").write_text(compose.group(1))
(out / "example.sh").write_text(script.group(1))
PY
    printf 'FROM %s
USER 65534
CMD ["bash", "-c", "trap exit TERM; sleep infinity & wait"]
' \
        "${E2E_APP_BASE:-$BASE_IMAGE}" >"$dir/Dockerfile"
    real_docker=$(command -v docker)
    {
        printf '#!/usr/bin/env bash
'
        printf '# `docker compose -f compose.e2e.yml ...` with the CI override added.
'
        printf 'if [[ "${1:-}" == compose ]]; then
    shift
    args=()
'
        printf '    for a in "$@"; do args+=("$a"); [[ "$a" == compose.e2e.yml ]] && args+=(%s); done
' \
            "${FILES[*]:2}"
        printf '    exec %s "${args[@]}"
fi
' "${COMPOSE[*]}"
        printf 'exec %s "$@"
' "$real_docker"
    } >"$dir/bin/docker"
    chmod +x "$dir/bin/docker"
    (cd "$dir" && PATH="$dir/bin:$PATH" bash -e example.sh) >"$WORK/readme-example.log" 2>&1
}
if [[ "${E2E_UPSTREAM:-}" == 1 ]]; then
    E2E_APP_BASE=debian:bookworm-slim
fi
say "the README's compose e2e example (include + dev token + MailDev API + check)"
export COMPOSE_PROJECT_NAME=verimail-e2e-readme
FILES=(-f "$WORK/readme-example/compose.e2e.yml" "${FILES[@]:2}")
PROFILES=()
STACK_UP=1
start=$(now)
if readme_example && grep -q '^HTTP/1.1 204' "$WORK/readme-example.log"; then
    timing "README example (up --build --wait, send, read, check, down -v)" "$(since "$start")"
    pass "the README's compose e2e example runs as written: its /check answered 204"
else
    tail -n 40 "$WORK/readme-example.log" >&2
    fail "the README's compose e2e example failed (log: $WORK/readme-example.log)"
    dump_logs
fi
compose down -v --remove-orphans >/dev/null 2>&1 || true
docker rmi "$COMPOSE_PROJECT_NAME-app" >/dev/null 2>&1 || true
STACK_UP=""

summary
((FAILED == 0))
