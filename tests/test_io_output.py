"""imgtool io prints what qemu-io 7.2 prints, so qemu-io scripts port
unchanged: "read N/N bytes at offset O", then the statistics line
"64 KiB, 1 ops; 00.00 sec (12.5 MiB/sec and 200.1 ops/sec)" after each
read, write and discard (nothing with -q), read -v's hexdump, and
write -z -c taken as a zero write.  The same commands run through both
tools on copies of one image; the output must be equal with the timing
figures masked, and the images must end up identical.
"""
import re
import shutil

import pytest

from conftest import imgtool, io_args, qemu_img, qemu_io

# The statistics line; its byte count ("64 KiB", "1000 bytes",
# "1.465 KiB") is compared, the elapsed time and rates are not.
STATS = re.compile(r"^(.+), 1 ops; (\d\d\.\d\d sec|\d+:\d\d:\d\d\.\d\d) "
                   r"\([0-9.]+ (bytes|KiB|MiB|GiB|TiB|PiB|EiB)/sec and "
                   r"[0-9.]+ ops/sec\)$")


def masked(out):
    lines = []
    for line in out.splitlines():
        m = STATS.match(line)
        lines.append(f"{m.group(1)}, 1 ops; T (R/sec and R ops/sec)"
                     if m else line)
    return lines


def both(tmp, cmds, size="4M", fmt="qcow2"):
    """Runs cmds with both tools on copies of one new image; returns
    (imgtool result, qemu-io result, their images)."""
    base = tmp / f"base.{fmt}"
    if not base.exists():
        qemu_img("create", "-q", "-f", fmt, base, size)
    mine, theirs = tmp / f"mine.{fmt}", tmp / f"theirs.{fmt}"
    shutil.copy(base, mine)
    shutil.copy(base, theirs)
    p = imgtool("io", "-f", fmt, *io_args(cmds), mine, check=False)
    q = qemu_io("-f", fmt, *io_args(cmds), theirs, check=False)
    return p, q, mine, theirs


CMDS = [
    "write -P 0xab 0 64k", "read -P 0xab 0 64k", "read 512 1000",
    "write -z 64k 64k", "write -z -u 128k 64k", "discard 192k 64k",
    "write -c 256k 64k", "write -z -c 320k 64k", "write -z -c -u 400k 1k",
    "read -v 0 40", "read -v 65530 20", "flush",
    "write -q -P 1 0 512", "read -q 0 512", "read -q -v 0 16",
    "write 1M 3M", "read 0 1500", "write -P 0x41 2M 16", "read -v 2M 17",
    "write -f -P 7 3M 4k", "read -P 7 3M 4k", "discard -q 3M 4k",
    "read 0 4M",
]


def test_report_lines_match_qemu_io(tmp):
    p, q, mine, theirs = both(tmp, CMDS)
    assert p.returncode == 0, p.stderr
    assert p.stderr == ""
    assert masked(p.stdout) == masked(q.stdout)
    # Every statistics line is there: one per reported command.
    reported = [c for c in CMDS if c.split()[0] in ("read", "write",
                                                    "discard")
                and " -q " not in c]
    assert sum(bool(STATS.match(l)) for l in p.stdout.splitlines()) == \
        len(reported)
    qemu_img("compare", mine, theirs)
    assert qemu_img("map", "--output=json", mine).stdout == \
        qemu_img("map", "--output=json", theirs).stdout


def test_hexdump_like_qemu_io(tmp):
    """read -v: offsets, 16 bytes a line, alphanumerics shown as text;
    across the 4 MiB pieces imgtool reads in, the lines stay whole."""
    data = tmp / "data"
    data.write_bytes(bytes(range(256)) * 64)
    cmds = [f"write -s {data} 0 16k", "read -v 0 300", "read -v 4093 30",
            f"write -s {data} 4194288 16k", "read -v 4194290 64"]
    p, q, _, _ = both(tmp, cmds, size="8M")
    assert p.returncode == 0, p.stderr
    assert masked(p.stdout) == masked(q.stdout)
    assert "00000030:  30 31 32 33 34 35 36 37 38 39 3a 3b 3c 3d 3e 3f  " \
        "0123456789......" in p.stdout


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_write_zeroes_compressed_is_a_zero_write(tmp, fmt):
    """qemu-io 7.2 takes write -z -c and writes zeroes (the -c is
    dropped), on raw too where compressed writes are impossible."""
    cmds = ["write -P 5 0 128k", "write -z -c 0 64k", "write -z -c 100k 1k",
            "read -P 0 0 64k"]
    p, q, mine, theirs = both(tmp, cmds, fmt=fmt)
    assert p.returncode == 0, p.stderr
    assert masked(p.stdout) == masked(q.stdout)
    qemu_img("compare", "-f", fmt, "-F", fmt, mine, theirs)
    # plain -c still needs a format that compresses
    p, q, _, _ = both(tmp, ["write -c 0 64k"], fmt=fmt)
    assert (p.returncode == 0) == (fmt == "qcow2"), p.stderr


def test_failed_pattern_still_reports_the_read(tmp):
    """qemu-io reports a read whose pattern check failed; imgtool too,
    with its error line on stderr (qemu-io's goes to stdout) and exit
    status 1."""
    p, q, _, _ = both(tmp, ["write -P 1 0 4k", "read -P 2 0 4k",
                            "read -P 1 0 4k"])
    assert p.returncode == 1
    assert p.stderr == ("imgtool: io: Pattern verification failed at "
                        "offset 0, 4096 bytes\n")
    assert masked(p.stdout) == [l for l in masked(q.stdout)
                                if not l.startswith("Pattern verification")]


@pytest.mark.parametrize("size,text", [(1, "1 bytes"), (1000, "1000 bytes"),
                                       (1024, "1 KiB"), (1536, "1.500 KiB"),
                                       (3 << 20, "3 MiB"),
                                       ((1 << 20) + (1 << 10), "1.001 MiB")])
def test_sizes_spelled_like_qemu_io(tmp, size, text):
    p, q, _, _ = both(tmp, [f"write 0 {size}", f"read 0 {size}"],
                      size="4M")
    assert masked(p.stdout) == masked(q.stdout)
    assert masked(p.stdout)[1].startswith(text + ", 1 ops; ")


def test_option_forms_like_qemu_io(tmp):
    """The command language's options are read as qemu-io reads them
    (getopt): flags grouped (-qv), a value attached (-P0x5a), '--'
    ending the options."""
    cmds = ["write -qP 0x5a 0 4k", "read -P0x5a 0 4k", "read -vq 0 16",
            "write -fP7 4k 4k", "read -P 7 -- 4k 4k", "read -v -- 4k 16",
            "write -zu 8k 4k", "read -qP0 8k 4k"]
    p, q, mine, theirs = both(tmp, cmds)
    assert p.returncode == 0, p.stderr
    assert p.stderr == ""
    assert masked(p.stdout) == masked(q.stdout)
    assert "read 4096/4096 bytes at offset 4096" in p.stdout
    qemu_img("compare", mine, theirs)
