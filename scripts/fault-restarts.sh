#!/usr/bin/env bash
# The fault-injection scenario of tests/api/fault_injection.rs with real restarts:
# `rabbitmqctl stop_app`/`start_app` and `pg_ctlcluster … restart` instead of
# cut proxies. It stops the shared servers, so run it when nothing else uses
# them (.ci/run runs it after the test suite). Needs to be allowed to run
# rabbitmqctl and pg_ctlcluster (root in CI).
set -euo pipefail
cd "$(dirname "$0")/.."

tcp_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }
up() {
  for _ in $(seq 60); do
    pg_isready -q -h 127.0.0.1 -p 5432 && tcp_open 127.0.0.1 5672 && return 0
    sleep 1
  done
  echo "FATAL: Postgres or RabbitMQ is not up" >&2
  return 1
}

up
status=0
cargo test --test api -- --ignored --exact fault_injection::real_restarts --nocapture || status=$?
# Whatever happened, leave both servers running.
rabbitmqctl start_app >/dev/null 2>&1 || true
pg_isready -q -h 127.0.0.1 -p 5432 ||
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
up
exit "$status"
