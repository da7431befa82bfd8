"""iscsi:// against a real tgtd: raw and qcow2 images on LUNs through
every command, read and written by imgtool and by QEMU's own iscsi driver
(qemu-block-extra), the other way round too; capabilities (UNMAP, WRITE
SAME, GET LBA STATUS, 4 KiB blocks); CHAP from --object secret.

Faults (dropped connections, killed targets, bad URLs) are in
test_iscsi_faults.py.
"""
import json
import os

import pytest

from conftest import (CHAP_PASSWORD, CHAP_USER, ISCSI_CHAP_IQN, imgtool,
                      imgtool_info, io_args, one_error_line, qemu_img,
                      qemu_io, same_content, write_random_file)

pytestmark = pytest.mark.xdist_group("iscsi")

MiB = 1 << 20


def qemu_map(url, fmt="raw"):
    return json.loads(qemu_img("map", "--output=json", "-f", fmt,
                               url).stdout)


def imgtool_map(url, fmt="raw"):
    return json.loads(imgtool("map", "--output=json", "-f", fmt,
                              url).stdout)


def test_raw_lun_info_and_map_match_qemu(lun):
    url, _ = lun
    imgtool("io", "-f", "raw", *io_args(["write -P 0xab 1M 1M",
                                         "write -P 0xcd 8M 64k"]), url)
    info = imgtool_info(url, "-f", "raw")
    assert info["virtual-size"] == 64 * MiB
    assert info["format"] == "raw"
    # A thin LUN: GET LBA STATUS tells data from unmapped blocks, the
    # same runs QEMU's iscsi driver finds.
    assert imgtool_map(url) == qemu_map(url)
    assert [e["data"] for e in imgtool_map(url)] == [False, True, False,
                                                    True, False]


def test_raw_interop_both_ways(lun):
    url, _ = lun
    imgtool("io", "-f", "raw", *io_args(["write -P 0x11 0 1M",
                                         "write -P 0x22 3M 512k"]), url)
    qemu_io("-f", "raw", *io_args(["read -P 0x11 0 1M",
                                   "read -P 0x22 3M 512k",
                                   "read -P 0 1M 2M",
                                   "write -P 0x33 5M 128k"]), url)
    imgtool("io", "-f", "raw", *io_args(["read -P 0x33 5M 128k",
                                         "read -P 0x11 0 1M"]), url)


def test_qcow2_on_lun_every_command(lun, tmp):
    """create, io, check, snapshot, commit, convert to and from, with
    qemu-img reading what imgtool wrote through QEMU's iscsi driver."""
    url, _ = lun
    imgtool("create", "-f", "qcow2", url, "48M")
    info = json.loads(qemu_img("info", "--output=json", "-f", "qcow2",
                               url).stdout)
    assert info["format"] == "qcow2" and info["virtual-size"] == 48 * MiB
    imgtool("io", "-f", "qcow2", *io_args(["write -P 0x5a 0 2M",
                                           "write -P 0x5b 40M 256k",
                                           "write -z 1M 64k"]), url)
    assert qemu_img("check", "-f", "qcow2", url).returncode == 0
    assert imgtool("check", "-f", "qcow2", url).returncode == 0
    qemu_io("-f", "qcow2", *io_args(["read -P 0x5a 0 1M",
                                     "read -P 0 1M 64k",
                                     "read -P 0x5b 40M 256k"]), url)

    # internal snapshots, listed the same by both
    imgtool("snapshot", "-c", "s1", url)
    imgtool("io", "-f", "qcow2", "-c", "write -P 0x77 0 64k", url)
    names = [s["name"] for s in json.loads(
        qemu_img("info", "--output=json", "-f", "qcow2", url).stdout)
        .get("snapshots", [])]
    assert names == ["s1"]
    imgtool("snapshot", "-a", "s1", url)
    qemu_io("-f", "qcow2", "-c", "read -P 0x5a 0 64k", url)
    imgtool("snapshot", "-d", "s1", url)
    assert qemu_img("check", "-f", "qcow2", url).returncode == 0

    # convert out to a local file and back onto the LUN
    local = str(tmp / "copy.qcow2")
    imgtool("convert", "-f", "qcow2", "-O", "qcow2", url, local)
    assert same_content(url, local, "qcow2", "qcow2")
    raw = str(tmp / "copy.raw")
    qemu_img("convert", "-f", "qcow2", "-O", "raw", url, raw)
    assert imgtool("compare", "-f", "qcow2", "-F", "raw", url,
                   raw).returncode == 0


def test_convert_into_lun_and_qemu_reads_it(lun, tmp):
    url, _ = lun
    src = str(tmp / "src.qcow2")
    qemu_img("create", "-f", "qcow2", src, "40M")
    qemu_io("-f", "qcow2", *io_args(["write -P 0x41 0 3M",
                                     "write -P 0x42 20M 1M",
                                     "write -z 3M 1M"]), src)
    imgtool("convert", "-f", "qcow2", "-O", "qcow2", src, url)
    assert same_content(src, url, "qcow2", "qcow2")
    assert qemu_img("check", "-f", "qcow2", url).returncode == 0


def test_qemu_writes_qcow2_imgtool_reads_and_commits(iscsi_target, tmp):
    """The other way round, with a backing chain across two LUNs: QEMU
    makes base and overlay, imgtool reads through both and commits."""
    base, _ = iscsi_target.new_lun(32 * MiB)
    top, _ = iscsi_target.new_lun(32 * MiB)
    qemu_img("create", "-f", "qcow2", base, "24M")
    qemu_io("-f", "qcow2", "-c", "write -P 0x61 0 4M", base)
    qemu_img("create", "-f", "qcow2", "-b", base, "-F", "qcow2", top)
    qemu_io("-f", "qcow2", "-c", "write -P 0x62 1M 1M", top)
    imgtool("io", "-f", "qcow2", *io_args(["read -P 0x61 0 1M",
                                           "read -P 0x62 1M 1M",
                                           "read -P 0x61 2M 2M"]), top)
    chain = json.loads(imgtool("info", "--output=json", "--backing-chain",
                               top).stdout)
    assert [c["filename"] for c in chain] == [top, base]
    imgtool("commit", top)
    qemu_io("-f", "qcow2", *io_args(["read -P 0x61 0 1M",
                                     "read -P 0x62 1M 1M"]), base)
    assert qemu_img("check", "-f", "qcow2", base).returncode == 0


def test_bench_random_4k_on_lun(lun):
    url, _ = lun
    p = imgtool("bench", "-f", "raw", "-w", "-c", "4000", "-d", "16", "-s",
                "4k", "--random", "--pattern=0x3c", url)
    assert "Run completed" in p.stdout
    imgtool("bench", "-f", "raw", "-c", "4000", "-d", "16", "-s", "4k",
            "--random", url)
    # every write landed somewhere, with the pattern
    runs = imgtool_map(url)
    assert any(r["data"] for r in runs)
    first = next(r for r in runs if r["data"])
    imgtool("io", "-f", "raw", "-c",
            f"read -P 0x3c {first['start']} 4096", url)


def test_4k_block_lun_unaligned_io(iscsi_target):
    """request_alignment is the LUN's block size: unaligned requests are
    bounced, and what lands is what QEMU reads."""
    url, _ = iscsi_target.new_lun(16 * MiB, blocksize=4096)
    imgtool("io", "-f", "raw", *io_args(["write -P 0x11 0 64k",
                                         "write -P 0x22 100 1000",
                                         "write -P 0x33 9000 5000"]), url)
    qemu_io("-f", "raw", *io_args(["read -P 0x11 0 100",
                                   "read -P 0x22 100 1000",
                                   "read -P 0x11 1100 7900",
                                   "read -P 0x33 9000 5000",
                                   "read -P 0x11 14000 51536"]), url)
    imgtool("create", "-f", "qcow2", "-o", "cluster_size=4k", url, "12M")
    imgtool("io", "-f", "qcow2", "-c", "write -P 0x44 513 3000", url)
    qemu_io("-f", "qcow2", "-c", "read -P 0x44 513 3000", url)
    assert qemu_img("check", "-f", "qcow2", url).returncode == 0


def test_unmap_and_write_same(lun):
    """discard is UNMAP and zeroes are WRITE SAME on a thin LUN that reads
    unmapped blocks as zero; GET LBA STATUS then shows the holes."""
    url, backing = lun
    imgtool("io", "-f", "raw", *io_args(["write -P 0x99 0 4M",
                                         "discard 1M 1M",
                                         "write -z -u 3M 1M",
                                         "write -z 0 64k"]), url)
    qemu_io("-f", "raw", *io_args(["read -P 0 0 64k",
                                   "read -P 0x99 64k 960k",
                                   "read -P 0 1M 1M",
                                   "read -P 0x99 2M 1M",
                                   "read -P 0 3M 1M"]), url)
    runs = [(r["start"], r["length"], r["data"]) for r in imgtool_map(url)]
    assert (1 * MiB, 1 * MiB, False) in runs
    assert (3 * MiB, 61 * MiB, False) in runs
    # the target really let go of the blocks (tgtd punches holes)
    assert os.stat(backing).st_blocks * 512 <= 2 * MiB + 64 * 1024


def test_thick_lun_zeroes_without_unmap(iscsi_target):
    """A LUN without thin provisioning: no UNMAP, no GET LBA STATUS; zeroes
    still read as zeroes (WRITE SAME writes them) and discard is a no-op
    that loses nothing."""
    url, _ = iscsi_target.new_lun(8 * MiB, thin=False)
    imgtool("io", "-f", "raw", *io_args(["write -P 0x21 0 2M",
                                         "write -z -u 0 1M",
                                         "discard 1M 512k"]), url)
    qemu_io("-f", "raw", *io_args(["read -P 0 0 1M",
                                   "read -P 0x21 1M 1M"]), url)
    assert all(r["data"] for r in imgtool_map(url))


def test_chap_password_secret(iscsi_target, tmp):
    secret = tmp / "chap.pw"
    secret.write_text(CHAP_PASSWORD)
    opts = (f"driver=raw,file.driver=iscsi,file.portal={iscsi_target.portal},"
            f"file.target={ISCSI_CHAP_IQN},file.lun=1,file.user={CHAP_USER},"
            "file.password-secret=chap")
    imgtool("io", "--object", f"secret,id=chap,file={secret}",
            "--image-opts", "-c", "write -P 0x7e 0 1M", opts)
    # QEMU reads it with its URL form
    url = iscsi_target.url(1, ISCSI_CHAP_IQN, user=CHAP_USER,
                           password=CHAP_PASSWORD)
    qemu_io("-f", "raw", "-c", "read -P 0x7e 0 1M", url)
    # the same URL form works here, with a warning about the password
    p = imgtool("io", "-f", "raw", "-c", "read -P 0x7e 0 1M", url)
    assert "visible to other users" in p.stderr
    assert CHAP_PASSWORD not in p.stderr


def test_chap_wrong_or_missing_secret(iscsi_target, tmp):
    bad = tmp / "bad.pw"
    bad.write_text("not-the-password")
    base = (f"driver=raw,file.driver=iscsi,file.portal={iscsi_target.portal},"
            f"file.target={ISCSI_CHAP_IQN},file.lun=1")
    p = imgtool("info", "--object", f"secret,id=b,file={bad}", "--image-opts",
                f"{base},file.user={CHAP_USER},file.password-secret=b",
                check=False)
    assert "authentication failure" in one_error_line(p)
    p = imgtool("info", "--image-opts", base, check=False)
    assert "authentication failure" in one_error_line(p)
    p = imgtool("info", "--image-opts", f"{base},file.user={CHAP_USER}",
                check=False)
    assert "password-secret" in one_error_line(p)
    p = imgtool("info", "--image-opts",
                f"{base},file.user={CHAP_USER},file.password-secret=nope",
                check=False)
    assert "nope" in one_error_line(p)
    # a password in clear among the options is refused outright
    p = imgtool("info", "--image-opts",
                f"{base},file.user={CHAP_USER},file.password=x", check=False)
    assert "password-secret" in one_error_line(p)


def test_image_opts_without_filename(iscsi_target, lun):
    url, _ = lun
    lunno = url.rsplit("/", 1)[1]
    imgtool("io", "-f", "raw", "-c", "write -P 0x6c 0 4k", url)
    opts = (f"driver=iscsi,portal={iscsi_target.portal},"
            f"target=iqn.2024-01.org.imgtool.test:disks,lun={lunno},"
            "header-digest=none,timeout=5,initiator-name=iqn.2024-01.x:y")
    imgtool("io", "--image-opts", "-c", "read -P 0x6c 0 4k", opts)
    # tgtd takes header digests too
    imgtool("io", "--image-opts", "-c", "read -P 0x6c 0 4k",
            opts.replace("header-digest=none", "header-digest=crc32c"))
    info = json.loads(imgtool("info", "--output=json", "--image-opts",
                              opts).stdout)
    assert info["virtual-size"] == 64 * MiB


def test_lun_smaller_than_image(iscsi_target, tmp):
    url, _ = iscsi_target.new_lun(8 * MiB)
    p = imgtool("create", "-f", "raw", url, "16M", check=False)
    assert "less than" in one_error_line(p)
    big = str(tmp / "big.raw")
    write_random_file(big, 12 * MiB)
    p = imgtool("convert", "-f", "raw", "-O", "raw", big, url, check=False)
    one_error_line(p)
    # a qcow2 that claims more than its LUN holds: writes past the end of
    # the LUN fail with one line, and the image stays consistent
    imgtool("create", "-f", "qcow2", url, "64M")
    imgtool("io", "-f", "qcow2", "-c", "write -P 1 0 1M", url)
    p = imgtool("io", "-f", "qcow2", "-c", "write -P 2 8M 16M", url,
                check=False)
    assert "No space left" in one_error_line(p)
    p = qemu_img("check", "-f", "qcow2", url, check=False)
    assert p.returncode in (0, 3), p.stdout + p.stderr
    qemu_io("-f", "qcow2", "-c", "read -P 1 0 1M", url)


def test_write_protected_lun(iscsi_target):
    url, _ = iscsi_target.new_lun(4 * MiB, readonly=True)
    p = imgtool("io", "-f", "raw", "-c", "write 0 4k", url, check=False)
    assert "write-protected" in one_error_line(p)
    imgtool("io", "-f", "raw", "-r", "-c", "read -P 0 0 4k", url)
