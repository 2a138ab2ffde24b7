#!/usr/bin/env bash
# Runs one fuzz target for SECONDS (default 60) with cargo-fuzz (libFuzzer) on the
# nightly toolchain:
#
#   scripts/fuzz.sh line_protocol 600
#   scripts/fuzz.sh line_protocol 36000 -runs=10000000   # stop at 10 M executions
#   scripts/fuzz.sh list
#
# Targets: line_protocol, json_payload, telegraf_json, fastf1_csv, write_body_gzip,
# sql_guard, config, partition_progress (fuzz/fuzz_targets/). The committed seeds (fuzz/seeds/TARGET) start
# the corpus; what the fuzzer learns is kept in ~/.cache/pitwall/fuzz/corpus/TARGET
# between runs, and a crash is saved under fuzz/artifacts/TARGET with the command to
# reproduce it. Not part of CI; the crashes it found are regression tests that CI runs.
# At the end it prints the execution count ("#N DONE").
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh
target="${1:?usage: scripts/fuzz.sh TARGET [SECONDS] (scripts/fuzz.sh list shows the targets)}"
seconds="${2:-60}"  # further arguments go to libFuzzer
if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "the nightly toolchain is needed: rustup toolchain install nightly" >&2
  exit 1
fi
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
export CARGO_TARGET_DIR="$CACHE/fuzz/target"
cd fuzz
if [ "$target" = list ]; then
  exec cargo +nightly fuzz list
fi
corpus="$CACHE/fuzz/corpus/$target"
mkdir -p "$corpus"
# -s none: librdkafka (linked through the crates) does not configure under the address
# sanitizer's flags, and pitwall has no unsafe code for it to watch; libFuzzer's
# coverage and its crash, timeout and memory checks still apply.
# -rss_limit_mb: the write path holds a body and its messages; 2 GB would mean a leak.
exec cargo +nightly fuzz run -O -s none "$target" "$corpus" "seeds/$target" -- \
  -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 "${@:3}"
