"""LUKS key slots managed with `amend` (formats/luks/luks-keyslot.c), on
raw LUKS volumes (-f luks: state=, keyslot=, new-secret=, old-secret=,
iter-time=) and qcow2 with encrypt.format=luks (the same under
"encrypt."), against qemu-img 7.2 and cryptsetup.

Slots imgtool adds open in qemu-io and cryptsetup and slots it erases no
longer do, on volumes made by either tool; every refusal is qemu-img's
message on one line, a non-zero exit, and a file left byte for byte as
it was; a power cut at any write or flush leaves the old or the new slot
state with every surviving passphrase still opening the volume.
"""
import hashlib
import shutil
import struct

import pytest

from conftest import (faulty_opts, imgtool, one_error_line, qemu_img, qemu_io,
                      retry_calibration, run)

HAVE_CRYPTSETUP = shutil.which("cryptsetup") is not None
PASSES = {"s0": "first pass", "s1": "second pass", "s2": "third pass",
          "s3": "fourth pass"}
ITER = "iter-time=10"
SLOT_ENABLED, SLOT_DISABLED = 0x00AC71F3, 0x0000DEAD


@pytest.fixture
def objs(tmp_path):
    out = []
    for sid, pw in PASSES.items():
        f = tmp_path / f"pw-{sid}"
        f.write_text(pw)
        out += ["--object", f"secret,id={sid},file={f}"]
    return out


def iopts(path, fmt, key="s0"):
    if fmt == "luks":
        return f"driver=luks,key-secret={key},file.filename={path}"
    return f"driver=qcow2,encrypt.key-secret={key},file.filename={path}"


def prefixed(fmt, opts):
    """"state=active,keyslot=1" as the format names them."""
    if fmt == "luks":
        return opts
    return ",".join("encrypt." + o for o in opts.split(","))


def retry_qemu(argv):
    return retry_calibration(lambda: run(argv, check=False))


def amend(tool, objs, path, fmt, opts, key="s0", force=False, rc=0):
    args = ["amend", *objs, *(["--force"] if force else []),
            "--image-opts", iopts(path, fmt, key), "-o", prefixed(fmt, opts)]
    if tool == "qemu-img":
        p = retry_qemu(["qemu-img", *args])
    else:
        p = imgtool(*args, check=False)
    assert p.returncode == rc, f"{tool} {args}: {p.returncode}\n{p.stderr}"
    return p


def create(tool, objs, path, fmt, size="2M", extra=""):
    if fmt == "luks":
        o = f"key-secret=s0,{ITER}"
    else:
        o = f"encrypt.format=luks,encrypt.key-secret=s0,encrypt.{ITER}"
    argv = ["create", "-q", "-f", fmt, *objs, "-o", o + extra, str(path),
            size]
    if tool == "qemu-img":
        p = retry_qemu(["qemu-img", *argv])
        assert p.returncode == 0, p.stderr
    else:
        imgtool(*argv)


def opens(objs, path, fmt, key, pattern=0x5a):
    """qemu-io opens the image with secret `key` and reads the pattern
    written at creation; False when the passphrase is refused."""
    p = qemu_io(*objs, "--image-opts", iopts(path, fmt, key),
                "-c", f"read -P {pattern} 0 64k", check=False)
    if p.returncode == 0 and "Pattern verification failed" not in p.stdout:
        return True
    assert "Invalid password, cannot unlock any keyslot" in p.stderr, \
        p.stdout + p.stderr
    return False


def write_pattern(objs, path, fmt, pattern=0x5a):
    qemu_io(*objs, "--image-opts", iopts(path, fmt),
            "-c", f"write -P {pattern} 0 64k")


def header_offset(path, fmt):
    """Where the LUKS header starts in the file."""
    if fmt == "luks":
        return 0
    data = open(path, "rb").read(1 << 16)
    hdr_len = struct.unpack(">I", data[100:104])[0]
    off = hdr_len
    while off + 8 <= len(data):
        typ, ln = struct.unpack(">II", data[off:off + 8])
        if typ == 0:
            break
        if typ == 0x0537be77:
            return struct.unpack(">Q", data[off + 8:off + 16])[0]
        off += 8 + (ln + 7) // 8 * 8
    raise AssertionError("no crypto header extension")


def slots(path, fmt="luks"):
    """(state, iterations, salt, key offset, stripes) of the 8 slots."""
    base = header_offset(path, fmt)
    with open(path, "rb") as f:
        f.seek(base)
        h = f.read(592)
    assert h[:6] == b"LUKS\xba\xbe"
    out = []
    for i in range(8):
        e = h[208 + 48 * i:256 + 48 * i]
        st, it = struct.unpack(">II", e[:8])
        ko, stripes = struct.unpack(">II", e[40:48])
        out.append((st, it, e[8:40], ko, stripes))
    return out


def active(path, fmt="luks"):
    return [s[0] == SLOT_ENABLED for s in slots(path, fmt)]


def material(path, fmt, slot, key_bytes=64):
    base = header_offset(path, fmt)
    ko = slots(path, fmt)[slot][3]
    with open(path, "rb") as f:
        f.seek(base + ko * 512)
        return f.read(key_bytes * 4000)


def sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def payload(path, fmt, objs, key="s0"):
    """The guest data as qemu-img decrypts it with secret `key`."""
    out = str(path) + f".{key}.raw"
    qemu_img("convert", *objs, "--image-opts", iopts(path, fmt, key), "-O",
             "raw", out)
    return open(out, "rb").read()


def luks_dump_slots(path):
    p = run(["cryptsetup", "luksDump", str(path)])
    return [l.split(":")[1].strip() == "ENABLED" for l in p.stdout.splitlines()
            if l.startswith("Key Slot")]


def fmt_image(tmp_path, objs, tool, fmt):
    img = tmp_path / f"v.{fmt}"
    create(tool, objs, img, fmt)
    write_pattern(objs, img, fmt)
    return img


# ---------------------------------------------------------------------
# Adding and erasing, checked by QEMU


@pytest.mark.parametrize("fmt", ["luks", "qcow2"])
@pytest.mark.parametrize("maker", ["imgtool", "qemu-img"])
def test_add_then_erase(tmp_path, objs, maker, fmt):
    img = fmt_image(tmp_path, objs, maker, fmt)
    before = slots(img, fmt)
    guest = payload(img, fmt, objs)

    amend("imgtool", objs, img, fmt, f"state=active,new-secret=s1,{ITER}")
    amend("imgtool", objs, img, fmt,
          f"state=active,new-secret=s2,keyslot=5,{ITER}", key="s1")
    after = slots(img, fmt)
    assert active(img, fmt) == [True, True] + [False] * 3 + [True] + \
        [False] * 2
    # Slot 0, the master key digest and the layout are untouched.
    assert after[0] == before[0]
    assert [s[3:] for s in after] == [s[3:] for s in before]
    assert 1000 <= after[1][1] and 1000 <= after[5][1]
    assert after[1][2] != after[5][2]          # fresh salts
    for key in ("s0", "s1", "s2"):
        assert opens(objs, img, fmt, key), key
    assert not opens(objs, img, fmt, "s3")
    if HAVE_CRYPTSETUP and fmt == "luks":
        assert luks_dump_slots(img) == active(img)
        run(["cryptsetup", "luksOpen", "--test-passphrase", "--key-slot=5",
             f"--key-file={tmp_path / 'pw-s2'}", str(img)])

    old_material = material(img, fmt, 0)
    amend("imgtool", objs, img, fmt, "state=inactive,keyslot=0", key="s2")
    amend("imgtool", objs, img, fmt, "state=inactive,old-secret=s1",
          key="s2")
    assert active(img, fmt) == [False] * 5 + [True] + [False] * 2
    st, it, salt, ko, stripes = slots(img, fmt)[0]
    # As QEMU leaves an erased slot: no count, no salt, layout kept.
    assert (st, it, salt) == (SLOT_DISABLED, 0, bytes(32))
    assert (ko, stripes) == before[0][3:]
    wiped = material(img, fmt, 0)
    assert wiped != old_material and wiped != bytes(len(wiped))
    assert not opens(objs, img, fmt, "s0")
    assert not opens(objs, img, fmt, "s1")
    assert opens(objs, img, fmt, "s2")
    assert payload(img, fmt, objs, "s2") == guest
    if fmt == "qcow2":
        p = qemu_img("check", *objs, "--image-opts", iopts(img, fmt, "s2"))
        assert "No errors were found" in p.stdout
    if HAVE_CRYPTSETUP and fmt == "luks":
        assert luks_dump_slots(img) == active(img)


@pytest.mark.parametrize("fmt", ["luks", "qcow2"])
def test_qemu_amends_after_imgtool(tmp_path, objs, fmt):
    """Slots imgtool added and erased are ones qemu-img works with."""
    img = fmt_image(tmp_path, objs, "imgtool", fmt)
    amend("imgtool", objs, img, fmt, f"state=active,new-secret=s1,{ITER}")
    amend("imgtool", objs, img, fmt, "state=inactive,keyslot=0", key="s1")
    # qemu-img fills the slot imgtool erased and erases the one it added.
    amend("qemu-img", objs, img, fmt, f"state=active,new-secret=s2,{ITER}",
          key="s1")
    assert active(img, fmt) == [True, True] + [False] * 6
    amend("qemu-img", objs, img, fmt, "state=inactive,old-secret=s1",
          key="s2")
    assert active(img, fmt) == [True] + [False] * 7
    assert opens(objs, img, fmt, "s2")
    assert not opens(objs, img, fmt, "s1")


def test_erase_by_old_secret_clears_every_match(tmp_path, objs):
    img = fmt_image(tmp_path, objs, "imgtool", "luks")
    for slot in (2, 6):
        amend("imgtool", objs, img, "luks",
              f"state=active,new-secret=s1,keyslot={slot},{ITER}")
    amend("imgtool", objs, img, "luks", f"state=active,new-secret=s2,{ITER}")
    assert active(img) == [True, True, True] + [False] * 3 + [True, False]
    amend("imgtool", objs, img, "luks", "state=inactive,old-secret=s1")
    assert active(img) == [True, True] + [False] * 6
    assert opens(objs, img, "luks", "s2") and opens(objs, img, "luks", "s0")
    assert not opens(objs, img, "luks", "s1")


def test_force_erases_the_last_slot(tmp_path, objs):
    img = fmt_image(tmp_path, objs, "imgtool", "luks")
    amend("imgtool", objs, img, "luks", "state=inactive,keyslot=0",
          force=True)
    assert active(img) == [False] * 8
    assert not opens(objs, img, "luks", "s0")


def test_fills_all_slots(tmp_path, objs):
    img = fmt_image(tmp_path, objs, "imgtool", "luks")
    for _ in range(7):
        amend("imgtool", objs, img, "luks",
              f"state=active,new-secret=s1,iter-time=1")
    assert active(img) == [True] * 8
    before = sha(img)
    p = amend("imgtool", objs, img, "luks",
              "state=active,new-secret=s1,iter-time=1", rc=1)
    assert one_error_line(p) == ("imgtool: Can't add a keyslot - all keyslots "
                           "are in use")
    assert sha(img) == before


def test_iter_time_sizes_the_new_slot(tmp_path, objs):
    img = fmt_image(tmp_path, objs, "imgtool", "luks")
    amend("imgtool", objs, img, "luks", "state=active,new-secret=s1,"
          "iter-time=1")
    amend("imgtool", objs, img, "luks", "state=active,new-secret=s2,"
          "iter-time=100")
    s = slots(img)
    assert s[2][1] > 5 * s[1][1]


# ---------------------------------------------------------------------
# Refusals: qemu-img's message, one line, the file unchanged


@pytest.fixture(scope="module")
def two_slot_images(tmp_path_factory):
    """luks and qcow2 images with s0 in slot 0 and s1 in slot 1."""
    d = tmp_path_factory.mktemp("amend-refusals")
    o = []
    for sid, pw in PASSES.items():
        f = d / f"pw-{sid}"
        f.write_text(pw)
        o += ["--object", f"secret,id={sid},file={f}"]
    out = {}
    for fmt in ("luks", "qcow2"):
        img = d / f"t.{fmt}"
        create("imgtool", o, img, fmt)
        amend("imgtool", o, img, fmt, f"state=active,new-secret=s1,{ITER}")
        out[fmt] = img
    return out


REFUSALS = [
    # (options without prefix, key-secret, force)
    ("state=active,keyslot=1,new-secret=s2", "s0"),
    ("state=active,keyslot=8,new-secret=s2", "s0"),
    ("state=active,keyslot=-1,new-secret=s2", "s0"),
    ("state=active,keyslot=x,new-secret=s2", "s0"),
    ("state=active", "s0"),
    ("new-secret=s2", "s0"),
    ("state=on,new-secret=s2", "s0"),
    ("state=active,new-secret=s2,old-secret=s0", "s0"),
    ("state=active,new-secret=nosuch", "s0"),
    ("state=inactive,new-secret=s2", "s0"),
    ("state=inactive,keyslot=1,iter-time=10", "s0"),
    ("state=inactive", "s0"),
    ("state=inactive,keyslot=3", "s0"),
    ("state=inactive,keyslot=9", "s0"),
    ("state=inactive,old-secret=s2", "s0"),
    ("state=inactive,old-secret=nosuch", "s0"),
    ("state=inactive,old-secret=s0,keyslot=1", "s0"),
    ("state=inactive,old-secret=s1,keyslot=3", "s0"),
    ("state=active,new-secret=s2", "s3"),
    ("cipher-alg=aes-128", "s0"),
    ("bogus=1", "s0"),
]


@pytest.mark.parametrize("fmt", ["luks", "qcow2"])
@pytest.mark.parametrize("opts,key", REFUSALS,
                         ids=[r[0] + "/" + r[1] for r in REFUSALS])
def test_refusal_matches_qemu(request, tmp_path, objs, two_slot_images, fmt,
                              opts, key):
    img = tmp_path / f"t.{fmt}"
    shutil.copy(two_slot_images[fmt], img)
    before = sha(img)
    p = amend("imgtool", objs, img, fmt, opts, key=key, rc=1)
    line = one_error_line(p)
    assert sha(img) == before
    q = amend("qemu-img", objs, img, fmt, opts, key=key, rc=1)
    assert sha(img) == before
    want = q.stderr.splitlines()[0]
    assert want.startswith("qemu-img: ")
    got = line[len("imgtool: "):]
    want = want[len("qemu-img: "):]
    if "only supported for image creation" in q.stderr:
        # qemu-img adds a second line; we say it on the same one.
        assert got == want + ": This option is only supported for image " \
            "creation"
    elif want.startswith("Could not open"):
        assert got.endswith(want.split("': ", 1)[1])
    else:
        assert got == want


@pytest.mark.parametrize("fmt", ["luks", "qcow2"])
@pytest.mark.parametrize("opts", ["state=inactive,keyslot=0",
                                  "state=inactive,old-secret=s0"])
def test_last_slot_refused(tmp_path, objs, fmt, opts):
    img = fmt_image(tmp_path, objs, "imgtool", fmt)
    before = sha(img)
    p = amend("imgtool", objs, img, fmt, opts, rc=1)
    line = one_error_line(p)
    assert "refusing operation" in line and "irreversibly" in line
    q = amend("qemu-img", objs, img, fmt, opts, rc=1)
    assert line[len("imgtool: "):] == \
        q.stderr.splitlines()[0][len("qemu-img: "):]
    assert sha(img) == before
    assert opens(objs, img, fmt, "s0")


def test_plain_qcow2_has_no_slots(tmp_path, objs):
    img = tmp_path / "p.qcow2"
    imgtool("create", "-q", "-f", "qcow2", img, "1M")
    before = sha(img)
    p = imgtool("amend", *objs, "-f", "qcow2", "-o",
                "encrypt.state=active,encrypt.new-secret=s1", img,
                check=False)
    assert one_error_line(p) == ("imgtool: Can't amend encryption options - "
                           "encryption not present")
    assert sha(img) == before


# ---------------------------------------------------------------------
# Power cuts


def amend_cut(objs, img, fmt, opts, key, **kw):
    p = imgtool("amend", *objs, "--image-opts",
                faulty_opts(img, fmt, [f"{prefixed(fmt, 'key-secret')}={key}"], **kw), "-o", prefixed(fmt, opts),
                check=False)
    return p


def count_requests(tmp_path, objs, img, fmt, opts, key):
    """Writes and flushes a clean run of the amend makes."""
    scratch = tmp_path / f"count.{fmt}"
    shutil.copy(img, scratch)
    st = tmp_path / "stats"
    p = amend_cut(objs, scratch, fmt, opts, key, stats_file=st)
    assert p.returncode == 0, p.stderr
    stats = dict(l.split("=", 1) for l in st.read_text().split())
    return int(stats["writes"]), int(stats["flushes"])


# The slot states (slots 0..7 active) an amend goes from and to.
S0 = (True,) + (False,) * 7
S0_S1 = (True, True) + (False,) * 6
S1 = (False, True) + (False,) * 6


@pytest.mark.parametrize("fmt", ["luks", "qcow2"])
@pytest.mark.parametrize("change", ["adding", "erasing"])
def test_power_cut(tmp_path, objs, fmt, change):
    """A power cut at any write or flush of adding slot 1 (key s1) to a
    volume with slot 0 (key s0), or of erasing slot 0 of a volume with
    both, leaves the slots as before or as after, and both come: the key
    the amend runs with always opens the volume, the other one exactly
    when the header calls its slot active (its material was not touched
    yet when the header still does)."""
    base = fmt_image(tmp_path, objs, "imgtool", fmt)
    add = f"state=active,new-secret=s1,{ITER}"
    if change == "adding":
        opts, key, other, slot, outcomes = add, "s0", "s1", 1, {S0, S0_S1}
    else:
        amend("imgtool", objs, base, fmt, add)
        opts, key, other, slot, outcomes = ("state=inactive,keyslot=0", "s1",
                                            "s0", 0, {S0_S1, S1})
    writes, flushes = count_requests(tmp_path, objs, base, fmt, opts, key)
    assert writes >= 2 and flushes >= 2
    cuts = [dict(powerfail_after_writes=n, powerfail_mode=m, seed=n)
            for n in range(1, writes + 1) for m in ("drop", "random-part")]
    cuts += [dict(powerfail_at_flush=n) for n in range(1, flushes + 1)]
    seen = set()
    for i, cut in enumerate(cuts):
        img = tmp_path / f"cut{i}.{fmt}"
        shutil.copy(base, img)
        amend_cut(objs, img, fmt, opts, key, **cut)
        state = tuple(active(img, fmt))
        assert state in outcomes, (cut, state)
        assert opens(objs, img, fmt, key), cut
        assert opens(objs, img, fmt, other) == state[slot], cut
        seen.add(state)
    assert seen == outcomes
