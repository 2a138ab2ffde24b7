#!/usr/bin/env bash
# The Kafka scenarios of `pitwall bench` against a tansu broker on 127.0.0.1 (memory
# storage), release build, with the client-side peer in the same run:
#
#   bench/kafka.sh ingest [SIM_SECONDS] [RUNS]   pitwall bench ingest-kafka, then confluent-kafka
#                                                producing the same messages (the ratio)
#   bench/kafka.sh process [SIM_SECONDS] [RUNS]  pitwall bench process --brokers
#   bench/kafka.sh latency RATE [SECONDS]        pitwall bench latency --brokers at RATE events/s
#   bench/kafka.sh freshness [SECONDS]           pitwall bench freshness --brokers
#
# Defaults: 2000 simulated seconds (440,000 events), 3 runs; latency 20 s measured.
# Needs the release binary (./scripts/up.sh builds it) and tansu (./scripts/test.sh builds it);
# the peer producer comes from bench/peers.sh install.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh
PITWALL="$CARGO_TARGET_DIR/release/pitwall"
TANSU="${PITWALL_TANSU:-$CACHE/tansu/bin/tansu}"
PYTHON="${PITWALL_PYTHON:-$CACHE/venv/bin/python}"
[ -x "$PITWALL" ] || { echo "no release build at $PITWALL; run: cargo build --release -p pitwall" >&2; exit 1; }
[ -x "$TANSU" ] || { echo "no tansu at $TANSU; ./scripts/test.sh builds it" >&2; exit 1; }
WORK="$(mktemp -d)"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
BROKERS="127.0.0.1:$PORT"
"$TANSU" broker --listener-url "tcp://$BROKERS" --advertised-listener-url "tcp://$BROKERS" \
  --storage-engine memory://tansu/ >"$WORK/tansu.log" 2>&1 &
TANSU_PID=$!
trap 'kill $TANSU_PID 2>/dev/null; rm -rf "$WORK"' EXIT
sleep 1
echo "broker: tansu $("$TANSU" --version | cut -d' ' -f2) on $BROKERS, memory storage, sharing the $(nproc) cores"

median() { sort -g | awk '{ r[NR] = $1 } END { if (NR) print r[int((NR + 1) / 2)] }'; }

ingest() {
  local sim=${1:-2000} runs=${2:-3}
  "$PITWALL" bench ingest-kafka --brokers "$BROKERS" --sim-duration "${sim}s" --runs "$runs" | tee "$WORK/ingest.txt"
  "$PYTHON" -c "import confluent_kafka" 2>/dev/null \
    || { echo "(no confluent-kafka in $PYTHON: bench/peers.sh install adds the peer producer)"; return; }
  local source
  source=$(grep -oE 'run 1 wrote topic \S+' "$WORK/ingest.txt" | awk '{ print $NF }')
  echo "peer: confluent-kafka $("$PYTHON" -c 'import confluent_kafka as c; print(c.version()[0], "(librdkafka", c.libversion()[0] + ")")'), the same messages as $source, the same producer settings"
  for run in $(seq 1 "$runs"); do
    "$PYTHON" bench/peer_producer.py "$BROKERS" "$source" "peer$run.raw" | tee -a "$WORK/peer.txt" \
      | awk -v run="$run" '{ printf "  run %d: %d events in %.2f s wall, %.2f CPU-s: %.0f events/s, %.0f events per CPU-second\n", run, $2, $3, $4, $2 / $3, $2 / $4 }'
  done
  local p i
  p=$(awk '{ print $2 / $3 }' "$WORK/peer.txt" | median)
  i=$(grep -oE 'median of [0-9]+: [0-9]+ events/s' "$WORK/ingest.txt" | awk '{ print $4 }')
  awk -v i="$i" -v p="$p" 'BEGIN { printf "confluent-kafka: median %.0f events/s\ningest-kafka ratio pitwall/confluent-kafka (events/s): %.2fx\n", p, i / p }'
}

case "${1:-}" in
  ingest) shift; ingest "$@" ;;
  process) "$PITWALL" bench process --brokers "$BROKERS" --sim-duration "${2:-2000}s" --runs "${3:-3}" ;;
  latency) "$PITWALL" bench latency --brokers "$BROKERS" --rate "${2:?rate}" --duration "${3:-20}s" ;;
  freshness) "$PITWALL" bench freshness --brokers "$BROKERS" --duration "${2:-20}s" ;;
  *) echo "usage: bench/kafka.sh ingest|process [SIM_SECONDS] [RUNS] | latency RATE [SECONDS] | freshness [SECONDS]" >&2; exit 2 ;;
esac
