#!/usr/bin/env bash
# Installs everything the tests need on a fresh machine and runs every test:
# cargo-nextest; the Kafka-API broker tansu (built once from crates.io, ~25 CPU-minutes,
# then cached; the tests start their own brokers on 127.0.0.1); in a cached virtualenv,
# PyIceberg (the independent reader of our tables) and kafka-python (the independent
# reader of our topics); Debian's chromium and prometheus (the browser tests and the
# scrape test start their own, on loopback); and the dashboard's npm packages (uPlot,
# playwright-core). Build output is cached in ~/.cache/pitwall so
# repeat runs are fast.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh

if ! command -v cargo-nextest >/dev/null; then
  echo "installing cargo-nextest" >&2
  cargo install cargo-nextest --locked
fi

TANSU_VERSION=0.6.0
export PITWALL_TANSU="$CACHE/tansu/bin/tansu"
if ! "$PITWALL_TANSU" --version 2>/dev/null | grep -qx "tansu $TANSU_VERSION"; then
  echo "building the Kafka-API broker tansu $TANSU_VERSION into $CACHE/tansu (once; about 25 CPU-minutes)" >&2
  CARGO_TARGET_DIR="$CACHE/tansu-build" cargo install tansu --version "$TANSU_VERSION" --features dynostore --locked --root "$CACHE/tansu"
  rm -rf "$CACHE/tansu-build"
fi

PYICEBERG_VERSION=0.12.0
KAFKA_PYTHON_VERSION=2.2.15
VENV="$CACHE/venv"
if ! "$VENV/bin/python" -c "import pyiceberg, pyarrow, sqlalchemy, kafka, lz4.frame, sys; sys.exit(pyiceberg.__version__ != '$PYICEBERG_VERSION' or kafka.__version__ != '$KAFKA_PYTHON_VERSION')" 2>/dev/null; then
  echo "installing PyIceberg $PYICEBERG_VERSION and kafka-python $KAFKA_PYTHON_VERSION into $VENV" >&2
  [ -x "$VENV/bin/pip" ] || python3 -m venv "$VENV" 2>/dev/null || { need_apt python3-venv; python3 -m venv "$VENV"; }
  "$VENV/bin/pip" install --quiet --disable-pip-version-check \
    "pyiceberg[sql-sqlite,pyarrow]==$PYICEBERG_VERSION" "kafka-python==$KAFKA_PYTHON_VERSION" lz4
fi
export PITWALL_PYTHON="$VENV/bin/python"

need_apt chromium prometheus
web_packages

cargo nextest run --workspace --no-fail-fast "$@"
