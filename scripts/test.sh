#!/usr/bin/env bash
# Installs everything the tests need on a fresh machine and runs every test:
# cargo-nextest, and PyIceberg (the independent reader of our tables) in a cached
# virtualenv. Build output is cached in ~/.cache/pitwall so repeat runs are fast.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh

if ! command -v cargo-nextest >/dev/null; then
  echo "installing cargo-nextest" >&2
  cargo install cargo-nextest --locked
fi

PYICEBERG_VERSION=0.12.0
VENV="$CACHE/venv"
if ! "$VENV/bin/python" -c "import pyiceberg, pyarrow, sqlalchemy, sys; sys.exit(pyiceberg.__version__ != '$PYICEBERG_VERSION')" 2>/dev/null; then
  echo "installing PyIceberg $PYICEBERG_VERSION into $VENV" >&2
  python3 -m venv "$VENV" 2>/dev/null || { need_apt python3-venv; python3 -m venv "$VENV"; }
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "pyiceberg[sql-sqlite,pyarrow]==$PYICEBERG_VERSION"
fi
export PITWALL_PYTHON="$VENV/bin/python"

cargo nextest run --workspace --no-fail-fast "$@"
