#!/usr/bin/env bash
# The systems pitwall's figures are compared with, installed from the package
# registries (never committed), and the write-API pairing run side by side:
#   - InfluxDB 1.x: Debian's influxdb package, started here on 127.0.0.1 with its data
#     in a temporary directory;
#   - DuckDB (PyPI) for the query pairing, and confluent-kafka (PyPI, librdkafka's
#     Python client) as an independent producer, into the cached virtualenv.
#
#   bench/peers.sh install          install only
#   bench/peers.sh http-write [S]   pitwall's write API and InfluxDB's /write under the
#                                   same load generator for S seconds each (default 10),
#                                   batches of 5,000 lines; prints both and the ratio
#   bench/peers.sh query DIR [RUNS] the typical queries of deploy/trino/schema.sql in
#                                   pitwall bench query, in DuckDB over the same Parquet
#                                   files of the lake in DIR and in InfluxDB 1.x with the
#                                   same rows loaded (those InfluxQL can ask); ratio per
#                                   query and peer. NO_INFLUXDB=1 leaves InfluxDB out
#                                   (loading 100 million rows takes it most of an hour)
#
# Needs the release binary (cargo build --release -p pitwall; PITWALL_BIN=PATH runs another).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh
PITWALL="${PITWALL_BIN:-$CARGO_TARGET_DIR/release/pitwall}"
VENV="$CACHE/venv"
DUCKDB_VERSION=1.4.2
CONFLUENT_KAFKA_VERSION=2.16.1

install() {
  command -v influxd >/dev/null || need_apt influxdb
  if ! "$VENV/bin/python" -c "import duckdb, confluent_kafka, pyarrow" 2>/dev/null; then
    echo "installing DuckDB $DUCKDB_VERSION and confluent-kafka $CONFLUENT_KAFKA_VERSION into $VENV" >&2
    [ -x "$VENV/bin/pip" ] || python3 -m venv "$VENV" 2>/dev/null || { need_apt python3-venv; python3 -m venv "$VENV"; }
    "$VENV/bin/pip" install --quiet --disable-pip-version-check \
      "duckdb==$DUCKDB_VERSION" "confluent-kafka==$CONFLUENT_KAFKA_VERSION" pyarrow
  fi
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Starts InfluxDB 1.x on loopback in $WORK; sets INFLUX_URL and INFLUX_PID.
start_influxdb() {
  local http rpc
  http=$(free_port); rpc=$(free_port)
  cat >"$WORK/influxdb.conf" <<EOF
reporting-disabled = true
bind-address = "127.0.0.1:$rpc"
[meta]
  dir = "$WORK/influx/meta"
[data]
  dir = "$WORK/influx/data"
  wal-dir = "$WORK/influx/wal"
  query-log-enabled = false
  # A precaution for bulk loads: a write that would take the cache past this size is
  # refused (the default is 1 GB).
  cache-max-memory-size = "4g"
[http]
  bind-address = "127.0.0.1:$http"
  log-enabled = false
  max-body-size = 0
[monitor]
  store-enabled = false
EOF
  influxd run -config "$WORK/influxdb.conf" >"$WORK/influxdb.log" 2>&1 &
  INFLUX_PID=$!
  INFLUX_URL="http://127.0.0.1:$http"
  for _ in $(seq 1 100); do
    curl -sf -XPOST "$INFLUX_URL/query" --data-urlencode 'q=CREATE DATABASE bench' >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  echo "InfluxDB did not start; its log:" >&2; tail -20 "$WORK/influxdb.log" >&2; exit 1
}

http_write() {
  local seconds=${1:-10}
  [ -x "$PITWALL" ] || { echo "no release build at $PITWALL; run: cargo build --release -p pitwall" >&2; exit 1; }
  WORK="$(mktemp -d)"
  trap 'kill ${INFLUX_PID:-} 2>/dev/null; wait ${INFLUX_PID:-} 2>/dev/null; rm -rf "$WORK"' EXIT
  start_influxdb
  echo "== pitwall: POST /api/v2/write, points counted and dropped (the API's own cost)"
  "$PITWALL" bench http-write --duration "${seconds}s" | tee "$WORK/pitwall.txt"
  echo "== InfluxDB $(influxd version 2>/dev/null | awk '{print $2}'): POST /write, stored (WAL + TSM)"
  "$PITWALL" bench http-write --duration "${seconds}s" \
    --target "$INFLUX_URL/write?db=bench&precision=ns" --target-pid "$INFLUX_PID" | tee "$WORK/influxdb.txt"
  local p i
  p=$(awk '/^points\/s/ {print $2}' "$WORK/pitwall.txt")
  i=$(awk '/^points\/s/ {print $2}' "$WORK/influxdb.txt")
  awk -v p="$p" -v i="$i" 'BEGIN { printf "http-write ratio pitwall/InfluxDB: %.2fx (%d vs %d points/s)\n", p / i, p, i }'
}

query() {
  local data=$1 runs=${2:-5}
  [ -x "$PITWALL" ] || { echo "no release build at $PITWALL; run: cargo build --release -p pitwall" >&2; exit 1; }
  WORK="$(mktemp -d)"
  trap 'kill ${INFLUX_PID:-} 2>/dev/null; wait ${INFLUX_PID:-} 2>/dev/null; rm -rf "$WORK"' EXIT
  echo "== pitwall query (DataFusion over the Iceberg tables; each run plans through the catalog)"
  "$PITWALL" bench query --data-dir "$data" --runs "$runs" | tee "$WORK/pitwall.txt"
  echo "== DuckDB over the same Parquet files (listed once, before timing)"
  "$VENV/bin/python" bench/duckdb_queries.py "$data" "$runs" | tee "$WORK/duckdb.txt"
  ratios "$WORK/duckdb.txt" DuckDB
  [ "${NO_INFLUXDB:-0}" = 1 ] && return 0
  echo "== InfluxDB $(influxd version 2>/dev/null | awk '{print $2}') with the same rows loaded as line protocol"
  start_influxdb
  "$VENV/bin/python" bench/influxdb_queries.py "$data" "$INFLUX_URL" "$runs" | tee "$WORK/influxdb.txt"
  ratios "$WORK/influxdb.txt" InfluxDB
}

# Prints pitwall's time over the peer's for each query both answered.
ratios() {
  local peer=$1 name=$2
  join <(awk '/^query [0-9]/ && $4 == "ms" {print $2, $3}' "$WORK/pitwall.txt") <(awk '/^query [0-9]/ && $4 == "ms" {print $2, $3}' "$peer") |
    awk -v peer="$name" '{ printf "query %s ratio pitwall/%s (time): %.2fx (%.1f vs %.1f ms)\n", $1, peer, $2 / $3, $2, $3 }'
}

case "${1:-install}" in
  install) install ;;
  http-write) install; shift; http_write "$@" ;;
  query) install; shift; [ $# -ge 1 ] || { echo "usage: bench/peers.sh query DATA_DIR [RUNS]" >&2; exit 2; }; query "$@" ;;
  *) echo "usage: bench/peers.sh [install | http-write [SECONDS] | query DATA_DIR [RUNS]]" >&2; exit 2 ;;
esac
