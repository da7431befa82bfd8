"""json:{...} image names, on the command line and as backing files that
qemu-img wrote, read the same as qemu-img reads them."""
import json
import os

import pytest

import limits

from conftest import (imgtool, imgtool_info, one_error_line, qemu_img,
                      qemu_info, qemu_io)


def jname(obj):
    return "json:" + json.dumps(obj, separators=(",", ":"))


def without_actual_size(info):
    if isinstance(info, list):
        return [without_actual_size(i) for i in info]
    return {k: v for k, v in info.items() if k != "actual-size"}


@pytest.fixture
def base(tmp_path):
    p = tmp_path / "base.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", p, "64M")
    qemu_io("-c", "write -P 0x21 0 1M", "-c", "write -P 0x23 5M 64k", p)
    return p


@pytest.mark.parametrize("form", ["nested", "dotted", "format-flag"])
def test_info_and_content_match_qemu(base, tmp_path, form):
    if form == "nested":
        name = jname({"driver": "qcow2",
                      "file": {"driver": "file", "filename": str(base)}})
    elif form == "dotted":
        name = jname({"driver": "qcow2", "file.filename": str(base)})
    else:
        name = jname({"file": {"filename": str(base)}})
    fmt = ["-f", "qcow2"] if form == "format-flag" else []
    assert without_actual_size(imgtool_info(name, *fmt)) == \
        without_actual_size(qemu_info(name, *fmt))
    imgtool("convert", *fmt, "-O", "raw", name, tmp_path / "i.raw")
    qemu_img("convert", "-O", "raw", base, tmp_path / "q.raw")
    assert (tmp_path / "i.raw").read_bytes() == \
        (tmp_path / "q.raw").read_bytes()


def test_open_options_in_the_object(base):
    # Numbers, booleans and options of the format itself.
    name = jname({"driver": "qcow2",
                  "file": {"filename": str(base),
                           "cache": {"direct": False, "no-flush": False}},
                  "l2-cache-size": 1048576, "cache-clean-interval": 0})
    imgtool("io", "-c", "read -P 0x21 0 1M", name)
    imgtool("io", "-c", "write -P 0x24 2M 64k", name)
    qemu_io("-c", "read -P 0x24 2M 64k", base)
    qemu_img("check", base)


def test_backing_file_named_by_qemu_in_json(base, tmp_path):
    top = tmp_path / "top.qcow2"
    bname = jname({"driver": "qcow2",
                   "file": {"driver": "file", "filename": str(base)}})
    qemu_img("create", "-q", "-f", "qcow2", "-b", bname, "-F", "qcow2", top)
    qemu_io("-c", "write -P 0x22 1M 1M", top)
    assert without_actual_size(imgtool_info(top, "--backing-chain")) == \
        without_actual_size(qemu_info(top, "--backing-chain"))
    imgtool("convert", "-O", "raw", top, tmp_path / "i.raw")
    qemu_img("convert", "-O", "raw", top, tmp_path / "q.raw")
    assert (tmp_path / "i.raw").read_bytes() == \
        (tmp_path / "q.raw").read_bytes()
    # commit goes down into the json-named base.
    imgtool("commit", top)
    qemu_io("-c", "read -P 0x22 1M 1M", "-c", "read -P 0x21 0 1M", base)
    qemu_img("check", base)


def test_create_and_rebase_store_json_names_as_given(base, tmp_path):
    top = tmp_path / "top.qcow2"
    bname = jname({"driver": "qcow2", "file.filename": str(base)})
    p = imgtool("create", "-f", "qcow2", "-b", bname, "-F", "qcow2", top)
    q = qemu_img("create", "-f", "qcow2", "-b", bname, "-F", "qcow2",
                 tmp_path / "qtop.qcow2")
    assert p.stdout.replace("top.qcow2", "X") == \
        q.stdout.replace("qtop.qcow2", "X")
    assert qemu_info(top)["backing-filename"] == bname
    other = tmp_path / "other.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", other, "64M")
    oname = jname({"driver": "qcow2", "file": {"filename": str(other)}})
    imgtool("rebase", "-b", oname, "-F", "qcow2", top)
    assert qemu_info(top)["backing-filename"] == oname
    # Safe rebase kept the guest view: the old base's data is in the top.
    qemu_io("-c", "read -P 0x21 0 1M", "-c", "read -P 0x23 5M 64k", top)
    qemu_img("check", top)


@pytest.mark.parametrize("name,want", [
    ("json:{", "Could not parse the JSON options"),
    ("json:[1]", "must be a JSON object"),
    ('json:{"driver":"qcow2","file":{"filename":"BASE","x":null}}',
     "null only for 'backing'"),
    ('json:{"driver":"qcow2","file":{"filename":"x","a":[1]}}',
     "option 'file.a' must be"),
    ('json:{"driver":"qcow2","driver":"raw"}', "Could not parse"),
    ('json:{"driver":"qcow2","file":{"filename":"BASE","bogus":1}}',
     "bogus"),
    ('json:{"driver":"nosuch","file":"BASE"}', "Unknown driver 'nosuch'"),
    ("json:" + "{\"a\":" * 40 + "1" + "}" * 40, "nested too deeply"),
])
def test_bad_json_names_get_one_line(base, name, want):
    name = name.replace("BASE", str(base))
    line = one_error_line(imgtool("info", name, check=False))
    assert want in line, line


def test_options_beside_a_json_backing_name(base, tmp_path):
    top = tmp_path / "top.qcow2"
    bname = jname({"driver": "qcow2", "file": {"filename": str(base)}})
    qemu_img("create", "-q", "-f", "qcow2", "-b", bname, "-F", "qcow2", top)
    opts = f"driver=qcow2,file.filename={top}"
    imgtool("io", "--image-opts", "-c", "read -P 0x21 0 1M",
            opts + ",backing.l2-cache-size=1M")
    line = one_error_line(imgtool("io", "--image-opts", "-c", "read 0 1",
                                  opts + ",backing.bogus=1", check=False))
    assert "'bogus'" in line, line


@pytest.mark.parametrize("cmd", ["create", "convert"])
def test_json_names_are_not_created(base, tmp_path, cmd, monkeypatch):
    """A json: name says how to open an image that exists; qemu-img
    refuses to create one, and imgtool must not make a file called
    'json:{...}' either."""
    name = jname({"driver": "qcow2",
                  "file": {"filename": str(tmp_path / "new.qcow2")}})
    monkeypatch.chdir(tmp_path)
    if cmd == "create":
        p = imgtool("create", "-f", "qcow2", name, "1M", check=False)
    else:
        p = imgtool("convert", "-O", "qcow2", base, name, check=False)
    assert "cannot create an image named by json: options" in \
        one_error_line(p)
    assert p.stdout == ""
    assert sorted(os.listdir(tmp_path)) == ["base.qcow2"]
    # Into an image that exists, -n writes.
    qemu_img("create", "-q", "-f", "qcow2", tmp_path / "new.qcow2", "64M")
    imgtool("convert", "-n", "-O", "qcow2", base, name)
    assert qemu_img("compare", base, tmp_path / "new.qcow2").returncode == 0


def test_backing_null_reads_the_layer_alone(base, tmp_path):
    """"backing": null opens an overlay without its backing file, as QEMU
    does: what a backup of only the overlay's own data reads."""
    top = tmp_path / "top.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", top)
    qemu_io("-c", "write -P 0x22 1M 1M", top)
    alone = jname({"driver": "qcow2", "file": {"filename": str(top)},
                   "backing": None})
    for args in (["info", "--output=json"],
                 ["info", "--output=json", "--backing-chain"],
                 ["map", "--output=json"]):
        mine = imgtool(*args, alone).stdout
        theirs = qemu_img(*args, alone).stdout
        if args[0] == "info":
            mine = without_actual_size(json.loads(mine))
            theirs = without_actual_size(json.loads(theirs))
        assert mine == theirs, args
    imgtool("convert", "-O", "raw", alone, tmp_path / "i.raw")
    qemu_img("convert", "-O", "raw", alone, tmp_path / "q.raw")
    data = (tmp_path / "i.raw").read_bytes()
    assert data == (tmp_path / "q.raw").read_bytes()
    assert data[:1 << 20] == bytes(1 << 20)          # base's data not read
    assert data[1 << 20:2 << 20] == b"\x22" * (1 << 20)
    # Without the override the chain is read as usual.
    qemu_io("-c", "read -P 0x21 0 1M", top)
    imgtool("io", "-c", "read -P 0x21 0 1M", top)
    # A backing reference names an open node (QEMU's node names); a
    # command opens none by that name, so it says which is missing.
    line = one_error_line(imgtool(
        "info", jname({"driver": "qcow2", "file": {"filename": str(top)},
                       "backing": "node0"}), check=False))
    assert "no node named 'node0'" in line, line


@pytest.mark.parametrize("kind", ["deep", "wide", "self", "not-json"])
def test_hostile_json_backing_names(base, tmp_path, kind):
    """A backing name is input from the image: json: names that nest too
    deeply, carry hundreds of options, name the image itself or are not
    JSON get one line, in bounded time and memory, from every command
    that follows the chain."""
    top = tmp_path / "top.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", top, "64M")
    if kind == "deep":
        name = "json:" + '{"a":' * 160 + "1" + "}" * 160
    elif kind == "wide":
        name = "json:{" + ",".join(f'"k{i}":{i}' for i in range(100)) + "}"
    elif kind == "self":
        name = jname({"driver": "qcow2", "file": {"filename": str(top)}})
    else:
        name = "json:{not json"
    assert len(name) <= 1023
    # qemu-img rebase -u writes any name it is given.
    qemu_img("rebase", "-u", "-F", "qcow2", "-b", name, top)
    for args in (["info", "--backing-chain", top],
                 ["io", "-r", "-c", "read 0 64k", top],
                 ["convert", "-O", "raw", top, tmp_path / "out.raw"],
                 ["check", top]):
        p = limits.run_limited(*args, timeout=10)
        lines = p.stderr.strip().splitlines()
        assert p.returncode != 0 and len(lines) == 1, \
            f"{args[0]}: {p.returncode}\n{p.stderr[:2000]}"
        assert lines[0].startswith("imgtool: "), lines[0]
