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
#   bench/peers.sh flink [SIM_S] [SINK] Apache Flink (PyFlink 2.3 from PyPI, local, parallelism
#                                   1) computing pitwall's default windows over a JSON file
#                                   of SIM_S simulated seconds (default 2000) and of three
#                                   times as many, into SINK (blackhole, the default, or
#                                   filesystem); then pitwall bench process on the same
#                                   simulated seconds; events per CPU-second and the ratio
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

FLINK_VENV="$CACHE/flink-venv"
FLINK_VERSION=2.3.0

install_flink() {
  command -v javac >/dev/null || need_apt openjdk-17-jdk-headless
  if ! "$FLINK_VENV/bin/python" -c "import pyflink" 2>/dev/null; then
    echo "installing PyFlink $FLINK_VERSION into $FLINK_VENV (about 850 MB)" >&2
    [ -x "$FLINK_VENV/bin/pip" ] || python3 -m venv "$FLINK_VENV"
    "$FLINK_VENV/bin/pip" install --quiet --disable-pip-version-check "apache-flink==$FLINK_VERSION"
  fi
}

# Flink over SIM and 3 x SIM simulated seconds of events: each whole job's events per
# CPU-second (JVM start and warm-up included), and the steady rate from the difference
# of the two (the extra events over the extra CPU time); then pitwall bench process
# (median of 3) on SIM simulated seconds, and pitwall's figure over Flink's steady one.
flink() {
  local sim=${1:-2000} sink=${2:-blackhole}
  [ -x "$PITWALL" ] || { echo "no release build at $PITWALL; run: cargo build --release -p pitwall" >&2; exit 1; }
  WORK="$(mktemp -d)"
  trap 'rm -rf "$WORK"' EXIT
  "$PITWALL" sim --duration "${sim}s" --seed 1 >"$WORK/small.jsonl"
  "$PITWALL" sim --duration "$((sim * 3))s" --seed 1 >"$WORK/large.jsonl"
  echo "== Flink $FLINK_VERSION (PyFlink, local mini cluster, parallelism 1), sink $sink"
  : >"$WORK/flink.txt"
  for f in small large; do
    "$FLINK_VENV/bin/python" bench/flink_peer.py "$WORK/$f.jsonl" "$sink" "$WORK/out-$f" 2>"$WORK/flink-$f.log" \
      | tee -a "$WORK/flink.txt" \
      || { tail -20 "$WORK/flink-$f.log" >&2; exit 1; }
  done
  awk '/^flink:/ { e[NR] = $2; c[NR] = $(NF - 1); printf "  whole job: %d events, %.0f events per CPU-second\n", $2, $2 / c[NR] }
       END { printf "flink steady: %.0f events per CPU-second (%d more events in %.2f more CPU-s)\n", (e[2] - e[1]) / (c[2] - c[1]), e[2] - e[1], c[2] - c[1] }' \
    "$WORK/flink.txt" | tee "$WORK/flink-rates.txt"
  echo "== pitwall bench process (every field, the rules and the lake besides the same windows)"
  "$PITWALL" bench process --sim-duration "${sim}s" --runs 3 | tee "$WORK/pitwall.txt"
  local p f
  p=$(grep -oE 'events/s, [0-9]+ events/s per core used' "$WORK/pitwall.txt" | awk '{print $2}')
  f=$(awk '/^flink steady/ {print $3}' "$WORK/flink-rates.txt")
  awk -v p="$p" -v f="$f" 'BEGIN { printf "process ratio pitwall/Flink (events per CPU-second): %.2fx (%d vs %d)\n", p / f, p, f }'
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
  flink) install_flink; shift; flink "$@" ;;
  *) echo "usage: bench/peers.sh [install | http-write [SECONDS] | query DATA_DIR [RUNS] | flink [SIM_SECONDS] [blackhole|filesystem]]" >&2; exit 2 ;;
esac
