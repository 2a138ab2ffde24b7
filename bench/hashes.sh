#!/usr/bin/env bash
# Do two builds write the same lake? Each replays the same simulated events (seeded, with
# faults and malformed lines) through `pitwall up --replay` into a lake of its own, and
# bench/table_hashes.py fingerprints every table and column of both with PyIceberg and
# DuckDB. Prints the differences, or that every table and column agree.
#
#   bench/hashes.sh BIN_A [BIN_B] [SIM_SECONDS] [SEED]
#
# BIN_B defaults to BIN_A (two runs of one build: the harness's own check that a run is
# reproducible). Defaults: 600 simulated seconds (132,000 events), seed 7.
# Wall-clock columns (ingest_time) are left out; everything else follows from the input.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh
PYTHON="${PITWALL_PYTHON:-$CACHE/venv/bin/python}"
A=$(realpath "$1")
B=$(realpath "${2:-$1}")
SIM=${3:-600}
SEED=${4:-7}
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
# Built-in defaults (faults on), unless HASH_CONFIG names a file both builds accept.
CONFIG_ARGS=()
[ -z "${HASH_CONFIG:-}" ] || CONFIG_ARGS=(--config "$(realpath "$HASH_CONFIG")")
HERE="$PWD"
cd "$WORK"   # no ./pitwall.toml here: the defaults of each build

# The input: the simulators' events (faults on), with malformed lines and late events
# among them.
"$A" sim --duration "${SIM}s" --seed "$SEED" "${CONFIG_ARGS[@]}" >"$WORK/sim.jsonl"
awk '
  { print }
  match($0, /"time":[0-9]+/) { t = substr($0, RSTART + 7, RLENGTH - 7) }
  NR == 10 { early = t - 1000000000 }
  NR % 5000 == 0 {
    # What the processor refuses (a type conflict, no source tag, a time in seconds)
    # and what the replay refuses before the bus (not JSON).
    printf "{\"measurement\":\"car\",\"tags\":{\"driver\":\"VER\"},\"fields\":{\"speed_kph\":\"fast\"},\"time\":%s}\n", t
    printf "{\"measurement\":\"car\",\"tags\":{\"team\":\"x\"},\"fields\":{\"speed_kph\":1.5},\"time\":%s}\n", t
    printf "{\"measurement\":\"car\",\"tags\":{\"driver\":\"VER\"},\"fields\":{\"speed_kph\":1.5},\"time\":%d}\n", t / 1000000000
    print "not json at line " NR
    # An event a second older than the first ones: behind the watermark by now.
    printf "{\"measurement\":\"car\",\"tags\":{\"driver\":\"HAM\"},\"fields\":{\"speed_kph\":200.5},\"time\":%.0f}\n", early - NR
  }' "$WORK/sim.jsonl" >"$WORK/events.jsonl"
echo "input: $(wc -l <"$WORK/events.jsonl") lines of simulated telemetry (seed $SEED, ${SIM}s), malformed and late lines among them"

# replay BIN DIR: the events through `pitwall up` into DIR; Ctrl-C once the replay has
# sent everything (up drains the bus, closes open windows and commits before it exits).
replay() {
  local bin=$1 dir=$2
  "$bin" up --replay "$WORK/events.jsonl" --data-dir "$dir" --listen 127.0.0.1:0 --pg-listen "" \
    --status-interval 1h "${CONFIG_ARGS[@]}" >"$dir.log" 2>&1 &
  local pid=$! waited=0
  until grep -q '^replayed ' "$dir.log"; do
    sleep 0.2
    waited=$((waited + 1))
    if [ "$waited" -gt 3000 ] || ! kill -0 "$pid" 2>/dev/null; then
      echo "$bin did not finish the replay:" >&2
      tail -20 "$dir.log" >&2
      exit 1
    fi
  done
  kill -INT "$pid"
  wait "$pid" || { echo "$bin up exited with an error:" >&2; tail -20 "$dir.log" >&2; exit 1; }
  "$PYTHON" "$HERE/bench/table_hashes.py" "$dir" >"$dir.hashes"
}

replay "$A" "$WORK/a"
replay "$B" "$WORK/b"
grep " rows " "$WORK/a.hashes" | sed "s/^/  /"
if diff "$WORK/a.hashes" "$WORK/b.hashes" >"$WORK/diff"; then
  echo "every table and column hashes the same ($(grep -vc ' rows ' "$WORK/a.hashes") column and row hashes)"
else
  echo "the lakes differ (< $A, > $B):"
  cat "$WORK/diff"
  exit 1
fi
