#!/usr/bin/env bash
# Keeps the shared test RabbitMQ (the local node `rabbit@localhost` that
# scripts/dev-services.sh starts) fit for long test runs. For development
# and CI machines whose broker holds nothing but test queues.
#
#   scripts/broker-hygiene.sh            # all three steps below
#   scripts/broker-hygiene.sh --restart  # only (re)start it with the raised limit
#
# 1. File handles. RabbitMQ 3.x sizes its handle budget from `ulimit -n` at
#    boot; started through `su` (as the Debian wrapper does) it gets PAM's
#    soft 1024, which is 927 handles. Each durable queue holds some, and a
#    broker out of handles accepts TCP and answers no AMQP handshake: the
#    failure that sank a CI run. Outside systemd (whose unit sets its own
#    limit), a broker booted with fewer than 4096 is restarted with the hard
#    limit.
# 2. Leftovers. Test runs name their queues `t<32 hex>.*` (tests/api/support)
#    or `verimail-{alerts,fuzz,demo}-…`, `bench_…`, `soak_…` (scripts/); a
#    killed run leaves them behind. They are deleted, in one call.
# 3. From then on, such a queue nobody uses for 15 minutes expires (policy
#    `verimail-test-expiry`), so no run can pile them up again.
set -euo pipefail

LEFTOVER='^(t[0-9a-f]{32}|verimail-(alerts|fuzz|demo)-[0-9a-z-]+|bench_[0-9a-z_]+|soak_[0-9a-z_]+)[.]'
WANTED_FILES=4096

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
ctl() { timeout 60 rabbitmqctl -q "$@"; }
amqp_answers() {
  timeout 5 bash -c 'exec 3<>/dev/tcp/127.0.0.1/5672 && printf "AMQP\0\0\11\1" >&3 &&
    [ "$(head -c 1 <&3 | od -An -tx1 | tr -d " ")" = 01 ]' 2>/dev/null
}
wait_answers() {
  # A broker recovering thousands of queues takes minutes.
  for _ in $(seq 300); do amqp_answers && return 0; sleep 1; done
  echo "FATAL: RabbitMQ did not answer an AMQP handshake within 300 s" >&2
  tail -n 40 /var/log/rabbitmq/*.log >&2 2>/dev/null || true
  exit 1
}
broker_pid() { timeout 20 rabbitmqctl -q eval 'os:getpid().' 2>/dev/null | tr -dc 0-9; }
with_systemd() { [ -d /run/systemd/system ] && command -v systemctl >/dev/null; }

start_broker() {
  if with_systemd; then as_root systemctl restart rabbitmq-server; wait_answers; return; fi
  # Its VM's command line does not name the node: ask it for its pid.
  local pid
  pid=$(broker_pid || true)
  timeout 60 rabbitmqctl stop >/dev/null 2>&1 || true
  if [ -n "$pid" ]; then
    for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    as_root kill -KILL "$pid" 2>/dev/null || true
  fi
  local files
  files=$(ulimit -Hn)
  [ "$files" = unlimited ] && files=65536
  # `su` resets the soft limit through PAM; raising it inside the shell it
  # runs is what survives.
  as_root su rabbitmq -s /bin/sh -c "ulimit -n $files && exec /usr/sbin/rabbitmq-server -detached"
  wait_answers
  echo "RabbitMQ restarted with ulimit -n $files"
}

soft_files() {
  local pid
  pid=$(broker_pid)
  [ -n "$pid" ] && awk '/Max open files/ {print $4}' "/proc/$pid/limits"
}

if [ "${1:-}" = --restart ]; then start_broker; exit 0; fi

answering=0
for _ in $(seq 60); do amqp_answers && { answering=1; break; }; sleep 1; done
if [ "$answering" = 0 ]; then
  echo "RabbitMQ has not answered an AMQP handshake for 60 s: restarting it" >&2
  start_broker
fi
now=$(soft_files || true)
if [ -n "$now" ] && [ "$now" -lt "$WANTED_FILES" ] && ! with_systemd \
    && [ "$(ulimit -Hn)" != unlimited ] && [ "$(ulimit -Hn)" -ge "$WANTED_FILES" ]; then
  echo "RabbitMQ booted with ulimit -n $now (about $((now - 97)) handles): restarting it"
  start_broker
else
  echo "RabbitMQ file limit: ${now:-unknown} (left as it is)"
fi

deleted=$(ctl eval "
  Qs = [Q || Q <- rabbit_amqqueue:list(<<\"/\">>),
             re:run(element(4, amqqueue:get_name(Q)), \"$LEFTOVER\") =/= nomatch],
  [rabbit_amqqueue:delete(Q, false, false, <<\"broker-hygiene\">>) || Q <- Qs],
  length(Qs).")
echo "deleted $deleted leftover test queues"
ctl set_policy --apply-to queues verimail-test-expiry "$LEFTOVER" '{"expires":900000}' >/dev/null
echo "policy verimail-test-expiry: unused test queues expire after 15 min"
