#!/usr/bin/env bash
# The README's native path on a fresh Debian machine, for real: a container
# from a bare Debian bookworm (debootstrap --variant=minbase; the base image
# scripts/compose-e2e.sh builds, made here when missing) that holds only
# this checkout and a Rust toolchain (the host's rustup and cargo home,
# mounted, with gcc and libc6-dev, which rustup needs as well). In it, the
# README's own commands, nothing else:
#
#   scripts/dev-services.sh   installs PostgreSQL and RabbitMQ from Debian's
#                             packages and starts them on 127.0.0.1
#   scripts/demo.sh           `verimail all`, a partner and a token, a send,
#                             the code read back from the mail
#   cargo test --workspace    (with --test; the whole suite, several minutes)
#
#   scripts/fresh-machine.sh [--test]
#
# The container has a network namespace of its own, so the host's own
# services on 5432 and 5672 are neither used nor touched. The checkout is
# mounted at its own path, so the host's build in target/ is reused.
# Needs a running Docker engine; debootstrap (root) when the base image is
# missing. Exits non-zero when a command failed.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BASE_IMAGE=verimail-ci/debian:bookworm
RUN_TESTS=0
case "${1:-}" in
  --test) RUN_TESTS=1 ;;
  "") ;;
  *) echo "usage: $0 [--test]" >&2; exit 2 ;;
esac
RUSTUP_HOME=${RUSTUP_HOME:-$HOME/.rustup}
CARGO_HOME=${CARGO_HOME:-$HOME/.cargo}
[ -d "$RUSTUP_HOME" ] && [ -x "$CARGO_HOME/bin/cargo" ] ||
  { echo "fresh-machine: no rustup toolchain in $RUSTUP_HOME / $CARGO_HOME" >&2; exit 1; }
docker info >/dev/null 2>&1 || { echo "fresh-machine: no Docker engine answers" >&2; exit 1; }

if ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
  command -v debootstrap >/dev/null || { echo "fresh-machine: debootstrap is not installed" >&2; exit 1; }
  rootfs=$(mktemp -d)
  trap 'rm -rf "$rootfs"' EXIT
  echo "== debootstrap --variant=minbase bookworm (about a minute)"
  nice -n 19 debootstrap --variant=minbase bookworm "$rootfs" >/dev/null
  tar -C "$rootfs" -c . | docker import - "$BASE_IMAGE" >/dev/null
fi

# What runs inside: the toolchain's own needs, then the README's commands.
inside=$(cat <<'EOS'
set -euo pipefail
export PATH=/root/.cargo/bin:$PATH DEBIAN_FRONTEND=noninteractive
echo "== the machine: $(. /etc/os-release; echo "$PRETTY_NAME"), $(rustc --version)"
for tool in psql rabbitmq-server pg_ctlcluster; do
  if command -v "$tool" >/dev/null; then echo "not fresh: $tool is installed" >&2; exit 1; fi
done
echo "== a Rust toolchain's own needs: a C compiler and linker (gcc, libc6-dev)"
apt-get update -qq && apt-get install -y -qq gcc libc6-dev curl ca-certificates procps >/dev/null
echo "== scripts/dev-services.sh (the README's command for PostgreSQL and RabbitMQ)"
scripts/dev-services.sh
echo "== scripts/demo.sh (the README's native quick start: verimail all, a send, the code)"
scripts/demo.sh
if [ "$RUN_TESTS" = 1 ]; then
  echo "== cargo test --workspace (the README's test command)"
  cargo test --workspace
fi
echo "== fresh machine: passed"
EOS
)
docker run --rm --name "verimail-fresh-$$" \
  -v "$RUSTUP_HOME:/root/.rustup:ro" -v "$CARGO_HOME:/root/.cargo" \
  -v "$ROOT:$ROOT" -w "$ROOT" \
  -e RUN_TESTS="$RUN_TESTS" -e CARGO_TERM_COLOR=never \
  ${CARGO_TARGET_DIR:+-e CARGO_TARGET_DIR="$CARGO_TARGET_DIR" -v "$CARGO_TARGET_DIR:$CARGO_TARGET_DIR"} \
  "$BASE_IMAGE" bash -c "$inside"
