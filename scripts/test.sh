#!/usr/bin/env bash
# The one test command, for humans and CI alike (README "Quick start").
# On a fresh Debian machine it installs what the tests need (a real Nix client from Debian's
# nix-bin, nginx and wrk for the benchmarks, slirp4netns for fixed-output builds), configures single-user Nix, checks that the protocol
# crate stays pure, then runs every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

need_pkgs=()
command -v nix-store >/dev/null 2>&1 || need_pkgs+=(nix-bin)
command -v unshare >/dev/null 2>&1 || need_pkgs+=(util-linux)
command -v ip >/dev/null 2>&1 || need_pkgs+=(iproute2)
# Outbound network of fixed-output builds (their own netns, the host's loopback refused).
command -v slirp4netns >/dev/null 2>&1 || need_pkgs+=(slirp4netns)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  echo "test.sh: installing ${need_pkgs[*]}"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi

# Single-user Nix as root: no build users, no sandbox (the tests run their own stores).
if ! grep -qs '^build-users-group' /etc/nix/nix.conf; then
  $SUDO mkdir -p /etc/nix
  printf 'build-users-group =\nsandbox = false\nexperimental-features = nix-command\nsubstituters =\n' | $SUDO tee -a /etc/nix/nix.conf >/dev/null
fi

# protocol/ must stay pure: no tokio, libp2p or redb among its normal dependencies.
if cargo tree -p buildmesh-protocol -e normal --prefix none | grep -E '^(tokio|libp2p|redb)( |-)'; then
  echo "test.sh: buildmesh-protocol depends on an I/O crate (see above)" >&2
  exit 1
fi

cargo test --workspace "$@"
