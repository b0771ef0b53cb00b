#!/usr/bin/env bash
# Runs every fuzz target under fuzz/ (cargo-fuzz, libFuzzer) for a bounded
# time each; a crash fails the run and leaves its input in
# fuzz/artifacts/<target>/, to be turned into a regression test on stable.
#
#   scripts/fuzz.sh            # CI's bound: 30 s per target
#   FUZZ_SECONDS=3600 scripts/fuzz.sh mailbox   # one target, an hour
#
# Needs the nightly toolchain (rustup toolchain list); installs cargo-fuzz
# when it is missing.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

SECONDS_PER_TARGET=${FUZZ_SECONDS:-30}
cargo +nightly fuzz --version >/dev/null 2>&1 || cargo install --locked cargo-fuzz
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo +nightly fuzz list)
for target in "${targets[@]}"; do
  echo "== fuzzing $target for ${SECONDS_PER_TARGET}s"
  cargo +nightly fuzz run "$target" -- -max_total_time="$SECONDS_PER_TARGET" -max_len=4096
done
echo "fuzzing: ${#targets[@]} targets, no crash"
