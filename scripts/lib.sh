# Shell helpers shared by scripts/bench.sh and scripts/soak.sh; sourced, not run.
# The sourcing script sets SCRIPT_NAME for its failure lines.

log() { printf '\n== %s\n' "$*" >&2; }
die() { printf '\n%s: FAILED: %s\n' "${SCRIPT_NAME:-script}" "$*" >&2; exit 1; }
need() { command -v "$1" >/dev/null || die "$1 not found (install: $2)"; }
tcp_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }
free_port() {
  local port
  for _ in $(seq 100); do
    port=$((20000 + RANDOM % 30000))
    tcp_open 127.0.0.1 "$port" || { echo "$port"; return; }
  done
  die "no free port found"
}
