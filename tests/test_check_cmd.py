"""imgtool check against qemu-img check: exit codes 0/1/2/3/63, the same
human text and JSON for clean, leaky, corrupt, fragmented and compressed
images, and repairs (-r leaks / -r all) that qemu-img then finds clean.

Leaks and corruptions are made by editing a refcount entry directly:
a refcount on a cluster nobody references is a leak, a zero refcount
on a cluster in use is a corruption."""
import json
import os
import shutil

from conftest import (imgtool, io_args, poke_be, qcow2_header,
                      qemu_check_clean, qemu_img, qemu_io, read_be)


def set_refcount(path, cluster, value):
    """Sets cluster's 16-bit refcount in the first refcount block, growing
    the file so the cluster lies inside it (qemu-img only counts clusters
    within the file)."""
    h = qcow2_header(path)
    rb_off = read_be(path, h["refcount_table_offset"], 8)
    poke_be(path, rb_off + 2 * cluster, 2, value)
    need = (cluster + 1) << h["cluster_bits"]
    if os.path.getsize(path) < need:
        os.truncate(path, need)


def image(tmp, name="a.qcow2", size="1M", writes=("write -P 1 0 256k",)):
    p = tmp / name
    qemu_img("create", "-f", "qcow2", p, size)
    if writes:
        qemu_io(*io_args(writes), p)
    return p


def both(path, *args, rc):
    """Runs both tools on separate copies; returns (ours, theirs) results
    with the file names made equal."""
    copy = path.parent / ("q-" + path.name)
    shutil.copy(path, copy)
    ours = imgtool("check", *args, path, rc=rc)
    theirs = qemu_img("check", *args, copy, rc=rc)
    return (ours.stdout.replace(str(path), "X"),
            theirs.stdout.replace(str(copy), "X"), ours)


def assert_same(path, *args, rc):
    o, t, p = both(path, *args, rc=rc)
    assert o == t
    return p


def test_clean_empty(tmp):
    p = image(tmp, writes=())
    out = assert_same(p, rc=0).stdout
    assert out.startswith("No errors were found on the image.\n")
    assert_same(p, "--output=json", rc=0)


def test_clean_with_data(tmp):
    p = image(tmp)
    out = assert_same(p, rc=0).stdout
    assert "allocated, 0.00% fragmented, 0.00% compressed clusters" in out
    j = json.loads(assert_same(p, "--output=json", rc=0).stdout)
    assert j["check-errors"] == 0 and j["allocated-clusters"] == 4


def test_fragmented_and_compressed(tmp):
    p = image(tmp, writes=("write -P 1 512k 64k", "write -P 2 0 64k",
                           "write -c -P 3 128k 64k", "write 256k 64k"))
    out = assert_same(p, rc=0).stdout
    assert "75.00% fragmented, 25.00% compressed" in out
    assert_same(p, "--output=json", rc=0)


def test_leaks_exit_3(tmp):
    p = image(tmp)
    set_refcount(p, 10, 1)
    set_refcount(p, 11, 1)
    out = assert_same(p, rc=3).stdout
    assert "\n2 leaked clusters were found on the image.\nThis means waste " \
           "of disk space, but no harm to data.\n" in out
    j = json.loads(assert_same(p, "--output=json", rc=3).stdout)
    assert j["leaks"] == 2


def test_repair_leaks(tmp):
    p = image(tmp)
    set_refcount(p, 10, 1)
    out = assert_same(p, "-r", "leaks", rc=0).stdout
    assert out.startswith("The following inconsistencies were found and "
                          "repaired:\n\n    1 leaked clusters\n    0 "
                          "corruptions\n\nDouble checking the fixed image "
                          "now...\nNo errors were found on the image.\n")
    qemu_check_clean(p)
    assert imgtool("check", p).returncode == 0


def test_repair_leaks_json(tmp):
    p = image(tmp)
    set_refcount(p, 10, 1)
    out = assert_same(p, "-r", "leaks", "--output=json", rc=0).stdout
    assert json.loads(out)["leaks-fixed"] == 1
    qemu_check_clean(p)


def test_repair_all_fixes_leaks(tmp):
    p = image(tmp)
    set_refcount(p, 11, 1)
    assert_same(p, "-r", "all", rc=0)
    qemu_check_clean(p)


def test_corruption_exit_2(tmp):
    p = image(tmp)
    set_refcount(p, 5, 0)
    out = assert_same(p, rc=2).stdout
    assert "errors were found on the image.\nData may be corrupted, or " \
           "further writes to the image may corrupt it.\n" in out
    j = json.loads(assert_same(p, "--output=json", rc=2).stdout)
    assert j["corruptions"] > 0


def test_corruption_and_leak_exit_2(tmp):
    p = image(tmp)
    set_refcount(p, 5, 0)
    set_refcount(p, 11, 1)
    out = imgtool("check", p, rc=2).stdout
    assert "leaked clusters were found" in out
    assert "errors were found" in out


def test_repair_all_fixes_corruption(tmp):
    p = image(tmp)
    set_refcount(p, 5, 0)
    q = imgtool("check", "-r", "all", p, rc=0)
    assert "Double checking the fixed image now...\nNo errors were found" \
        in q.stdout
    qemu_check_clean(p)
    qemu_io("-c", "read -P 1 0 256k", p)


def test_quiet(tmp):
    p = image(tmp)
    assert imgtool("check", "-q", p).stdout == ""
    set_refcount(p, 10, 1)
    q = imgtool("check", "-q", p, rc=3)
    assert q.stdout == ""
    assert imgtool("check", "-q", "--output=json", p, rc=3).stdout == ""


def test_raw_not_supported(tmp):
    p = tmp / "r.raw"
    qemu_img("create", "-f", "raw", p, "1M")
    for extra in ([], ["--output=json"], ["-f", "raw"]):
        q = imgtool("check", *extra, p, rc=63)
        assert q.stdout == ""
        assert q.stderr == \
            "imgtool: This image format does not support checks\n"
        qemu_img("check", *extra, p, rc=63)


def test_option_errors(tmp):
    p = image(tmp, writes=())
    q = imgtool("check", "-r", "bogus", p, rc=1)
    assert "expecting 'leaks' or 'all'" in q.stderr
    q = imgtool("check", "-T", "bogus", p, rc=1)
    assert "Invalid source cache option: bogus" in q.stderr
    q = imgtool("check", "--output=yaml", p, rc=1)
    assert "--output must be used with human or json" in q.stderr
    q = imgtool("check", tmp / "nonexistent", rc=1)
    assert q.stderr.startswith("imgtool: ")
    q = imgtool("check", rc=1)
    assert "Expecting one image file name" in q.stderr


def test_repair_refuses_force_share(tmp):
    p = image(tmp)
    set_refcount(p, 10, 1)
    q = imgtool("check", "-U", "-r", "leaks", p, rc=1)
    assert "force-share=on can only be used with read-only images" in q.stderr
    qemu_img("check", "-U", "-r", "leaks", p, rc=1)
    imgtool("check", p, rc=3)


def test_cache_modes(tmp):
    p = image(tmp)
    for mode in ["none", "writeback", "unsafe", "directsync",
                 "writethrough"]:
        imgtool("check", "-T", mode, p, rc=0)


def test_force_share_and_image_opts(tmp):
    p = image(tmp)
    assert_same(p, "-U", rc=0)
    q = imgtool("check", "--image-opts", f"driver=qcow2,file.filename={p}")
    assert q.stdout.startswith("No errors were found")


def test_help():
    assert imgtool("check", "--help").stdout.startswith(
        "usage: imgtool check")


def test_repair_leaks_cannot_fix_corruption(tmp):
    """-r leaks on an image whose refcounts need a rebuild cannot
    complete: exit 1 with "Check failed", as qemu-img."""
    p = image(tmp)
    set_refcount(p, 5, 0)
    copy = tmp / "q.qcow2"
    shutil.copy(p, copy)
    q = imgtool("check", "-r", "leaks", p, rc=1)
    assert q.stdout == ""
    assert "imgtool: Check failed: " in q.stderr
    qemu_img("check", "-r", "leaks", copy, rc=1)
    imgtool("check", p, rc=2)
