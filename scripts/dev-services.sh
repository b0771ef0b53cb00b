#!/usr/bin/env bash
# PostgreSQL and RabbitMQ on localhost, as the README's run and test
# commands expect them: Postgres on 127.0.0.1:5432 where user `postgres`
# connects over TCP without a password, RabbitMQ on 127.0.0.1:5672 with
# guest/guest. On Debian or Ubuntu, without Docker (with Docker: `docker
# compose up -d --wait dev-postgres dev-rabbitmq`, README "Quick start").
#
#   scripts/dev-services.sh
#
# Idempotent: a service that already answers is left exactly as it is
# (nothing installed, started or reconfigured); one that is installed but
# stopped is started; one that is missing is installed from the
# distribution's packages (apt-get, as root or through sudo). Only a cluster
# this script installs gets `trust` for 127.0.0.1 (the tests connect as
# `postgres` without a password): for development machines only.
# .ci/run uses it for its service step.
set -euo pipefail

log() { printf '\n== %s\n' "$*"; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
apt_install() {
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
}
tcp_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }
wait_for() { # what, seconds, command...
  local what=$1 secs=$2; shift 2
  for _ in $(seq "$secs"); do "$@" && return 0; sleep 1; done
  echo "FATAL: $what did not come up within ${secs}s" >&2; exit 1
}
# Under systemd the packages' units own the servers; elsewhere (containers,
# CI) they are started by hand.
with_systemd() { [ -d /run/systemd/system ] && command -v systemctl >/dev/null; }
pg_up() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null || tcp_open 127.0.0.1 5432; }

log "PostgreSQL (127.0.0.1:5432)"
if pg_up; then
  echo "already up: left as it is"
else
  if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
    apt_install postgresql postgresql-client
    ver=$(ls /etc/postgresql | head -n1)
    # Tests connect as postgres over TCP without a password.
    as_root sed -i 's/^\(host\s\+all\s\+all\s\+127.0.0.1\/32\s\+\)\S\+/\1trust/' \
      "/etc/postgresql/$ver/main/pg_hba.conf"
    # A unit the package started read the file before the edit.
    as_root pg_ctlcluster --skip-systemctl-redirect "$ver" main reload 2>/dev/null || true
  fi
  ver=$(ls /etc/postgresql | head -n1)
  if with_systemd; then as_root systemctl start "postgresql@$ver-main" || true
  else as_root pg_ctlcluster --skip-systemctl-redirect "$ver" main start || true; fi
  wait_for PostgreSQL 60 pg_up
fi
if command -v pg_isready >/dev/null; then pg_isready -h 127.0.0.1 -p 5432; fi
if command -v psql >/dev/null && ! psql -w -h 127.0.0.1 -U postgres -d postgres -Atc 'SELECT 1' >/dev/null 2>&1; then
  echo "note: user postgres cannot connect over TCP without a password; the tests need" >&2
  echo "      'host all all 127.0.0.1/32 trust' in pg_hba.conf (this script sets it only" >&2
  echo "      on a cluster it installs)" >&2
fi

log "RabbitMQ (127.0.0.1:5672)"
if tcp_open 127.0.0.1 5672; then
  echo "already up: left as it is"
else
  command -v rabbitmq-server >/dev/null || apt_install rabbitmq-server
  # The package's unit may have started it already: give it a moment.
  for _ in 1 2 3 4 5; do tcp_open 127.0.0.1 5672 && break; sleep 1; done
  if ! tcp_open 127.0.0.1 5672; then
    if with_systemd; then as_root systemctl start rabbitmq-server || true
    # Through the Debian wrapper's `su` the broker gets PAM's soft limit of
    # 1024 files (927 handles), too few for long test runs: raise it in the
    # shell `su` runs (scripts/broker-hygiene.sh explains).
    else as_root su rabbitmq -s /bin/sh -c \
      "ulimit -n $(ulimit -Hn) 2>/dev/null; exec /usr/sbin/rabbitmq-server -detached" || true; fi
  fi
  wait_for RabbitMQ 90 tcp_open 127.0.0.1 5672
fi
echo "RabbitMQ is listening on 5672"
