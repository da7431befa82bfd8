"""Crafted LUKS headers: imgtool must refuse them quickly, in bounded
memory, with one error line, and leave the file as it was.

Each image is a small imgtool-made volume (raw `luks`, or qcow2 with
encrypt.format=luks) with header fields set to hostile values: iteration
counts past LUKS_MAX_ITERATIONS or slots whose PBKDF2 work adds up past
LUKS_MAX_WORK, huge or zero key sizes and stripes, key material placed
over the header, over another slot, past the payload or past the end of
the file, payload offsets past the end, unterminated names, truncated
files, and qcow2 crypto header extensions pointing outside the image.
`info` (no key), `io` and `amend` (with the key) each run under a
256 MiB address-space limit and a time limit, and must exit non-zero
with exactly one line, "imgtool: ...", without writing a byte.
"""
import functools
import hashlib
import struct

import pytest

import limits
from conftest import imgtool

TIMEOUT = 5
SLOT0 = 208
SLOT = 48
ENABLED = 0x00AC71F3
MAX_ITER = 1 << 26


run_limited = functools.partial(limits.run_limited, timeout=TIMEOUT)


def be32(v):
    return struct.pack(">I", v)


def slot(i, field):
    return SLOT0 + SLOT * i + {"active": 0, "iterations": 4,
                               "key_offset": 40, "stripes": 44}[field]


# name -> list of (offset in the LUKS header, bytes), or a callable
# taking the header area's bytes and returning the new ones.
def all_slots_max_work(h):
    for i in range(8):
        h = h[:slot(i, "active")] + be32(ENABLED) + be32(MAX_ITER) + \
            h[slot(i, "iterations") + 4:]
    return h


PATCHES = {
    "slot-iterations-max": [(slot(0, "iterations"), be32(0xFFFFFFFF))],
    "slot-iterations-over-cap": [(slot(0, "iterations"),
                                  be32(MAX_ITER + 1))],
    "slot-iterations-zero": [(slot(0, "iterations"), be32(0))],
    "mk-iterations-max": [(164, be32(0xFFFFFFFF))],
    "mk-iterations-zero": [(164, be32(0))],
    "work-sum-over-cap": all_slots_max_work,
    "key-bytes-huge": [(108, be32(0x7FFFFFFF))],
    "key-bytes-max": [(108, be32(0xFFFFFFFF))],
    "key-bytes-zero": [(108, be32(0))],
    "stripes-max": [(slot(0, "stripes"), be32(0xFFFFFFFF))],
    "stripes-zero": [(slot(0, "stripes"), be32(0))],
    "stripes-inactive-slot": [(slot(5, "stripes"), be32(0x40000000))],
    "key-offset-max": [(slot(0, "key_offset"), be32(0xFFFFFFFF))],
    "key-offset-in-header": [(slot(0, "key_offset"), be32(0))],
    "key-offset-overlaps-slot": [(slot(1, "key_offset"), be32(9))],
    "key-offset-in-payload": [(slot(7, "key_offset"), be32(4039))],
    "payload-offset-max": [(104, be32(0xFFFFFFFF))],
    "payload-offset-zero": [(104, be32(0))],
    "payload-and-material-past-end": [(104, be32(0x7FFFFFFF)),
                                      (slot(3, "key_offset"),
                                       be32(0x7FFF0000))],
    "slot-state-garbage": [(slot(2, "active"), be32(0x12345678))],
    "version-2": [(6, b"\x00\x02")],
    "cipher-unterminated": [(8, b"A" * 32)],
    "mode-unterminated": [(40, b"xts-plain64:" + b"s" * 20)],
    "hash-unknown": [(72, b"whirlpool".ljust(32, b"\0"))],
}


def patch(data, how):
    if callable(how):
        return how(data)
    for off, b in how:
        data = data[:off] + b + data[off + len(b):]
    return data


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    d = tmp_path_factory.mktemp("luks-hostile")
    pw = d / "pw"
    pw.write_text("hostile")
    obj = f"secret,id=s0,file={pw}"
    imgtool("create", "-q", "-f", "luks", "--object", obj, "-o",
            "key-secret=s0,iter-time=10", d / "v.luks", "1M")
    imgtool("create", "-q", "-f", "qcow2", "--object", obj, "-o",
            "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10",
            d / "v.qcow2", "1M")
    return {"luks": (d / "v.luks").read_bytes(),
            "qcow2": (d / "v.qcow2").read_bytes(), "obj": obj}


def crypto_ext(data):
    """(offset of the extension's data, LUKS header offset, length)."""
    off = struct.unpack(">I", data[100:104])[0]
    while True:
        typ, ln = struct.unpack(">II", data[off:off + 8])
        assert typ != 0, "no crypto header extension"
        if typ == 0x0537BE77:
            o, l = struct.unpack(">QQ", data[off + 8:off + 24])
            return off + 8, o, l
        off += 8 + (ln + 7) // 8 * 8


def commands(path, fmt, obj):
    key = "key-secret" if fmt == "luks" else "encrypt.key-secret"
    iopts = f"driver={fmt},{key}=s0,file.filename={path}"
    slot_opts = "state=active,new-secret=s0,iter-time=10"
    if fmt == "qcow2":
        slot_opts = ",".join("encrypt." + o for o in slot_opts.split(","))
    return {
        "info": ["info", "-f", fmt, path],
        "io": ["io", "--object", obj, "-c", "read 0 4k",
               "--image-opts", iopts],
        "amend": ["amend", "--object", obj, "--image-opts", iopts,
                  "-o", slot_opts],
    }


def assert_refused(path, fmt, obj, only=None):
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    for name, argv in commands(path, fmt, obj).items():
        if only and name not in only:
            continue
        p = run_limited(*argv)
        lines = [l for l in p.stderr.splitlines() if l.strip()]
        assert p.returncode != 0, f"{name}: accepted\n{p.stdout}"
        assert p.returncode > 0, f"{name}: killed by signal {-p.returncode}"
        assert len(lines) == 1 and lines[0].startswith("imgtool: "), \
            f"{name}: {p.stderr}"
        assert hashlib.sha256(path.read_bytes()).hexdigest() == before, name
    return lines[0]


@pytest.mark.parametrize("case", sorted(PATCHES))
def test_hostile_luks_volume(tmp_path, base, case):
    img = tmp_path / "h.luks"
    img.write_bytes(patch(base["luks"], PATCHES[case]))
    assert_refused(img, "luks", base["obj"])


# Inside qcow2 the LUKS payload offset means nothing (data clusters are
# where the L2 tables say): QEMU opens such an image, and so do we.
QCOW2_HARMLESS = {"payload-offset-max"}


def qcow2_with(base, case):
    data = base["qcow2"]
    _, hdr, length = crypto_ext(data)
    area = patch(data[hdr:hdr + length], PATCHES[case])
    return data[:hdr] + area + data[hdr + length:]


@pytest.mark.parametrize("case", sorted(set(PATCHES) - QCOW2_HARMLESS))
def test_hostile_luks_in_qcow2(tmp_path, base, case):
    img = tmp_path / "h.qcow2"
    img.write_bytes(qcow2_with(base, case))
    # info opens qcow2 without a key but still validates the header.
    assert_refused(img, "qcow2", base["obj"])


@pytest.mark.parametrize("case", sorted(QCOW2_HARMLESS))
def test_harmless_in_qcow2(tmp_path, base, case):
    img = tmp_path / "h.qcow2"
    img.write_bytes(qcow2_with(base, case))
    for name, argv in commands(img, "qcow2", base["obj"]).items():
        p = run_limited(*argv)
        assert p.returncode == 0, f"{name}: {p.stderr}"


def test_iteration_bounds_are_named(tmp_path, base):
    img = tmp_path / "h.luks"
    img.write_bytes(patch(base["luks"], PATCHES["slot-iterations-over-cap"]))
    line = assert_refused(img, "luks", base["obj"], only=["io"])
    assert "iteration count 67108865 is out of range" in line
    img.write_bytes(patch(base["luks"], PATCHES["work-sum-over-cap"]))
    line = assert_refused(img, "luks", base["obj"], only=["io"])
    assert "PBKDF2 blocks of work, more than the 268435456 allowed" in line


@pytest.mark.parametrize("size", [0, 6, 100, 591, 592, 4096, 8192,
                                  2068480 - 512])
def test_truncated_luks_volume(tmp_path, base, size):
    img = tmp_path / "t.luks"
    img.write_bytes(base["luks"][:size])
    assert_refused(img, "luks", base["obj"])


@pytest.mark.parametrize("offset,length", [
    (1 << 62, 4096),                 # past the end
    (0, 1 << 63),                    # longer than the file
    (65536 + 512, 2068480),          # not cluster aligned
    (65536, 0),                      # empty
    (65536, 4096),                   # too short for the key material
])
def test_qcow2_crypto_extension_outside(tmp_path, base, offset, length):
    data = base["qcow2"]
    ext, _, _ = crypto_ext(data)
    img = tmp_path / "x.qcow2"
    img.write_bytes(data[:ext] + struct.pack(">QQ", offset, length) +
                    data[ext + 16:])
    assert_refused(img, "qcow2", base["obj"])


def test_base_images_open(tmp_path, base):
    """The unpatched volumes open with every command: the refusals above
    come from the patches."""
    for fmt in ("luks", "qcow2"):
        img = tmp_path / f"ok.{fmt}"
        img.write_bytes(base[fmt])
        for name, argv in commands(img, fmt, base["obj"]).items():
            p = run_limited(*argv)
            assert p.returncode == 0, f"{fmt} {name}: {p.stderr}"
