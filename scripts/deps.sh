#!/usr/bin/env bash
# scripts/deps.sh - the one list of Debian 12 packages imgtool needs to
# build, test and run its demo.  README's commands and .ci/run both call
# this, so a new dependency is added here and nowhere else.
#
#   scripts/deps.sh          apt-get update + install (uses sudo when not root)
#   scripts/deps.sh --list   print the package names, one per line
set -euo pipefail

packages=(
    # build
    build-essential meson ninja-build pkg-config git
    zlib1g-dev libzstd-dev libssl-dev libjansson-dev
    # backups hash every cluster they read with XXH3 (backup/sums.c)
    libxxhash-dev
    # storage pool/volume definitions are libvirt's XML (pools/)
    libxml2-dev
    # the NBD client driver (nbd://, nbd+unix://) is built on libnbd
    libnbd-dev
    # decodes zlib-compressed qcow2 clusters faster (optional: zlib fallback)
    libdeflate-dev
    # io_uring for asynchronous file I/O (optional: worker threads fallback)
    liburing-dev
    # iscsi:// and gluster:// (the libraries QEMU uses for the same URLs);
    # sanitizer builds link gfapi's libtirpc into imgtool (meson.build)
    libiscsi-dev libglusterfs-dev libtirpc-dev
    # ASan/UBSan with clang, libFuzzer harnesses
    clang libclang-rt-14-dev
    # the oracle the tests compare against: qemu-img, qemu-io; and QEMU's
    # own iscsi:// and gluster:// drivers for them
    qemu-utils qemu-block-extra
    # the real servers the network tests run: an iSCSI target (tgtd) with
    # libiscsi's tools, and glusterd with one brick
    tgt libiscsi-bin glusterfs-server
    # NBD clients and the daemon `imgtool serve` is compared with:
    # nbdinfo/nbdcopy, qemu-storage-daemon
    libnbd-bin qemu-system-common
    # test runner
    python3 python3-pytest python3-pytest-xdist python3-pytest-timeout
    # the logical (LVM) pool back end runs lvm2's commands; blkid/wipefs
    # (util-linux) check devices before pool-build; its tests put PVs on
    # loop devices (losetup, from mount)
    lvm2 mount
    # a real QEMU opening (and locking) a pool volume in tests
    qemu-system-x86
    # the tiny guest the vhost-user and `imgtool run` tests boot
    # (tests/guest.py): Debian's kernel and its virtio modules, busybox in
    # its initramfs; fio for bench/serve and bench/vhost;
    # openssl makes the TLS certificates of the NBD tests
    linux-image-amd64 busybox-static fio openssl
    # virt-xml-validate and libvirt's schemas check the pool/volume XML
    # imgtool writes; virsh (its test driver) is the layout oracle
    libvirt-clients
    # cryptsetup luksDump checks the LUKS volumes imgtool writes
    cryptsetup-bin
    # extent sharing (issue 15): an XFS with reflinks and an ext4 on loop
    # devices in tests/test_share_extents.py and bench/sharerows.py;
    # filefrag shows FIEMAP's shared flag
    xfsprogs e2fsprogs
    # online backup tests: the guest agent in the tiny guest (it freezes
    # an ext4 the guest makes; e2fsprogs above checks the points)
    qemu-guest-agent
    # flock/fallocate and friends used by tests and the demo
    util-linux coreutils
    # GNU time: peak RSS in bench/run and tests/test_compress_memory.py
    time
    # rendering the man page
    man-db groff-base
    # the Debian package (debian/): dpkg-buildpackage, dh, lintian; the
    # tests drive the installed bash completion and verify the systemd
    # units with systemd-analyze
    dpkg-dev debhelper fakeroot lintian bash-completion systemd
)

if [ "${1:-}" = "--list" ]; then
    printf '%s\n' "${packages[@]}"
    exit 0
fi

sudo=()
if [ "$(id -u)" -ne 0 ]; then
    sudo=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -q
"${sudo[@]}" apt-get install -y -q --no-install-recommends "${packages[@]}"
