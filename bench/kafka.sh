#!/usr/bin/env bash
# The Kafka scenarios of `pitwall bench` against a tansu broker on 127.0.0.1 (memory
# storage), release build, with the client-side peer in the same run:
#
#   bench/kafka.sh ingest [SIM_SECONDS] [RUNS]   pitwall bench ingest-kafka, then confluent-kafka
#                                                producing the same messages (the ratio)
#   bench/kafka.sh process [SIM_SECONDS] [RUNS]  pitwall bench process --brokers --kafka-floor,
#                                                then confluent-kafka reading the same raw topic
#                                                and writing process's output messages (the
#                                                Kafka floor by another client)
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

# peer LABEL SOURCE_TOPIC RUNS [--outputs]: confluent-kafka on SOURCE_TOPIC, each run
# to a topic of its own; prints each run and leaves its median events/s in $PEER_RATE.
peer() {
  local label=$1 source=$2 runs=$3 mode=${4:-}
  PEER_RATE=""
  "$PYTHON" -c "import confluent_kafka" 2>/dev/null \
    || { echo "(no confluent-kafka in $PYTHON: bench/peers.sh install adds the peer)"; return; }
  echo "peer: confluent-kafka $("$PYTHON" -c 'import confluent_kafka as c; print(c.version()[0], "(librdkafka", c.libversion()[0] + ")")'), $label"
  : >"$WORK/peer.txt"
  for run in $(seq 1 "$runs"); do
    # The output topics' counts (stderr) are the same every run: printed once.
    local quiet=""
    [ "$run" -eq 1 ] || quiet=--quiet
    "$PYTHON" bench/peer_producer.py "$BROKERS" "$source" "peer-$RANDOM-$run.out" $mode $quiet | tee -a "$WORK/peer.txt" \
      | awk -v run="$run" '{ printf "  run %d: %d events in %.2f s wall, %.2f CPU-s: %.0f events/s, %.0f events per CPU-second\n", run, $2, $3, $4, $2 / $3, $2 / $4 }'
  done
  PEER_RATE=$(awk '{ print $2 / $3 }' "$WORK/peer.txt" | median)
  local per_cpu
  per_cpu=$(awk '{ print $2 / $4 }' "$WORK/peer.txt" | median)
  awk -v p="$PEER_RATE" -v c="$per_cpu" 'BEGIN { printf "confluent-kafka: median %.0f events/s, %.0f events per CPU-second\n", p, c }'
}

ingest() {
  local sim=${1:-2000} runs=${2:-3}
  "$PITWALL" bench ingest-kafka --brokers "$BROKERS" --sim-duration "${sim}s" --runs "$runs" | tee "$WORK/ingest.txt"
  local source i
  source=$(grep -oE 'run 1 wrote topic \S+' "$WORK/ingest.txt" | awk '{ print $NF }')
  peer "the same messages as $source, the same producer settings" "$source" "$runs"
  [ -n "$PEER_RATE" ] || return 0
  i=$(grep -oE 'median of [0-9]+: [0-9]+ events/s' "$WORK/ingest.txt" | awk '{ print $4 }')
  awk -v i="$i" -v p="$PEER_RATE" 'BEGIN { printf "ingest-kafka ratio pitwall/confluent-kafka (events/s): %.2fx\n", i / p }'
}

# The processor and its Kafka work alone (--kafka-floor: pitwall's own client reading
# the raw topic again while writing the run's output messages again, nothing else),
# then the same Kafka work by confluent-kafka: the raw topic read while the very
# messages process wrote to its output topics (clean, metrics, anomalies, ...) are
# written, in step.
process() {
  local sim=${1:-2000} runs=${2:-3}
  "$PITWALL" bench process --brokers "$BROKERS" --sim-duration "${sim}s" --runs "$runs" --kafka-floor | tee "$WORK/process.txt"
  local source
  source=$(grep -oE 'run 1: [0-9]+ events sent to \S+' "$WORK/process.txt" | awk '{ print $NF }')
  peer "reading $source and writing what process wrote to its output topics, in step (no processing, no lake)" \
    "$source" "$runs" --outputs
}

case "${1:-}" in
  ingest) shift; ingest "$@" ;;
  process) shift; process "$@" ;;
  latency) "$PITWALL" bench latency --brokers "$BROKERS" --rate "${2:?rate}" --duration "${3:-20}s" ;;
  freshness) "$PITWALL" bench freshness --brokers "$BROKERS" --duration "${2:-20}s" ;;
  *) echo "usage: bench/kafka.sh ingest|process [SIM_SECONDS] [RUNS] | latency RATE [SECONDS] | freshness [SECONDS]" >&2; exit 2 ;;
esac
