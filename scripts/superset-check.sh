#!/usr/bin/env bash
# Apache Superset 6.1 (from PyPI) against pitwall's PostgreSQL wire protocol, as a user
# would set it up: the database added by URI, its schemas, tables and columns browsed,
# a dataset made from clean.car, a chart's time-series query run through Superset's
# chart-data API, and a query in SQL Lab. Not part of the test command (Superset is a
# large install); run it by hand:  ./scripts/superset-check.sh
# Superset goes into ~/.cache/pitwall/superset-venv (once); pitwall up runs with the
# simulators at 10x on free loopback ports in a temporary directory.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${PITWALL_CACHE:-$HOME/.cache/pitwall}"
VENV="$CACHE/superset-venv"
SUPERSET_VERSION=6.1.0
if ! "$VENV/bin/python" -c "import superset, psycopg2, rich, cachetools, sys; from importlib.metadata import version; sys.exit(version('apache-superset') != '$SUPERSET_VERSION' or version('flask-caching') != '2.3.1')" 2>/dev/null; then
  echo "installing Apache Superset $SUPERSET_VERSION into $VENV (once)" >&2
  python3 -m venv "$VENV"
  # Superset 6.1 imports rich and cachetools without declaring them, and breaks with flask-caching 2.5.
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "apache-superset==$SUPERSET_VERSION" psycopg2-binary rich cachetools "flask-caching==2.3.1"
fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CACHE/target}"
cargo build -p pitwall --locked --quiet
PITWALL="$CARGO_TARGET_DIR/debug/pitwall"

WORK="$(mktemp -d)"
trap 'kill "$PID" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"' EXIT
TOKEN="superset-$RANDOM$RANDOM"
printf '[server]\ntokens = ["%s"]\n\n[lake]\ncommit-interval = "1s"\n' "$TOKEN" > "$WORK/pitwall.toml"
"$PITWALL" up --config "$WORK/pitwall.toml" --data-dir "$WORK/lake" --speed 10 \
  --listen 127.0.0.1:0 --pg-listen 127.0.0.1:0 2> "$WORK/pitwall.log" &
PID=$!
for _ in $(seq 1 100); do grep -q '^PostgreSQL on ' "$WORK/pitwall.log" && break; sleep 0.2; done
PG="$(sed -n 's/^PostgreSQL on \([^:]*:[0-9]*\):.*/\1/p' "$WORK/pitwall.log")"
[ -n "$PG" ] || { cat "$WORK/pitwall.log"; exit 1; }
echo "pitwall up: PostgreSQL on $PG; letting 20 s of simulated racing reach the lake" >&2
sleep 20

cat > "$WORK/superset_config.py" <<CONFIG
SECRET_KEY = "pitwall-superset-check-$RANDOM$RANDOM$RANDOM"
SQLALCHEMY_DATABASE_URI = "sqlite:///$WORK/superset.db"
WTF_CSRF_ENABLED = False
CONFIG
export SUPERSET_CONFIG_PATH="$WORK/superset_config.py" FLASK_APP=superset
echo "setting up Superset's own database and admin user" >&2
"$VENV/bin/superset" db upgrade > "$WORK/superset-setup.log" 2>&1 || { tail -30 "$WORK/superset-setup.log"; exit 1; }
"$VENV/bin/superset" fab create-admin --username admin --firstname a --lastname b \
  --email admin@example.invalid --password admin >> "$WORK/superset-setup.log" 2>&1 || { tail -30 "$WORK/superset-setup.log"; exit 1; }
"$VENV/bin/superset" init >> "$WORK/superset-setup.log" 2>&1 || { tail -30 "$WORK/superset-setup.log"; exit 1; }
PITWALL_PG="$PG" PITWALL_TOKEN="$TOKEN" "$VENV/bin/python" scripts/superset_check.py
