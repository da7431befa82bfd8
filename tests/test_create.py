"""imgtool create against qemu-img create: the same "Formatting" line, the
same image (as `qemu-img info` describes it), images qemu-img check finds
clean, and qemu-img's refusals (backing file without format, size twice,
unknown options, bad sizes) as one-line errors that leave nothing behind."""
import json
import os

import pytest

from conftest import imgtool, qemu_check_clean, qemu_img, qemu_info, run


def info_wo_size(path, tool="qemu"):
    if tool == "qemu":
        j = qemu_info(path)
    else:
        j = json.loads(imgtool("info", "--output=json", path).stdout)
    j.pop("actual-size", None)
    j.pop("filename", None)
    return j


def both_create(tmp, args, size=None, name="img"):
    """Creates the same image with both tools; returns (ours, theirs)
    paths and stdout lines (with the file names made equal)."""
    ours, theirs = tmp / ("i-" + name), tmp / ("q-" + name)
    tail = [size] if size is not None else []
    p = imgtool("create", *args, ours, *tail)
    q = qemu_img("create", *args, theirs, *tail)
    return ours, theirs, p.stdout.replace(str(ours), "X"), \
        q.stdout.replace(str(theirs), "X")


RAW_SIZES = ["1G", "1k", "0", "513", "1.5G", "1b", "64M", "3T"]


@pytest.mark.parametrize("size", RAW_SIZES)
def test_raw_formatting_line_and_size(tmp, size):
    ours, theirs, out, qout = both_create(tmp, ["-f", "raw"], size)
    assert out == qout
    assert os.path.getsize(ours) == os.path.getsize(theirs)


@pytest.mark.parametrize("opts", ["preallocation=off", "preallocation=falloc",
                                  "preallocation=full", "size=2M",
                                  "extent_size_hint=2M",
                                  "nocow=on,extent_size_hint=0"])
def test_raw_options(tmp, opts):
    size = None if opts.startswith("size=") else "2M"
    ours, theirs, out, qout = both_create(tmp, ["-f", "raw", "-o", opts],
                                          size)
    assert out == qout
    assert os.path.getsize(ours) == os.path.getsize(theirs)
    if opts.endswith("full") or opts.endswith("falloc"):
        assert os.stat(ours).st_blocks * 512 >= 2 << 20


def test_default_format_is_raw(tmp):
    p = imgtool("create", tmp / "x", "1M")
    assert p.stdout == f"Formatting '{tmp / 'x'}', fmt=raw size=1048576\n"
    assert imgtool("info", "--output=json", tmp / "x").stdout.count('"raw"')


QCOW2_OPTS = [
    "cluster_size=4k", "cluster_size=2M", "cluster_size=512",
    "compat=0.10", "compat=1.1", "compat=v3",
    "lazy_refcounts=on", "lazy_refcounts=true",
    "refcount_bits=1", "refcount_bits=8", "refcount_bits=64",
    "extended_l2=on", "extended_l2=on,cluster_size=32k",
    "compression_type=zlib", "compression_type=zstd",
    "preallocation=off", "preallocation=metadata", "preallocation=falloc",
    "preallocation=full",
    "cluster_size=64k,lazy_refcounts=on,refcount_bits=32",
    "cluster_size=4k,cluster_size=8k",
    "compat=0.10,refcount_bits=16",
    "extent_size_hint=4M,nocow=on",
]


@pytest.mark.parametrize("opts", QCOW2_OPTS)
def test_qcow2_options_match_qemu(tmp, opts):
    ours, theirs, out, qout = both_create(tmp, ["-f", "qcow2", "-o", opts],
                                          "16M")
    assert out == qout
    assert info_wo_size(ours, "imgtool") == info_wo_size(theirs)
    # qemu-img's view of our image is the same as of its own.
    assert info_wo_size(ours) == info_wo_size(theirs)
    qemu_check_clean(ours)


def test_qcow2_data_file(tmp):
    ours, theirs = tmp / "i.qcow2", tmp / "q.qcow2"
    p = imgtool("create", "-f", "qcow2", "-o", f"data_file={tmp}/i.data",
                ours, "4M")
    q = qemu_img("create", "-f", "qcow2", "-o", f"data_file={tmp}/q.data",
                 theirs, "4M")
    assert p.stdout.replace("i.data", "x").replace(str(ours), "X") == \
        q.stdout.replace("q.data", "x").replace(str(theirs), "X")
    a, b = info_wo_size(ours), info_wo_size(theirs)
    a["format-specific"]["data"].pop("data-file")
    b["format-specific"]["data"].pop("data-file")
    assert a == b
    qemu_check_clean(ours)


def test_qcow2_sizes(tmp):
    for size in ["1", "513", "1k", "1G", "2T", "0"]:
        ours, theirs, out, qout = both_create(tmp, ["-f", "qcow2"], size,
                                              name=size)
        assert out == qout
        assert info_wo_size(ours)["virtual-size"] == \
            info_wo_size(theirs)["virtual-size"]
        qemu_check_clean(ours)


def test_backing_file_size_defaults_to_backing(tmp):
    base = tmp / "base.qcow2"
    qemu_img("create", "-f", "qcow2", base, "10M")
    ours, theirs, out, qout = both_create(
        tmp, ["-f", "qcow2", "-b", str(base), "-F", "qcow2"])
    assert out == qout
    assert "size=10485760" in out
    a, b = info_wo_size(ours), info_wo_size(theirs)
    assert a == b
    qemu_check_clean(ours)


def test_backing_raw_and_explicit_size(tmp):
    base = tmp / "base.raw"
    qemu_img("create", "-f", "raw", base, "3M")
    ours, theirs, out, qout = both_create(
        tmp, ["-f", "qcow2", "-b", str(base), "-F", "raw"], "5M")
    assert out == qout
    assert info_wo_size(ours)["virtual-size"] == 5 << 20
    assert info_wo_size(ours)["backing-filename-format"] == "raw"


def test_relative_backing_name_kept(tmp):
    d = tmp / "d"
    d.mkdir()
    qemu_img("create", "-f", "qcow2", d / "base.qcow2", "1M")
    p = imgtool("create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2",
                d / "top.qcow2")
    assert "backing_file=base.qcow2 backing_fmt=qcow2" in p.stdout
    j = qemu_info(d / "top.qcow2")
    assert j["backing-filename"] == "base.qcow2"
    assert j["full-backing-filename"] == str(d / "base.qcow2")
    assert j["virtual-size"] == 1 << 20


def test_backing_via_o_options(tmp):
    base = tmp / "base.qcow2"
    qemu_img("create", "-f", "qcow2", base, "2M")
    ours, theirs, out, qout = both_create(
        tmp, ["-f", "qcow2", "-o", f"backing_file={base},backing_fmt=qcow2"])
    assert out == qout


def err_line(p):
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("imgtool: ")
    return lines[0]


def test_backing_without_format_refused(tmp):
    base = tmp / "base.qcow2"
    qemu_img("create", "-f", "qcow2", base, "1M")
    for extra in ([], ["-u"]):
        p = imgtool("create", "-f", "qcow2", *extra, "-b", base,
                    tmp / "x.qcow2", "1M", rc=1)
        assert "Backing file specified without backing format" in err_line(p)
        assert p.stdout == ""
        assert not (tmp / "x.qcow2").exists()
        qemu_img("create", "-f", "qcow2", *extra, "-b", base,
                 tmp / "y.qcow2", "1M", rc=1)


def test_backing_format_without_file_refused(tmp):
    p = imgtool("create", "-f", "qcow2", "-F", "qcow2", tmp / "x.qcow2",
                "1M", rc=1)
    assert "Backing format cannot be used without backing file" in err_line(p)


def test_unsafe_skips_opening_backing(tmp):
    ours, theirs, out, qout = both_create(
        tmp, ["-f", "qcow2", "-u", "-b", "missing.qcow2", "-F", "qcow2"],
        "1M")
    assert out == qout
    j = info_wo_size(ours)
    assert j["backing-filename"] == "missing.qcow2"
    assert j["virtual-size"] == 1 << 20


def test_unsafe_without_size_refused(tmp):
    p = imgtool("create", "-f", "qcow2", "-u", "-b", "missing.qcow2", "-F",
                "qcow2", tmp / "x.qcow2", rc=1)
    assert "Image creation needs a size parameter" in err_line(p)
    qemu_img("create", "-f", "qcow2", "-u", "-b", "missing.qcow2", "-F",
             "qcow2", tmp / "y.qcow2", rc=1)


def test_missing_backing_refused(tmp):
    p = imgtool("create", "-f", "qcow2", "-b", tmp / "missing.qcow2", "-F",
                "qcow2", tmp / "x.qcow2", "1M", rc=1)
    err_line(p)
    assert p.stdout == ""
    assert not (tmp / "x.qcow2").exists()


def test_backing_not_supported_by_raw(tmp):
    qemu_img("create", "-f", "raw", tmp / "b.raw", "1M")
    p = imgtool("create", "-f", "raw", "-b", tmp / "b.raw", "-F", "raw",
                tmp / "x.raw", rc=1)
    assert "Backing file not supported for file format 'raw'" in err_line(p)


def test_size_given_twice_refused(tmp):
    p = imgtool("create", "-f", "qcow2", "-o", "size=2M", tmp / "x.qcow2",
                "1M", rc=1)
    assert "The image size must be specified only once" in err_line(p)
    qemu_img("create", "-f", "qcow2", "-o", "size=2M", tmp / "y.qcow2", "1M",
             rc=1)
    assert not (tmp / "x.qcow2").exists()


def test_size_from_o_option(tmp):
    ours, theirs, out, qout = both_create(tmp, ["-f", "qcow2", "-o",
                                                "size=3M"])
    assert out == qout


def test_options_after_filename(tmp):
    p = imgtool("create", tmp / "x.qcow2", "-f", "qcow2", "-o",
                "cluster_size=4k", "1M")
    assert "cluster_size=4096" in p.stdout
    assert qemu_info(tmp / "x.qcow2")["cluster-size"] == 4096


@pytest.mark.parametrize("opts,what", [
    ("foo=bar", "Invalid parameter 'foo'"),
    ("cluster_size=abc", "cluster_size"),
    ("lazy_refcounts=1", "lazy_refcounts"),
    ("refcount_bits=x", "refcount_bits"),
    ("size=abc", "size"),
    ("extent_size_hint=x", "extent_size_hint"),
])
def test_bad_options_refused(tmp, opts, what):
    p = imgtool("create", "-f", "qcow2", "-o", opts, tmp / "x.qcow2", "1M",
                rc=1)
    assert what in err_line(p)
    assert p.stdout == ""
    assert not (tmp / "x.qcow2").exists()
    qemu_img("create", "-f", "qcow2", "-o", opts, tmp / "y.qcow2", "1M",
             rc=1)


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_extent_size_hint_too_large(tmp, fmt):
    # Checked by the file layer, after the Formatting line, as in QEMU.
    p = imgtool("create", "-f", fmt, "-o", "extent_size_hint=8G",
                tmp / "x", "1M", rc=1)
    assert err_line(p) == f"imgtool: {tmp / 'x'}: Extent size hint is too large"
    assert not (tmp / "x").exists()
    q = qemu_img("create", "-f", fmt, "-o", "extent_size_hint=8G",
                 tmp / "y", "1M", rc=1)
    assert p.stdout.replace("'" + str(tmp / "x"), "'" + str(tmp / "y")) == \
        q.stdout


def test_invalid_cluster_size_refused(tmp):
    p = imgtool("create", "-q", "-f", "qcow2", "-o", "cluster_size=1000",
                tmp / "x.qcow2", "1M", rc=1)
    err_line(p)
    qemu_img("create", "-q", "-f", "qcow2", "-o", "cluster_size=1000",
             tmp / "y.qcow2", "1M", rc=1)


@pytest.mark.parametrize("size", ["1Q", "-1", "", "abc", "1.5", "9E", "16E"])
def test_bad_sizes_refused(tmp, size):
    p = imgtool("create", "-f", "raw", tmp / "x", "--", size, rc=1)
    assert "Invalid image size specified" in err_line(p)
    assert not (tmp / "x").exists()
    qemu_img("create", "-f", "raw", tmp / "y", "--", size, rc=1)


def test_unknown_format(tmp):
    p = imgtool("create", "-f", "foo", tmp / "x", "1M", rc=1)
    assert "Unknown file format 'foo'" in err_line(p)


def test_argument_errors(tmp):
    p = imgtool("create", "-f", "qcow2", rc=1)
    assert "Expecting image file name" in p.stderr
    p = imgtool("create", tmp / "x", "1M", "extra", rc=1)
    assert "Unexpected argument: extra" in p.stderr
    p = imgtool("create", "-Z", tmp / "x", "1M", rc=1)
    assert "unrecognized option '-Z'" in p.stderr
    p = imgtool("create", tmp / "x", "1M", "-f", rc=1)
    assert "missing argument for option '-f'" in p.stderr


def test_quiet(tmp):
    p = imgtool("create", "-q", "-f", "qcow2", tmp / "x.qcow2", "1M")
    assert p.stdout == "" and p.stderr == ""
    qemu_check_clean(tmp / "x.qcow2")


def test_help(tmp):
    p = imgtool("create", "--help")
    assert p.stdout.startswith("usage: imgtool create")
    assert p.returncode == 0


def parse_help(text):
    """{name: line} of a -o help listing."""
    out = {}
    for line in text.splitlines():
        if line.startswith("  ") and "=" in line:
            out[line.split("=")[0].strip()] = line
    return out


def test_o_help_qcow2_layout(tmp):
    p = imgtool("create", "-f", "qcow2", "-o", "help")
    q = qemu_img("create", "-f", "qcow2", "-o", "help")
    ours, theirs = parse_help(p.stdout), parse_help(q.stdout)
    # Protocol options (nocow...) show up in qemu-img's merged listing.
    merged = qemu_img("create", "-f", "qcow2", "-o", "help", tmp / "x")
    theirs = parse_help(merged.stdout) | theirs
    assert p.stdout.startswith("Supported qcow2 options:\n")
    assert p.stdout.endswith("\nThe protocol level may support further "
                             "options.\nSpecify the target filename to "
                             "include those options.\n")
    names = list(ours)
    assert names == sorted(names)
    # Every option we offer is one qemu-img offers, with the same type.
    for name, line in ours.items():
        assert name in theirs, name
        assert line.split(" - ")[0].rstrip() == \
            theirs[name].split(" - ")[0].rstrip()
    for must in ["cluster_size", "compat", "backing_file", "backing_fmt",
                 "lazy_refcounts", "refcount_bits", "size", "preallocation",
                 "extended_l2", "compression_type"]:
        assert must in ours
    assert p.stdout.count(" - ") == len(ours)
    # "?" means the same, also mixed with other options.
    assert imgtool("create", "-f", "qcow2", "-o", "?").stdout == p.stdout
    assert imgtool("create", "-f", "qcow2", "-o",
                   "cluster_size=4k,help").stdout == p.stdout


def test_o_help_with_filename(tmp):
    p = imgtool("create", "-f", "raw", "-o", "help", tmp / "x")
    assert p.stdout.startswith("Supported options:\n")
    assert "  size=<size>            - Virtual disk size\n" in p.stdout
    assert "protocol level" not in p.stdout
    assert not (tmp / "x").exists()


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_o_help_identical_to_qemu(fmt):
    """Without a filename the listing is the format's own options."""
    assert imgtool("create", "-f", fmt, "-o", "help").stdout == \
        qemu_img("create", "-f", fmt, "-o", "help").stdout


def test_o_help_with_filename_lists_protocol_options(tmp):
    p = imgtool("create", "-f", "raw", "-o", "help", tmp / "x")
    q = qemu_img("create", "-f", "raw", "-o", "help", tmp / "x")
    ours = set(p.stdout.splitlines())
    assert ours <= set(q.stdout.splitlines())
    assert "  nocow=<bool (on/off)>  - Turn off copy-on-write (valid only " \
        "on btrfs)" in ours


@pytest.mark.parametrize("opts", [
    "cluster_size=1000", "compat=0.10,lazy_refcounts=on", "compat=0.9",
    "refcount_bits=3", "compression_type=lzo", "extended_l2=on,cluster_size=8k",
    "data_file_raw=on", "preallocation=bogus", "compat=0.10,extended_l2=on",
])
def test_driver_refusals_match_qemu(tmp, opts):
    """Options qemu-img accepts syntactically but the driver refuses: the
    same Formatting line, then the same one-line error."""
    ours = imgtool("create", "-f", "qcow2", "-o", opts, tmp / "i", "1M",
                   rc=1)
    theirs = qemu_img("create", "-f", "qcow2", "-o", opts, tmp / "q", "1M",
                      rc=1)
    assert ours.stdout.replace(str(tmp / "i"), "X") == \
        theirs.stdout.replace(str(tmp / "q"), "X")
    assert ours.stderr.replace(str(tmp / "i"), "X").replace(
        "imgtool:", "qemu-img:") == \
        theirs.stderr.replace(str(tmp / "q"), "X")


@pytest.mark.parametrize("size", ["0x100000", "0X10", "0x1M", " 1M", "1.5M"])
def test_size_spellings_like_qemu_img(tmp, size):
    """Hexadecimal sizes and leading blanks mean what they mean to
    qemu-img."""
    ours, ref = tmp / "ours.raw", tmp / "ref.raw"
    imgtool("create", "-q", "-f", "raw", ours, size)
    qemu_img("create", "-q", "-f", "raw", ref, size)
    assert os.path.getsize(ours) == os.path.getsize(ref)


@pytest.mark.parametrize("size", ["0x1.8M", "0x", " -1M", "1.5"])
def test_bad_size_spellings_refused_like_qemu_img(tmp, size):
    p = imgtool("create", "-f", "raw", tmp / "x.raw", size, rc=1)
    q = qemu_img("create", "-f", "raw", tmp / "y.raw", size, check=False)
    assert q.returncode == 1
    assert p.stderr.startswith("imgtool: Invalid image size specified")
    assert not os.path.exists(tmp / "x.raw")


@pytest.mark.parametrize("size,opts", [
    ("1E", ""), ("2251799813685760", ""),
    ("2251799813685248", "extended_l2=on"),
    ("1E", "data_file=DATA"), ("1E", "cluster_size=512"),
])
def test_failed_create_leaves_nothing(tmp, size, opts):
    """A create that fails leaves no half-made image (it used to leave a
    valid 196608-byte qcow2 of virtual size 0), nor the data file it
    made; qemu-img removes them too and prints the same line.  The size
    limit is qemu-img's to the byte (an L1 table of at most 32 MiB)."""
    args = ["-f", "qcow2"]
    if opts:
        args += ["-o", opts.replace("DATA", str(tmp / "i.data"))]
    ours = imgtool("create", *args, tmp / "i", size, rc=1)
    qargs = ["-f", "qcow2"]
    if opts:
        qargs += ["-o", opts.replace("DATA", str(tmp / "q.data"))]
    theirs = qemu_img("create", *qargs, tmp / "q", size, rc=1)
    assert ours.stderr.replace(str(tmp / "i"), "X").replace(
        "imgtool:", "qemu-img:") == theirs.stderr.replace(str(tmp / "q"), "X")
    assert sorted(os.listdir(tmp)) == []


def test_size_limit_is_qemus(tmp):
    """One L1 table of 32 MiB: 2 PiB with 64k clusters, half that with
    extended L2 entries; both tools accept exactly the same sizes."""
    for size, opts in [("2251799813685248", "cluster_size=64k"),
                       ("1125899906842624", "extended_l2=on"),
                       ("1E", "cluster_size=2M")]:
        imgtool("create", "-q", "-f", "qcow2", "-o", opts, tmp / "i", size)
        qemu_img("create", "-q", "-f", "qcow2", "-o", opts, tmp / "q", size)
        qemu_check_clean(str(tmp / "i"))
        assert info_wo_size(tmp / "i") == info_wo_size(tmp / "q")
        os.unlink(tmp / "i")
        os.unlink(tmp / "q")


def test_failed_create_keeps_an_existing_file(tmp):
    """A file that existed before the command is never removed, and a
    size refused before the disk is touched leaves it as it was (qemu-img
    removes it: a deliberate difference)."""
    img = tmp / "old.qcow2"
    img.write_bytes(b"precious" * 1000)
    imgtool("create", "-f", "qcow2", img, "1E", rc=1)
    assert img.read_bytes() == b"precious" * 1000
    data = tmp / "old.data"
    data.write_bytes(b"precious")
    imgtool("create", "-f", "qcow2", "-o", f"data_file={data}",
            tmp / "new.qcow2", "1E", rc=1)
    assert data.read_bytes() == b"precious"
    assert not (tmp / "new.qcow2").exists()
