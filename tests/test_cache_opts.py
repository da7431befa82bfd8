"""qcow2 cache open options and the file protocol's creation hints.

The cache options (l2-cache-size, refcount-cache-size, cache-size,
l2-cache-entry-size, cache-clean-interval) reach the qcow2 driver through
--image-opts; each is checked to be accepted where qemu-img accepts it, to
change what it should change where that is visible (how often an L2 table
is read from the file), to leave the guest data alone, and to be refused
with one line where qemu-img refuses it.  nocow and extent_size_hint are
checked in `-o help` against qemu-img's lists and as creation options.
"""
import json
import os
import re
import shutil
import subprocess

import pytest

from conftest import (IMGTOOL, imgtool, io_args, no_leak_check_env,
                      qemu_img, qemu_io, read_be, retry_calibration)

KiB = 1024
MiB = 1024 * KiB

CACHE_OPTS = [
    "l2-cache-size=1M",
    "l2-cache-size=0",
    "l2-cache-size=1.5M",
    "refcount-cache-size=256k",
    "refcount-cache-size=0",
    "cache-size=2M",
    "cache-size=0",
    "cache-size=1M,l2-cache-size=512k",
    "cache-size=1M,refcount-cache-size=512k",
    "cache-size=1M,l2-cache-size=1M",
    "l2-cache-size=8E",
    "l2-cache-entry-size=512",
    "l2-cache-entry-size=4k",
    "l2-cache-entry-size=64k",
    "cache-clean-interval=0",
    "cache-clean-interval=1",
    "cache-clean-interval=0x10",
    "cache-clean-interval=4294967295",
    "l2-cache-size=64k,refcount-cache-size=64k,l2-cache-entry-size=8k,"
    "cache-clean-interval=30",
]

BAD_CACHE_OPTS = [
    "l2-cache-size=abc",
    "l2-cache-size=-1",
    "l2-cache-size=1x",
    "l2-cache-size=",
    "l2-cache-size=16E",
    "l2-cache-size=99999999999999999999",
    "refcount-cache-size=abc",
    "refcount-cache-size=-5",
    "refcount-cache-size=8E",
    "cache-size=abc",
    "cache-size=-1",
    "cache-size=8E",
    "cache-size=16384P",
    "cache-size=1M,l2-cache-size=512k,refcount-cache-size=256k",
    "cache-size=1M,l2-cache-size=2M",
    "cache-size=1M,refcount-cache-size=2M",
    "l2-cache-entry-size=abc",
    "l2-cache-entry-size=256",
    "l2-cache-entry-size=1000",
    "l2-cache-entry-size=128k",
    "l2-cache-entry-size=16E",
    "cache-clean-interval=abc",
    "cache-clean-interval=",
    "cache-clean-interval=1.5",
    "cache-clean-interval=-1",
    "cache-clean-interval=4294967296",
]


def image_opts(path, extra=""):
    s = f"driver=qcow2,file.filename={path}"
    return s + "," + extra if extra else s


def one_line_error(p):
    """The imgtool failure is a single `imgtool: ...` line; returns it."""
    assert p.returncode != 0, p.stdout
    lines = p.stderr.splitlines()
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("imgtool: "), lines[0]
    return lines[0]


def qemu_reason(p):
    """The reason in qemu-img's first error line, after the quoted name."""
    assert p.returncode != 0, p.stdout
    first = p.stderr.splitlines()[0]
    return first.rsplit("': ", 1)[-1]


@pytest.fixture(scope="module")
def small_image(tmp_path_factory):
    """64 MiB qcow2 with data written by qemu-io in two places."""
    d = tmp_path_factory.mktemp("cacheopts")
    img = d / "t.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", img, str(64 * MiB))
    qemu_io("-f", "qcow2", "-c", "write -P 0x5a 0 8M",
            "-c", "write -P 0x11 32M 1M", img)
    return img


def test_cache_options_accepted_by_info(small_image):
    plain = json.loads(imgtool("info", "--output=json", small_image).stdout)
    for o in CACHE_OPTS:
        qemu_img("info", "--image-opts", image_opts(small_image, o))
        p = imgtool("info", "--output=json", "--image-opts",
                    image_opts(small_image, o))
        got = json.loads(p.stdout)
        assert got["virtual-size"] == plain["virtual-size"], o
        assert got["format-specific"] == plain["format-specific"], o
        assert p.stderr == "", (o, p.stderr)


@pytest.mark.parametrize("cmd", [
    ["check"], ["map", "--output=json"], ["compare", "-f", "qcow2"],
])
def test_cache_options_accepted_by_other_commands(small_image, cmd):
    opts = image_opts(small_image, "l2-cache-size=64k,refcount-cache-size=64k,"
                      "cache-clean-interval=1")
    args = [*cmd, "--image-opts", opts]
    if cmd[0] == "compare":
        # the second image is named as an option string too
        args = ["compare", "--image-opts", opts, image_opts(small_image)]
    p = imgtool(*args)
    if cmd[0] == "map":
        assert p.stdout == imgtool("map", "--output=json",
                                   small_image).stdout


@pytest.mark.parametrize("opt", BAD_CACHE_OPTS)
def test_bad_cache_option_is_one_line(small_image, opt):
    q = qemu_img("info", "--image-opts", image_opts(small_image, opt),
                 check=False)
    p = imgtool("info", "--image-opts", image_opts(small_image, opt),
                check=False)
    line = one_line_error(p)
    assert p.stdout == ""
    # same reason as qemu-img gives, after imgtool's own "Could not open"
    assert line.endswith(": " + qemu_reason(q)), (line, q.stderr)


def test_cache_option_on_raw_is_refused(tmp):
    img = tmp / "r.raw"
    qemu_img("create", "-q", "-f", "raw", img, str(MiB))
    for o in ("l2-cache-size=1M", "cache-clean-interval=5"):
        qemu_img("info", "--image-opts", f"driver=raw,file.filename={img},{o}",
                 rc=1)
        p = imgtool("info", "--image-opts",
                    f"driver=raw,file.filename={img},{o}", check=False)
        assert o.split("=")[0] in one_line_error(p)


def test_misspelt_cache_option_is_refused(small_image):
    p = imgtool("info", "--image-opts",
                image_opts(small_image, "l2-cach-size=1M"), check=False)
    assert "l2-cach-size" in one_line_error(p)


def l2_offsets(path):
    """Host offsets of the image's L2 tables, from its L1 table."""
    l1_size, l1_off = read_be(path, 36, 4), read_be(path, 40, 8)
    l1 = (read_be(path, l1_off + 8 * i, 8) for i in range(l1_size))
    return {e & 0x00fffffffffffe00 for e in l1 if e & 0x00fffffffffffe00}


PREAD = re.compile(r"pread64\(\d+, .*, (\d+), (\d+)\) = \d+$")


@pytest.mark.skipif(not shutil.which("strace"), reason="needs strace")
def test_l2_cache_size_sets_how_many_tables_stay_cached(tmp):
    # 512-byte clusters: an L2 table maps 32 KiB, so guest offsets 0, 2M
    # and 4M use three different tables
    img = tmp / "a.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-o", "cluster_size=512", img,
             str(8 * MiB))
    qemu_io("-f", "qcow2", "-c", "write -P 7 0 512", "-c", "write -P 8 2M 512",
            "-c", "write -P 9 4M 512", img)
    tables = l2_offsets(img)
    assert len(tables) == 3
    rounds = 10
    cmds = io_args(f"read -P {7 + i} {off} 512" for _ in range(rounds)
                   for i, off in enumerate((0, 2 * MiB, 4 * MiB)))

    def table_loads(extra):
        log = tmp / "strace.log"
        p = subprocess.run(["strace", "-f", "-qq", "-o", str(log), "-e",
                            "trace=pread64", IMGTOOL, "io", "--image-opts",
                            *cmds, image_opts(img, extra)],
                           capture_output=True, text=True, timeout=120,
                           env=no_leak_check_env())
        assert p.returncode == 0, p.stderr
        assert "verification failed" not in p.stdout + p.stderr
        n = 0
        for line in log.read_text().splitlines():
            m = PREAD.search(line)
            if m and int(m.group(2)) in tables:
                n += 1
        return n

    # the default cache holds all three: each is read once
    assert table_loads("") == 3
    # room for three tables (3 x 512 bytes): still read once each
    assert table_loads("l2-cache-size=1536") == 3
    # room for two: a round robin over three misses every time
    assert table_loads("l2-cache-size=1k") >= 3 * rounds
    # cache-size alone leaves the L2 cache what 4 refcount blocks do not
    assert table_loads("cache-size=3584") == 3
    assert table_loads("cache-size=3k") >= 3 * rounds


def write_cmds(n=60):
    """Writes scattered over many L2 tables and refcount blocks of an
    8 MiB image with 512-byte clusters, some overlapping."""
    return io_args(f"write -P {i % 250 + 1} "
                   f"{(i * 7919 % 128) * 64 * KiB + (i % 3) * 512} 1536"
                   for i in range(n))


def test_tiny_caches_write_and_read_back_like_qemu(tmp):
    mine, ref = tmp / "mine.qcow2", tmp / "ref.qcow2"
    for img in (mine, ref):
        qemu_img("create", "-q", "-f", "qcow2", "-o", "cluster_size=512",
                 img, str(8 * MiB))
    cmds = write_cmds()
    tiny = "l2-cache-size=512,refcount-cache-size=512,cache-clean-interval=1"
    imgtool("io", "--image-opts", *cmds, image_opts(mine, tiny))
    qemu_io("-f", "qcow2", *cmds, ref)
    qemu_img("check", "-q", mine)
    qemu_img("compare", "-f", "qcow2", "-F", "qcow2", mine, ref)
    # read back through tiny caches: the same bytes qemu-img reads
    a, b = tmp / "a.raw", tmp / "b.raw"
    imgtool("convert", "-O", "raw", "--image-opts",
            image_opts(ref, "l2-cache-size=512,l2-cache-entry-size=512"), a)
    qemu_img("convert", "-f", "qcow2", "-O", "raw", ref, b)
    assert a.read_bytes() == b.read_bytes()


def test_tiny_caches_concurrent_convert_target(tmp):
    src, dst = tmp / "src.raw", tmp / "dst.qcow2"
    with open(src, "wb") as f:
        for i in range(64):
            f.write(bytes([i + 1]) * (32 * KiB))
            f.write(b"\0" * (32 * KiB))
    qemu_img("create", "-q", "-f", "qcow2", "-o", "cluster_size=512", dst,
             str(4 * MiB))
    imgtool("convert", "-W", "-m", "8", "-n", "--target-image-opts",
            "-f", "raw", "-O", "qcow2", src,
            image_opts(dst, "l2-cache-size=512,refcount-cache-size=512"))
    qemu_img("check", "-q", dst)
    qemu_img("compare", "-f", "raw", "-F", "qcow2", src, dst)


# ---------------------------------------------------------------------------
# nocow and extent_size_hint


def help_lines(tool, *args):
    return tool("create", *args).stdout.splitlines()


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_create_help_lists_file_hints_like_qemu(tmp, fmt):
    target = str(tmp / f"x.{fmt}")
    with_file = help_lines(imgtool, "-f", fmt, "-o", "help", target)
    assert with_file == help_lines(qemu_img, "-f", fmt, "-o", "help", target)
    names = [line.split("=")[0].strip() for line in with_file[1:]]
    assert "nocow" in names and "extent_size_hint" in names
    assert not os.path.exists(target)
    # without a file name qemu-img lists only the format's own options
    bare = help_lines(imgtool, "-f", fmt, "-o", "help")
    assert bare == help_lines(qemu_img, "-f", fmt, "-o", "help")


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_file_hints_accepted_at_creation(tmp, fmt):
    for i, o in enumerate(["nocow=on,extent_size_hint=256k",
                           "nocow=off,extent_size_hint=0",
                           "extent_size_hint=4294967295"]):
        img = tmp / f"{i}.{fmt}"
        imgtool("create", "-q", "-f", fmt, "-o", o, img, str(MiB))
        assert qemu_img("info", "--output=json", "-f", fmt,
                        img).stdout
        if fmt == "qcow2":
            qemu_img("check", "-q", img)


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
@pytest.mark.parametrize("opt", ["extent_size_hint=abc",
                                 "extent_size_hint=-1",
                                 "extent_size_hint=4G",
                                 "nocow=maybe"])
def test_bad_file_hint_is_one_line(tmp, fmt, opt):
    img = tmp / f"bad.{fmt}"
    q = qemu_img("create", "-q", "-f", fmt, "-o", opt, img, str(MiB), rc=1)
    img.unlink(missing_ok=True)
    p = imgtool("create", "-q", "-f", fmt, "-o", opt, img, str(MiB),
                check=False)
    # qemu-img's first line, word for word (imgtool may add a hint)
    want = q.stderr.splitlines()[0].removeprefix("qemu-img: ")
    assert one_line_error(p).removeprefix("imgtool: ").startswith(want)
    assert not img.exists()



IOCTL = re.compile(r"ioctl\(\d+, (FS_IOC_SETFLAGS|FS_IOC_FSSETXATTR), (.*)\) = ")


def file_hints(tool, args, dst):
    """The copy-on-write and extent size requests made on the new file, as
    strace shows them (this file system may refuse them: what counts is
    that they are made, as qemu-img makes them)."""
    log = dst.parent / "ioctl.log"
    dst.unlink(missing_ok=True)
    p = retry_calibration(lambda: subprocess.run(
        ["strace", "-f", "-qq", "-o", str(log), "-e", "trace=ioctl", tool,
         *map(str, args)], capture_output=True, text=True, timeout=120,
        env=no_leak_check_env()))
    assert p.returncode == 0, p.stderr
    hints = set()
    for line in log.read_text().splitlines():
        m = IOCTL.search(line)
        if not m:
            continue
        if m.group(1) == "FS_IOC_SETFLAGS" and "FS_NOCOW_FL" in m.group(2):
            hints.add("nocow")
        size = re.search(r"fsx_extsize=(\d+)", m.group(2))
        if (m.group(1) == "FS_IOC_FSSETXATTR" and "FS_XFLAG_EXTSIZE"
                in m.group(2) and size and int(size.group(1))):
            # qemu-img sets a hint of 0 for none; imgtool sets none
            hints.add(("extsize", int(size.group(1))))
    return hints


HINT_CASES = [
    ("", {("extsize", MiB)}),
    ("nocow=on", {"nocow", ("extsize", MiB)}),
    ("nocow=off,extent_size_hint=256k", {("extsize", 256 * KiB)}),
    ("nocow=on,extent_size_hint=0", {"nocow"}),
]


@pytest.mark.skipif(not shutil.which("strace"), reason="needs strace")
@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
@pytest.mark.parametrize("cmd", ["create", "convert"])
def test_file_hints_reach_the_new_file_like_qemu(tmp, fmt, cmd):
    src, dst = tmp / "src.raw", tmp / f"dst.{fmt}"
    src.write_bytes(b"\1" * MiB)
    for opts, want in HINT_CASES:
        o = ["-o", opts] if opts else []
        if cmd == "create":
            args = ["create", "-q", "-f", fmt, *o, dst, MiB]
        else:
            args = ["convert", "-f", "raw", "-O", fmt, *o, src, dst]
        assert file_hints("qemu-img", args, dst) == want, opts
        assert file_hints(IMGTOOL, args, dst) == want, opts


@pytest.mark.skipif(not shutil.which("strace"), reason="needs strace")
def test_luks_file_hints_reach_the_new_file_like_qemu(tmp):
    key, dst = tmp / "key", tmp / "dst.luks"
    key.write_text("pw")
    args = ["create", "-q", "-f", "luks", "--object",
            f"secret,id=k0,file={key}", "-o",
            "key-secret=k0,iter-time=10,nocow=on,extent_size_hint=256k",
            dst, MiB]
    want = {"nocow", ("extsize", 256 * KiB)}
    assert file_hints("qemu-img", args, dst) == want
    assert file_hints(IMGTOOL, args, dst) == want


@pytest.mark.skipif(not shutil.which("strace"), reason="needs strace")
def test_qcow2_data_file_gets_file_hints_like_qemu(tmp):
    img, data = tmp / "d.qcow2", tmp / "d.data"

    def hints(tool):
        log = tmp / "ioctl.log"
        img.unlink(missing_ok=True)
        data.unlink(missing_ok=True)
        subprocess.run(["strace", "-f", "-qq", "-o", str(log), "-e",
                        "trace=openat,ioctl", tool, "create", "-q", "-f",
                        "qcow2", "-o", f"data_file={data},nocow=on,"
                        "extent_size_hint=256k", str(img), str(MiB)],
                       check=True, timeout=120, env=no_leak_check_env())
        # the fd each hint is set on, named by the file opened on it
        fds, got = {}, set()
        for line in log.read_text().splitlines():
            m = re.search(r'openat\(AT_FDCWD, "([^"]*)", .*\) = (\d+)', line)
            if m:
                fds[m.group(2)] = os.path.basename(m.group(1))
            m = re.search(r"ioctl\((\d+), FS_IOC_SETFLAGS, .*FS_NOCOW_FL",
                          line)
            if m:
                got.add(("nocow", fds.get(m.group(1))))
            m = re.search(r"ioctl\((\d+), FS_IOC_FSSETXATTR, .*"
                          r"fsx_extsize=262144", line)
            if m:
                got.add(("extsize", fds.get(m.group(1))))
        return got

    want = {(h, f) for h in ("nocow", "extsize")
            for f in ("d.qcow2", "d.data")}
    assert hints("qemu-img") == want
    assert hints(IMGTOOL) == want


CONVERT_HELP_CASES = [[], ["a"], ["a", "b"], ["a", "b", "c"]]


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_convert_help_lists_file_hints_like_qemu(tmp, fmt):
    for names in CONVERT_HELP_CASES:
        paths = [str(tmp / n) for n in names]
        q = qemu_img("convert", "-O", fmt, "-o", "help", *paths)
        p = imgtool("convert", "-O", fmt, "-o", "help", *paths, check=False)
        assert (p.returncode, p.stdout) == (0, q.stdout), names
        # the file's hints appear once the output file is named
        named = len(names) >= 2
        assert ("nocow=" in p.stdout) == named
        assert ("extent_size_hint=" in p.stdout) == named
        assert not any(os.path.exists(x) for x in paths)
