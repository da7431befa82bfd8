"""gluster:// against a real glusterd with one brick on 127.0.0.1.

Every qemu-img call on a gluster:// URL waits about ten seconds in
glfs_fini, so the fast path checks the files imgtool writes where they
land (the brick: a one-brick volume keeps each file whole there) with
local tools, and goes through QEMU's own gluster driver only where the
issue asks for it: one image imgtool wrote is compared by qemu-img over
gluster://, and one QEMU wrote over gluster:// is read by imgtool (the two
run side by side, so their stalls overlap).  IMGTOOL_GLUSTER_LONG=1 adds
a matrix of images checked by qemu-img over gluster://.

Faults are in test_gluster_faults.py.
"""
import json
import os
import signal
import subprocess
import time

import pytest

from conftest import (IMGTOOL, imgtool, imgtool_info, io_args,
                      no_leak_check_env, one_error_line, qemu_img, qemu_io,
                      same_content, write_random_file)

pytestmark = pytest.mark.xdist_group("gluster")

MiB = 1 << 20
LONG = os.environ.get("IMGTOOL_GLUSTER_LONG") == "1"


def fresh(gluster, name):
    """A name on the volume with nothing there yet."""
    path = gluster.brick(name)
    if os.path.exists(path):
        os.unlink(path)
    return gluster.url(name)


def test_qcow2_create_io_check(gluster):
    url = fresh(gluster, "basic.qcow2")
    imgtool("create", "-f", "qcow2", url, "64M")
    imgtool("io", "-f", "qcow2", *io_args(["write -P 0x5a 0 1M",
                                           "write -P 0x5b 60M 128k",
                                           "write -z 512k 64k"]), url)
    assert imgtool("check", "-f", "qcow2", url).returncode == 0
    info = imgtool_info(url)
    assert info["format"] == "qcow2" and info["virtual-size"] == 64 * MiB
    # what reached the brick, by QEMU's reading
    brick = gluster.brick("basic.qcow2")
    assert qemu_img("check", "-f", "qcow2", brick).returncode == 0
    qemu_io("-f", "qcow2", *io_args(["read -P 0x5a 0 512k",
                                     "read -P 0 512k 64k",
                                     "read -P 0x5b 60M 128k"]), brick)


def test_qemu_gluster_driver_interop(gluster, tmp):
    """imgtool writes, qemu-img compares over gluster://; qemu-io writes
    over gluster://, imgtool reads.  Both QEMU runs at once."""
    mine = fresh(gluster, "mine.qcow2")
    ref = str(tmp / "ref.qcow2")
    qemu_img("create", "-f", "qcow2", ref, "32M")
    cmds = ["write -P 0x31 0 2M", "write -P 0x32 17M 1M", "write -z 1M 64k"]
    qemu_io("-f", "qcow2", *io_args(cmds), ref)
    imgtool("convert", "-f", "qcow2", "-O", "qcow2", ref, mine)

    theirs = fresh(gluster, "theirs.qcow2")
    imgtool("create", "-f", "qcow2", theirs, "32M")
    procs = [
        subprocess.Popen(["qemu-img", "compare", "-f", "qcow2", "-F", "qcow2",
                          mine, ref], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True),
        subprocess.Popen(["qemu-io", "-f", "qcow2", *io_args(cmds), theirs],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True),
    ]
    results = [(p.wait(120), *p.communicate()) for p in procs]
    assert results[0][0] == 0, results[0]
    assert "Images are identical" in results[0][1]
    assert results[1][0] == 0, results[1]
    assert imgtool("compare", "-f", "qcow2", "-F", "qcow2", theirs,
                   ref).returncode == 0
    assert imgtool("check", theirs).returncode == 0


def test_backing_chain_on_the_volume(gluster):
    """A relative backing name means the file next to the overlay on the
    same volume; external snapshots (overlays) and commit across them."""
    base = fresh(gluster, "chain-base.qcow2")
    mid = fresh(gluster, "chain-mid.qcow2")
    top = fresh(gluster, "chain-top.qcow2")
    imgtool("create", "-f", "qcow2", base, "16M")
    imgtool("io", "-c", "write -P 0x01 0 4M", base)
    imgtool("create", "-f", "qcow2", "-b", "chain-base.qcow2", "-F", "qcow2",
            mid)
    imgtool("io", "-c", "write -P 0x02 1M 1M", mid)
    imgtool("create", "-f", "qcow2", "-b", "chain-mid.qcow2", "-F", "qcow2",
            top)
    imgtool("io", "-c", "write -P 0x03 2M 1M", top)
    chain = json.loads(imgtool("info", "--output=json", "--backing-chain",
                               top).stdout)
    assert [c["filename"] for c in chain] == [top, mid, base]
    imgtool("io", *io_args(["read -P 0x01 0 1M", "read -P 0x02 1M 1M",
                            "read -P 0x03 2M 1M", "read -P 0x01 3M 1M"]),
            top)
    # imgtool's own snapshot --external switches files by rename on a
    # local file system: on Gluster it says what to do instead
    p = imgtool("snapshot", "--external", "-c", "s1", top, check=False)
    assert "create -b" in one_error_line(p)
    # commit the top into mid, then mid into base
    imgtool("commit", top)
    imgtool("io", *io_args(["read -P 0x03 2M 1M", "read -P 0x02 1M 1M"]), mid)
    imgtool("commit", "-b", base, mid)
    # on the brick the relative names resolve the same way
    qemu_io("-f", "qcow2", *io_args(["read -P 0x01 0 1M",
                                     "read -P 0x02 1M 1M",
                                     "read -P 0x03 2M 1M"]),
            gluster.brick("chain-base.qcow2"))
    assert qemu_img("check", gluster.brick("chain-base.qcow2")).returncode == 0


def test_convert_to_and_from(gluster, tmp):
    src = str(tmp / "src.raw")
    write_random_file(src, 24 * MiB, seed=5)
    with open(src, "r+b") as f:       # a hole to stay sparse
        f.seek(8 * MiB)
        f.write(bytes(4 * MiB))
    url = fresh(gluster, "conv.qcow2")
    imgtool("convert", "-f", "raw", "-O", "qcow2", src, url)
    assert same_content(src, gluster.brick("conv.qcow2"), "raw", "qcow2")
    raw_url = fresh(gluster, "conv.raw")
    imgtool("convert", "-f", "qcow2", "-O", "raw", url, raw_url)
    with open(src, "rb") as a, open(gluster.brick("conv.raw"), "rb") as b:
        assert a.read() == b.read()
    back = str(tmp / "back.qcow2")
    imgtool("convert", "-f", "raw", "-O", "qcow2", raw_url, back)
    assert same_content(src, back, "raw", "qcow2")
    # the hole stayed a hole on the brick
    m = json.loads(imgtool("map", "--output=json", "-f", "raw",
                           raw_url).stdout)
    assert any(not e["data"] and e["zero"] for e in m)


def test_preallocation(gluster):
    for mode in ("off", "falloc", "full"):
        url = fresh(gluster, f"pre-{mode}.raw")
        imgtool("create", "-f", "raw", "-o", f"preallocation={mode}", url,
                "8M")
        st = os.stat(gluster.brick(f"pre-{mode}.raw"))
        assert st.st_size == 8 * MiB
        if mode == "off":
            assert st.st_blocks * 512 < MiB
        else:
            assert st.st_blocks * 512 >= 8 * MiB
    url = fresh(gluster, "pre-full.qcow2")
    imgtool("create", "-f", "qcow2", "-o", "preallocation=full", url, "8M")
    brick = gluster.brick("pre-full.qcow2")
    assert os.stat(brick).st_blocks * 512 >= 8 * MiB
    assert qemu_img("check", brick).returncode == 0
    url = fresh(gluster, "pre-meta.qcow2")
    imgtool("create", "-f", "qcow2", "-o", "preallocation=metadata", url,
            "8M")
    assert qemu_img("check", gluster.brick("pre-meta.qcow2")).returncode == 0


def test_discard_zero_and_block_status(gluster):
    url = fresh(gluster, "holes.raw")
    imgtool("create", "-f", "raw", url, "16M")
    imgtool("io", "-f", "raw", *io_args(["write -P 0x44 0 8M",
                                         "discard 2M 2M",
                                         "write -z -u 5M 1M",
                                         "write -z 7M 512k"]), url)
    brick = gluster.brick("holes.raw")
    qemu_io("-f", "raw", *io_args(["read -P 0x44 0 2M", "read -P 0 2M 2M",
                                   "read -P 0x44 4M 1M", "read -P 0 5M 1M",
                                   "read -P 0x44 6M 1M",
                                   "read -P 0 7M 512k"]), brick)
    # discard really freed the blocks on the brick
    assert os.stat(brick).st_blocks * 512 <= 6 * MiB
    # block status over gluster:// (SEEK_DATA) is what the brick says
    over = json.loads(imgtool("map", "--output=json", "-f", "raw",
                              url).stdout)
    local = json.loads(imgtool("map", "--output=json", "-f", "raw",
                               brick).stdout)
    assert [(e["start"], e["length"], e["data"]) for e in over] == \
        [(e["start"], e["length"], e["data"]) for e in local]


def test_data_is_on_the_brick_when_the_command_returns(gluster, tmp):
    """Flushed and acknowledged before exit: right after each command the
    brick holds every byte (no glfs_fini needed for that)."""
    url = fresh(gluster, "flushed.raw")
    src = str(tmp / "src.raw")
    write_random_file(src, 40 * MiB, seed=9)
    imgtool("convert", "-f", "raw", "-O", "raw", src, url)
    with open(src, "rb") as a, open(gluster.brick("flushed.raw"), "rb") as b:
        assert a.read() == b.read()
    imgtool("io", "-f", "raw", "-c", "write -P 0x66 1M 3M", url)
    qemu_io("-f", "raw", "-c", "read -P 0x66 1M 3M",
            gluster.brick("flushed.raw"))


def test_locking(gluster):
    """Two imgtool processes never write one image on Gluster at once:
    the second gets one line; -U reads; locks go with the holder."""
    url = fresh(gluster, "locked.qcow2")
    imgtool("create", "-f", "qcow2", url, "16M")
    holder = None
    try:
        deadline = time.monotonic() + 60
        while True:
            assert time.monotonic() < deadline, "no holder got the lock"
            if holder is None or holder.poll() is not None:
                # (a probe that got in first makes the holder give up)
                holder = subprocess.Popen(
                    [IMGTOOL, "bench", "-w", "-c", "1000000000", "-d", "1",
                     "-s", "4k", url], stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL, env=no_leak_check_env())
                time.sleep(1)
            p = imgtool("io", "-c", "write 0 4k", url, check=False)
            if p.returncode != 0 and holder.poll() is None:
                break
        assert "lock" in one_error_line(p)
        imgtool("info", "-U", url)
        imgtool("io", "-c", "write 0 4k", "--image-opts",
                f"driver=qcow2,file.driver=gluster,file.filename={url},"
                "file.locking=off")
    finally:
        if holder:
            holder.send_signal(signal.SIGKILL)
            holder.wait()
    # the brick drops a dead client's locks once it sees the connection go
    deadline = time.monotonic() + 30
    while imgtool("io", "-c", "write -P 9 0 4k", url,
                  check=False).returncode != 0:
        assert time.monotonic() < deadline, "the lock outlived its holder"
        time.sleep(0.2)
    assert imgtool("check", url, check=False).returncode in (0, 3)


def test_unix_socket_and_image_opts(gluster, tmp_path):
    url = fresh(gluster, "opts.qcow2")
    imgtool("create", "-f", "qcow2", url, "8M")
    unix = (f"gluster+unix:///{gluster.volume}/opts.qcow2"
            "?socket=/var/run/glusterd.socket")
    imgtool("io", "-c", "write -P 0x71 0 64k", unix)
    opts = (f"driver=qcow2,file.driver=gluster,file.volume={gluster.volume},"
            "file.path=opts.qcow2,file.server.0.type=inet,"
            "file.server.0.host=127.0.0.1,file.server.0.port=1,"
            "file.server.1.type=inet,file.server.1.host=127.0.0.1")
    # the first server is down; gfapi moves on to the second
    imgtool("io", "--image-opts", "-c", "read -P 0x71 0 64k", opts)
    opts = (f"driver=qcow2,file.driver=gluster,file.volume={gluster.volume},"
            "file.path=/opts.qcow2,file.server.0.type=unix,"
            "file.server.0.path=/var/run/glusterd.socket,file.debug=2")
    imgtool("io", "--image-opts", "-c", "read -P 0x71 0 64k", opts)
    # gfapi's own log, when asked for, goes where logfile= says (and not
    # to our stderr)
    log = tmp_path / "gfapi.log"
    p = imgtool("io", "--image-opts", "-c", "read -P 0x71 0 64k",
                f"driver=qcow2,file.driver=gluster,file.filename={url},"
                f"file.debug=7,file.logfile={log}")
    assert p.stderr == "" and log.stat().st_size > 0


@pytest.mark.skipif(not LONG, reason="IMGTOOL_GLUSTER_LONG=1 runs the "
                    "qemu-img-over-gluster matrix (about 10 s per image)")
@pytest.mark.parametrize("opts", ["", "cluster_size=4k", "compat=0.10",
                                  "lazy_refcounts=on", "extended_l2=on",
                                  "preallocation=metadata"])
def test_long_qemu_reads_imgtool_images(gluster, tmp, opts):
    name = f"long-{opts.replace('=', '-') or 'default'}.qcow2"
    url = fresh(gluster, name)
    args = ["-o", opts] if opts else []
    imgtool("create", "-f", "qcow2", *args, url, "24M")
    cmds = ["write -P 0x12 0 1M", "write -P 0x13 5M 3M", "write -z 6M 1M",
            "discard 7M 64k"]
    imgtool("io", *io_args(cmds), url)
    ref = str(tmp / "ref.qcow2")
    qemu_img("create", "-f", "qcow2", ref, "24M")
    qemu_io("-f", "qcow2", *io_args(cmds), ref)
    assert qemu_img("compare", url, ref, timeout=120).returncode == 0
    assert qemu_img("check", url, timeout=120).returncode == 0
