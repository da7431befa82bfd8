"""Drop-in behaviours (issue 15): imgtool run side by side with qemu-img
7.2 on the same inputs gives the same messages, exit codes and images.
Where names matter imgtool runs through a link named qemu-img."""
import json
import os

import pytest

from conftest import IMGTOOL, imgtool, qemu_img, qemu_io, run


@pytest.fixture
def as_qemu_img(tmp_path):
    """imgtool through a link named qemu-img (as a package installs it)."""
    d = tmp_path / "bin"
    d.mkdir()
    link = d / "qemu-img"
    os.symlink(IMGTOOL, link)
    return str(link)


def both(link, *args, cwd=None):
    """(qemu-img's, imgtool-as-qemu-img's) completed processes."""
    import subprocess
    out = []
    for exe in ("qemu-img", link):
        out.append(subprocess.run([exe, *map(str, args)], capture_output=True,
                                  text=True, cwd=cwd))
    return out


# --- 1. its name -----------------------------------------------------------

def test_messages_carry_the_invoked_name(tmp_path, as_qemu_img):
    raw = tmp_path / "r.img"
    qemu_img("create", "-q", "-f", "raw", raw, "1M")
    cases = [
        ("info", "-f", "qcow2", raw),
        ("resize", "-f", "raw", raw, "-1G"),
        ("bogus-command",),
        ("create", "-f", "qcow2", "-o", "foo=bar", tmp_path / "y.qcow2", "1M"),
        ("amend", "-f", "raw", "-o", "compat=0.10", raw),
    ]
    for args in cases:
        q, i = both(as_qemu_img, *args, cwd=tmp_path)
        assert (i.returncode, i.stderr) == (q.returncode, q.stderr), args
        assert q.returncode != 0
    # the first line of a usage mistake, too
    q, i = both(as_qemu_img, "info", "--bogus", raw)
    assert i.returncode == q.returncode == 1
    assert i.stderr.splitlines()[0] == q.stderr.splitlines()[0]
    assert i.stderr.splitlines()[1].startswith("Try 'qemu-img ")


def test_as_imgtool_it_stays_imgtool(tmp_path):
    p = imgtool("bogus-command", rc=1)
    assert p.stderr.splitlines()[0] == "imgtool: Command not found: bogus-command"
    p = imgtool("info", tmp_path / "missing", rc=1)
    assert p.stderr.startswith("imgtool: Could not open ")


# --- 2. json: names in QEMU's dialect ---------------------------------------

def _info(tool, name):
    p = tool("info", "--output=json", name)
    d = json.loads(p.stdout)
    d.pop("actual-size", None)
    return d


def test_json_single_quotes_and_numbers(tmp_path):
    odd = tmp_path / "a'b\"c.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", odd, "3M")
    qemu_io("-c", "write -P 0x5a 0 64k", odd)
    esc = str(odd).replace("'", "\\'")
    names = [
        "json:{'driver': 'qcow2', 'file': {'driver': 'file', "
        f"'filename': '{esc}'}}}}",
        # mixed quoting, \' inside a double-quoted string
        '"json:{"driver": "qcow2", "file.filename": '
        f'"{esc.replace(chr(34), chr(92) + chr(34))}"}}"'[1:-1],
        # a number where a string (a size) is expected
        "json:{'driver': 'qcow2', 'cache-size': 1.5e6, "
        f"'file': {{'filename': '{esc}'}}}}",
    ]
    for name in names:
        assert _info(imgtool, name) == _info(qemu_img, name), name
        a = imgtool("convert", "-O", "raw", name, tmp_path / "i.raw")
        qemu_img("convert", "-O", "raw", name, tmp_path / "q.raw")
        assert (tmp_path / "i.raw").read_bytes() == (tmp_path / "q.raw").read_bytes()
        assert a.returncode == 0


def test_json_single_quoted_backing_name(tmp_path):
    base = tmp_path / "base.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", base, "1M")
    qemu_io("-c", "write -P 0x11 0 4k", base)
    top = tmp_path / "top.qcow2"
    b = f"json:{{'driver': 'qcow2', 'file': {{'filename': '{base}'}}}}"
    qemu_img("create", "-q", "-f", "qcow2", "-b", b, "-F", "qcow2", top)
    q = run(["qemu-io", "-c", "read -P 0x11 0 4k", top])
    i = imgtool("io", "-c", "read -P 0x11 0 4k", top)
    assert "read 4096/4096" in q.stdout and "read 4096/4096" in i.stdout
    assert _info(imgtool, top) == _info(qemu_img, top)


def test_json_bad_dialect_still_refused(tmp_path):
    p = imgtool("info", "json:{'driver': 'qcow2', 'file': {'filename': 'x'}",
                rc=1)
    assert "Could not parse the JSON options" in p.stderr
    qemu_img("info", "json:{'driver': 'qcow2', 'file': {'filename': 'x'}",
             rc=1)


# --- 5. backing options -----------------------------------------------------

def test_convert_backing_fmt_from_o(tmp_path):
    base = tmp_path / "base.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", base, "4M")
    qemu_io("-c", "write -P 0x33 0 1M", base)
    src = tmp_path / "src.raw"
    qemu_img("create", "-q", "-f", "raw", src, "4M")
    qemu_io("-f", "raw", "-c", "write -P 0x33 0 1M", "-c",
            "write -P 0x44 2M 64k", src)
    outs = {}
    for name, tool in (("q", qemu_img), ("i", imgtool)):
        out = tmp_path / f"{name}.qcow2"
        tool("convert", "-f", "raw", "-O", "qcow2", "-B", "base.qcow2",
             "-o", "backing_fmt=qcow2", src, out)
        info = json.loads(qemu_img("info", "--output=json", out).stdout)
        # (the layout differs by design: imgtool leaves unallocated what
        # the backing file already holds, see cmd/convert.c)
        outs[name] = (info["backing-filename"], info["backing-filename-format"])
        qemu_img("compare", "-f", "raw", "-F", "qcow2", src, out)
        qemu_img("check", out)
    assert outs["i"] == outs["q"]
    assert outs["i"][1] == "qcow2"


def test_create_reports_missing_backing_first(tmp_path, as_qemu_img):
    base = tmp_path / "base.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", base, "1M")
    for args in (["-b", "missing.qcow2"],
                 ["-b", "missing.qcow2", "-F", "qcow2"],
                 ["-o", "backing_file=missing.qcow2"],
                 ["-u", "-b", "missing.qcow2"],
                 ["-b", "base.qcow2"]):
        q, i = both(as_qemu_img, "create", "-f", "qcow2", *args, "o.qcow2",
                    cwd=tmp_path)
        assert i.returncode == q.returncode == 1, args
        # qemu-img adds hint lines ("Could not open backing image.",
        # "Detected format of qcow2."); the error line is the same
        assert i.stderr.splitlines()[0] == q.stderr.splitlines()[0], args
        assert not (tmp_path / "o.qcow2").exists()


def test_rebase_reports_missing_backing_first(tmp_path, as_qemu_img):
    for n in ("base", "top"):
        qemu_img("create", "-q", "-f", "qcow2", tmp_path / f"{n}.qcow2", "1M")
    qemu_img("create", "-q", "-f", "raw", tmp_path / "r.raw", "1M")
    qemu_img("rebase", "-u", "-b", "base.qcow2", "-F", "qcow2",
             tmp_path / "top.qcow2")
    for b in ("missing.qcow2", "r.raw"):
        q, i = both(as_qemu_img, "rebase", "-b", b, "top.qcow2", cwd=tmp_path)
        assert (i.returncode, i.stderr) == (q.returncode, q.stderr), b
        assert q.returncode == 1


# --- 8. wording and option lists --------------------------------------------

@pytest.mark.parametrize("olist", ["foo=1,", ",help", "help,", "",
                                   "cluster_size=64k,,,", ",cluster_size=64k"])
def test_invalid_option_lists(tmp_path, as_qemu_img, olist):
    raw = tmp_path / "r.img"
    q2 = tmp_path / "a.qcow2"
    qemu_img("create", "-q", "-f", "raw", raw, "1M")
    qemu_img("create", "-q", "-f", "qcow2", q2, "1M")
    for args in (["create", "-q", "-f", "qcow2", "-o", olist, "x.qcow2", "1M"],
                 ["convert", "-O", "qcow2", "-o", olist, "r.img", "y.qcow2"],
                 ["amend", "-f", "qcow2", "-o", olist, "a.qcow2"],
                 ["measure", "-O", "qcow2", "-o", olist, "--size", "1M"]):
        q, i = both(as_qemu_img, *args, cwd=tmp_path)
        assert (i.returncode, i.stdout, i.stderr) == \
            (q.returncode, q.stdout, q.stderr), args
        assert q.stderr == f"qemu-img: Invalid option list: {olist}\n"
        assert not (tmp_path / "x.qcow2").exists()
        assert not (tmp_path / "y.qcow2").exists()


def test_too_large_images(tmp_path, as_qemu_img):
    img = tmp_path / "h.qcow2"
    for shift in (62, 61, 60):
        qemu_img("create", "-q", "-f", "qcow2", img, "1M")
        with open(img, "r+b") as f:
            f.seek(24)
            f.write((1 << shift).to_bytes(8, "big"))
        q, i = both(as_qemu_img, "info", img)
        assert (i.returncode, i.stderr) == (q.returncode, q.stderr)
        assert q.stderr.endswith(": Image is too big\n")
    q, i = both(as_qemu_img, "create", "-q", "-f", "qcow2", "-o",
                "cluster_size=512", tmp_path / "big.qcow2", "1P")
    assert (i.returncode, i.stderr) == (q.returncode, q.stderr)
    assert "The image size is too large for file format 'qcow2' (try " \
        "using a larger cluster size)" in q.stderr


def test_compare_size_warning_only_when_common_part_equal(tmp_path,
                                                          as_qemu_img):
    s1, s2, s3 = (tmp_path / n for n in ("s1.raw", "s2.raw", "s3.qcow2"))
    qemu_img("create", "-q", "-f", "raw", s1, "1M")
    qemu_img("create", "-q", "-f", "raw", s2, "2M")
    qemu_img("create", "-q", "-f", "qcow2", s3, "2M")
    qemu_io("-f", "raw", "-c", "write -P 1 1536k 4k", s2)
    cases = [(s1, s2), (s2, s1), ("-s", s1, s2), (s1, s3), (s3, s1)]
    for stage in range(2):
        for args in cases:
            q, i = both(as_qemu_img, "compare", *args)
            assert (i.returncode, i.stdout, i.stderr) == \
                (q.returncode, q.stdout, q.stderr), args
        # now the common part differs: qemu-img says only that
        qemu_io("-f", "raw", "-c", "write -P 7 0 4k", s1)
    q, i = both(as_qemu_img, "compare", s1, s2)
    assert q.stdout == i.stdout == "Content mismatch at offset 0!\n"


# --- 6. unknown incompatible features ---------------------------------------

def _feature_image(path, bits, names):
    """A qcow2 v3 image with incompatible `bits` set and `names`
    ((bit, name) pairs, in table order) appended to its feature-name
    table."""
    qemu_img("create", "-q", "-f", "qcow2", path, "1M")
    with open(path, "r+b") as f:
        data = bytearray(f.read(65536))
        hlen = int.from_bytes(data[100:104], "big")
        off = hlen
        while True:
            t = int.from_bytes(data[off:off + 4], "big")
            ln = int.from_bytes(data[off + 4:off + 8], "big")
            if t == 0:
                break
            if t == 0x6803f857:
                table_off, table_len = off, ln
            off += 8 + ((ln + 7) & ~7)
        extra = b"".join(bytes([0, bit]) + name.encode().ljust(46, b"\0")
                         for bit, name in names)
        end = table_off + 8 + table_len
        assert end == off     # the table is the last extension
        data[table_off + 4:table_off + 8] = (table_len + len(extra)).to_bytes(4, "big")
        data[end:end + len(extra) + 8] = extra + bytes(8)
        data[72:80] = bits.to_bytes(8, "big")
        f.seek(0)
        f.write(data)


@pytest.mark.parametrize("bits,names", [
    ((1 << 20) | (1 << 5) | (1 << 63) | (1 << 40), []),
    ((1 << 20) | (1 << 5) | (1 << 63) | (1 << 40),
     [(40, "later bit first"), (20, "my feature")]),
    (1 << 20, [(20, "only one")]),
    ((1 << 9), [(9, "named but"), (33, "not set")]),
])
def test_unknown_feature_names(tmp_path, as_qemu_img, bits, names):
    img = tmp_path / "f.qcow2"
    _feature_image(img, bits, names)
    for cmd in (["info"], ["check"], ["convert", "-O", "raw"]):
        args = cmd + [img] + ([tmp_path / "o.raw"] if cmd[0] == "convert"
                              else [])
        q, i = both(as_qemu_img, *args)
        assert (i.returncode, i.stderr) == (q.returncode, q.stderr), cmd
        assert "Unsupported qcow2 feature(s): " in q.stderr


# --- 4. legacy AES ----------------------------------------------------------

def _aes_opts(path):
    return f"driver=qcow2,file.filename={path},encrypt.key-secret=s0"


@pytest.mark.parametrize("spelling", ["encryption=on", "encrypt.format=aes"])
def test_legacy_aes_create_and_write(tmp_path, spelling):
    pw = tmp_path / "pw"
    pw.write_text("secret")
    obj = ["--object", f"secret,id=s0,file={pw}"]
    imgs = {}
    writes = ["write -P 0x41 0 64k", "write -P 0x42 100k 3k",
              "write -P 0x43 1M 1M"]
    for name, tool, io in (("i", imgtool, lambda *a: imgtool("io", *a)),
                           ("q", qemu_img, lambda *a: qemu_io(*a))):
        img = tmp_path / f"{name}.qcow2"
        p = tool("create", "-f", "qcow2", *obj, "-o",
                 f"{spelling},encrypt.key-secret=s0", img, "4M")
        imgs[name] = (img, p)
        cmds = [x for w in writes for x in ("-c", w)]
        io(*obj, "--image-opts", *cmds, _aes_opts(img))
    (ii, pi), (qi, pq) = imgs["i"], imgs["q"]
    assert (pi.stdout.replace("i.qcow2", "q.qcow2"), pi.stderr) == \
        (pq.stdout, pq.stderr)
    # the same bytes as qemu-img's: same layout, same ciphertext
    assert ii.read_bytes() == qi.read_bytes()
    qemu_io(*obj, "--image-opts", "-c", "read -P 0x41 0 64k", "-c",
            "read -P 0x42 100k 3k", "-c", "read -P 0 103k 1k", "-c",
            "read -P 0x43 1M 1M", _aes_opts(ii))
    info = json.loads(qemu_img("info", "--output=json", ii).stdout)
    assert info["encrypted"] is True
    assert info["format-specific"]["data"]["encrypt"]["format"] == "aes"
    # convert into a new AES image, and back out
    out = tmp_path / "c.qcow2"
    imgtool("convert", *obj, "--image-opts", _aes_opts(ii), "-O", "qcow2",
            "-o", "encrypt.format=aes,encrypt.key-secret=s0", out)
    qemu_img("compare", *obj, "--image-opts", _aes_opts(qi), _aes_opts(out))


def test_legacy_aes_option_errors(tmp_path, as_qemu_img):
    pw = tmp_path / "pw"
    pw.write_text("secret")
    for o in ("encryption=on", "encryption=on,encrypt.format=luks",
              "encrypt.format=aes"):
        q, i = both(as_qemu_img, "create", "-q", "-f", "qcow2", "-o", o,
                    tmp_path / "x.qcow2", "1M")
        assert (i.returncode, i.stderr) == (q.returncode, q.stderr), o
        assert q.returncode == 1
        assert not (tmp_path / "x.qcow2").exists()


# --- 10. space and layout ---------------------------------------------------

def _allocated(path):
    return os.stat(path).st_blocks * 512


@pytest.mark.parametrize("prealloc", ["falloc", "full", "metadata"])
@pytest.mark.parametrize("raw", ["off", "on"])
def test_data_file_preallocation(tmp_path, as_qemu_img, prealloc, raw):
    res = {}
    for name, exe in (("q", "qemu-img"), ("i", as_qemu_img)):
        img, data = tmp_path / f"{name}.qcow2", tmp_path / f"{name}.data"
        p = run([exe, "create", "-q", "-f", "qcow2", "-o",
                 f"data_file={data},data_file_raw={raw},"
                 f"preallocation={prealloc}", img, "8M"], check=False)
        res[name] = (p.returncode, p.stderr.replace(str(tmp_path / name),
                                                     "X"))
        if p.returncode == 0:
            res[name] += (os.path.getsize(data), _allocated(data) >= 8 << 20,
                          [(e["start"], e["length"], e["data"], e["zero"])
                           for e in json.loads(qemu_img(
                               "map", "--output=json", img).stdout)])
            qemu_img("check", img)
        else:
            assert not img.exists() and not data.exists()
    assert res["i"] == res["q"]
    if prealloc != "metadata":
        assert res["q"][3] is True   # the data file's blocks are allocated


@pytest.mark.parametrize("cs", ["4k", "64k"])
@pytest.mark.parametrize("to", ["16M", "1M", "100k"])
def test_shrink_preallocated_gives_space_back(tmp_path, cs, to):
    res = {}
    for name, tool in (("q", qemu_img), ("i", imgtool)):
        img = tmp_path / f"{name}.qcow2"
        qemu_img("create", "-q", "-f", "qcow2", "-o",
                 f"preallocation=metadata,cluster_size={cs}", img, "64M")
        qemu_io("-c", "write -P 1 0 64k", img)
        tool("resize", "-q", "--shrink", img, to)
        qemu_img("check", img)
        res[name] = (os.path.getsize(img), _allocated(img),
                     qemu_img("map", "--output=json", img).stdout)
    assert res["i"] == res["q"]
    assert res["i"][0] < 17 << 20


def test_measure_size_errors(as_qemu_img):
    for size in ("1.5x", "8E", "-5"):
        q, i = both(as_qemu_img, "measure", "-O", "qcow2", "--size", size)
        assert (i.returncode, i.stderr) == (q.returncode, q.stderr), size
        assert q.returncode == 1


@pytest.mark.parametrize("cs", ["512", "4k", "128k", "1M", "2M"])
@pytest.mark.parametrize("size", ["100G", "1T", "16T", "1P"])
def test_measure_large_images(as_qemu_img, cs, size):
    q, i = both(as_qemu_img, "measure", "--output=json", "-O", "qcow2",
                "-o", f"cluster_size={cs}", "--size", size)
    assert (i.returncode, i.stdout, i.stderr) == \
        (q.returncode, q.stdout, q.stderr)


def test_map_overlay_longer_than_backing(tmp_path):
    base, top = tmp_path / "b.qcow2", tmp_path / "t.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", base, "1M")
    qemu_io("-c", "write -P 1 0 512k", base)
    qemu_img("create", "-q", "-f", "qcow2", "-b", "b.qcow2", "-F", "qcow2",
             top, "4M")
    qemu_io("-c", "write -P 2 2M 64k", top)
    for fmt in ("json", "human"):
        assert imgtool("map", f"--output={fmt}", top).stdout == \
            qemu_img("map", f"--output={fmt}", top).stdout


# --- 7. check ----------------------------------------------------------------

def _hdr(d, off, n):
    return int.from_bytes(d[off:off + n], "big")


def _corrupt(path, what):
    with open(path, "r+b") as f:
        d = f.read()
        cs = 1 << _hdr(d, 20, 4)
        rt = _hdr(d, 48, 8)
        rb = _hdr(d, rt, 8)
        l1 = _hdr(d, 40, 8)
        l2 = _hdr(d, l1, 8) & 0x00fffffffffffe00
        data = _hdr(d, l2, 8) & 0x00fffffffffffe00
        if what == "l2-refcount-0":
            f.seek(rb + 2 * (l2 // cs))
            f.write(b"\0\0")
        elif what == "data-refcount-0":
            f.seek(rb + 2 * (data // cs))
            f.write(b"\0\0")
        elif what == "refblock-lost":
            f.seek(rt)
            f.write(bytes(8))
        elif what == "l1-copied-offset-0":
            # an entry for an area nothing was ever written to
            f.seek(l1 + 8 * 3)
            f.write((1 << 63).to_bytes(8, "big"))


@pytest.mark.parametrize("cs", ["4k", "64k"])
@pytest.mark.parametrize("what", ["l2-refcount-0", "data-refcount-0",
                                  "refblock-lost"])
def test_check_rebuild_reports_repairs(tmp_path, as_qemu_img, cs, what):
    out = {}
    for name, exe in (("q", "qemu-img"), ("i", as_qemu_img)):
        img = tmp_path / f"{name}.qcow2"
        qemu_img("create", "-q", "-f", "qcow2", "-o", f"cluster_size={cs}",
                 img, "4G")
        qemu_io("-c", "write -P 1 0 128k", "-c", "write -P 2 600M 64k",
                "-c", "write -P 3 3G 64k", img)
        _corrupt(img, what)
        runs = []
        for args in (["check"], ["check", "-r", "all"], ["check"]):
            p = run([exe, *args, img], check=False)
            runs.append((p.returncode, p.stdout.replace(str(img), "X"),
                         p.stderr.replace(str(img), "X")))
        out[name] = runs
        qemu_io("-c", "read -P 2 600M 64k", "-c", "read -P 3 3G 64k", img)
    assert out["i"] == out["q"]
    assert "were found and repaired" in out["q"][1][1]
    assert out["q"][2][0] == 0
    if cs == "64k" and what != "refblock-lost":
        # the rebuild case: its per-cluster lines are the point
        assert "Rebuilding refcount structure\nRepairing cluster " in \
            out["q"][1][2]


def test_check_l1_copied_without_offset_is_corruption(tmp_path):
    img = tmp_path / "c.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", img, "4G")
    qemu_io("-c", "write -P 1 0 128k", img)
    _corrupt(img, "l1-copied-offset-0")
    # qemu-img reads cluster 0 (the header) as an L2 table there and
    # reports whatever that yields; both call the image corrupt
    q = qemu_img("check", img, rc=2)
    i = imgtool("check", img, rc=2)
    assert "errors were found on the image" in q.stdout
    assert "ERROR OFLAG_COPIED L2 cluster: l1_index=3 " in i.stderr
    assert "errors were found on the image." in i.stdout


# --- 9. progress -------------------------------------------------------------

def _progress_source(d, kind):
    if kind == "raw-full":
        p = d / "s.raw"
        with open(p, "wb") as f:
            f.write(os.urandom(32 << 20))
        return ["-f", "raw", p]
    if kind == "raw-holes":
        p = d / "s.raw"
        qemu_img("create", "-q", "-f", "raw", p, "48M")
        qemu_io("-f", "raw", "-c", "write -P 1 1M 5M", "-c",
                "write -P 2 20M 300k", "-c", "write -P 3 40M 8M", p)
        return ["-f", "raw", p]
    p = d / "s.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", p, "64M")
    qemu_io("-c", "write -P 1 0 3M", "-c", "write -P 2 10M 5M", "-c",
            "write -z 20M 2M", "-c", "write -P 3 30M 100k", p)
    if kind == "qcow2-two":
        q = d / "t.qcow2"
        qemu_img("create", "-q", "-f", "qcow2", q, "8M")
        qemu_io("-c", "write -P 4 1M 3M", q)
        return ["-f", "qcow2", p, q]
    return ["-f", "qcow2", p]


@pytest.mark.parametrize("kind", ["raw-full", "raw-holes", "qcow2", "qcow2-two"])
@pytest.mark.parametrize("extra", [[], ["-S", "0"], ["-c"]])
def test_convert_progress_steps(tmp_path, kind, extra):
    src = _progress_source(tmp_path, kind)
    outs = []
    for name, tool in (("q", qemu_img), ("i", imgtool)):
        out = tmp_path / f"{name}.qcow2"
        p = tool("convert", "-p", *extra, *src, "-O", "qcow2", out)
        outs.append(p.stdout)
    assert outs[1] == outs[0]
    assert outs[0].count("/100%)") >= 3


# --- 8b. help inside an option list ------------------------------------------

# qemu-img reads names up to '=' or ',' and values up to a single ',': a
# "help" flag after ",," still asks for the list, one inside a value not.
@pytest.mark.parametrize("olist", ["help,,", "help,,,,", "help,,x", "x,,help",
                                   "?,,", "help,,=1", "foo,,,,help",
                                   "x=1,,,help", "cluster_size=64k,help",
                                   "help", "help,,cluster_size=64k"])
def test_help_inside_option_lists(tmp_path, as_qemu_img, olist):
    qemu_img("create", "-q", "-f", "raw", tmp_path / "r.img", "1M")
    qemu_img("create", "-q", "-f", "qcow2", tmp_path / "a.qcow2", "1M")
    for args in (["create", "-f", "qcow2", "x.qcow2", "1M"],
                 ["create", "-f", "raw", "x.qcow2", "1M"],
                 ["create", "x.qcow2", "1M"],
                 ["convert", "-O", "qcow2", "r.img", "y.qcow2"],
                 ["convert", "-O", "raw", "r.img", "y.qcow2"],
                 ["convert", "r.img", "y.qcow2"],
                 ["amend", "-f", "qcow2", "a.qcow2"],
                 ["amend", "a.qcow2"],
                 ["amend", "-f", "raw", "r.img"]):
        args = args[:1] + ["-o", olist] + args[1:]
        q, i = both(as_qemu_img, *args, cwd=tmp_path)
        assert (i.returncode, i.stdout, i.stderr) == \
            (q.returncode, q.stdout, q.stderr), args
        if args[-1] != "r.img":
            assert q.returncode == 0 and "options" in q.stdout.split("\n")[0]
        assert not (tmp_path / "x.qcow2").exists()
        assert not (tmp_path / "y.qcow2").exists()


# --- 8c. open errors: qemu-img names the image, then the block layer's words --

def _open_error_fixtures(d):
    (d / "dir.qcow2").mkdir()
    (d / "empty.img").write_bytes(b"")
    qemu_img("create", "-q", "-f", "qcow2", d / "a.qcow2", "1M")
    qemu_img("create", "-q", "-f", "qcow2", "-b", "nob.qcow2", "-F", "qcow2",
             "-u", d / "mid.qcow2", "1M")
    qemu_img("create", "-q", "-f", "qcow2", "-b", "mid.qcow2", "-F", "qcow2",
             "-u", d / "top.qcow2", "1M")
    head = (d / "a.qcow2").read_bytes()[:104]
    (d / "cut50.qcow2").write_bytes(head[:50])
    (d / "cut100.qcow2").write_bytes(head[:100])
    qemu_img("create", "-q", "-f", "qcow2", "-b", "cut50.qcow2", "-F",
             "qcow2", "-u", d / "overcut.qcow2", "1M")


# the commands that fail to open leave every fixture as it was
_OPEN_CMDS = [["info"], ["check"], ["map"], ["measure", "-O", "qcow2"],
              ["compare", "a.qcow2"], ["convert", "-O", "raw", "@", "o.img"],
              ["commit"], ["rebase", "-u", "-b", ""], ["resize", "@", "2M"],
              ["amend", "-o", "compat=1.1"], ["dd", "if=@", "of=o.img"]]


@pytest.mark.parametrize("name", ["nonexist.qcow2", "dir.qcow2", "empty.img",
                                  "mid.qcow2", "top.qcow2", "cut50.qcow2",
                                  "cut100.qcow2", "overcut.qcow2"])
@pytest.mark.parametrize("fmt", [[], ["-f", "qcow2"], ["-f", "raw"]])
def test_open_error_wording(tmp_path, as_qemu_img, name, fmt):
    _open_error_fixtures(tmp_path)
    n = fails = 0
    for cmd in _OPEN_CMDS + [["snapshot", "-l"], ["snapshot", "-d", "s"],
                             ["bitmap", "--add", "@", "b0"]]:
        if cmd[0] == "snapshot" and fmt:
            continue          # qemu-img snapshot takes no -f
        if name in ("empty.img", "cut50.qcow2", "cut100.qcow2") and \
                not fmt and cmd[0] in ("commit", "rebase", "resize", "amend",
                                       "bitmap", "snapshot"):
            continue          # probed raw, written: the warning's layout
        if cmd[0] in ("bitmap", "snapshot") and name in (
                "mid.qcow2", "top.qcow2", "overcut.qcow2"):
            continue          # which opens the chain differs (see report)
        if fmt == ["-f", "raw"] and cmd[0] in ("rebase", "bitmap"):
            continue          # raw's own refusals are worded otherwise
        args = [cmd[0], *fmt] + ([x.replace("@", name) for x in cmd[1:]]
                                 if "@" in "".join(cmd) or cmd[0] == "dd"
                                 else [*cmd[1:], name])
        q, i = both(as_qemu_img, *args, cwd=tmp_path)
        assert (i.returncode, i.stdout, i.stderr) == \
            (q.returncode, q.stdout, q.stderr), args
        n += 1
        fails += q.returncode != 0
    assert n >= 7 and fails >= 1
