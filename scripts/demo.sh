#!/usr/bin/env bash
# scripts/demo.sh [DIR] - a short end-to-end tour of imgtool in DIR
# (default ./imgtool-demo): a directory storage pool in DIR (its
# definition and state in DIR/storage, its volumes in DIR/pool), a qcow2
# overlay volume on a backing volume, data written with `imgtool io`,
# converted, checked, inspected through vol:POOL/NAME names, and every
# result cross-checked with qemu-img on the volumes' files.  Stops at the
# first failing step.
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
# The pool lives in this folder: nothing outside it is touched.
export IMGTOOL_CONFIG_DIR=$PWD/storage
rm -rf storage pool

step() {
    printf '\n$'; printf ' %q' "$@"; printf '\n'
    "$@"
}
imgtool() { step "$IMGTOOL" "$@"; }

echo "== a directory storage pool in $(pwd)/pool"
imgtool pool-define-as demo dir --target "$PWD/pool"
imgtool pool-build demo
imgtool pool-start demo

echo "== a base volume and an overlay volume that uses it as its backing file"
imgtool vol-create-as demo base.qcow2 64M --format qcow2
imgtool io -c 'write -P 0xaa 0 4M' -c 'write -P 0xbb 8M 1M' vol:demo/base.qcow2
imgtool vol-create-as demo overlay.qcow2 64M --format qcow2 \
    --backing-vol base.qcow2 --backing-vol-format qcow2
imgtool io -c 'write -P 0x55 1M 1M' -c 'write -z 8M 64k' -c 'discard 3M 512k' \
    -c flush vol:demo/overlay.qcow2

echo
echo "== what the overlay looks like"
imgtool vol-list demo --details
imgtool info vol:demo/overlay.qcow2
imgtool info --backing-chain --output=json vol:demo/overlay.qcow2
imgtool map vol:demo/overlay.qcow2
imgtool check vol:demo/overlay.qcow2

echo
echo "== read back what was written (through the backing chain)"
imgtool io -c 'read -P 0xaa 0 1M' -c 'read -P 0x55 1M 1M' -c 'read -P 0xaa 2M 1M' \
    -c 'read -P 0 3M 512k' -c 'read -P 0 8M 64k' -c 'read -P 0xbb 9371648 64k' \
    vol:demo/overlay.qcow2

echo
echo "== flatten the chain into a standalone compressed volume and a raw one"
imgtool convert -p -c -O qcow2 vol:demo/overlay.qcow2 vol:demo/flat.qcow2
imgtool convert -O raw vol:demo/overlay.qcow2 vol:demo/overlay.raw
imgtool compare vol:demo/overlay.qcow2 vol:demo/flat.qcow2
imgtool compare -F raw vol:demo/flat.qcow2 vol:demo/overlay.raw
imgtool measure -O qcow2 vol:demo/overlay.qcow2
imgtool vol-create-as demo small.qcow2 1M --format qcow2
imgtool vol-resize small.qcow2 +63M --pool demo
imgtool info vol:demo/small.qcow2
imgtool vol-clone flat.qcow2 clone.qcow2 --pool demo
imgtool vol-list demo --details
imgtool pool-info demo

echo
echo "== qemu-img agrees (on the volumes' files)"
step qemu-img check pool/flat.qcow2
step qemu-img check pool/overlay.qcow2
step qemu-img check pool/small.qcow2
step qemu-img check pool/clone.qcow2
step qemu-img convert -O raw pool/overlay.qcow2 qemu.raw
step cmp pool/overlay.raw qemu.raw
step qemu-img compare pool/overlay.qcow2 pool/flat.qcow2
step qemu-img compare pool/flat.qcow2 pool/clone.qcow2

echo
echo "demo: OK (volumes left in $(pwd)/pool; IMGTOOL_CONFIG_DIR=$IMGTOOL_CONFIG_DIR)"
