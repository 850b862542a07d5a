#!/usr/bin/env bash
# Prepares QEMU 11.1 (Debian trixie-backports) in a debootstrap root, plus a Debian cloud kernel
# and a static busybox for test guests. Idempotent: a finished root is reused (cached between runs).
#   VISM_QEMU_ROOT  where the root lives (default /var/cache/vism/trixie)
#   VISM_DEBIAN_MIRROR  Debian mirror (default http://deb.debian.org/debian)
set -euo pipefail
ROOT=${VISM_QEMU_ROOT:-/var/cache/vism/trixie}
MIRROR=${VISM_DEBIAN_MIRROR:-http://deb.debian.org/debian}
STAMP="$ROOT/.vism-ready"

if [ -f "$STAMP" ]; then
  echo "setup-qemu: using $ROOT ($(cat "$STAMP"))"
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "setup-qemu: QEMU root $ROOT is not prepared and preparing it needs root" >&2
  exit 3
fi
if ! command -v debootstrap >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
fi
mkdir -p "$(dirname "$ROOT")"
if [ ! -x "$ROOT/usr/bin/apt-get" ]; then
  rm -rf "$ROOT"
  debootstrap --variant=minbase trixie "$ROOT" "$MIRROR"
fi
echo "deb $MIRROR trixie-backports main" > "$ROOT/etc/apt/sources.list.d/backports.list"
chroot "$ROOT" apt-get update -qq
DEBIAN_FRONTEND=noninteractive chroot "$ROOT" apt-get install -y -qq --no-install-recommends \
  -t trixie-backports qemu-system-x86 qemu-system-data
DEBIAN_FRONTEND=noninteractive chroot "$ROOT" apt-get install -y -qq --no-install-recommends \
  linux-image-cloud-amd64 busybox-static ovmf- seabios
ver=$(chroot "$ROOT" qemu-system-x86_64 --version | head -1)
echo "$ver" > "$STAMP"
echo "setup-qemu: ready: $ver"
