#!/usr/bin/env bash
# Builds pitwall and runs `pitwall up`: simulators, bus, processor and an Iceberg lake
# in ./pitwall-data, all in one process with no services. Extra arguments go to
# `pitwall up` (e.g. --duration 30s --speed 10). Ctrl-C stops it cleanly.
#
# The optimised release build takes about half an hour on 2 cores. The first run on a
# machine does not wait for it: a quick build (dependencies unoptimised, minutes) starts
# `pitwall up`, and the release build runs in the background at low priority; the next
# `scripts/up.sh` once it has finished uses it. PITWALL_UP_PROFILE=release waits for
# the release build instead; PITWALL_UP_PROFILE=quick always takes the quick one.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh
RELEASE="$CARGO_TARGET_DIR/release/pitwall"
QUICK="$CARGO_TARGET_DIR/quick/pitwall"
BACKGROUND="$CACHE/release-build"
profile="${PITWALL_UP_PROFILE:-}"

background_build_running() {
  [ -f "$BACKGROUND.pid" ] && kill -0 "$(cat "$BACKGROUND.pid")" 2>/dev/null
}

if [ -z "$profile" ]; then
  if background_build_running; then
    profile=quick-as-is
  elif [ -x "$RELEASE" ]; then
    profile=release
  else
    profile=first
  fi
fi

case "$profile" in
  release)
    cargo build --release -p pitwall
    exec "$RELEASE" up "$@"
    ;;
  quick)
    cargo build --profile quick -p pitwall
    exec "$QUICK" up "$@"
    ;;
  quick-as-is)
    # The release build holds the target directory until it ends; the quick binary is
    # the one there is meanwhile.
    echo "the optimised build is still running in the background (log: $BACKGROUND.log); using the quick build meanwhile" >&2
    exec "$QUICK" up "$@"
    ;;
  first)
    echo "first run on this machine: a quick build (about 10 minutes on 2 cores) starts pitwall up;" >&2
    echo "the optimised build follows in the background at low priority (log: $BACKGROUND.log)," >&2
    echo "and the next ./scripts/up.sh after it has finished uses it (queries are much faster there)." >&2
    cargo build --profile quick -p pitwall
    # Its own session: Ctrl-C on pitwall up does not stop it.
    setsid nohup nice -n 19 cargo build --release -p pitwall >"$BACKGROUND.log" 2>&1 </dev/null &
    echo $! >"$BACKGROUND.pid"
    exec "$QUICK" up "$@"
    ;;
  *)
    echo "PITWALL_UP_PROFILE is '$profile'; use release or quick (or leave it unset)" >&2
    exit 2
    ;;
esac
