#!/usr/bin/env bash
# Kafka path figures: `pitwall ingest` (simulators -> JSON -> idempotent lz4 producer)
# and `pitwall process` (consumer group -> processor -> lake + output topics) against a
# tansu broker on 127.0.0.1, release build. Prints events/s and events per CPU-second
# (user+sys of the pitwall process: "per core"), the median of RUNS runs.
#
#   bench/kafka.sh [SIM_SECONDS] [RUNS]      (defaults: 2000 simulated seconds = 440,000 events, 3 runs)
#
# Needs the release binary (./scripts/up.sh builds it) and tansu (./scripts/test.sh builds it).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh
SIM_SECONDS="${1:-2000}"
RUNS="${2:-3}"
PITWALL="$CARGO_TARGET_DIR/release/pitwall"
TANSU="${PITWALL_TANSU:-$CACHE/tansu/bin/tansu}"
[ -x "$PITWALL" ] || { echo "no release build at $PITWALL; run: cargo build --release -p pitwall" >&2; exit 1; }
[ -x "$TANSU" ] || { echo "no tansu at $TANSU; ./scripts/test.sh builds it" >&2; exit 1; }
WORK="$(mktemp -d)"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$TANSU" broker --listener-url "tcp://127.0.0.1:$PORT" --advertised-listener-url "tcp://127.0.0.1:$PORT" \
  --storage-engine memory://tansu/ >"$WORK/tansu.log" 2>&1 &
TANSU_PID=$!
trap 'kill $TANSU_PID 2>/dev/null; rm -rf "$WORK"' EXIT
sleep 1

measure() { # label, then the command; prints "label events wall_s cpu_s"
  local label=$1; shift
  local out events
  out=$( { TIMEFORMAT='TIME %R %U %S'; time "$@" 2>&1 >/dev/null; } 2>&1 )
  events=$(echo "$out" | grep -oE '(sent|\|) [0-9]+ events' | tail -1 | grep -oE '[0-9]+')
  echo "$out" | grep '^TIME' | awk -v l="$label" -v n="$events" '{ print l, n, $2, $3 + $4 }'
}

results=()
for run in $(seq 1 "$RUNS"); do
  prefix="bench$run."
  results+=("$(PITWALL_BUS__TOPIC_PREFIX=$prefix measure ingest "$PITWALL" ingest --brokers "127.0.0.1:$PORT" \
    --speed 0 --sim-duration "${SIM_SECONDS}s" --status-interval 3600s)")
  results+=("$(PITWALL_BUS__TOPIC_PREFIX=$prefix measure process "$PITWALL" process --brokers "127.0.0.1:$PORT" \
    --group "bench$run" --data-dir "$WORK/lake$run" --exit-when-idle 3s --status-interval 3600s)")
done
# The client-side reference: confluent-kafka producing the same messages (those of the
# first run's raw topic) with the same settings, if bench/peers.sh installed it.
PYTHON="${PITWALL_PYTHON:-$CACHE/venv/bin/python}"
if "$PYTHON" -c "import confluent_kafka" 2>/dev/null; then
  for run in $(seq 1 "$RUNS"); do
    results+=("$("$PYTHON" bench/peer_producer.py "127.0.0.1:$PORT" bench1.raw "peer$run.raw")")
  done
else
  echo "(no confluent-kafka in $PYTHON: bench/peers.sh install adds the peer producer)" >&2
fi
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); tansu $("$TANSU" --version | cut -d' ' -f2), memory storage"
for label in ingest process peer; do
  printf '%s\n' "${results[@]}" | awk -v l="$label" '$1 == l {
      rate = $2 / $3; per_cpu = $2 / $4; print rate, per_cpu, $2, $3, $4 }' | sort -n | awk -v l="$label" -v runs="$RUNS" '
      { r[NR] = $0 } END { if (!NR) exit; split(r[int((NR + 1) / 2)], m, " ");
        printf "%-8s median of %d: %8.0f events/s wall, %8.0f events per CPU-second (%d events, %.1f s wall, %.1f s CPU)\n",
               l, runs, m[1], m[2], m[3], m[4], m[5] }'
done
echo "(process includes the ${SIM_SECONDS}s run's idle exit wait of 3 s in wall time, not in CPU time)"
ingest=$(printf '%s\n' "${results[@]}" | awk '$1 == "ingest" { print $2 / $3 }' | sort -n | awk '{ r[NR] = $1 } END { if (NR) print r[int((NR + 1) / 2)] }')
peer=$(printf '%s\n' "${results[@]}" | awk '$1 == "peer" { print $2 / $3 }' | sort -n | awk '{ r[NR] = $1 } END { if (NR) print r[int((NR + 1) / 2)] }')
[ -n "$peer" ] && awk -v i="$ingest" -v p="$peer" 'BEGIN { printf "ingest-kafka ratio pitwall ingest / confluent-kafka producer (events/s wall): %.2fx\n", i / p }'
exit 0
