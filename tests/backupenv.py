"""Helpers for the backup tests (tests/test_backup*.py).

The oracle is QEMU: every restored image, and every point's qcow2 file
read directly by qemu-img (points are meant to be readable without
imgtool), must be identical (`qemu-img compare`) to the image as it was
when the point was taken, which the tests keep aside.
"""
import json
import os

from conftest import imgtool, qemu_img, run, IMGTOOL

CLUSTER = 65536
PREFIX = "imgtool-backup."


def backup(src, repo, *args, **kw):
    return imgtool("backup", "--output=json", *args, src, repo, **kw)


def backup_rec(src, repo, *args, **kw):
    """The record of the point a backup makes (JSON on stdout)."""
    return json.loads(backup(src, repo, *args, **kw).stdout)


def points(repo, *extra):
    return json.loads(imgtool("backup-list", "--output=json", *extra,
                              repo).stdout)


def restore(repo, out, *args, **kw):
    if os.path.exists(out):
        os.unlink(out)
    return imgtool("restore", *args, repo, out, **kw)


def keep(img, path):
    """img's guest content at this moment, as a raw file at path (the
    expected state of the point taken now)."""
    if os.path.exists(path):
        os.unlink(path)
    qemu_img("convert", "-O", "raw", img, path)
    return str(path)


def assert_point_restores(repo, pid, expected, work, fmt_args=(),
                          secret=None):
    """Point pid restores to an image identical to expected, and its qcow2
    file read by qemu-img alone is identical too."""
    out = os.path.join(str(work), f"restored-{pid}.img")
    restore(repo, out, "--point", pid, *fmt_args)
    p = qemu_img("compare", "-F", "raw", out, expected, check=False)
    assert p.returncode == 0, f"point {pid}: restore differs\n{p.stdout}"
    os.unlink(out)
    for d in next(q for q in points(repo, *fmt_args) if q["id"] == pid)[
            "disks"]:
        f = os.path.join(str(repo), d["file"])
        if secret is None:
            p = qemu_img("compare", "-f", "qcow2", "-F", "raw", f, expected,
                         check=False)
            assert p.returncode == 0, f"point {pid}: qemu-img reads {f} " \
                                      f"differently\n{p.stdout}"


def bitmaps(img, *extra):
    """{name: {"flags": [...], "granularity": n}} of a qcow2 image, as
    qemu-img info reports them."""
    info = json.loads(qemu_img("info", "-U", "--output=json", *extra,
                               img).stdout)
    bms = info.get("format-specific", {}).get("data", {}).get("bitmaps", [])
    return {b["name"]: b for b in bms}


def our_bitmaps(img):
    return {n: b for n, b in bitmaps(img).items() if n.startswith(PREFIX)}


def assert_bitmaps_consistent(img):
    """No bitmap is flagged in use, and qemu-img check finds no
    corruption (leaked clusters allowed)."""
    for n, b in bitmaps(img).items():
        assert "in-use" not in b["flags"], f"{img}: bitmap {n} in use"
    p = qemu_img("check", "-f", "qcow2", img, check=False)
    assert p.returncode in (0, 3), p.stdout + p.stderr


def touched_clusters(cmds, size):
    """The CLUSTER-sized clusters qemu-io commands (write/discard/zero
    "CMD ... off len") touch."""
    out = set()
    for c in cmds:
        parts = c.split()
        off, ln = int(parts[-2]), int(parts[-1])
        if ln == 0:
            continue
        end = min(off + ln, size)
        out.update(range(off // CLUSTER, (end - 1) // CLUSTER + 1))
    return out


def read_stats(path):
    """The faulty filter's stats-file as a dict of ints."""
    with open(path) as f:
        return {k: int(v) for k, v in
                (l.strip().split("=") for l in f if "=" in l)}


def faulty_source(img, stats, fmt="qcow2", **kw):
    """--image-opts naming img through the faulty filter (counting)."""
    opts = [f"driver={fmt}", "file.driver=faulty", f"file.filename={img}",
            f"file.stats-file={stats}"]
    opts += [f"file.{k.replace('_', '-')}={v}" for k, v in kw.items()]
    return ",".join(opts)


def verify(repo, *extra, rc=0):
    return imgtool("backup-verify", "--output=json", *extra, repo, rc=rc)
