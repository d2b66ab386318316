#!/usr/bin/env bash
# The main job (README "Quick start"): installs what the demo needs on a fresh Debian machine
# (scripts/install-deps.sh), then runs `buildmesh demo` from a release build. Extra arguments go
# to the demo (`--nodes N`, `--replicas K`, `--dir DIR`, ...).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/install-deps.sh
exec cargo run --release -- demo "$@"
