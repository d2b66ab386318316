#!/usr/bin/env bash
# `buildmesh bench gateway` with harmonia (nix-community's binary cache, built from source) as an
# `--against` cache, serving the bench's own paths from a Nix store of their own.
#
#   scripts/bench-against-harmonia.sh [HARMONIA_CACHE_BINARY] [-- extra bench flags]
#
# HARMONIA_CACHE_BINARY defaults to $HARMONIA, then /work/harmonia-src/target/release/harmonia-cache.
# Build it with:  git clone https://github.com/nix-community/harmonia && cd harmonia &&
#                 cargo build --release -p harmonia-cache
# The bench's paths are deterministic (same names and bytes each run), so:
# 1. a first `bench gateway --no-wrk --no-clients --import-local ROOT` copies them into the Nix
#    store at ROOT (a chroot store: ROOT/nix/store, ROOT/nix/var/nix/db/db.sqlite);
# 2. harmonia serves that store (it reads the Nix SQLite DB directly, no nix-daemon needed),
#    signing with a fresh key;
# 3. the real bench runs with `--against http://127.0.0.1:PORT --against-key KEY`.
# PATHS, NAR_MIB, CLIENT_RUNS, PORT (default: a free one) and BUILDMESH (the buildmesh binary)
# can be set in the environment.
set -euo pipefail
cd "$(dirname "$0")/.."

HARMONIA="${HARMONIA:-/work/harmonia-src/target/release/harmonia-cache}"
if [ $# -gt 0 ] && [ "$1" != "--" ]; then
  HARMONIA="$1"
  shift
fi
if [ "${1:-}" = "--" ]; then
  shift
fi
PATHS="${PATHS:-1000}"
NAR_MIB="${NAR_MIB:-256}"
CLIENT_RUNS="${CLIENT_RUNS:-3}"
PORT="${PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"

if [ ! -x "$HARMONIA" ]; then
  echo "bench-against-harmonia.sh: no harmonia-cache binary at $HARMONIA (build it: cargo build --release -p harmonia-cache)" >&2
  exit 1
fi
source scripts/install-deps.sh

if [ -z "${BUILDMESH:-}" ]; then
  cargo build --release -p buildmesh --bin buildmesh
  BUILDMESH="${CARGO_TARGET_DIR:-target}/release/buildmesh"
fi

WORK="$(mktemp -d /tmp/bench-harmonia.XXXXXX)"
ROOT="$WORK/root"
HPID=""
cleanup() {
  [ -n "$HPID" ] && kill "$HPID" 2>/dev/null && wait "$HPID" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT

echo "== importing the bench paths into the Nix store at $ROOT"
"$BUILDMESH" bench gateway --paths "$PATHS" --nar-mib "$NAR_MIB" --no-wrk --no-clients --import-local "$ROOT"

echo "== starting harmonia ($HARMONIA) on 127.0.0.1:$PORT"
nix-store --generate-binary-cache-key harmonia-bench-1 "$WORK/harmonia.secret" "$WORK/harmonia.pub"
cat > "$WORK/harmonia.toml" <<TOML
bind = "127.0.0.1:$PORT"
real_nix_store = "$ROOT/nix/store"
nix_db_path = "$ROOT/nix/var/nix/db/db.sqlite"
sign_key_paths = ["$WORK/harmonia.secret"]
TOML
CONFIG_FILE="$WORK/harmonia.toml" RUST_LOG=warn "$HARMONIA" >"$WORK/harmonia.log" 2>&1 &
HPID=$!
for _ in $(seq 100); do
  curl -fsS "http://127.0.0.1:$PORT/nix-cache-info" >/dev/null 2>&1 && break
  sleep 0.1
done
# It must be our harmonia answering (not another server already on that port).
if ! kill -0 "$HPID" 2>/dev/null || ! curl -fsS "http://127.0.0.1:$PORT/nix-cache-info" >/dev/null; then
  echo "bench-against-harmonia.sh: harmonia did not start on 127.0.0.1:$PORT:" >&2
  cat "$WORK/harmonia.log" >&2
  exit 1
fi

echo "== bench"
"$BUILDMESH" bench gateway --paths "$PATHS" --nar-mib "$NAR_MIB" --client-runs "$CLIENT_RUNS" \
  --against "harmonia=http://127.0.0.1:$PORT" --against-key "$(cat "$WORK/harmonia.pub")" "$@"
