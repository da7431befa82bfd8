"""LUKS1 volumes and --object secrets against QEMU and cryptsetup.

Volumes imgtool creates must pass `cryptsetup luksDump` (and unlock with
`cryptsetup luksOpen --test-passphrase` where cryptsetup can do the
cipher in user space), open in qemu-io with the same secret, and convert
to the same raw bytes with qemu-img; volumes qemu-img creates must read
identically in imgtool.  Damaged headers, wrong or missing secrets fail
with one line and leave the file untouched.

qemu-img spends ~2.5 s of CPU calibrating PBKDF2 for every volume (and
fails now and then with "Unable to get accurate CPU usage"), so by
default a representative set of combinations covering every cipher,
mode, IV generator and hash is tested with imgtool-made volumes (which
QEMU then reads and writes), two qemu-made ones are read by imgtool, and
IMGTOOL_LUKS_FULL=1 runs every combination QEMU accepts both ways.
"""
import base64
import hashlib
import itertools
import json
import os
import shutil
import struct
import subprocess
import time

import pytest

from conftest import (IMGTOOL, imgtool, io_args, one_error_line, qemu_img,
                      qemu_io, run)

PASS = "correct horse battery"
FULL = os.environ.get("IMGTOOL_LUKS_FULL") == "1"
HAVE_CRYPTSETUP = shutil.which("cryptsetup") is not None

ALL_COMBOS = [c for c in itertools.product(
    ["aes-128", "aes-192", "aes-256"], ["xts", "cbc"],
    ["plain", "plain64", "essiv"], ["sha1", "sha256", "sha512"])
    # QEMU asserts on aes-192-cbc: its key material is not whole sectors.
    if not (c[0] == "aes-192" and c[1] == "cbc")]

# Every value of every dimension at least once.
SOME_COMBOS = [
    ("aes-256", "xts", "plain64", "sha256"),
    ("aes-128", "cbc", "essiv", "sha1"),
    ("aes-192", "xts", "plain", "sha512"),
    ("aes-256", "cbc", "plain", "sha1"),
    ("aes-128", "xts", "essiv", "sha512"),
    ("aes-192", "xts", "essiv", "sha256"),
]
COMBOS = ALL_COMBOS if FULL else SOME_COMBOS
QEMU_COMBOS = ALL_COMBOS if FULL else SOME_COMBOS[:2]


def combo_id(c):
    return "-".join(c)


@pytest.fixture
def pwfile(tmp_path):
    p = tmp_path / "pw"
    p.write_bytes(PASS.encode())
    return p


def secret(pwfile):
    return f"secret,id=sec0,file={pwfile}"


def image_opts(path):
    return f"driver=luks,key-secret=sec0,file.filename={path}"


def combo_opts(c, iter_time=10):
    alg, mode, ivgen, hash_alg = c
    return (f"key-secret=sec0,iter-time={iter_time},cipher-alg={alg},"
            f"cipher-mode={mode},ivgen-alg={ivgen},hash-alg={hash_alg}")


def imgtool_create(path, size, opts, pwfile):
    imgtool("create", "-q", "-f", "luks", "--object", secret(pwfile),
            "-o", opts, path, size)


def qemu_create_cmd(path, size, opts, pwfile):
    return ["qemu-img", "create", "-q", "-f", "luks", "--object",
            secret(pwfile), "-o", opts, str(path), str(size)]


def qemu_create(path, size, opts, pwfile):
    """qemu-img create, retrying its flaky PBKDF2 calibration."""
    for _ in range(30):
        p = run(qemu_create_cmd(path, size, opts, pwfile), check=False)
        if p.returncode == 0:
            return
        assert "accurate CPU usage" in p.stderr, p.stderr
        time.sleep(0.1)   # a loaded CI host: let the other worker run
    raise AssertionError("qemu-img create kept failing to calibrate")


def io(path, pwfile, *cmds, tool="imgtool", rc=0):
    args = ["--object", secret(pwfile), *io_args(cmds)]
    if tool == "imgtool":
        p = imgtool("io", *args, "--image-opts", image_opts(path),
                    check=False)
    else:
        p = qemu_io(*args, "--image-opts", image_opts(path), check=False)
    out = p.stdout + p.stderr
    assert "Pattern verification failed" not in out, out
    assert p.returncode == rc, out
    return p


def format_specific(tool, path, pwfile):
    args = ["info", "--output=json", "--object", secret(pwfile),
            "--image-opts", image_opts(path)]
    p = imgtool(*args) if tool == "imgtool" else qemu_img(*args)
    return json.loads(p.stdout)["format-specific"]


def raw_bytes(tool, path, pwfile, out):
    args = ["convert", "--object", secret(pwfile), "--image-opts",
            image_opts(path), "-O", "raw", out]
    imgtool(*args) if tool == "imgtool" else qemu_img(*args)
    return open(out, "rb").read()


def luks_dump(path):
    p = run(["cryptsetup", "luksDump", path])
    fields = {}
    for line in p.stdout.splitlines():
        if ":" in line and not line.startswith(("\t", " ")):
            k, v = line.split(":", 1)
            fields[k.strip()] = v.strip()
    return fields


def check_interop(path, pwfile, tmp_path):
    """Data written by each tool reads back in the other, and both
    decrypt the whole volume to the same bytes."""
    io(path, pwfile, "write -P 0xab 0 64k", "write -P 0x5c 1000k 12k")
    io(path, pwfile, "read -P 0xab 0 64k", "read -P 0x5c 1000k 12k",
       "write -P 0x33 512k 4k", tool="qemu-io")
    io(path, pwfile, "read -P 0x33 512k 4k", "read -P 0xab 0 64k")
    a = raw_bytes("qemu-img", path, pwfile, str(tmp_path / "q.raw"))
    b = raw_bytes("imgtool", path, pwfile, str(tmp_path / "i.raw"))
    assert len(a) == len(b) and a == b
    assert a[:65536] == b"\xab" * 65536
    assert (format_specific("imgtool", path, pwfile) ==
            format_specific("qemu-img", path, pwfile))


# ---------------------------------------------------------------------
# Volumes imgtool makes


@pytest.mark.parametrize("combo", COMBOS, ids=combo_id)
def test_imgtool_volume_opens_in_qemu(tmp_path, pwfile, combo):
    v = tmp_path / "v.luks"
    imgtool_create(v, "2M", combo_opts(combo), pwfile)
    alg, mode, ivgen, hash_alg = combo
    if HAVE_CRYPTSETUP:
        d = luks_dump(v)
        assert d["Version"] == "1"
        assert d["Cipher name"] == "aes"
        want_mode = f"{mode}-{ivgen}" + (":sha256" if ivgen == "essiv" else "")
        assert d["Cipher mode"] == want_mode
        assert d["Hash spec"] == hash_alg
        bits = int(alg[4:]) * (2 if mode == "xts" else 1)
        assert d["MK bits"] == str(bits)
        if alg != "aes-192":
            # cryptsetup needs the kernel for aes-192-xts.
            run(["cryptsetup", "luksOpen", "--test-passphrase",
                 f"--key-file={pwfile}", v])
    check_interop(v, pwfile, tmp_path)


def test_default_volume_layout_matches_qemu(tmp_path, pwfile):
    """Same size, same payload offset, same slot offsets as qemu-img's."""
    v = tmp_path / "v.luks"
    imgtool_create(v, "16M", "key-secret=sec0,iter-time=10", pwfile)
    assert os.path.getsize(v) == 16 * 1024 * 1024 + 2068480
    info = json.loads(imgtool("info", "--output=json", v).stdout)
    d = info["format-specific"]["data"]
    assert d["payload-offset"] == 2068480
    assert [s["key-offset"] for s in d["slots"]] == \
        [4096 + i * 258048 for i in range(8)]
    assert [s["active"] for s in d["slots"]] == [True] + [False] * 7
    assert d["slots"][0]["stripes"] == 4000
    assert (d["cipher-alg"], d["cipher-mode"], d["ivgen-alg"],
            d["hash-alg"]) == ("aes-256", "xts", "plain64", "sha256")
    assert info["encrypted"] is True
    # Without a key, info describes the header as qemu-img info does.
    assert info == json.loads(qemu_img("info", "--output=json", v).stdout)
    human = imgtool("info", v).stdout
    assert human == qemu_img("info", v).stdout


def test_aes192_cbc_follows_cryptsetup(tmp_path, pwfile):
    """QEMU cannot handle key material that is not whole sectors
    (aes-192-cbc); cryptsetup pads it, and so do we."""
    v = tmp_path / "v.luks"
    imgtool_create(v, "1M", combo_opts(("aes-192", "cbc", "essiv",
                                        "sha256")), pwfile)
    if HAVE_CRYPTSETUP:
        assert luks_dump(v)["MK bits"] == "192"
        run(["cryptsetup", "luksOpen", "--test-passphrase",
             f"--key-file={pwfile}", v])
    io(v, pwfile, "write -P 0x42 0 8k")
    io(v, pwfile, "read -P 0x42 0 8k")


def test_imgtool_iterations_follow_iter_time(tmp_path, pwfile):
    a, b = tmp_path / "a.luks", tmp_path / "b.luks"
    imgtool_create(a, "1M", "key-secret=sec0,iter-time=10", pwfile)
    imgtool_create(b, "1M", "key-secret=sec0,iter-time=200", pwfile)
    ia = json.loads(imgtool("info", "--output=json", a).stdout)
    ib = json.loads(imgtool("info", "--output=json", b).stdout)
    sa = ia["format-specific"]["data"]["slots"][0]["iters"]
    sb = ib["format-specific"]["data"]["slots"][0]["iters"]
    assert sa >= 1000 and sb > 5 * sa
    # The master key digest gets an eighth of the time, at least 1000.
    mb = ib["format-specific"]["data"]["master-key-iters"]
    assert 1000 <= mb < sb


# ---------------------------------------------------------------------
# Volumes qemu-img makes


@pytest.fixture(scope="module")
def qemu_volumes(tmp_path_factory):
    d = tmp_path_factory.mktemp("qemu-luks")
    pw = d / "pw"
    pw.write_bytes(PASS.encode())
    # One at a time: concurrent qemu-img creates slow each other down
    # far more than they overlap.
    vols = {c: d / (combo_id(c) + ".luks") for c in QEMU_COMBOS}
    for c in QEMU_COMBOS:
        qemu_create(vols[c], "2M", combo_opts(c), pw)
    return vols, pw


@pytest.mark.parametrize("combo", QEMU_COMBOS, ids=combo_id)
def test_qemu_volume_opens_in_imgtool(tmp_path, qemu_volumes, combo):
    vols, pw = qemu_volumes
    v = tmp_path / "v.luks"
    shutil.copy(vols[combo], v)
    io(v, pw, "write -P 0x77 0 64k", "write -P 0x12 1900k 100k",
       tool="qemu-io")
    io(v, pw, "read -P 0x77 0 64k", "read -P 0x12 1900k 100k")
    check_interop(v, pw, tmp_path)
    # Header-only info is the same too.
    assert (json.loads(imgtool("info", "--output=json", v).stdout) ==
            json.loads(qemu_img("info", "--output=json", v).stdout))


def test_qemu_quirk_ivgen_hash_without_essiv(tmp_path, pwfile):
    """qemu-img records ivgen-hash-alg even for plain64 ("xts-plain64:
    sha1"); we write and read the same header."""
    a = tmp_path / "a.luks"
    imgtool_create(a, "1M", "key-secret=sec0,iter-time=10,"
                   "ivgen-hash-alg=sha1", pwfile)
    if HAVE_CRYPTSETUP:
        assert luks_dump(a)["Cipher mode"] == "xts-plain64:sha1"
    check_interop(a, pwfile, tmp_path)


# ---------------------------------------------------------------------
# Errors: one line, non-zero exit, nothing written


def digest(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.fixture(scope="module")
def volume_template(tmp_path_factory):
    d = tmp_path_factory.mktemp("luks-template")
    pw = d / "pw"
    pw.write_bytes(PASS.encode())
    v = d / "v.luks"
    imgtool_create(v, "1M", "key-secret=sec0,iter-time=10", pw)
    io(v, pw, "write -P 0x61 0 4k")
    return v


@pytest.fixture
def volume(tmp_path, volume_template):
    """A fresh copy of a small volume whose first 4k hold 0x61."""
    v = tmp_path / "v.luks"
    shutil.copy(volume_template, v)
    return v


def test_wrong_passphrase(tmp_path, volume):
    bad = tmp_path / "bad"
    bad.write_bytes(b"wrong")
    before = digest(volume)
    p = imgtool("io", "--object", f"secret,id=sec0,file={bad}",
                "-c", "write -P 0 0 4k", "--image-opts", image_opts(volume),
                check=False)
    # named as qemu-img names an --image-opts image: by its options
    assert one_error_line(p) == (f"imgtool: Could not open "
                                 f"'{image_opts(volume)}': "
                                 "Invalid password, cannot unlock any "
                                 "keyslot")
    assert digest(volume) == before


def test_missing_secret(volume):
    before = digest(volume)
    p = imgtool("io", "-c", "write -P 0 0 4k", "--image-opts",
                image_opts(volume), check=False)
    assert one_error_line(p).endswith("No secret with id 'sec0'")
    p = imgtool("io", "-f", "luks", "-c", "write -P 0 0 4k", volume,
                check=False)
    assert one_error_line(p) == (f"imgtool: Could not open '{volume}': "
                                 "Parameter 'key-secret' is required for "
                                 "cipher")
    p = imgtool("convert", "-O", "raw", volume, str(volume) + ".raw",
                check=False)
    assert "Parameter 'key-secret' is required" in one_error_line(p)
    assert not os.path.exists(str(volume) + ".raw")
    assert digest(volume) == before


def patch(path, off, data):
    with open(path, "r+b") as f:
        f.seek(off)
        f.write(data)


CORRUPTIONS = {
    "bad-magic": (0, b"LUKS\x00\x00", "Volume is not in LUKS format"),
    "version-2": (6, struct.pack(">H", 2), "LUKS version 2 is not supported"),
    "key-bytes-absurd": (108, struct.pack(">I", 0xFFFFFFF0),
                         "key size 4294967280 bytes is not valid"),
    "key-bytes-odd": (108, struct.pack(">I", 40), "key size 40 bytes"),
    "stripes-absurd": (208 + 44, struct.pack(">I", 0xFFFFFFFF),
                       "stripes 4294967295 != 4000"),
    "slot-iterations-absurd": (208 + 4, struct.pack(">I", 0xFFFFFFFF),
                               "iteration count 4294967295 is out of range"),
    "slot-iterations-2^26+1": (208 + 4, struct.pack(">I", (1 << 26) + 1),
                               "iteration count 67108865 is out of range"),
    "slot-iterations-zero": (208 + 4, struct.pack(">I", 0),
                             "iteration count 0 is out of range"),
    "mk-iterations-absurd": (164, struct.pack(">I", 0x7FFFFFFF),
                             "master key iteration count 2147483647"),
    "key-offset-beyond-file": (208 + 40, struct.pack(">I", 0x7FFFFFF0),
                               "material overlaps the payload"),
    "key-offset-in-header": (208 + 48 + 40, struct.pack(">I", 1),
                             "material overlaps the header"),
    "slots-overlap": (208 + 48 + 40, struct.pack(">I", 9),
                      "key slots 0 and 1 overlap"),
    "payload-beyond-file": (104, struct.pack(">I", 0x7FFFFFF0),
                            "beyond the end"),
    "slot-state": (208, struct.pack(">I", 0x12345678),
                   "state 0x12345678"),
    "cipher-name": (8, b"serpent\0", "cipher 'serpent' is not supported"),
    "cipher-mode": (40, b"ecb\0", "cipher mode 'ecb' is not supported"),
    "hash-spec": (72, b"whirlpool\0",
                  "Hash algorithm 'whirlpool' is not supported"),
}


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_corrupt_header(volume, pwfile, name):
    off, data, why = CORRUPTIONS[name]
    patch(volume, off, data)
    before = digest(volume)
    t = time.monotonic()
    p = imgtool("io", "--object", secret(pwfile), "-c", "write -P 0 0 4k",
                "--image-opts", image_opts(volume), check=False)
    line = one_error_line(p)
    assert why in line, line
    assert line.startswith(f"imgtool: Could not open "
                           f"'{image_opts(volume)}': "), line
    # Header-only opens (info) judge the header the same way.
    p = imgtool("info", "-f", "luks", volume, check=False)
    assert why in one_error_line(p)
    assert time.monotonic() - t < 10
    assert digest(volume) == before


def test_pbkdf2_work_is_bounded(volume, pwfile):
    """Each slot within the per-slot ceiling (2^26), but two of them
    together ask for more PBKDF2 work than a header may (2^28 blocks)."""
    for slot in (0, 1):
        patch(volume, 208 + 48 * slot, struct.pack(">II", 0x00AC71F3,
                                                   1 << 26))
    t = time.monotonic()
    p = imgtool("io", "--object", secret(pwfile), "-c", "read 0 512",
                "--image-opts", image_opts(volume), check=False)
    assert "PBKDF2 blocks of work, more than" in one_error_line(p)
    assert time.monotonic() - t < 5
    patch(volume, 208 + 48, struct.pack(">II", 0x0000DEAD, 0))
    p = imgtool("info", "-f", "luks", volume)
    slots = json.loads(imgtool("info", "--output=json", volume).stdout)[
        "format-specific"]["data"]["slots"]
    assert slots[0]["iters"] == 1 << 26


def test_truncated_key_material(tmp_path, volume, pwfile):
    os.truncate(volume, 100000)
    p = imgtool("io", "--object", secret(pwfile), "-c", "read 0 512",
                "--image-opts", image_opts(volume), check=False)
    assert "beyond the end" in one_error_line(p)


def test_create_refusals_create_nothing(tmp_path, pwfile):
    v = tmp_path / "v.luks"
    cases = [
        ([], "key-secret=sec0", "No secret with id 'sec0'"),
        (["--object", secret(pwfile)], "iter-time=10",
         "Parameter 'key-secret' is required for cipher"),
        (["--object", secret(pwfile)], "key-secret=sec0,cipher-alg=des",
         "Algorithm 'des' not supported"),
        (["--object", secret(pwfile)], "key-secret=sec0,cipher-mode=ofb",
         "Cipher mode 'ofb' not supported"),
        (["--object", secret(pwfile)],
         "key-secret=sec0,ivgen-alg=essiv,ivgen-hash-alg=sha1",
         "No AES cipher with key size 20 available"),
        (["--object", secret(pwfile)], "key-secret=sec0,hash-alg=foo",
         "Hash algorithm 'foo' is not supported"),
        (["--object", secret(pwfile)], "key-secret=sec0,iter-time=abc",
         "Parameter 'iter-time' expects a number"),
        (["--object", secret(pwfile)],
         "key-secret=sec0,preallocation=metadata",
         "Invalid preallocation mode: 'metadata'"),
    ]
    for pre, opts, why in cases:
        p = imgtool("create", "-q", "-f", "luks", *pre, "-o", opts, v, "1M",
                    check=False)
        assert p.returncode == 1
        assert p.stderr == f"imgtool: {v}: {why}\n", (opts, p.stderr)
        assert not v.exists()


# ---------------------------------------------------------------------
# Secrets


def test_secret_sources(tmp_path, volume, pwfile):
    b64 = base64.b64encode(PASS.encode()).decode()
    (tmp_path / "b64").write_text(b64 + "\n")
    (tmp_path / "nl").write_text(PASS + "\n")
    for obj in [f"secret,id=sec0,file={pwfile}",
                f"secret,id=sec0,file={pwfile},format=raw",
                f"secret,id=sec0,data={b64},format=base64",
                f"secret,id=sec0,file={tmp_path / 'b64'},format=base64",
                f"secret,id=sec0,data={PASS}",
                f"qom-type=secret,id=sec0,data={PASS}"]:
        p = imgtool("io", "--object", obj, "-c", "read -P 0x61 0 4k",
                    "--image-opts", image_opts(volume), check=False)
        assert p.returncode == 0, (obj, p.stderr)
    # A file's bytes are the passphrase as they are, newline included,
    # as in QEMU.
    p = imgtool("io", "--object", f"secret,id=sec0,file={tmp_path / 'nl'}",
                "-c", "read 0 4k", "--image-opts", image_opts(volume),
                check=False)
    assert "Invalid password" in one_error_line(p)


def test_inline_secret_warns_once(volume):
    p = imgtool("io", "--object", f"secret,id=sec0,data={PASS}",
                "-c", "read -P 0x61 0 4k", "--image-opts",
                image_opts(volume))
    lines = p.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("imgtool: warning: ")
    assert "data=" in lines[0] and PASS not in lines[0]


def test_file_secret_does_not_warn(volume, pwfile):
    p = imgtool("info", "--object", secret(pwfile), volume)
    assert p.stderr == ""


@pytest.mark.parametrize("cmd", ["create", "info", "check", "convert",
                                 "compare", "map", "measure", "resize",
                                 "dd", "io", "bench"])
def test_every_command_defines_objects(tmp_path, cmd):
    """A malformed --object is refused by every command that takes it,
    before anything else happens."""
    p = imgtool(cmd, "--object", "secret,id=sec0", "x", check=False)
    assert one_error_line(p) == ("imgtool: Either 'file' or 'data' must "
                                 "be provided")


def test_secret_definition_errors(tmp_path, volume):
    cases = {
        "secret,data=x": "Parameter 'id' is missing",
        "secret,id=s,data=x,file=/etc/hostname":
            "'file' and 'data' are mutually exclusive",
        "secret,id=s,file=/nonexistent":
            "Unable to read /nonexistent: No such file or directory",
        "secret,id=s,data=@@@,format=base64":
            "Base64 data contains invalid characters",
        "secret,id=s,data=x,format=hex":
            "Parameter 'format' does not accept value 'hex'",
        "secret,id=s,data=x,keyid=k": "Encrypted secrets (keyid=)",
        "secret,id=s,data=x,iv=abc": "Encrypted secrets (iv=)",
        "iothread,id=s": "Object type 'iothread' is not supported",
        "secret,id=s,data=x,bogus=1": "Parameter 'bogus' is unexpected",
        "secret,id=0bad,data=x": "Parameter 'id' expects an identifier",
    }
    for obj, why in cases.items():
        p = imgtool("info", "--object", obj, volume, check=False)
        assert why in one_error_line(p), (obj, p.stderr)
        assert p.stdout == ""
    p = imgtool("info", "--object", "secret,id=s,file=/etc/hostname",
                "--object", "secret,id=s,file=/etc/hostname", volume,
                check=False)
    assert "already exists" in one_error_line(p)


# ---------------------------------------------------------------------
# Other commands on luks images


def test_measure(tmp_path, pwfile):
    o = ["--object", secret(pwfile)]

    def measure(*args):
        return json.loads(imgtool("measure", "--output=json", *o, "-O",
                                  "luks", *args).stdout)
    # Values qemu-img 7.2 prints for the same requests.
    assert measure("-o", "key-secret=sec0", "--size", "16M") == \
        {"required": 18845696, "fully-allocated": 18845696}
    assert measure("-o", "key-secret=sec0,cipher-alg=aes-128,"
                   "cipher-mode=cbc", "--size", "1M") == \
        {"required": 528384 + 1048576, "fully-allocated": 528384 + 1048576}
    p = imgtool("measure", "-O", "luks", "--size", "16M", check=False)
    assert one_error_line(p).endswith("Parameter 'key-secret' is required "
                                      "for cipher")


def test_resize_and_check(tmp_path, volume, pwfile):
    imgtool("resize", "--object", secret(pwfile), "--image-opts",
            image_opts(volume), "3M")
    info = json.loads(qemu_img("info", "--output=json", volume).stdout)
    assert info["virtual-size"] == 3 * 1024 * 1024
    io(volume, pwfile, "read -P 0x61 0 4k", "write -P 0x62 2M 1M")
    io(volume, pwfile, "read -P 0x62 2M 1M", tool="qemu-io")


def test_probe_and_raw_guard(tmp_path, volume, pwfile):
    """A probed luks image needs its key; a probed raw image may not be
    turned into a LUKS header by a guest write."""
    p = imgtool("io", "-c", "read 0 512", volume, check=False)
    assert "key-secret" in one_error_line(p)
    r = tmp_path / "r.img"
    r.write_bytes(b"\0" * 65536)
    (tmp_path / "hdr").write_bytes(b"LUKS\xba\xbe\x00\x01")
    p = imgtool("io", "-c", f"write -s {tmp_path / 'hdr'} 0 8", r,
                check=False)
    assert p.returncode != 0
    assert open(r, "rb").read(4) == b"\0\0\0\0"


def test_inline_secret_hidden_from_process_list(volume):
    """The data= value is overwritten in argv once parsed, so it does not
    stay readable in /proc/PID/cmdline while the command runs."""
    p = subprocess.Popen([IMGTOOL, "io", "--object",
                          f"secret,id=sec0,data={PASS}",
                          "--image-opts", image_opts(volume)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    try:
        # The warning comes once the definition has been parsed; io then
        # waits for commands on stdin.
        assert b"warning" in p.stderr.readline()
        cmdline = open(f"/proc/{p.pid}/cmdline", "rb").read()
    finally:
        p.stdin.close()
        p.wait(timeout=30)
    assert b"data=" in cmdline
    assert PASS.encode() not in cmdline


def test_create_help_and_formatting_line(tmp_path, pwfile):
    assert (imgtool("create", "-f", "luks", "-o", "help").stdout ==
            qemu_img("create", "-f", "luks", "-o", "help").stdout)
    v = tmp_path / "v.luks"
    opts = ("preallocation=off,iter-time=10,hash-alg=sha1,"
            "ivgen-hash-alg=sha256,ivgen-alg=essiv,cipher-mode=cbc,"
            "cipher-alg=aes-128,key-secret=sec0")
    p = imgtool("create", "-f", "luks", "--object", secret(pwfile), "-o",
                opts, v, "1M")
    # As qemu-img 7.2 prints it for the same command.
    assert p.stdout == (
        f"Formatting '{v}', fmt=luks size=1048576 key-secret=sec0 "
        "cipher-alg=aes-128 cipher-mode=cbc ivgen-alg=essiv "
        "ivgen-hash-alg=sha256 hash-alg=sha1 iter-time=10 "
        "preallocation=off\n")
    assert os.path.getsize(v) == 528384 + 1048576
