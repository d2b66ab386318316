#!/usr/bin/env bash
# The one test command, for humans and CI alike (README "Quick start").
# On a fresh Debian machine it installs what the tests need (scripts/install-deps.sh: a real Nix
# client from Debian's nix-bin, configured single-user, and slirp4netns for fixed-output builds),
# checks that the protocol crate stays pure, then runs every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

# The binfmt_misc entries this run registers (scripts/emulation.sh) are removed at exit; entries
# that were there before are left alone.
BUILDMESH_BINFMT_STATE="$(mktemp)"
export BUILDMESH_BINFMT_STATE
trap 'scripts/emulation.sh cleanup' EXIT
source scripts/install-deps.sh

# protocol/ must stay pure: no tokio, libp2p or redb among its normal dependencies.
if cargo tree -p buildmesh-protocol -e normal --prefix none | grep -E '^(tokio|libp2p|redb)( |-)'; then
  echo "test.sh: buildmesh-protocol depends on an I/O crate (see above)" >&2
  exit 1
fi

# The README, SECURITY.md and docs/ link only to files that exist.
scripts/check-links.sh

# node/src's top-level modules import each other in one direction only (ARCHITECTURE.md).
python3 scripts/check-module-cycles.py

cargo test --workspace "$@"

# Every parser of untrusted input, fuzzed for a bounded time from the committed seed corpus
# (docs/fuzzing.md; BUILDMESH_FUZZ_SECONDS=0 skips it).
if [[ "${BUILDMESH_FUZZ_SECONDS:-20}" != 0 ]]; then
  scripts/fuzz.sh
fi
