#!/usr/bin/env bash
# Builds the vism guest image: an initramfs (cpio.gz) with a static busybox, vism-guest, the
# flows in ./flows and an /init that runs the flow named on the kernel command line
# (vism.role=NAME) and powers off. Boot it with the Debian cloud kernel (virtio_pci, hugetlbfs
# and /proc/self/pagemap are built in; no modules are needed).
#   -o FILE        output (default: build/vism-guest.cpio.gz next to this script)
#   --busybox FILE static busybox (default: $VISM_QEMU_ROOT/bin/busybox, root from scripts/setup-qemu.sh)
#   --tool FILE    vism-guest binary (default: built here with make); a vism-ring-selftest next
#                  to it is included too
#   --flows DIR    flow scripts (default: ./flows)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=${VISM_QEMU_ROOT:-/var/cache/vism/trixie}
out=$here/build/vism-guest.cpio.gz
busybox=$root/bin/busybox
tool=
flows=$here/flows
while [ $# -gt 0 ]; do
    case "$1" in
        -o) out=$2; shift 2 ;;
        --busybox) busybox=$2; shift 2 ;;
        --tool) tool=$2; shift 2 ;;
        --flows) flows=$2; shift 2 ;;
        -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
        *) echo "mkinitramfs.sh: unknown argument $1" >&2; exit 1 ;;
    esac
done
if [ ! -x "$busybox" ]; then
    echo "mkinitramfs.sh: no static busybox at $busybox (run scripts/setup-qemu.sh, or pass --busybox)" >&2
    exit 1
fi
if ! file -L "$busybox" 2>/dev/null | grep -q 'statically linked' && command -v file >/dev/null; then
    echo "mkinitramfs.sh: $busybox is not statically linked" >&2
    exit 1
fi
if [ -z "$tool" ]; then
    make -s -C "$here" all
    tool=$here/build/vism-guest
fi
selftest=$(dirname "$tool")/vism-ring-selftest

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage"/{bin,sbin,dev,proc,sys,tmp,flows}
install -m 0755 "$busybox" "$stage/bin/busybox"
ln -s busybox "$stage/bin/sh"
install -s -m 0755 "$tool" "$stage/bin/vism-guest"
if [ -x "$selftest" ]; then install -s -m 0755 "$selftest" "$stage/bin/vism-ring-selftest"; fi
install -m 0755 "$here/init" "$stage/init"
cp "$flows"/*.vism "$stage/flows/"
# The kernel opens /dev/console before /init runs; /init also reopens it after mounting devtmpfs,
# so the node is only a convenience (mknod needs root).
mknod -m 600 "$stage/dev/console" c 5 1 2>/dev/null || true

mkdir -p "$(dirname "$out")"
out_abs=$(cd "$(dirname "$out")" && pwd)/$(basename "$out")
(cd "$stage" && find . -mindepth 1 | LC_ALL=C sort | "$busybox" cpio -o -H newc 2>/dev/null) | gzip -9 -n > "$out_abs.tmp"
mv "$out_abs.tmp" "$out_abs"
echo "mkinitramfs.sh: wrote $out_abs ($(stat -c %s "$out_abs") bytes)"
