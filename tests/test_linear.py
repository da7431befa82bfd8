"""The linear protocol driver (block/linear.c): pieces of files or
devices, end to end, as one image - what the logical pool uses to reach
an LV through its extents without device-mapper.  Checked here over
plain files, so it runs anywhere."""
import os
import subprocess
import time

from conftest import IMGTOOL, imgtool, no_leak_check_env, one_error_line, run

MiB = 1 << 20


def test_segments_map_onto_their_files(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for f in (a, b):
        f.write_bytes(b"\xee" * (4 * MiB))
    name = f"linear:{MiB}+{MiB}@{b};{2 * MiB}+{2 * MiB}@{a};0+{MiB}@{b}"
    imgtool("io", "-f", "raw", "-c", "write -P 0x11 0 1M",
            "-c", "write -P 0x22 1M 2M", "-c", "write -P 0x33 3M 1M",
            "-c", "write -P 0x44 1023k 2k", name)
    da, db = a.read_bytes(), b.read_bytes()
    assert db[MiB:2 * MiB - 1024] == b"\x11" * (MiB - 1024)
    assert db[2 * MiB - 1024:2 * MiB] == b"\x44" * 1024
    assert da[2 * MiB:2 * MiB + 1024] == b"\x44" * 1024
    assert da[2 * MiB + 1024:4 * MiB] == b"\x22" * (2 * MiB - 1024)
    assert db[:MiB] == b"\x33" * MiB
    assert da[:2 * MiB] == b"\xee" * (2 * MiB)       # untouched
    info = imgtool("info", "--output=json", "-f", "raw", name).stdout
    assert '"virtual-size": 4194304' in info
    # a qcow2 image across the pieces
    imgtool("create", "-f", "qcow2", name, "2M")
    imgtool("io", "-c", "write -P 0x55 0 2M", name)
    imgtool("check", name)
    imgtool("io", "-c", "read -P 0x55 0 2M", name)


def test_writers_of_one_range_exclude_each_other(tmp_path):
    """A node locks the first byte of its first piece: a second writer of
    that range is refused, another range of the same file is not."""
    f = tmp_path / "dev"
    f.write_bytes(bytes(2 * MiB))
    one, two = f"linear:0+{MiB}@{f}", f"linear:{MiB}+{MiB}@{f}"
    holder = subprocess.Popen([IMGTOOL, "io", "-f", "raw", one],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, env=no_leak_check_env())
    try:
        for _ in range(500):
            fds = os.listdir(f"/proc/{holder.pid}/fd")
            if sum(os.readlink(f"/proc/{holder.pid}/fd/{d}") == str(f)
                   for d in fds if os.path.exists(
                       f"/proc/{holder.pid}/fd/{d}")) >= 2:
                break
            time.sleep(0.01)
        p = run([IMGTOOL, "io", "-f", "raw", "-c", "write 0 512", one],
                check=False)
        assert "lock" in one_error_line(p)
        imgtool("io", "-f", "raw", "-c", "write -P 7 0 512", two)
        imgtool("io", "-r", "-U", "-f", "raw", "-c", "read 0 512", one)
    finally:
        holder.communicate(b"quit\n", timeout=60)
    assert f.read_bytes()[MiB:MiB + 512] == b"\x07" * 512


def test_bad_maps(tmp_path):
    f = tmp_path / "f"
    f.write_bytes(bytes(MiB))
    for name in ("linear:", "linear:abc", f"linear:0+0@{f}",
                 f"linear:0+{2 * MiB}@{f}", f"linear:1+x@{f}",
                 "linear:0+512@/no/such/file",
                 f"linear:18446744073709551615+512@{f}"):
        p = run([IMGTOOL, "info", "-f", "raw", name], check=False)
        one_error_line(p)
    # images that do not fit: refused, or stopped where the space ends
    p = run([IMGTOOL, "create", "-f", "raw", f"linear:0+65536@{f}", "1M"],
            check=False)
    assert "are needed" in one_error_line(p)
    p = run([IMGTOOL, "create", "-f", "qcow2", f"linear:0+65536@{f}", "1G"],
            check=False)
    assert "No space left on device" in one_error_line(p)
