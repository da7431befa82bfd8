"""Logical (LVM) pools on loop devices, with real lvm2 and no
device-mapper: LVs are made with activation off and their data reached
through their segments on the PV.  What imgtool writes through a
vol:POOL/NAME name must be on the PV, byte for byte, where the VG's
metadata says the LV's extents are; qemu-img and qemu-io read the same
bytes through a raw window of the loop device.

Every VG has a name unique to the run; loop devices, VGs, PVs and the
VG's files in /etc/lvm/{archive,backup} are removed even on failure."""
import glob
import json
import os
import shutil
import signal
import subprocess
import time
import uuid
import xml.etree.ElementTree as ET

import pytest

from conftest import IMGTOOL, no_leak_check_env, qemu_img, qemu_io
from poolenv import Pools, dir_pool, pools, validate_text  # noqa: F401

MiB = 1 << 20
NO_DM = ["--config", "global{activation=0}"]
LVM_ENV = dict(os.environ, LVM_SUPPRESS_FD_WARNINGS="1")

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("lvm") or
    not shutil.which("losetup"), reason="needs root, lvm2 and losetup")


def lvm(*args, check=True):
    p = subprocess.run(["lvm", args[0], *NO_DM, *args[1:]],
                       capture_output=True, text=True, env=LVM_ENV,
                       timeout=120)
    if check:
        assert p.returncode == 0, f"lvm {args}: {p.stderr}"
    return p


def lvs(vg):
    p = lvm("lvs", "--reportformat", "json", "--units", "b", "--nosuffix",
            "-o", "lv_name,lv_uuid,lv_size", vg)
    rows = json.loads(p.stdout)["report"][0]["lv"]
    return {r["lv_name"]: r for r in rows}


class Loop:
    """A sparse file on a loop device, and the VG names made on it."""

    def __init__(self, tmp, size_mib):
        self.file = os.path.join(tmp, f"pv-{uuid.uuid4().hex[:8]}.img")
        with open(self.file, "wb") as f:
            f.truncate(size_mib * MiB)
        self.dev = subprocess.run(["losetup", "-f", "--show", self.file],
                                  capture_output=True, text=True,
                                  check=True).stdout.strip()
        self.vg = f"imgtoolt_{os.getpid()}_{uuid.uuid4().hex[:8]}"

    def close(self):
        lvm("vgremove", "-f", self.vg, check=False)
        lvm("pvremove", "-y", self.dev, check=False)
        subprocess.run(["losetup", "-d", self.dev], check=False)
        os.unlink(self.file)
        for f in glob.glob(f"/etc/lvm/archive/{self.vg}_*") + \
                glob.glob(f"/etc/lvm/backup/{self.vg}"):
            os.unlink(f)


@pytest.fixture
def loop(tmp_path):
    lo = Loop(tmp_path, 64)
    try:
        yield lo
    finally:
        lo.close()


@pytest.fixture(scope="module")
def lvpool(tmp_path_factory):
    """An active logical pool "lv" on a 256 MiB loop device, built by
    imgtool; (Pools, Loop)."""
    tmp = tmp_path_factory.mktemp("lvm")
    lo = Loop(tmp, 256)
    try:
        p = Pools(tmp / "cfg", {"IMGTOOL_LVM_NO_DM": "1"})
        p("pool-define-as", "lv", "logical", "--source-dev", lo.dev,
          "--source-name", lo.vg)
        p("pool-build", "lv")
        p("pool-start", "lv")
        yield p, lo
    finally:
        lo.close()
        shutil.rmtree(tmp, ignore_errors=True)


def extents(pools, vol):
    """[(device, start, end)] of a volume, from its XML."""
    x = ET.fromstring(pools("vol-dumpxml", vol, "lv").stdout)
    return [(d.get("path"), int(e.get("start")), int(e.get("end")))
            for d in x.iter("device") for e in d.iter("extent")]


def pv_bytes(pools, vol):
    out = b""
    for dev, start, end in extents(pools, vol):
        with open(dev, "rb") as f:
            f.seek(start)
            out += f.read(end - start)
    return out


def json_window(pools, vol, fmt):
    """A QEMU json: name reading a one-segment volume on the PV."""
    [(dev, start, end)] = extents(pools, vol)
    return "json:" + json.dumps({
        "driver": fmt, "file": {"driver": "raw", "offset": start,
                                "size": end - start,
                                "file": {"driver": "host_device",
                                         "filename": dev}}})


def test_pool_build_start_delete(pools, loop, tmp_path):
    env = {"IMGTOOL_LVM_NO_DM": "1"}
    p = Pools(tmp_path / "cfg", env)
    p("pool-define-as", "v", "logical", "--source-dev", loop.dev,
      "--source-name", loop.vg)
    assert "not found" in p.fails("pool-start", "v")
    # a device that holds something is only built on with --overwrite
    lvm("pvcreate", "-y", loop.dev)
    assert "LVM2_member" in p.fails("pool-build", "v")
    assert "LVM2_member" in p.fails("pool-build", "v", "--no-overwrite")
    assert p("pool-build", "v", "--overwrite").stdout == "Pool v built\n\n"
    p("pool-start", "v")
    info = p.json("pool-info", "v")
    vgs = json.loads(lvm("vgs", "--reportformat", "json", "--units", "b",
                         "--nosuffix", "-o", "vg_size,vg_free",
                         loop.vg).stdout)["report"][0]["vg"][0]
    assert info["capacity"] == int(vgs["vg_size"])
    assert info["available"] == int(vgs["vg_free"])
    x = p("pool-dumpxml", "v").stdout
    assert f"<device path='{loop.dev}'/>" in x
    assert f"<path>/dev/{loop.vg}</path>" in x
    validate_text(tmp_path, x, "storagepool")
    p("vol-create-as", "v", "a", "4M")
    p("pool-destroy", "v")
    p("pool-delete", "v")
    assert lvm("vgs", loop.vg, check=False).returncode != 0
    b = subprocess.run(["blkid", "-p", loop.dev], capture_output=True)
    assert b.returncode != 0            # no signature left
    p("pool-undefine", "v")


def test_raw_volume_data_on_the_pv(lvpool, tmp_path):
    p, lo = lvpool
    assert p("vol-create-as", "lv", "r1", "10M").stdout == \
        "Vol r1 created\n\n"
    v = p.json("vol-info", "r1", "lv")
    lv = lvs(lo.vg)["r1"]
    # LVM rounds to whole extents; the key is the LV's UUID
    assert v["capacity"] == int(lv["lv_size"]) == 12 * MiB
    assert v["key"] == lv["lv_uuid"]
    assert v["path"] == f"/dev/{lo.vg}/r1" and v["type"] == "block"
    assert p("vol-key", "r1", "lv").stdout == lv["lv_uuid"] + "\n\n"
    assert p("vol-name", lv["lv_uuid"]).stdout == "r1\n\n"
    validate_text(tmp_path, p("vol-dumpxml", "r1", "lv").stdout,
                  "storagevol")
    p("io", "-c", "write -P 0xa5 0 12M", "-c", "write -P 0x5a 4M 4k",
      "vol:lv/r1")
    data = pv_bytes(p, "r1")
    want = bytearray(b"\xa5" * (12 * MiB))
    want[4 * MiB:4 * MiB + 4096] = b"\x5a" * 4096
    assert data == bytes(want)
    qemu_io("-r", "-c", "read -P 0x5a 4M 4k", "-c", "read -P 0xa5 0 4M",
            json_window(p, "r1", "raw"))
    p("vol-delete", "r1", "lv")
    assert "r1" not in lvs(lo.vg)


def test_qcow2_and_luks_inside_lvs(lvpool, tmp_path):
    p, lo = lvpool
    p("vol-create-as", "lv", "q1", "64M", "--format", "qcow2")
    v = p.json("vol-info", "q1", "lv")
    assert v["format"] == "qcow2" and v["capacity"] == 64 * MiB
    assert v["allocation"] > 64 * MiB          # room for the metadata
    p("io", "-c", "write -P 0x33 1M 2M", "vol:lv/q1")
    w = json_window(p, "q1", "qcow2")
    qemu_img("check", w)
    qemu_io("-r", "-c", "read -P 0x33 1M 2M", "-c", "read -P 0 0 1M", w)
    assert json.loads(p("info", "--output=json", "vol:lv/q1").stdout)[
        "virtual-size"] == 64 * MiB
    sec = tmp_path / "pass"
    sec.write_text("lvm-secret")
    obj = f"secret,id=lsec,file={sec}"
    p("vol-create-as", "lv", "l1", "8M", "--format", "luks", "--key-secret",
      "lsec", "--iter-time", "10", "--object", obj)
    p("io", "--object", obj, "-c", "write -P 0x44 0 1M", "vol:lv/l1")
    [(dev, start, end)] = extents(p, "l1")
    qemu_io("--object", obj, "--image-opts", "-c", "read -P 0x44 0 1M",
            f"driver=luks,key-secret=lsec,file.driver=raw,"
            f"file.offset={start},file.size={end - start},"
            f"file.file.driver=host_device,file.file.filename={dev}")
    p("vol-delete", "q1", "lv")
    p("vol-delete", "l1", "lv")


def test_resize_across_segments(lvpool):
    p, lo = lvpool
    p("vol-create-as", "lv", "g", "8M")
    p("vol-create-as", "lv", "after", "4M")     # g cannot grow in place
    p("io", "-c", "write -P 0x61 0 8M", "vol:lv/g")
    p("vol-resize", "g", "20M", "--pool", "lv")
    ext = extents(p, "g")
    assert len(ext) == 2 and ext[1][1] > ext[0][2]
    assert p.json("vol-info", "g", "lv")["capacity"] == 20 * MiB
    p("io", "-c", "read -P 0x61 0 8M", "-c", "write -P 0x62 8M 12M",
      "vol:lv/g")
    assert pv_bytes(p, "g") == b"\x61" * (8 * MiB) + b"\x62" * (12 * MiB)
    # smaller only with --shrink (libvirt's logical pool cannot at all)
    assert "shrink" in p.fails("vol-resize", "g", "4M", "lv")
    assert int(lvs(lo.vg)["g"]["lv_size"]) == 20 * MiB
    p("vol-resize", "g", "4M", "lv", "--shrink")
    assert int(lvs(lo.vg)["g"]["lv_size"]) == 4 * MiB
    assert pv_bytes(p, "g") == b"\x61" * (4 * MiB)
    # a qcow2 grows its LV first
    p("vol-create-as", "lv", "gq", "16M", "--format", "qcow2")
    p("io", "-c", "write -P 0x63 15M 1M", "vol:lv/gq")
    p("vol-resize", "gq", "+48M", "lv")
    assert p.json("vol-info", "gq", "lv")["capacity"] == 64 * MiB
    assert int(lvs(lo.vg)["gq"]["lv_size"]) > 64 * MiB
    p("io", "-c", "read -P 0x63 15M 1M", "-c", "write -P 0x64 63M 1M",
      "vol:lv/gq")
    p("check", "vol:lv/gq")
    for v in ("g", "after", "gq"):
        p("vol-delete", v, "lv")


def test_clone_transfer_wipe(lvpool, pools, dir_pool, tmp_path):
    p, lo = lvpool
    p("vol-create-as", "lv", "c", "4M")
    data = os.urandom(4 * MiB)
    src = tmp_path / "src"
    src.write_bytes(data)
    p("vol-upload", "c", src, "lv")
    assert pv_bytes(p, "c") == data
    out = tmp_path / "out"
    p("vol-download", "c", out, "lv")
    assert out.read_bytes() == data
    p("vol-clone", "c", "c2", "--pool", "lv")
    assert pv_bytes(p, "c2") == data
    p("compare", "vol:lv/c", "vol:lv/c2")
    # an upload of a qcow2 image makes the LV a qcow2 volume
    img = tmp_path / "img.qcow2"
    qemu_img("create", "-f", "qcow2", img, "2M")
    p("vol-upload", "c2", img, "lv")
    assert p.json("vol-info", "c2", "lv")["format"] == "qcow2"
    assert p.json("vol-info", "c2", "lv")["capacity"] == 2 * MiB
    # from an LV into a directory pool of another store... same store:
    p("pool-define-as", "d", "dir", "--target", tmp_path / "d")
    p("pool-start", "d", "--build")
    f = tmp_path / "v.xml"
    f.write_text("<volume><name>fromlv.qcow2</name><capacity>1</capacity>"
                 "<target><format type='qcow2'/></target></volume>")
    p("vol-create-from", "d", f, "c", "--inputpool", "lv")
    qemu_io("-r", "-c", f"read -v 0 16", tmp_path / "d" / "fromlv.qcow2")
    p("compare", "vol:lv/c", "vol:d/fromlv.qcow2")
    for alg in ("zero", "trim"):
        p("vol-wipe", "c", "lv", "--algorithm", alg)
        assert pv_bytes(p, "c") == bytes(4 * MiB)
    p("vol-wipe", "c", "lv", "--algorithm", "random")
    assert pv_bytes(p, "c").count(0) < 64 * 1024
    for v in ("c", "c2"):
        p("vol-delete", v, "lv")
    p("pool-destroy", "d")


def test_lvm_bad_input(lvpool, tmp_path):
    p, lo = lvpool
    before = set(lvs(lo.vg))
    for bad in ("a b", "-x", "snapshot1", "x_tmeta", "a:b"):
        assert "valid logical volume name" in p.fails(
            "vol-create-as", "lv", bad, "1M"), bad
    line = p.fails("vol-create-as", "lv", "huge", "1G")
    assert "not enough space" in line
    assert "backing" in p.fails("vol-create-as", "lv", "b", "1M",
                                "--format", "qcow2", "--backing-vol", "x")
    assert set(lvs(lo.vg)) == before
    # an LV device-mapper has active somewhere is never written through
    # its extents (lvm reports lv_active; a wrapper stands in for a
    # host that has it active, since this one has no device-mapper)
    p("vol-create-as", "lv", "act", "4M")
    wrapper = tmp_path / "lvm-active"
    wrapper.write_text("#!/bin/sh\nout=$(lvm \"$@\"); rc=$?\n"
                       "printf '%s\\n' \"$out\" | sed 's/\"lv_active\":"
                       "\"[a-z]*\"/\"lv_active\":\"active\"/g'\n"
                       "exit $rc\n")
    wrapper.chmod(0o755)
    active = {"IMGTOOL_LVM": str(wrapper)}
    for args in (["info", "vol:lv/act"], ["io", "-c", "write 0 1", "vol:lv/act"],
                 ["vol-wipe", "act", "lv"], ["vol-download", "act",
                                             "/dev/null", "lv"]):
        line = p.fails(*args, env=active)
        assert "lv_active: active" in line, line
    # while it is in use, its LV stays
    up = subprocess.Popen([IMGTOOL, "vol-upload", "act", "-", "lv"],
                          stdin=subprocess.PIPE, stderr=subprocess.PIPE,
                          env=no_leak_check_env() | p.env)
    try:
        for _ in range(500):
            if any(os.readlink(f"/proc/{up.pid}/fd/{fd}") == lo.dev
                   for fd in os.listdir(f"/proc/{up.pid}/fd")):
                break
            time.sleep(0.01)
        time.sleep(0.1)
        assert "lock" in p.fails("vol-delete", "act", "lv")
        assert "act" in lvs(lo.vg)
    finally:
        up.stdin.close()
        up.wait(timeout=60)
    p("vol-delete", "act", "lv")


def test_killed_create_leaves_no_lv(lvpool, tmp_path):
    p, lo = lvpool
    p("vol-create-as", "lv", "ksrc", "48M")
    data = tmp_path / "data"
    data.write_bytes(os.urandom(48 * MiB))
    p("vol-upload", "ksrc", data, "lv")
    f = tmp_path / "v.xml"
    f.write_text("<volume><name>kcopy</name><capacity>1</capacity></volume>")
    marker = os.path.join(p.cfg, ".imgtool", "pools", "lv", "ops", "kcopy")
    killed = 0
    # kills at several depths (lvcreate, early and late in the copy), so
    # that a quick copy on an idle host is still caught at least once
    for delay in (0.01, 0.05, 0.1, 0.2, 0.3):
        c = subprocess.Popen([IMGTOOL, "vol-create-from", "lv", f, "ksrc",
                              "--inputpool", "lv"],
                             stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL,
                             env=no_leak_check_env() | p.env)
        while c.poll() is None and not os.path.exists(marker):
            time.sleep(0.001)
        time.sleep(delay)
        c.send_signal(signal.SIGKILL)
        c.wait()
        if c.returncode == 0:
            p("vol-delete", "kcopy", "lv")
            continue
        killed += 1
        assert "kcopy" not in p.vols("lv")
        assert "kcopy" not in lvs(lo.vg)     # removed by that refresh
    assert killed
    p("vol-delete", "ksrc", "lv")
