#!/usr/bin/env bash
# What the demo and the tests need on a fresh Debian machine, installed when missing:
# a real Nix client (Debian's nix-bin, single-user, no build users, no sandbox: the demo and the
# tests run their own stores), util-linux (unshare, setpriv, prlimit), iproute2 (network
# namespaces), slirp4netns (the outbound network of fixed-output builds, in their own
# network namespace with the host's loopback refused), and what `buildmesh bench gateway` and its
# smoke test run: wrk, nginx (the static-cache reference) and curl. Sourced by scripts/test.sh and
# scripts/demo.sh; safe to run again.
set -euo pipefail

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

need_pkgs=()
command -v nix-store >/dev/null 2>&1 || need_pkgs+=(nix-bin)
command -v unshare >/dev/null 2>&1 || need_pkgs+=(util-linux)
command -v ip >/dev/null 2>&1 || need_pkgs+=(iproute2)
command -v slirp4netns >/dev/null 2>&1 || need_pkgs+=(slirp4netns)
command -v wrk >/dev/null 2>&1 || need_pkgs+=(wrk)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need_pkgs+=(nginx-light)
command -v curl >/dev/null 2>&1 || need_pkgs+=(curl)
# The NAT routers of tests/tests/mesh_nat.rs (masquerade, with and without a random port per
# destination).
command -v nft >/dev/null 2>&1 || [ -x /usr/sbin/nft ] || need_pkgs+=(nftables)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  echo "install-deps.sh: installing ${need_pkgs[*]}"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi

# The dashboard's browser test (tests/tests/dashboard_browser.rs): Debian's chromium, driven
# headless through chromedriver (WebDriver).
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  echo "install-deps.sh: installing chromium chromium-driver"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
fi

if ! grep -qs '^build-users-group' /etc/nix/nix.conf; then
  $SUDO mkdir -p /etc/nix
  printf 'build-users-group =\nsandbox = false\nexperimental-features = nix-command\nsubstituters =\n' | $SUDO tee -a /etc/nix/nix.conf >/dev/null
fi

# Guix's own code as the oracle of the Guix tests (../shared/guix/README.md): Debian's Guile and
# the Guile libraries Guix's modules load (tests/tests/guix_signatures.rs).
guix_pkgs=(guile-3.0 guile-gcrypt guile-json guile-zlib guile-lzlib guile-zstd guile-sqlite3 guile-gnutls guile-git)
if ! command -v guile >/dev/null 2>&1 || [ ! -f /usr/share/guile/site/3.0/gcrypt/pk-crypto.scm ] \
  || [ ! -f /usr/share/guile/site/3.0/zstd.scm ]; then
  echo "install-deps.sh: installing ${guix_pkgs[*]}"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${guix_pkgs[@]}" >/dev/null
fi

# QEMU user-mode emulation for the emulated-build tests (docs/emulation.md): qemu-user-static,
# aarch64 and arm registered in binfmt_misc with the F flag, static busyboxes in
# /var/cache/buildmesh/busybox. What it registers is listed in $BUILDMESH_BINFMT_STATE;
# scripts/test.sh removes it again at exit (`scripts/emulation.sh cleanup`).
"$(dirname "${BASH_SOURCE[0]}")/emulation.sh" setup

# The WAN tests (tests/tests/mesh_wan.rs) give each node namespace a TUN device: the kernel here
# has no netem, so delay and loss are applied in user space (docs/mesh.md, "Across a WAN").
if [ ! -c /dev/net/tun ]; then
  $SUDO mkdir -p /dev/net
  $SUDO mknod /dev/net/tun c 10 200
  $SUDO chmod 0666 /dev/net/tun
fi
