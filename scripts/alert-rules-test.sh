#!/usr/bin/env bash
# Checks and unit-tests the Prometheus alert rules in deploy/prometheus/:
#
#   1. every verimail_* metric a rule reads is one the code exports (a name
#      in crates/verimail-infra/src/metrics.rs), so a renamed metric cannot
#      leave an alert silently watching nothing;
#   2. every alert has a test that expects it to fire and one that expects
#      it to stay quiet (deploy/prometheus/*_test.yml);
#   3. `promtool check rules`, `promtool check config` (the compose stack's
#      deploy/prometheus/prometheus.yml) and `promtool test rules`.
#
#   scripts/alert-rules-test.sh
#
# Takes a second or two. Uses promtool from PATH, else the one from Debian's
# `prometheus` package unpacked into target/promtool/ (fetched with `apt-get
# download` when missing: only the package file is unpacked, so no
# Prometheus server is installed or started).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
SCRIPT_NAME=alert-rules-test
. scripts/lib.sh

RULES_DIR=deploy/prometheus
RULES=$RULES_DIR/verimail-rules.yml
TESTS=$RULES_DIR/verimail-rules_test.yml
METRICS_RS=crates/verimail-infra/src/metrics.rs
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

promtool_path() {
  if command -v promtool >/dev/null; then command -v promtool; return; fi
  local unpacked=target/promtool/usr/bin/promtool
  if [ ! -x "$unpacked" ]; then
    need apt-get "a Debian or Ubuntu machine, or promtool on PATH"
    local dl
    dl=$(mktemp -d)
    # `apt-get download` needs the package lists; refresh them once if the
    # package is not known yet (a fresh container has none).
    if ! (cd "$dl" && apt-get download prometheus >&2 2>/dev/null); then
      as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
      (cd "$dl" && apt-get download prometheus >&2) || die "apt-get download prometheus failed"
    fi
    mkdir -p target/promtool
    dpkg-deb -x "$dl"/prometheus_*.deb target/promtool
    rm -rf "$dl"
  fi
  echo "$ROOT/$unpacked"
}

log "every metric the rules read is exported"
exported=$(grep -o '"verimail_[a-z_]*"' "$METRICS_RS" | tr -d '"' | sort -u)
missing=0
for name in $(grep -o 'verimail_[a-z_]*' "$RULES" | sort -u); do
  base=${name%_count}; base=${base%_sum}; base=${base%_bucket}
  if ! grep -qx "$base" <<<"$exported"; then
    echo "  $RULES reads $name, which $METRICS_RS does not define" >&2
    missing=1
  fi
done
[ "$missing" = 0 ] || die "rules read metrics nobody exports"
echo "  $(grep -o 'verimail_[a-z_]*' "$RULES" | sort -u | wc -l) metric names, all in $METRICS_RS"

log "every alert has a firing and a quiet test"
untested=0
for alert in $(sed -n 's/^ *- alert: *//p' "$RULES"); do
  # After `alertname: X`, the next line says what is expected:
  # `exp_alerts: []` (quiet) or `exp_alerts:` followed by alerts (firing).
  read -r fires quiet < <(awk -v a="$alert" '
    $1 == "alertname:" { this = ($2 == a); next }
    this && $1 == "exp_alerts:" { if ($2 == "[]") q++; else f++; this = 0 }
    END { print f + 0, q + 0 }' "$TESTS")
  if [ "$fires" = 0 ] || [ "$quiet" = 0 ]; then
    echo "  $alert: $fires firing, $quiet quiet expectations in $TESTS" >&2
    untested=1
  fi
done
[ "$untested" = 0 ] || die "alerts without both a firing and a quiet test"
echo "  $(grep -c '^ *- alert:' "$RULES") alerts, each with both"

PROMTOOL=$(promtool_path)
"$PROMTOOL" --version 2>&1 | head -n 1

log "promtool check rules"
"$PROMTOOL" check rules "$RULES"

log "promtool check config (the compose stack's Prometheus, with the rules it loads)"
"$PROMTOOL" check config "$RULES_DIR/prometheus.yml"

log "promtool test rules"
(cd "$RULES_DIR" && "$PROMTOOL" test rules "$(basename "$TESTS")")
echo "alert rules: checked and tested"
