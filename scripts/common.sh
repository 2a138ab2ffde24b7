# Shared set-up for scripts/up.sh and scripts/test.sh: a cached target directory
# outside the clone, and the Rust toolchain check.
CACHE="${PITWALL_CACHE:-$HOME/.cache/pitwall}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CACHE/target}"
mkdir -p "$CACHE"

need_apt() {
  # Installs Debian packages that are missing; `apt-get update` once per run.
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "installing ${missing[*]} (apt)" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

if ! command -v cargo >/dev/null; then
  echo "cargo is not installed: install Rust with rustup (https://rustup.rs), then run this again" >&2
  exit 1
fi
# C toolchain and headers for the -sys crates: zstd and SQLite are bundled; librdkafka
# is built from source and links OpenSSL (TLS, SASL) and zlib.
command -v cc >/dev/null || need_apt build-essential
need_apt libssl-dev zlib1g-dev pkg-config

# The browser tests' npm package (playwright-core) comes from npm into
# crates/pitwall-server/web/node_modules. The binary needs none: uPlot, which it embeds,
# is kept built in crates/pitwall-server/web/vendor/uplot.
web_packages() {
  command -v npm >/dev/null || need_apt nodejs npm
  local web=crates/pitwall-server/web
  # The stamp is the lock file the packages were installed from.
  if ! cmp -s "$web/package-lock.json" "$web/node_modules/.pitwall-installed" 2>/dev/null; then
    echo "installing the browser tests' npm packages into $web/node_modules" >&2
    npm ci --prefix "$web" --no-audit --no-fund --loglevel=error
    cp "$web/package-lock.json" "$web/node_modules/.pitwall-installed"
  fi
}
