#!/usr/bin/env bash
# scripts/demo.sh [DIR] - a short end-to-end tour of imgtool in DIR
# (default ./imgtool-demo): a qcow2 overlay on a backing file, data written
# with `imgtool io`, converted, checked, inspected, and every result
# cross-checked with qemu-img.  Stops at the first failing step.
#
# IMGTOOL names the binary (default build/imgtool).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
IMGTOOL=${IMGTOOL:-$root/build/imgtool}
IMGTOOL=$(cd "$(dirname "$IMGTOOL")" && pwd)/$(basename "$IMGTOOL")
dir=${1:-imgtool-demo}

if [ ! -x "$IMGTOOL" ]; then
    echo "demo: $IMGTOOL is not built (meson setup build && ninja -C build)" >&2
    exit 1
fi
mkdir -p "$dir"
cd "$dir"
rm -f base.qcow2 overlay.qcow2 flat.qcow2 small.qcow2 overlay.raw qemu.raw

step() {
    printf '\n$'; printf ' %q' "$@"; printf '\n'
    "$@"
}
imgtool() { step "$IMGTOOL" "$@"; }

echo "== a base image and an overlay that uses it as its backing file"
imgtool create -f qcow2 base.qcow2 64M
imgtool io -c 'write -P 0xaa 0 4M' -c 'write -P 0xbb 8M 1M' base.qcow2
imgtool create -f qcow2 -b base.qcow2 -F qcow2 overlay.qcow2
imgtool io -c 'write -P 0x55 1M 1M' -c 'write -z 8M 64k' -c 'discard 3M 512k' \
    -c flush overlay.qcow2

echo
echo "== what the overlay looks like"
imgtool info overlay.qcow2
imgtool info --backing-chain --output=json overlay.qcow2
imgtool map overlay.qcow2
imgtool check overlay.qcow2

echo
echo "== read back what was written (through the backing chain)"
imgtool io -c 'read -P 0xaa 0 1M' -c 'read -P 0x55 1M 1M' -c 'read -P 0xaa 2M 1M' \
    -c 'read -P 0 3M 512k' -c 'read -P 0 8M 64k' -c 'read -P 0xbb 9371648 64k' \
    overlay.qcow2

echo
echo "== flatten the chain into a standalone compressed image and a raw file"
imgtool convert -p -c -O qcow2 overlay.qcow2 flat.qcow2
imgtool convert -O raw overlay.qcow2 overlay.raw
imgtool compare overlay.qcow2 flat.qcow2
imgtool compare -F raw flat.qcow2 overlay.raw
imgtool measure -O qcow2 overlay.qcow2
imgtool create -f qcow2 small.qcow2 1M
imgtool resize small.qcow2 +63M
imgtool info small.qcow2

echo
echo "== qemu-img agrees"
step qemu-img check flat.qcow2
step qemu-img check overlay.qcow2
step qemu-img check small.qcow2
step qemu-img convert -O raw overlay.qcow2 qemu.raw
step cmp overlay.raw qemu.raw
step qemu-img compare overlay.qcow2 flat.qcow2

echo
echo "demo: OK (images left in $(pwd))"
