#!/usr/bin/env bash
# Builds pitwall (release) and runs `pitwall up`: simulators, bus, processor and an
# Iceberg lake in ./pitwall-data, all in one process with no services. Extra arguments
# go to `pitwall up` (e.g. --duration 30s --speed 10). Ctrl-C stops it cleanly.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh
cargo build --release -p pitwall
exec "$CARGO_TARGET_DIR/release/pitwall" up "$@"
