"""libimgtool.so from outside: the example programs in examples/ are
built with the installed header and pkg-config file only (no source
tree), and what they read and write is checked with qemu-img/qemu-io."""
import json
import os
import re
import subprocess

import pytest

from conftest import ROOT, qemu_img, qemu_io, run, start_qemu_nbd, stop_process
from installtree import build_option, c_compiler, find_one, meson_install


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    dest = tmp_path_factory.mktemp("libinstall")
    prefix = meson_install(dest)
    pc = os.path.dirname(find_one(prefix, "**/pkgconfig/libimgtool.pc"))
    return dest, prefix, pc


def pkg_config(installed, *args):
    dest, _, pcdir = installed
    env = dict(os.environ, PKG_CONFIG_LIBDIR=pcdir,
               PKG_CONFIG_SYSROOT_DIR=str(dest))
    return run(["pkg-config", *args, "libimgtool"], env=env).stdout.split()


@pytest.fixture(scope="module")
def examples(installed, tmp_path_factory):
    """The examples built as a user would: cc $(pkg-config ...)."""
    out = tmp_path_factory.mktemp("examples")
    cc, sanitized = c_compiler()
    cflags = pkg_config(installed, "--cflags")
    libs = pkg_config(installed, "--libs")
    # only the installed header: no -I into the source tree
    assert all(ROOT not in f for f in cflags + libs)
    extra = ["-fsanitize=address,undefined"] if sanitized else []
    progs = {}
    for name in ("imgmap", "mkimage"):
        exe = str(out / name)
        run([*cc, "-std=c11", "-Wall", "-Wextra", "-Werror", *extra,
             *cflags, os.path.join(ROOT, "examples", name + ".c"), "-o",
             exe, *libs])
        progs[name] = exe
    libdir = [f[2:] for f in libs if f.startswith("-L")][0]
    # the modules of this install tree, not whatever the host has
    moddir = os.path.dirname(find_one(installed[1], "**/imgtool-nbd.so"))
    env = dict(os.environ, LD_LIBRARY_PATH=libdir, IMGTOOL_MODULE_DIR=moddir)
    return progs, env


def test_pkg_config_and_soname(installed):
    dest, prefix, _ = installed
    assert pkg_config(installed, "--modversion") == [
        re.search(r"version : '([^']+)'",
                  open(os.path.join(ROOT, "meson.build")).read()).group(1)]
    so = find_one(prefix, "**/libimgtool.so.0.*")
    dyn = run(["readelf", "-d", so]).stdout
    assert "Library soname: [libimgtool.so.0]" in dyn
    header = find_one(prefix, "include/libimgtool.h")
    assert os.path.exists(os.path.join(os.path.dirname(so), "libimgtool.so"))
    # exported: exactly the functions the public header declares
    declared = set(re.findall(r"\b(libimgtool_[a-z_]+)\(",
                              open(header).read()))
    exported = exports(so, "LIBIMGTOOL_0")
    assert declared == exported
    assert {"libimgtool_open", "libimgtool_pread", "libimgtool_pwrite",
            "libimgtool_flush", "libimgtool_block_status",
            "libimgtool_create", "libimgtool_close"} <= exported


def exports(so, version):
    """The functions so exports under version."""
    nm = run(["nm", "-D", "--defined-only", so]).stdout
    return {l.split()[-1].split("@")[0] for l in nm.splitlines()
            if " T " in l and l.split()[-1].endswith("@@" + version)}


def undefined(so):
    nm = run(["nm", "-D", "--undefined-only", so]).stdout
    return {l.split()[-1] for l in nm.splitlines() if "@" not in l}


def test_private_exports_are_what_modules_use(installed):
    """Besides the interface, libimgtool.so exports (under a private
    version) exactly the core functions imgtool's modules call, so that
    its users can load them: none missing, none extra."""
    _, prefix, _ = installed
    so = find_one(prefix, "**/libimgtool.so.0.*")
    exe = find_one(prefix, "bin/imgtool")
    core = exports_any(exe)
    mods = [m for m in find_all(prefix, "**/imgtool-*.so")]
    assert {os.path.basename(m) for m in mods} >= {
        "imgtool-nbd.so", "imgtool-iscsi.so", "imgtool-gluster.so",
        "imgtool-xml.so"}
    needed = set().union(*(undefined(m) for m in mods)) & core
    assert needed
    private = exports(so, "LIBIMGTOOL_PRIVATE_0")
    assert private == needed | {"block_module_ops"}


def exports_any(path):
    nm = run(["nm", "-D", "--defined-only", path]).stdout
    return {l.split()[-1].split("@")[0] for l in nm.splitlines()
            if " T " in l}


def find_all(root, pattern):
    import glob
    return glob.glob(os.path.join(root, pattern), recursive=True)


def test_network_images_through_modules(examples, tmp):
    """A program linked with libimgtool.so opens nbd+unix:// (the nbd
    module, loaded from the install tree) and reads what qemu-img reads
    through qemu-nbd."""
    progs, env = examples
    img = tmp / "served.qcow2"
    qemu_img("create", "-f", "qcow2", img, "4M")
    qemu_io("-c", "write -P 0x5a 64k 128k", "-c", "write -P 0x6b 3M 4k", img)
    sock = tmp / "nbd.sock"
    srv = start_qemu_nbd(sock, "-r", "-f", "qcow2", "-x", "e", img)
    try:
        url = f"nbd+unix:///e?socket={sock}"
        p = run([progs["imgmap"], url, tmp / "copy.raw"], env=env)
        assert p.stdout.splitlines()[:2] == ["format raw", "size 4194304"]
        qemu_img("compare", "-f", "raw", "-F", "qcow2", tmp / "copy.raw",
                 img)
    finally:
        stop_process(srv)


def merged(extents):
    """Adjacent extents with the same flags joined."""
    out = []
    for start, length, flags in extents:
        if out and out[-1][2] == flags and out[-1][0] + out[-1][1] == start:
            out[-1] = (out[-1][0], out[-1][1] + length, flags)
        else:
            out.append((start, length, flags))
    return out


def test_read_map_through_a_backing_chain(examples, tmp):
    progs, env = examples
    base, top = tmp / "base.qcow2", tmp / "top.qcow2"
    qemu_img("create", "-f", "qcow2", base, "4M")
    qemu_io("-c", "write -P 0x11 0 128k", "-c", "write -P 0x22 3M 64k", base)
    qemu_img("create", "-f", "qcow2", "-b", base, "-F", "qcow2", top)
    qemu_io("-c", "write -P 0x33 64k 128k", "-c", "write -z 3M 64k",
            "-c", "write -P 0x44 2M 4k", top)
    p = run([progs["imgmap"], top, tmp / "copy.raw"], env=env)
    lines = p.stdout.splitlines()
    assert lines[:2] == ["format qcow2", "size 4194304"]
    got = []
    for l in lines[2:]:
        off, length, kind, alloc = l.split()
        got.append((int(off), int(length),
                    ("data" in kind.split(","), "zero" in kind.split(","),
                     alloc == "allocated")))
    want = [(e["start"], e["length"], (e["data"], e["zero"], e["present"]))
            for e in json.loads(qemu_img("map", "--output=json",
                                         top).stdout)]
    assert merged(got) == merged(want)
    # every byte as qemu-img reads it
    qemu_img("compare", "-f", "raw", "-F", "qcow2", tmp / "copy.raw", top)


def test_create_and_write(examples, tmp):
    progs, env = examples
    img = tmp / "new.qcow2"
    run([progs["mkimage"], img, "qcow2", "8M", "cluster_size=65536",
         "1048576"], env=env)
    info = json.loads(qemu_img("info", "--output=json", img).stdout)
    assert info["format"] == "qcow2" and info["virtual-size"] == 8 << 20
    assert info["cluster-size"] == 65536
    qemu_img("check", img)
    qemu_io("-c", "read -P 0xa5 1M 64k", "-c", "read -P 0 0 1M",
            "-c", "read -P 0 1088k 6976k", img)
    # raw with no options
    raw = tmp / "new.raw"
    run([progs["mkimage"], raw, "raw", "1M", "-", "4096"], env=env)
    data = raw.read_bytes()
    assert len(data) == 1 << 20
    assert data[4096:4096 + 65536] == b"\xa5" * 65536
    assert data[:4096] == bytes(4096)


def test_errors_come_back_as_one_line(examples, tmp):
    progs, env = examples
    p = run([progs["imgmap"], tmp / "missing.qcow2"], env=env, rc=1)
    assert p.stderr.count("\n") == 1 and "No such file" in p.stderr
    p = run([progs["mkimage"], tmp / "x.qcow2", "qcow2", "1M", "bogus=1",
             "0"], env=env, rc=1)
    assert p.stderr.count("\n") == 1 and "bogus" in p.stderr
    assert not (tmp / "x.qcow2").exists()
    # a network image that is not there: one line from the module
    p = run([progs["imgmap"],
             "iscsi://127.0.0.1:1/iqn.2024-01.org.imgtool.test:none/0"],
            env=env, rc=1)
    assert p.stderr.count("\n") == 1 and "127.0.0.1" in p.stderr, p.stderr
    # a write past the end is refused, not done
    run([progs["mkimage"], tmp / "y.raw", "raw", "64k", "-", "4096"],
        env=env, rc=1)
