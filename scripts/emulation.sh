#!/usr/bin/env bash
# QEMU user-mode emulation for the emulated-build tests (docs/emulation.md), on Debian:
#
#   scripts/emulation.sh setup     install qemu-user-static, mount binfmt_misc if needed, register
#                                  aarch64 and arm (armhf) with the static interpreter and the flags
#                                  `PF`, and put static busyboxes for them (and the host) in
#                                  $BUILDMESH_BUSYBOX_DIR (default /var/cache/buildmesh/busybox)
#   scripts/emulation.sh cleanup   unregister the entries `setup` registered (and only those)
#
# `F` makes the kernel open the interpreter at registration, so it works inside a build's mount
# namespace where /usr/bin does not exist. `P` keeps argv[0] (QEMU 7 reads it from AT_FLAGS):
# without it a multi-call binary that re-executes itself under another name (busybox running the
# commands of a pipeline) gets the wrong applet name and fails ("applet not found"). An entry that is already registered is left alone (and
# not cleaned up): with `F` it is used as is; without it, a warning says builds in the sandbox
# cannot use it (the node then does not count it, see node/src/systems.rs).
#
# riscv64 is not in this Debian's (bookworm) archive, so there is no riscv64 busybox to build with;
# armhf (Nix's armv7l-linux, a 32-bit system) is the second emulated system instead.
set -euo pipefail

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
BINFMT=/proc/sys/fs/binfmt_misc
BUSYBOX_DIR="${BUILDMESH_BUSYBOX_DIR:-/var/cache/buildmesh/busybox}"
# What `setup` registered, one entry name a line, for `cleanup`.
STATE="${BUILDMESH_BINFMT_STATE:-/run/buildmesh-binfmt-registered}"
# qemu name, Debian architecture.
SYSTEMS=("aarch64 arm64" "arm armhf")

setup() {
  command -v qemu-aarch64-static >/dev/null 2>&1 && command -v qemu-arm-static >/dev/null 2>&1 || {
    echo "emulation.sh: installing qemu-user-static"
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user-static >/dev/null
  }
  [ -e "$BINFMT/register" ] || $SUDO mount -t binfmt_misc binfmt_misc "$BINFMT"
  for pair in "${SYSTEMS[@]}"; do
    set -- $pair
    local q="$1" name="qemu-$1" conf="/usr/lib/binfmt.d/qemu-$1.conf"
    if [ -e "$BINFMT/$name" ]; then
      grep -q '^flags:.*F' "$BINFMT/$name" ||
        echo "emulation.sh: warning: $name is registered without the F flag; builds in the sandbox cannot use it" >&2
      grep -q '^flags:.*P' "$BINFMT/$name" ||
        echo "emulation.sh: warning: $name is registered without the P flag; programs that re-execute themselves may fail" >&2
      continue
    fi
    # ":name:M::magic:mask:interpreter:flags" with our interpreter and flags.
    local line
    line="$(sed -E "s#^(:[^:]*:[^:]*:[^:]*:[^:]*:[^:]*):[^:]*:[^:]*\$#\\1:/usr/bin/qemu-$q-static:PF#" "$conf")"
    printf '%s' "$line" | $SUDO tee "$BINFMT/register" >/dev/null
    echo "$name" | $SUDO tee -a "$STATE" >/dev/null
  done
  fetch_busyboxes
}

fetch_busyboxes() {
  local need=()
  for arch in amd64 arm64 armhf; do
    [ -x "$BUSYBOX_DIR/$arch/busybox" ] || need+=("$arch")
  done
  [ ${#need[@]} -eq 0 ] && return 0
  local foreign
  foreign="$(dpkg --print-foreign-architectures)"
  local added=0
  for arch in "${need[@]}"; do
    if [ "$arch" != "$(dpkg --print-architecture)" ] && ! grep -qx "$arch" <<<"$foreign"; then
      $SUDO dpkg --add-architecture "$arch"
      added=1
    fi
  done
  [ $added -eq 0 ] || $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  local tmp
  tmp="$(mktemp -d)"
  for arch in "${need[@]}"; do
    (cd "$tmp" && chmod 777 . && apt-get download -qq "busybox-static:$arch" 2>/dev/null)
    mkdir -p "$tmp/x-$arch" "$BUSYBOX_DIR/$arch"
    dpkg-deb -x "$tmp"/busybox-static_*_"$arch".deb "$tmp/x-$arch"
    install -m 0755 "$tmp/x-$arch/bin/busybox" "$BUSYBOX_DIR/$arch/busybox"
  done
  rm -rf "$tmp"
}

cleanup() {
  [ -f "$STATE" ] || return 0
  while read -r name; do
    [ -n "$name" ] && [ -e "$BINFMT/$name" ] && echo -1 | $SUDO tee "$BINFMT/$name" >/dev/null
  done <"$STATE"
  $SUDO rm -f "$STATE"
}

case "${1:-}" in
  setup) setup ;;
  cleanup) cleanup ;;
  *) echo "usage: $0 setup|cleanup" >&2; exit 2 ;;
esac
