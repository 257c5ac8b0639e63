#!/usr/bin/env bash
# Bounded coverage-guided fuzzing of the ARP/NDP parsers (libFuzzer via cargo-fuzz) on the
# stable toolchain. Usage: fuzz/run.sh [SECONDS] (default 60). Needs `cargo install cargo-fuzz`.
# The always-on, coverage-free variant is `fuzz_parsers_and_decisions_with_mutated_frames` in
# tests/net.rs.
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:-60}"
command -v cargo-fuzz >/dev/null || { echo "cargo-fuzz not installed (cargo install cargo-fuzz --locked)" >&2; exit 2; }
mkdir -p corpus/packets
# RUSTC_BOOTSTRAP lets stable rustc accept the -Z sanitizer flags cargo-fuzz passes.
RUSTC_BOOTSTRAP=1 cargo fuzz run packets corpus/packets seeds/packets -- \
  -max_total_time="$secs" -max_len=2048
