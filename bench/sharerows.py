"""bench/sharerows.py - the extent-sharing rows of bench/run: convert
raw->qcow2, qcow2->raw and commit of 512 MiB of data (scaled), imgtool
against qemu-img on the same file system: XFS made with reflink=1, where
imgtool shares extents instead of copying, and ext4, where both copy.

Both file systems are made on loop devices in the run's directory and
unmounted at the end.  Targets (issue 15): on XFS <= 0.2 of qemu-img's
time at equal durability (imgtool's default flushes, so qemu-img runs
with -t writeback); on ext4 <= 1.0 at the same cache mode (-t unsafe
for both) and <= 0.8 at equal durability.  Commit flushes in both tools.
"""
import os
import shutil
import subprocess

MiB = 1 << 20


def missing():
    """Why the rows cannot run here, or None."""
    if os.geteuid() != 0:
        return "mounting loop file systems needs root"
    for tool in ("mkfs.xfs", "mkfs.ext4", "mount", "umount"):
        if not shutil.which(tool):
            return f"{tool} is not installed"
    return None


class Mounts:
    """An XFS (reflink=1) and an ext4 file system on loop devices, each
    holding the workload."""

    def __init__(self, d, scale, sh, qemu_img):
        self.d, self.sh, self.qi = d, sh, qemu_img
        self.data = max(16, int(512 * scale)) * MiB
        self.mounted = []
        self.fs = {}

    def start(self):
        # sources (3 x data), two convert outputs, commit copies (and the
        # base growing by the data), with room for ext4's metadata
        size = 9 * self.data + 1024 * MiB
        for name, mkfs in (("xfs", ["mkfs.xfs", "-q", "-f", "-m",
                                    "reflink=1"]),
                           ("ext4", ["mkfs.ext4", "-q", "-F"])):
            img = os.path.join(self.d, f"share-{name}.img")
            mnt = os.path.join(self.d, f"share-{name}")
            os.makedirs(mnt, exist_ok=True)
            with open(img, "wb") as f:
                f.truncate(size)
            self.sh([*mkfs, img])
            self.sh(["mount", "-o", "loop", img, mnt])
            self.mounted.append((mnt, img))
            self.fs[name] = mnt
            self.build(mnt)

    def build(self, mnt):
        p = lambda n: os.path.join(mnt, n)   # noqa: E731
        with open(p("src.raw"), "wb") as f:
            left = self.data
            while left:
                n = min(left, 4 * MiB)
                f.write(os.urandom(n))
                left -= n
            f.truncate(2 * self.data)    # a hole after the data
        self.sh([self.qi, "convert", "-f", "raw", "-O", "qcow2",
                 p("src.raw"), p("src.qcow2")])
        self.sh([self.qi, "create", "-q", "-f", "qcow2",
                 p("commit-base.qcow2"), str(2 * self.data)])
        self.sh([self.qi, "convert", "-f", "raw", "-O", "qcow2", "-B",
                 "commit-base.qcow2", "-F", "qcow2", p("src.raw"),
                 p("commit-top.qcow2")])
        os.sync()

    def stop(self):
        for mnt, img in self.mounted:
            subprocess.run(["umount", mnt], capture_output=True)
            try:
                os.unlink(img)
            except FileNotFoundError:
                pass
        self.mounted = []


def make_rows(m, tools, Row, sh):
    qi, it = tools["qemu-img"], tools["imgtool"]
    exe = {"qemu-img": qi, "imgtool": it}
    mib = m.data // MiB
    # cache modes per tool: equal durability (imgtool flushes by default)
    # and the same mode
    durable = {"qemu-img": ["-t", "writeback"], "imgtool": []}
    same = {"qemu-img": ["-t", "unsafe"], "imgtool": ["-t", "unsafe"]}
    rows = []
    for fs, sets in (("xfs", [("flushed", durable, 0.2)]),
                     ("ext4", [("flushed", durable, 0.8),
                               ("unsafe", same, 1.0)])):
        mnt = m.fs.get(fs) or os.path.join(m.d, f"share-{fs}")
        p = lambda n, mnt=mnt: os.path.join(mnt, n)   # noqa: E731

        def clean(*paths):
            def f():
                for x in paths:
                    try:
                        os.unlink(x)
                    except FileNotFoundError:
                        pass
            return f

        def convert(cache, sfmt, src, dfmt, dst):
            return lambda tool: [exe[tool], "convert", *cache[tool], "-f",
                                 sfmt, "-O", dfmt, src, dst]
        for mode, cache, target in sets:
            rows += [
                Row(f"{fs}: convert raw->qcow2 {mib} MiB ({mode})",
                    convert(cache, "raw", p("src.raw"), "qcow2",
                            p("out.qcow2")),
                    clean(p("out.qcow2")), ("<=", target)),
                Row(f"{fs}: convert qcow2->raw {mib} MiB ({mode})",
                    convert(cache, "qcow2", p("src.qcow2"), "raw",
                            p("out.raw")),
                    clean(p("out.raw")), ("<=", target)),
            ]

        def commit_prep(p=p):
            clean(p("out.qcow2"), p("out.raw"))()
            # plain copies: a reflinked copy would share before the run
            for n in ("base", "top"):
                sh(["cp", "--reflink=never", "--sparse=always",
                    p(f"commit-{n}.qcow2"), p(f"run-{n}.qcow2")])
            sh([qi, "rebase", "-u", "-F", "qcow2", "-b", p("run-base.qcow2"),
                p("run-top.qcow2")])
        rows.append(Row(f"{fs}: commit {mib} MiB",
                        lambda tool, p=p: [exe[tool], "commit", "-f",
                                           "qcow2", p("run-top.qcow2")],
                        commit_prep, ("<=", 0.2 if fs == "xfs" else 0.8)))
    return rows
