# Shell helpers shared by scripts/bench.sh and scripts/soak.sh; sourced, not run.
# The sourcing script sets SCRIPT_NAME for its failure lines.

log() { printf '\n== %s\n' "$*" >&2; }
die() { printf '\n%s: FAILED: %s\n' "${SCRIPT_NAME:-script}" "$*" >&2; exit 1; }
need() { command -v "$1" >/dev/null || die "$1 not found (install: $2)"; }
tcp_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }
free_port() {
  # Below the kernel's ephemeral range (32768 and up by default): a port
  # there can be the local end of one of the run's own outgoing connections
  # (pgbench, the pools), which no probe sees, and the bind then fails.
  local port low
  low=$(awk '{print $1}' /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
  [ "${low:-0}" -gt 21000 ] || low=32768
  for _ in $(seq 100); do
    port=$((20000 + RANDOM % (low - 20000)))
    tcp_open 127.0.0.1 "$port" || { echo "$port"; return; }
  done
  die "no free port found"
}
