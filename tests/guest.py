"""A tiny Linux guest for tests and benchmarks that need a real virtio
driver on the other side of imgtool's vhost-user back ends.

The guest is Debian's installed kernel (linux-image-amd64) booted as the
ELF vmlinux inside its bzImage (the kernel has CONFIG_PVH, so QEMU enters
it directly, about twice as fast as through the bzImage's decompressor)
with an initramfs of busybox-static, the virtio/SCSI modules and an /init
that loads them and runs /test.sh.  Both are built once per kernel
version and cached under /tmp (several pytest workers may ask at once:
a lock file and an atomic rename keep them from tripping over each
other).  Each boot appends its own /test.sh as a second, uncompressed
cpio archive: the kernel unpacks concatenated archives in order.

A test judges the guest by the lines /test.sh prints on the serial
console (QEMU's stdout), never by QEMU's exit code.
"""
import fcntl
import glob
import gzip
import io
import lzma
import os
import shutil
import stat
import subprocess

MODULES = ["virtio_ring", "virtio", "virtio_pci_legacy_dev",
           "virtio_pci_modern_dev", "virtio_pci", "virtio_blk", "scsi_common",
           "scsi_mod", "virtio_scsi", "crc64", "crc64-rocksoft",
           "crct10dif_common", "crc-t10dif", "t10-pi", "sd_mod"]

INIT = """#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in %s; do insmod /lib/modules/$m.ko 2>/dev/null; done
# Let the drivers find their disks before the test looks.
for i in 1 2 3 4 5 6 7 8 9 10; do
    ls /sys/block | grep -q -E '^(vd|sd)' && break
    sleep 0.2
done
if [ -x /test.sh ]; then /test.sh; fi
echo "GUEST-END"
poweroff -f
""" % " ".join(MODULES)

# Boot arguments every guest gets (quiet keeps the console to the test's
# own lines; panic=-1 with -no-reboot makes a kernel panic end QEMU).
APPEND = "console=ttyS0 panic=-1 quiet"


def kernel_version():
    """The newest installed kernel's version, or None."""
    found = sorted(glob.glob("/boot/vmlinuz-*"))
    if not found:
        return None
    return os.path.basename(found[-1])[len("vmlinuz-"):]


def available():
    """Why a guest cannot be built here, or None when it can."""
    kv = kernel_version()
    if not kv:
        return "no /boot/vmlinuz-* (install linux-image-amd64)"
    if not os.path.isdir(f"/lib/modules/{kv}"):
        return f"no /lib/modules/{kv}"
    if not os.path.exists("/bin/busybox"):
        return "no /bin/busybox (install busybox-static)"
    if not shutil.which("qemu-system-x86_64"):
        return "no qemu-system-x86_64"
    return None


class Cpio:
    """A newc ("070701") cpio archive written in memory."""

    def __init__(self):
        self.buf = io.BytesIO()
        self.ino = 1

    def _entry(self, name, mode, data=b"", nlink=1):
        hdr = "070701" + "".join("%08X" % v for v in (
            self.ino, mode, 0, 0, nlink, 0, len(data), 0, 0, 0, 0,
            len(name) + 1, 0))
        self.ino += 1
        self.buf.write(hdr.encode() + name.encode() + b"\0")
        self.buf.write(b"\0" * (-(110 + len(name) + 1) % 4))
        self.buf.write(data)
        self.buf.write(b"\0" * (-len(data) % 4))

    def dir(self, name):
        self._entry(name, stat.S_IFDIR | 0o755, nlink=2)

    def file(self, name, data, mode=0o644):
        self._entry(name, stat.S_IFREG | mode, data)

    def symlink(self, name, target):
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def finish(self):
        self._entry("TRAILER!!!", 0)
        return self.buf.getvalue()


def _extract_vmlinux(bzimage):
    """The ELF kernel inside a bzImage whose payload is xz-compressed."""
    data = open(bzimage, "rb").read()
    pos = data.find(b"\xfd7zXZ\x00")
    while pos >= 0:
        try:
            d = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
            out = d.decompress(data[pos:])
            if out[:4] == b"\x7fELF":
                return out
        except lzma.LZMAError:
            pass
        pos = data.find(b"\xfd7zXZ\x00", pos + 1)
    return None


def _build(kv, d):
    tmp = d + ".tmp%d" % os.getpid()
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    bz = f"/boot/vmlinuz-{kv}"
    elf = _extract_vmlinux(bz)
    if elf:
        with open(os.path.join(tmp, "vmlinux"), "wb") as f:
            f.write(elf)
    else:
        shutil.copy(bz, os.path.join(tmp, "vmlinux"))
    c = Cpio()
    for name in ("bin", "dev", "proc", "sys", "lib", "lib/modules", "tmp",
                 "mnt"):
        c.dir(name)
    c.file("bin/busybox", open("/bin/busybox", "rb").read(), 0o755)
    c.symlink("bin/sh", "busybox")
    mods = f"/lib/modules/{kv}"
    for m in MODULES:
        found = (glob.glob(f"{mods}/kernel/**/{m}.ko", recursive=True) or
                 glob.glob(f"{mods}/kernel/**/{m.replace('-', '_')}.ko",
                           recursive=True))
        if found:
            c.file(f"lib/modules/{m}.ko", open(found[0], "rb").read())
    c.file("init", INIT.encode(), 0o755)
    with open(os.path.join(tmp, "initrd.gz"), "wb") as f:
        f.write(gzip.compress(c.finish(), compresslevel=6))
    os.rename(tmp, d)


def build():
    """(kernel path, base initramfs path), built once per kernel version
    and cached under /tmp."""
    kv = kernel_version()
    d = f"/tmp/imgtool-guest-{kv}"
    if not os.path.exists(os.path.join(d, "initrd.gz")):
        with open(d + ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not os.path.exists(os.path.join(d, "initrd.gz")):
                shutil.rmtree(d, ignore_errors=True)
                _build(kv, d)
    return os.path.join(d, "vmlinux"), os.path.join(d, "initrd.gz")


def initrd_with(base, script, out, files=None):
    """Writes base + a cpio holding /test.sh (and files: {guest path:
    bytes or (bytes, mode)}) to out and returns out."""
    c = Cpio()
    for name, data in (files or {}).items():
        parts = name.strip("/").split("/")
        for i in range(1, len(parts)):
            c.dir("/".join(parts[:i]))
        mode = 0o644
        if isinstance(data, tuple):
            data, mode = data
        c.file(name.strip("/"), data, mode)
    c.file("test.sh", ("#!/bin/sh\n" + script).encode(), 0o755)
    with open(out, "wb") as f:
        data = open(base, "rb").read()
        # The kernel looks for the next archive at a 4-byte boundary and
        # skips the zeroes before it.
        f.write(data + b"\0" * (-len(data) % 4))
        f.write(c.finish())
    return out
