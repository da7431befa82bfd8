"""bench/netrows.py - the network rows of bench/run: convert of the
standard workload into and out of iscsi:// (a real tgtd) and gluster://
(a real glusterd with one brick), and 4k I/O through bench on iscsi://,
imgtool against qemu-img (QEMU's own iscsi and gluster drivers).

The servers are the test suite's (tests/netservices.py), started here
and stopped at the end.  LUN backing files live on tmpfs when it has
room, so the rows time the tools and the protocol, not a disk.  Before
every timed command the target LUN is emptied (its backing file
truncated under tgtd) and the target file on the volume removed, so both
tools meet the same state.

Gluster rows are wall time from start to exit: what a user waits for,
qemu-img's glfs_fini stall included.
"""
import os
import shutil
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

from netservices import Glusterd, Tgtd  # noqa: E402

IQN = "iqn.2024-01.org.imgtool.bench:disks"
VOLUME = "imgtool-bench"
MiB = 1 << 20


def missing():
    """Why the network rows cannot run here, or None."""
    for tool in ("tgtd", "tgtadm", "glusterd", "gluster"):
        if not shutil.which(tool):
            return f"{tool} is not installed (scripts/deps.sh)"
    if os.geteuid() != 0:
        return "tgtd and glusterd need root"
    return None


def punch(path, size):
    """The LUN behind path reads as zeroes again (tgtd keeps its file
    open; it sees the new content)."""
    os.truncate(path, 0)
    os.truncate(path, size)


class Servers:
    def __init__(self, workdir, w, sh, imgtool):
        self.workdir = workdir
        self.w = w
        self.sh = sh
        self.imgtool = imgtool
        # made now (its portal names the rows), started by start()
        self.tgtd = Tgtd(os.path.join(workdir, "tgtd"), slot=9)
        self.started = False
        self.glusterd = None
        self.lun_dir = None

    def start(self):
        # the LUN files are sparse: four copies of the workload's data
        need = 6 * (self.w.n_random + self.w.n_text) * MiB
        shm = "/dev/shm"
        if os.path.isdir(shm) and shutil.disk_usage(shm).free > need:
            self.lun_dir = tempfile.mkdtemp(prefix="imgtool-bench-luns-",
                                            dir=shm)
        else:
            self.lun_dir = os.path.join(self.workdir, "luns")
            os.makedirs(self.lun_dir, exist_ok=True)
        w, p = self.w, self.w.p
        self.size = w.virtual + 64 * MiB
        self.lun_path = {n: os.path.join(self.lun_dir, f"{n}.img")
                         for n in ("src-raw", "src-qcow2", "dst-raw",
                                   "dst-qcow2")}
        # the sources are the workload's files, byte for byte
        self.sh(["cp", "--sparse=always", p("src.raw"),
                 self.lun_path["src-raw"]])
        self.sh(["cp", "--sparse=always", p("src.qcow2"),
                 self.lun_path["src-qcow2"]])
        for n in ("src-raw", "src-qcow2", "dst-raw", "dst-qcow2"):
            if not os.path.exists(self.lun_path[n]):
                open(self.lun_path[n], "wb").close()
            os.truncate(self.lun_path[n],
                        max(self.size, os.path.getsize(self.lun_path[n])))
        self.started = True
        self.tgtd.start()
        self.tgtd.add_target(1, IQN, [
            (1, self.lun_path["src-raw"], self.size, {}),
            (2, self.lun_path["src-qcow2"], self.size, {}),
            (3, self.lun_path["dst-raw"], self.size, {}),
            (4, self.lun_path["dst-qcow2"], self.size, {}),
        ])
        g = Glusterd(os.path.join(self.workdir, "glusterd"))
        if not g.acquire():
            raise RuntimeError("glusterd is in use by another process")
        self.glusterd = g
        g.start()
        self.brick = g.create_volume(VOLUME)
        # the qcow2 source on the volume (written once, by imgtool)
        self.sh([self.imgtool, "convert", "-f", "qcow2", "-O", "qcow2",
                 p("src.qcow2"), self.gurl("src.qcow2")])

    def iurl(self, lun):
        return f"iscsi://{self.tgtd.portal}/{IQN}/{lun}"

    def gurl(self, name):
        return f"gluster://127.0.0.1/{VOLUME}/{name}"

    def stop(self):
        if self.started:
            self.tgtd.stop()
        if self.glusterd:
            self.glusterd.stop()
        if self.lun_dir:
            shutil.rmtree(self.lun_dir, ignore_errors=True)


def make_rows(srv, w, exe, Row, modes, args):
    """The rows; Row and modes are bench/run's."""
    p = w.p
    rows = []

    def empty_lun(name):
        return lambda: punch(srv.lun_path[name], srv.size)

    def no_file(name):
        def f():
            try:
                os.unlink(os.path.join(srv.brick, name))
            except FileNotFoundError:
                pass
        return f

    def clean(path):
        def f():
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        return f

    def convert(cache, src_fmt, src, dst_fmt, dst, *extra):
        return lambda tool: [exe[tool], "convert", *cache[tool], "-f",
                             src_fmt, "-O", dst_fmt, *extra, src, dst]

    # flushed: imgtool's default against qemu-img -t writeback, both end
    # with SYNCHRONIZE CACHE / fsync
    cache = modes[0][1]
    mode = modes[0][0]
    rows += [
        Row(f"iscsi: convert raw->lun raw ({mode})",
            convert(cache, "raw", p("src.raw"), "raw", srv.iurl(3)),
            empty_lun("dst-raw"), ("<=", 0.8)),
        Row(f"iscsi: convert raw->lun qcow2 ({mode})",
            convert(cache, "raw", p("src.raw"), "qcow2", srv.iurl(4)),
            empty_lun("dst-qcow2"), ("<=", 0.8)),
        Row(f"iscsi: convert lun raw->qcow2 ({mode})",
            convert(cache, "raw", srv.iurl(1), "qcow2", p("out.qcow2")),
            clean(p("out.qcow2")), ("<=", 0.8)),
        Row(f"iscsi: convert lun qcow2->raw ({mode})",
            convert(cache, "qcow2", srv.iurl(2), "raw", p("out.raw")),
            clean(p("out.raw")), ("<=", 0.8)),
        Row(f"gluster: convert raw->qcow2 wall ({mode})",
            convert(cache, "raw", p("src.raw"), "qcow2",
                    srv.gurl("out.qcow2")),
            no_file("out.qcow2"), ("<=", 0.8)),
        Row(f"gluster: convert qcow2->raw wall ({mode})",
            convert(cache, "qcow2", srv.gurl("src.qcow2"), "raw",
                    p("out.raw")),
            clean(p("out.raw")), ("<=", 0.8)),
    ]

    # 4k I/O on a LUN: the raw source LUN, scattered as the local rows
    # do it (a prime step over the data), and imgtool's random mode
    blocks = w.virtual // 4096
    step = 4096 * 99991 if blocks % 99991 else 4096 * 99989
    count = max(2000, int(100000 * w.scale))
    depth = str(args.depth)

    def bench(write, *extra):
        # reads from the source LUN, writes onto a target LUN
        def f(tool):
            a = [exe[tool], "bench", "-f", "raw", "-c", str(count), "-d",
                 depth, "-s", "4096"]
            if not extra:
                a += ["-S", str(step)]
            if write:
                a.append("-w")
            return a + list(extra) + [srv.iurl(3 if write else 1)]
        return f

    # the issue sets no target for these: they show the rate
    rows += [
        Row(f"iscsi: 4k scattered read x{count}", bench(False), None,
            own_time=True),
        Row(f"iscsi: 4k scattered write x{count}", bench(True), None,
            own_time=True),
        Row(f"iscsi: 4k random read x{count} (--random)",
            bench(False, "--random=1"), None, own_time=True, ref_name=None),
        Row(f"iscsi: 4k random write x{count} (--random)",
            bench(True, "--random=1"), None, own_time=True, ref_name=None),
    ]
    return rows
