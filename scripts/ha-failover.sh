#!/usr/bin/env bash
# No single point of failure, with real servers (README, "Running highly
# available"): starts a 3-node RabbitMQ cluster from the installed
# rabbitmq-server and a Postgres primary with a synchronous streaming
# standby, all on ports, node names and directories of their own (the
# services on 5432 and 5672 are left alone), then runs
# `high_availability_run::failover_under_load`: 2 intakes and 3 workers
# under ~100 sends/s while the node leading every queue is SIGKILLed (and
# restarted 20 s later; while it is down the relay answers 451 for 4 s, so
# retries pass through delay queues that lost their leader, and a worker is
# restarted), then the primary is stopped at once and the standby promoted.
# It prints the figures and fails unless nothing was lost and the restarted
# worker consumed while the node was down.
# Every server it started is stopped when it ends, however it ends; their
# logs and the processes' are kept in target/ha-failover-logs (HA_LOGS).
#
#   scripts/ha-failover.sh
#
# The test calls back into this script (`ctl ...`) to break and mend the
# servers. Needs root (or the rabbitmq and postgres users' rights), cargo,
# rabbitmq-server and the Postgres server binaries.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SCRIPT_NAME=ha-failover
# shellcheck source=scripts/lib.sh
source "$ROOT/scripts/lib.sh"

HA_DIR=${HA_DIR:-/tmp/vm-ha}
RMQ_BIN=/usr/lib/rabbitmq/bin
PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)
NODES=3

as_user() { # user, command...
  local user=$1; shift
  if [ "$(id -u)" = 0 ]; then runuser -u "$user" -- "$@"; else "$@"; fi
}
rabbit() { # node index, command...
  local i=$1; shift
  # shellcheck disable=SC1090
  source "$HA_DIR/rmq$i/env"
  as_user rabbitmq env HOME=/var/lib/rabbitmq \
    RABBITMQ_NODENAME="$NODENAME" RABBITMQ_NODE_PORT="$PORT" \
    RABBITMQ_DIST_PORT="$DIST_PORT" RABBITMQ_MNESIA_BASE="$HA_DIR/rmq$i/mnesia" \
    RABBITMQ_LOG_BASE="$HA_DIR/rmq$i/log" RABBITMQ_CONFIG_FILE="$HA_DIR/rmq$i/rabbitmq.conf" \
    RABBITMQ_ENABLED_PLUGINS_FILE="$HA_DIR/rmq$i/enabled_plugins" \
    RABBITMQ_PID_FILE="$HA_DIR/rmq$i/pid" "$@"
}
rabbitmqctl_on() { local i=$1; shift; rabbit "$i" "$RMQ_BIN/rabbitmqctl" -n "$(node_name "$i")" "$@"; }
node_name() { echo "vmha$1@localhost"; }

start_node() {
  local i=$1
  rabbit "$i" nohup "$RMQ_BIN/rabbitmq-server" >>"$HA_DIR/rmq$i/out" 2>&1 &
  # await_startup fails at once while the node has not reached epmd yet.
  for _ in $(seq 120); do
    rabbitmqctl_on "$i" await_startup --timeout 120 >/dev/null 2>&1 && return 0
    sleep 1
  done
  die "RabbitMQ node $i did not start (see $HA_DIR/rmq$i/log)"
}

kill_node() { # SIGKILL, as a crash
  local pid
  pid=$(cat "$HA_DIR/rmq$1/pid" 2>/dev/null || true)
  [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null || true
}

pg_ctl_as() { as_user postgres "$PG_BIN/pg_ctl" "$@"; }

# --- ctl: what the test asks for --------------------------------------------
if [ "${1:-}" = ctl ]; then
  shift
  # shellcheck disable=SC1091
  source "$HA_DIR/ports"
  case "$1" in
    # The node (index) leading the quorum queue $2, asked of any live node.
    leader)
      for i in $(seq "$NODES"); do
        leader=$(rabbitmqctl_on "$i" list_queues -q --no-table-headers name leader 2>/dev/null |
          awk -v q="$2" '$1 == q {print $2}') || continue
        [ -n "$leader" ] || continue
        echo "${leader#vmha}" | cut -d@ -f1
        exit 0
      done
      exit 1 ;;
    # Every queue of the prefix $2: leader, members and the members online
    # (for the figures), asked of any live node.
    queues)
      for i in $(seq "$NODES"); do
        rabbitmqctl_on "$i" list_queues -q --no-table-headers name leader members online 2>/dev/null |
          awk -v p="$2." 'index($1, p) == 1' && exit 0
      done
      exit 1 ;;
    kill-node) kill_node "$2" ;;
    start-node) start_node "$2" ;;
    # The primary stopped at once, the standby promoted.
    pg-failover)
      pg_ctl_as -D "$HA_DIR/pg1" -m immediate stop >/dev/null
      pg_ctl_as -D "$HA_DIR/pg2" -w promote >/dev/null ;;
    *) die "unknown ctl command $1" ;;
  esac
  exit 0
fi

# --- the run ----------------------------------------------------------------
[ -x "$RMQ_BIN/rabbitmq-server" ] || die "rabbitmq-server not found (apt-get install rabbitmq-server)"
[ -x "$PG_BIN/initdb" ] || die "Postgres server binaries not found (apt-get install postgresql)"
need cargo "rustup"

# The servers' and processes' logs of the last run are kept here.
HA_LOGS=${HA_LOGS:-$ROOT/target/ha-failover-logs}

stop_all() {
  for i in $(seq "$NODES"); do kill_node "$i"; done
  if [ -d "$HA_DIR" ]; then
    rm -rf "$HA_LOGS" && mkdir -p "$HA_LOGS"
    for i in $(seq "$NODES"); do
      [ -d "$HA_DIR/rmq$i/log" ] && cp -r "$HA_DIR/rmq$i/log" "$HA_LOGS/rmq$i" 2>/dev/null
    done
    cp "$HA_DIR"/pg*.log "${TMPDIR:-/tmp}"/vm-ha-*.log "$HA_LOGS/" 2>/dev/null || true
  fi
  for pg in pg1 pg2; do
    [ -f "$HA_DIR/$pg/postmaster.pid" ] && pg_ctl_as -D "$HA_DIR/$pg" -m immediate stop >/dev/null 2>&1 || true
  done
  rm -rf "$HA_DIR"
}
trap stop_all EXIT
stop_all
mkdir -p "$HA_DIR"

log "RabbitMQ: a cluster of $NODES nodes"
for i in $(seq "$NODES"); do
  mkdir -p "$HA_DIR/rmq$i"
  port=$(free_port)
  dist=$(free_port)
  cat >"$HA_DIR/rmq$i/env" <<EOF
NODENAME=$(node_name "$i")
PORT=$port
DIST_PORT=$dist
EOF
  printf 'listeners.tcp.default = %s\nloopback_users = none\n' "$port" >"$HA_DIR/rmq$i/rabbitmq.conf"
  echo '[].' >"$HA_DIR/rmq$i/enabled_plugins"
  echo "RMQ_PORT_$i=$port" >>"$HA_DIR/ports"
done
[ "$(id -u)" = 0 ] && chown -R rabbitmq:rabbitmq "$HA_DIR"
for i in $(seq "$NODES"); do start_node "$i" & done
wait
for i in $(seq 2 "$NODES"); do
  rabbitmqctl_on "$i" stop_app >/dev/null
  rabbitmqctl_on "$i" join_cluster "$(node_name 1)" >/dev/null
  rabbitmqctl_on "$i" start_app >/dev/null
done
rabbitmqctl_on 1 cluster_status | grep -A4 -i "running nodes" || true

log "Postgres: a primary and a synchronous standby"
pg_port1=$(free_port)
pg_port2=$(free_port)
echo "PG_PORT_1=$pg_port1" >>"$HA_DIR/ports"
echo "PG_PORT_2=$pg_port2" >>"$HA_DIR/ports"
[ "$(id -u)" = 0 ] && chown postgres "$HA_DIR"
as_user postgres "$PG_BIN/initdb" -D "$HA_DIR/pg1" -U postgres --auth=trust --no-sync >/dev/null
# Every commit waits for the standby (synchronous_standby_names on the
# primary's command line only: the promoted standby must not wait for one).
pg_ctl_as -D "$HA_DIR/pg1" -l "$HA_DIR/pg1.log" -w -o \
  "-c port=$pg_port1 -c listen_addresses=127.0.0.1 -c unix_socket_directories=$HA_DIR -c synchronous_standby_names='*'" \
  start >/dev/null
as_user postgres "$PG_BIN/pg_basebackup" -h 127.0.0.1 -p "$pg_port1" -U postgres -D "$HA_DIR/pg2" -R -X stream
pg_ctl_as -D "$HA_DIR/pg2" -l "$HA_DIR/pg2.log" -w -o \
  "-c port=$pg_port2 -c listen_addresses=127.0.0.1 -c unix_socket_directories=$HA_DIR" \
  start >/dev/null
for _ in $(seq 60); do
  state=$(psql -qtA -h 127.0.0.1 -p "$pg_port1" -U postgres -c "SELECT sync_state FROM pg_stat_replication" || true)
  [ "$state" = sync ] && break
  sleep 1
done
[ "$state" = sync ] || die "the standby is not synchronous ($state)"
echo "standby on $pg_port2 is synchronous"

amqp_urls=""
for i in $(seq "$NODES"); do
  port_var="RMQ_PORT_$i"
  # shellcheck disable=SC1091
  source "$HA_DIR/ports"
  amqp_urls="${amqp_urls:+$amqp_urls,}amqp://guest:guest@127.0.0.1:${!port_var}/%2f"
done
export HA_AMQP_URL=$amqp_urls
export HA_DATABASE_URL="postgres://postgres@127.0.0.1:$pg_port1,127.0.0.1:$pg_port2/verimail_ha?target_session_attrs=read-write"
export HA_CTL="$ROOT/scripts/ha-failover.sh"
export HA_DIR

log "the run: 2 intakes, 3 workers, ~100 sends/s, a node SIGKILLed, a failover"
cd "$ROOT"
cargo test --test api -- --ignored --exact high_availability_run::failover_under_load --nocapture
