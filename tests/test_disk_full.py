"""A real full disk: a small tmpfs mounted for each test.

test_faults.py injects ENOSPC through the faulty filter at chosen
requests; this is the file system running out for real, in the middle of
whatever imgtool is doing (data, L2 tables, refcount blocks, snapshot
tables, header).  Every command must fail with one line naming the disk,
leave the image consistent for qemu-img check (leaks allowed), and keep
what it had acknowledged before.  Needs root for mount; skipped without.
"""
import os
import subprocess

import pytest

from conftest import (IMGTOOL, guest_bytes, imgtool, io_args,
                      one_error_line, qemu_img, qemu_io, write_random_file)

FS_MIB = 16
NOSPACE = "No space left on device"


@pytest.fixture
def fs(tmp_path):
    mnt = tmp_path / "fs"
    mnt.mkdir()
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={FS_MIB}m",
                        "tmpfs", str(mnt)], capture_output=True, text=True)
    if p.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {p.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(fs):
    """Takes every free byte of fs; returns the filler's path."""
    path = fs / "filler"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        for chunk in (65536, 4096, 512):
            try:
                while os.write(fd, b"\xee" * chunk) == chunk:
                    pass
            except OSError:
                pass
    finally:
        os.close(fd)
    return path


def check_consistent(path):
    """qemu-img check finds no corruption (leaked clusters allowed)."""
    p = qemu_img("check", "-f", "qcow2", path, check=False)
    assert p.returncode in (0, 3), f"{p.returncode}\n{p.stdout}{p.stderr}"


@pytest.mark.parametrize("fmt", ["qcow2", "raw"])
def test_convert_into_full_disk(fs, tmp_path, fmt):
    src = tmp_path / "src.raw"
    write_random_file(src, 4 * FS_MIB << 20, seed=1)
    dst = fs / f"out.{fmt}"
    p = imgtool("convert", "-O", fmt, src, dst, check=False)
    line = one_error_line(p)
    assert NOSPACE in line, line
    if fmt == "qcow2":
        check_consistent(dst)


def test_write_past_free_space_keeps_earlier_data(fs, tmp_path):
    img = fs / "w.qcow2"
    imgtool("create", "-q", "-f", "qcow2", img, "100M")
    imgtool("io", "-c", "write -P 0x11 0 4M", "-c", "flush", img)
    p = imgtool("io", "-c", f"write -P 0x22 4M {2 * FS_MIB}M", img,
                check=False)
    assert NOSPACE in one_error_line(p)
    check_consistent(img)
    qemu_io("-f", "qcow2", "-c", "read -P 0x11 0 4M", img)
    # Room again: the same image takes writes and stays clean.
    for f in os.listdir(fs):
        if f != "w.qcow2":
            os.unlink(fs / f)
    imgtool("io", "-c", "write -P 0x33 0 64k", img)
    check_consistent(img)
    qemu_io("-f", "qcow2", "-c", "read -P 0x33 0 64k",
            "-c", "read -P 0x11 64k 3968k", img)


def test_snapshot_on_full_disk_changes_nothing(fs, tmp_path):
    img = fs / "s.qcow2"
    imgtool("create", "-q", "-f", "qcow2", img, "64M")
    imgtool("io", "-c", "write -P 0x44 0 2M", img)
    imgtool("snapshot", "-c", "before", img)
    filler = fill(fs)
    before = guest_bytes(img, tmp_path / "before.raw")
    # Overwriting shared clusters needs copies, a new snapshot needs an
    # L1 copy and a table: neither fits.
    p = imgtool("io", "-c", "write -P 0x55 0 1M", img, check=False)
    assert NOSPACE in one_error_line(p)
    p = imgtool("snapshot", "-c", "after", img, check=False)
    assert NOSPACE in one_error_line(p)
    check_consistent(img)
    names = qemu_img("snapshot", "-l", img).stdout
    assert "before" in names and "after" not in names, names
    assert guest_bytes(img, tmp_path / "now.raw") == before
    os.unlink(filler)
    imgtool("snapshot", "-c", "after", img)
    assert "after" in qemu_img("snapshot", "-l", img).stdout


def test_commit_into_full_base_keeps_the_top(fs, tmp_path):
    base = fs / "base.qcow2"
    imgtool("create", "-q", "-f", "qcow2", base, "64M")
    imgtool("io", "-c", "write -P 0x66 0 1M", base)
    top = tmp_path / "top.qcow2"
    imgtool("create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", top)
    src = tmp_path / "data.raw"
    write_random_file(src, 2 * FS_MIB << 20, seed=2)
    imgtool("convert", "-n", "-f", "raw", "-O", "qcow2", src, top)
    view = guest_bytes(top, tmp_path / "view.raw")
    p = imgtool("commit", top, check=False)
    assert NOSPACE in one_error_line(p)
    check_consistent(base)
    check_consistent(top)
    assert guest_bytes(top, tmp_path / "after.raw") == view


def test_flatten_on_full_disk_keeps_the_backing(fs, tmp_path):
    base = tmp_path / "base.raw"
    write_random_file(base, 2 * FS_MIB << 20, seed=3)
    top = fs / "top.qcow2"
    imgtool("create", "-q", "-f", "qcow2", "-b", base, "-F", "raw", top)
    imgtool("io", "-c", "write -P 0x77 1M 1M", top)
    view = guest_bytes(top, tmp_path / "view.raw")
    p = imgtool("rebase", "-b", "", top, check=False)
    assert NOSPACE in one_error_line(p)
    check_consistent(top)
    info = qemu_img("info", "--output=json", top).stdout
    assert "base.raw" in info, info
    assert guest_bytes(top, tmp_path / "after.raw") == view


def test_preallocated_create_larger_than_disk(fs):
    img = fs / "big.qcow2"
    p = imgtool("create", "-f", "qcow2", "-o", "preallocation=full", img,
                f"{2 * FS_MIB}M", check=False)
    assert NOSPACE in one_error_line(p)


def test_amend_refcount_bits_on_full_disk_changes_nothing(fs, tmp_path):
    img = fs / "a.qcow2"
    imgtool("create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", img,
            "64M")
    imgtool("io", "-c", "write -P 0x12 0 4M", img)
    fill(fs)
    before = guest_bytes(img, tmp_path / "before.raw")
    # A new refcount table and blocks must be written before the switch.
    p = imgtool("amend", "-o", "refcount_bits=64", img, check=False)
    assert NOSPACE in one_error_line(p)
    check_consistent(img)
    assert qemu_img("info", "--output=json", img).stdout.count(
        '"refcount-bits": 16') == 1
    assert guest_bytes(img, tmp_path / "after.raw") == before


def test_compressed_convert_into_full_disk(fs, tmp_path):
    src = tmp_path / "src.raw"
    write_random_file(src, 4 * FS_MIB << 20, seed=4)
    dst = fs / "c.qcow2"
    p = imgtool("convert", "-c", "-O", "qcow2", src, dst, check=False)
    assert NOSPACE in one_error_line(p)
    check_consistent(dst)


@pytest.mark.parametrize("cmd", [["info"], ["info", "--output=json"],
                                 ["map"], ["map", "--output=json"],
                                 ["check", "--output=json"]])
def test_output_to_a_full_device_fails(tmp_path, cmd):
    """A script that saves imgtool's report must learn the report is not
    there: output that could not be written is an error, also when it was
    lost in an earlier flush of a long output (map of 400 extents)."""
    img = tmp_path / "m.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", img,
             "8M")
    qemu_io(*io_args([f"write -P 1 {i * 8192} 4096" for i in range(400)]),
            img)
    with open("/dev/full", "w") as full:
        p = subprocess.run([IMGTOOL, *cmd, img], stdout=full,
                           stderr=subprocess.PIPE, text=True)
    assert p.returncode == 1, p.stderr
    assert p.stderr.strip() == \
        f"imgtool: error writing output: {NOSPACE}", p.stderr


@pytest.mark.parametrize("fmt", ["raw", "qcow2", "luks"])
def test_failed_preallocation_leaves_no_file(fs, tmp_path, fmt):
    """A preallocated create that runs out of space removes the file it
    made (it used to stay, filling the disk), as qemu-img removes its
    qcow2 and luks images; a file that was there before stays."""
    secret = tmp_path / "pass"
    secret.write_text("x")
    extra = []
    if fmt == "luks":
        extra = ["--object", f"secret,id=s,file={secret}", "-o",
                 "key-secret=s,iter-time=10"]
    img = fs / "x.img"
    p = imgtool("create", "-f", fmt, *extra, "-o", "preallocation=full",
                img, f"{2 * FS_MIB}M", check=False)
    assert NOSPACE in one_error_line(p)
    assert sorted(os.listdir(fs)) == []
    # The space is free again: a create that fits succeeds.
    imgtool("create", "-q", "-f", fmt, *extra, "-o", "preallocation=full",
            img, f"{FS_MIB // 2}M")
    os.unlink(img)
    # A file that existed is not removed (its old bytes are gone: the
    # create truncated it, as qemu-img does).
    img.write_bytes(b"old")
    p = imgtool("create", "-f", fmt, *extra, "-o", "preallocation=full",
                img, f"{2 * FS_MIB}M", check=False)
    assert NOSPACE in one_error_line(p)
    assert img.exists()
