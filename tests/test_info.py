"""imgtool info against qemu-img info: the same JSON (keys, values and key
order; disk usage aside), --backing-chain as an array, and the same human
layout including the format-specific tree."""
import json
import os

import pytest

from conftest import imgtool, qemu_img, qemu_io, run


def jinfo(tool, path, *extra):
    p = tool("info", "--output=json", *extra, path)
    return json.loads(p.stdout)


def drop_actual(j):
    if isinstance(j, list):
        return [drop_actual(x) for x in j]
    j = dict(j)
    j.pop("actual-size", None)
    return j


def keys_in_order(j):
    """Keys (recursively) in printed order, to compare key order too."""
    if isinstance(j, dict):
        return [(k, keys_in_order(v)) for k, v in j.items()
                if k != "actual-size"]
    if isinstance(j, list):
        return [keys_in_order(x) for x in j]
    return None


def same_json(path, *extra):
    ours = jinfo(imgtool, path, *extra)
    theirs = jinfo(qemu_img, path, *extra)
    assert drop_actual(ours) == drop_actual(theirs)
    assert keys_in_order(ours) == keys_in_order(theirs)
    return ours


def human_wo_disk_size(text):
    return [l for l in text.splitlines() if not l.startswith("disk size:")]


def same_human(path, *extra):
    ours = imgtool("info", *extra, path).stdout
    theirs = qemu_img("info", *extra, path).stdout
    assert human_wo_disk_size(ours) == human_wo_disk_size(theirs)
    return ours


def test_raw(tmp):
    p = tmp / "r.raw"
    qemu_img("create", "-f", "raw", p, "10M")
    j = same_json(p)
    assert j["format"] == "raw" and j["virtual-size"] == 10 << 20
    same_human(p)
    same_json(p, "-f", "raw")


def test_raw_disk_size_human(tmp):
    p = tmp / "r.raw"
    qemu_img("create", "-f", "raw", p, "1G")
    qemu_io("-f", "raw", "-c", "write 0 1M", p)
    ours = imgtool("info", p).stdout
    assert ours.splitlines()[2] == "virtual size: 1 GiB (1073741824 bytes)"
    assert ours.splitlines()[3] == qemu_img("info", p).stdout.splitlines()[3]


@pytest.mark.parametrize("opts", [
    "compat=1.1", "compat=0.10", "lazy_refcounts=on", "refcount_bits=1",
    "refcount_bits=64", "extended_l2=on", "compression_type=zstd",
    "cluster_size=4k", "cluster_size=2M",
])
def test_qcow2_variants(tmp, opts):
    p = tmp / "a.qcow2"
    qemu_img("create", "-f", "qcow2", "-o", opts, p, "1G")
    same_json(p)
    same_human(p)


def test_qcow2_with_data(tmp):
    p = tmp / "a.qcow2"
    qemu_img("create", "-f", "qcow2", p, "64M")
    qemu_io("-c", "write -P 1 0 1M", "-c", "write -c -P 2 4M 64k", p)
    same_json(p)
    same_human(p)


def test_backing_file_and_chain(tmp):
    base, top = tmp / "base.qcow2", tmp / "top.qcow2"
    qemu_img("create", "-f", "qcow2", base, "4M")
    qemu_img("create", "-f", "qcow2", "-b", base, "-F", "qcow2", top)
    j = same_json(top)
    assert j["backing-filename"] == str(base)
    assert j["backing-filename-format"] == "qcow2"
    same_human(top)
    chain = same_json(top, "--backing-chain")
    assert isinstance(chain, list) and len(chain) == 2
    assert chain[1]["filename"] == str(base)
    same_human(top, "--backing-chain")


def test_three_level_chain_with_raw_base(tmp):
    base, mid, top = tmp / "b.raw", tmp / "m.qcow2", tmp / "t.qcow2"
    qemu_img("create", "-f", "raw", base, "2M")
    qemu_img("create", "-f", "qcow2", "-b", base, "-F", "raw", mid)
    qemu_img("create", "-f", "qcow2", "-b", mid, "-F", "qcow2", top, "3M")
    chain = same_json(top, "--backing-chain")
    assert [c["format"] for c in chain] == ["qcow2", "qcow2", "raw"]
    same_human(top, "--backing-chain")


def test_relative_backing_shows_actual_path(tmp):
    d = tmp / "d"
    d.mkdir()
    qemu_img("create", "-f", "qcow2", d / "base.qcow2", "1M")
    qemu_img("create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2",
             d / "top.qcow2")
    cwd = os.getcwd()
    try:
        os.chdir(tmp)
        j = same_json("d/top.qcow2")
        assert j["full-backing-filename"] == "d/base.qcow2"
        out = same_human("d/top.qcow2")
        assert "backing file: base.qcow2 (actual path: d/base.qcow2)" in out
        same_json("d/top.qcow2", "--backing-chain")
    finally:
        os.chdir(cwd)


def test_missing_backing(tmp):
    top = tmp / "m.qcow2"
    qemu_img("create", "-f", "qcow2", "-u", "-b", "missing.qcow2", "-F",
             "qcow2", top, "1M")
    same_json(top)
    same_human(top)
    p = imgtool("info", "--backing-chain", top, rc=1)
    assert p.stdout == ""
    assert len(p.stderr.strip().splitlines()) == 1
    assert p.stderr.startswith("imgtool: ")


def test_backing_loop_refused(tmp):
    a, b = tmp / "a.qcow2", tmp / "b.qcow2"
    qemu_img("create", "-f", "qcow2", a, "1M")
    qemu_img("create", "-f", "qcow2", "-b", a, "-F", "qcow2", b)
    qemu_img("rebase", "-u", "-b", b, "-F", "qcow2", a)
    p = imgtool("info", "--backing-chain", b, rc=1)
    assert "creates an infinite loop" in p.stderr
    same_json(b)


def test_bitmaps_tree(tmp):
    p = tmp / "a.qcow2"
    qemu_img("create", "-f", "qcow2", p, "1M")
    qemu_img("bitmap", "--add", p, "bm0")
    qemu_img("bitmap", "--add", "-g", "128k", p, "bm1")
    qemu_img("bitmap", "--disable", p, "bm1")
    same_json(p)
    out = same_human(p)
    assert "    bitmaps:\n        [0]:\n            flags:\n" \
           "                [0]: auto\n" in out


def test_data_file(tmp):
    p = tmp / "a.qcow2"
    qemu_img("create", "-f", "qcow2", "-o",
             f"data_file={tmp}/a.data,data_file_raw=on", p, "1M")
    same_json(p)
    out = same_human(p)
    assert "    data file raw: true\n" in out


def test_dirty_flag(tmp):
    p = tmp / "a.qcow2"
    qemu_img("create", "-f", "qcow2", "-o", "lazy_refcounts=on", p, "1M")
    run(["qemu-io", "-c", "write 0 64k", "-c", "abort", p], check=False)
    j = same_json(p)
    assert j["dirty-flag"] is True
    out = same_human(p)
    assert "cleanly shut down: no\n" in out


def test_image_opts(tmp):
    p = tmp / "a.qcow2"
    qemu_img("create", "-f", "qcow2", p, "1M")
    opts = f"driver=qcow2,file.filename={p}"
    ours = jinfo(imgtool, opts, "--image-opts")
    theirs = jinfo(qemu_img, opts, "--image-opts")
    assert drop_actual(ours) == drop_actual(theirs)
    p2 = imgtool("info", "--image-opts", "-f", "qcow2", opts, rc=1)
    assert "mutually exclusive" in p2.stderr


def test_force_share_while_qemu_writes(tmp):
    """-U reads an image that a writer holds open."""
    p = tmp / "a.qcow2"
    qemu_img("create", "-f", "qcow2", p, "1M")
    import subprocess
    w = subprocess.Popen(["qemu-io", p], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    try:
        w.stdin.write("write 0 4k\n")
        w.stdin.flush()
        w.stdout.readline()
        j = jinfo(imgtool, p, "-U")
        assert j["virtual-size"] == 1 << 20
    finally:
        w.stdin.close()
        w.wait()


def test_errors(tmp):
    p = imgtool("info", tmp / "nonexistent", rc=1)
    assert p.stderr.startswith("imgtool: ")
    assert len(p.stderr.strip().splitlines()) == 1
    qemu_img("create", "-f", "raw", tmp / "r", "1M")
    p = imgtool("info", "--output=xml", tmp / "r", rc=1)
    assert "--output must be used with human or json" in p.stderr
    p = imgtool("info", rc=1)
    assert "Expecting one image file name" in p.stderr
    p = imgtool("info", tmp / "r", tmp / "r", rc=1)
    assert "Expecting one image file name" in p.stderr
    p = imgtool("info", "--bogus", tmp / "r", rc=1)
    assert "unrecognized option '--bogus'" in p.stderr


def test_forced_raw_on_qcow2(tmp):
    p = tmp / "a.qcow2"
    qemu_img("create", "-f", "qcow2", p, "1M")
    same_json(p, "-f", "raw")


def test_help():
    p = imgtool("info", "--help")
    assert p.stdout.startswith("usage: imgtool info")


@pytest.mark.parametrize("how", ["relative", "json"])
def test_backing_loop_through_another_name(tmp, how):
    """A layer naming itself by another path ('../dir/a.qcow2') or by a
    json: name: info --backing-chain walked such names as new files, the
    json one forever (the path one until the name grew too long)."""
    a = tmp / "a.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", a, "1M")
    if how == "relative":
        name = f"../{tmp.name}/a.qcow2"
    else:
        name = 'json:{"driver":"qcow2","file":{"filename":"%s"}}' % a
    qemu_img("rebase", "-u", "-F", "qcow2", "-b", name, a)
    p = imgtool("info", "--backing-chain", a, rc=1, timeout=20)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr[:2000]
    assert lines[0].startswith("imgtool: Backing file '") and \
        lines[0].endswith("' creates an infinite loop."), lines[0]
    # Opening for I/O refuses the loop in the block layer.
    p = imgtool("io", "-c", "read 0 512", a, rc=1, timeout=20)
    assert "loop" in p.stderr, p.stderr[:2000]
