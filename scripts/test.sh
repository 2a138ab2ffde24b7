#!/usr/bin/env bash
# Installs everything the tests need on a fresh machine and runs every test:
# cargo-nextest; the Kafka-API broker tansu (built once from crates.io, ~25 CPU-minutes,
# then cached; the tests start their own brokers on 127.0.0.1); the S3 server garage
# (likewise, ~20 CPU-minutes); the Iceberg REST catalog rustberg (likewise, ~23 CPU-minutes); in a cached virtualenv, PyIceberg (the independent reader
# of our tables), DuckDB (reads our Parquet files), kafka-python (the independent
# reader of our topics), pg8000 (a PostgreSQL driver speaking the extended protocol) and
# ADBC's Flight SQL driver; Debian's chromium, prometheus, prometheus-alertmanager and postgresql (the browser
# tests, the scrape, alert and catalog tests start their own, on loopback); and the
# browser tests' npm package (playwright-core). Build output is cached in ~/.cache/pitwall so
# repeat runs are fast.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh

if ! command -v cargo-nextest >/dev/null; then
  echo "installing cargo-nextest" >&2
  cargo install cargo-nextest --locked
fi

# The servers the tests start are built once and cached; a light release profile (no
# LTO, optimization level 1, parallel codegen) builds them in about half the time of
# their own profiles, which matters on a fresh 2-core machine.
tool_profile() {
  CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 CARGO_PROFILE_RELEASE_OPT_LEVEL=1 "$@"
}

TANSU_VERSION=0.6.0
export PITWALL_TANSU="$CACHE/tansu/bin/tansu"
if ! "$PITWALL_TANSU" --version 2>/dev/null | grep -qx "tansu $TANSU_VERSION"; then
  echo "building the Kafka-API broker tansu $TANSU_VERSION into $CACHE/tansu (once; about 25 CPU-minutes)" >&2
  CARGO_TARGET_DIR="$CACHE/tansu-build" tool_profile cargo install tansu --version "$TANSU_VERSION" --features dynostore --locked --root "$CACHE/tansu"
  rm -rf "$CACHE/tansu-build"
fi

GARAGE_VERSION=2.5.0
export PITWALL_GARAGE="$CACHE/garage/bin/garage"
if ! "$PITWALL_GARAGE" --version 2>/dev/null | grep -q "cargo:$GARAGE_VERSION "; then
  echo "building the S3 server garage $GARAGE_VERSION into $CACHE/garage (once; about 20 CPU-minutes)" >&2
  CARGO_TARGET_DIR="$CACHE/garage-build" tool_profile cargo install garage --version "$GARAGE_VERSION" \
    --no-default-features --features bundled-libs,sqlite --locked --root "$CACHE/garage"
  rm -rf "$CACHE/garage-build"
fi

RUSTBERG_VERSION=0.3.0
export PITWALL_RUSTBERG="$CACHE/rustberg/bin/rustberg"
if ! "$PITWALL_RUSTBERG" --version 2>/dev/null | grep -qx "rustberg $RUSTBERG_VERSION"; then
  echo "building the Iceberg REST catalog rustberg $RUSTBERG_VERSION into $CACHE/rustberg (once; about 23 CPU-minutes)" >&2
  CARGO_TARGET_DIR="$CACHE/rustberg-build" tool_profile cargo install rustberg --version "$RUSTBERG_VERSION" \
    --no-default-features --features cli,storage-s3 --locked --root "$CACHE/rustberg"
  rm -rf "$CACHE/rustberg-build"
fi

PYICEBERG_VERSION=0.12.0
KAFKA_PYTHON_VERSION=2.2.15
DUCKDB_VERSION=1.4.2
VENV="$CACHE/venv"
if ! "$VENV/bin/python" -c "import pyiceberg, pyarrow, sqlalchemy, psycopg2, pg8000, adbc_driver_flightsql, duckdb, pytz, kafka, lz4.frame, sys; sys.exit(pyiceberg.__version__ != '$PYICEBERG_VERSION' or kafka.__version__ != '$KAFKA_PYTHON_VERSION')" 2>/dev/null; then
  echo "installing PyIceberg $PYICEBERG_VERSION, DuckDB $DUCKDB_VERSION and kafka-python $KAFKA_PYTHON_VERSION into $VENV" >&2
  [ -x "$VENV/bin/pip" ] || python3 -m venv "$VENV" 2>/dev/null || { need_apt python3-venv; python3 -m venv "$VENV"; }
  "$VENV/bin/pip" install --quiet --disable-pip-version-check \
    "pyiceberg[sql-sqlite,sql-postgres,pyarrow]==$PYICEBERG_VERSION" "duckdb==$DUCKDB_VERSION" \
    "kafka-python==$KAFKA_PYTHON_VERSION" lz4 pytz "pg8000==1.31.6" "adbc-driver-flightsql==1.13.0"
fi
export PITWALL_PYTHON="$VENV/bin/python"

# openssl makes the PostgreSQL TLS test's certificate.
need_apt chromium prometheus postgresql prometheus-alertmanager openssl
# The binary builds with Rust alone: in a fresh clone this runs before any npm package is
# installed, so a build that needed node_modules fails here.
cargo build -p pitwall --locked
web_packages

cargo nextest run --workspace --no-fail-fast "$@"
