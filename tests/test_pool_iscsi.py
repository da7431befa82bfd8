"""iSCSI pools against a real tgtd: a target's disk LUNs as volumes
(unit:0:0:N, keyed by their SCSI designator, iscsi:// paths QEMU opens),
refreshed by REPORT LUNS + READ CAPACITY in one session with the real
allocation of thin LUNs, wiped by WRITE SAME or UNMAP, images put on LUNs
by image commands; CHAP from --object secret; libvirt's XML (checked with
virt-xml-validate) and virsh's pool-define-as (checked against virsh)."""
import json
import os

import pytest

from conftest import CHAP_PASSWORD, CHAP_USER, qemu_img, qemu_io
from poolenv import pools, validate_text, virsh  # noqa: F401

pytestmark = pytest.mark.xdist_group("iscsi")

MiB = 1 << 20


def define(pools, target, iqn, name="ip", kind="iscsi-direct", *extra):
    args = ["pool-define-as", name, kind, "--source-host", target.portal,
            "--source-dev", iqn]
    if kind == "iscsi-direct":
        args += ["--source-initiator", "iqn.2024-01.org.imgtool.test:host"]
    else:
        args += ["--target", "/dev/disk/by-path"]
    pools(*args, *extra)


@pytest.fixture
def disks(iscsi_target):
    """A target with a thin 64 MiB LUN 1, a thick 8 MiB LUN 2 and a thin
    16 MiB LUN 4 with 4 KiB blocks (LUN 0 is tgtd's controller)."""
    return iscsi_target.new_target([
        (1, 64 * MiB, {}),
        (2, 8 * MiB, {"thin": False}),
        (4, 16 * MiB, {"blocksize": 4096}),
    ])


def test_define_as_matches_virsh(pools, tmp_path):
    node = tmp_path / "n.xml"
    node.write_text("<node/>")
    for args in (
        ["pool-define-as", "x", "iscsi-direct", "--source-host", "h",
         "--source-dev", "iqn.2024-01.org.x:t", "--source-initiator",
         "iqn.2024-01.org.x:i", "--auth-type", "chap", "--auth-username",
         "u", "--secret-usage", "s", "--print-xml"],
        ["pool-define-as", "x", "iscsi", "--source-host", "h",
         "--source-dev", "iqn.2024-01.org.x:t", "--target",
         "/dev/disk/by-path", "--print-xml"],
        ["pool-define-as", "x", "iscsi-direct", "--source-host", "h",
         "--source-dev", "iqn.2024-01.org.x:t", "--source-initiator",
         "iqn.2024-01.org.x:i", "--auth-type", "chap", "--auth-username",
         "u", "--secret-uuid", "11111111-2222-3333-4444-555555555555",
         "--print-xml"],
    ):
        out = pools(*args).stdout
        assert out == virsh(node, *args), args
        validate_text(tmp_path, out, "storagepool")


def test_luns_as_volumes(pools, iscsi_target, disks, tmp_path):
    iqn, tid, paths = disks
    define(pools, iscsi_target, iqn)
    pools("pool-start", "ip")
    vols = pools.json("vol-list", "ip", "--details")
    assert [v["name"] for v in vols] == ["unit:0:0:1", "unit:0:0:2",
                                        "unit:0:0:4"]
    by = {v["name"]: v for v in vols}
    assert by["unit:0:0:1"]["path"] == \
        f"iscsi://{iscsi_target.portal}/{iqn}/1"
    assert by["unit:0:0:1"]["capacity"] == 64 * MiB
    # thin: what the LUN holds (nothing yet); thick: all of it
    assert by["unit:0:0:1"]["allocation"] == 0
    assert by["unit:0:0:2"]["allocation"] == 8 * MiB
    assert by["unit:0:0:4"]["capacity"] == 16 * MiB
    info = pools.json("pool-info", "ip")
    assert info["capacity"] == 88 * MiB and info["available"] == 0
    # keys: the LUNs' designators, distinct and stable
    keys = [pools("vol-key", v["name"], "ip").stdout.strip() for v in vols]
    assert len(set(keys)) == 3 and all(k.startswith("3") for k in keys)
    # written through the pool's name for it, read by QEMU at its path
    pools("io", "-f", "raw", "-c", "write -P 0x5c 0 3M", "vol:ip/unit:0:0:1")
    qemu_io("-f", "raw", "-c", "read -P 0x5c 0 3M",
            by["unit:0:0:1"]["path"])
    assert pools.json("vol-info", "unit:0:0:1", "ip")["allocation"] == \
        3 * MiB
    assert os.stat(paths[1]).st_blocks * 512 >= 3 * MiB
    # libvirt's XML
    validate_text(tmp_path, pools("pool-dumpxml", "ip").stdout,
                  "storagepool")
    for v in vols:
        x = pools("vol-dumpxml", v["name"], "ip").stdout
        validate_text(tmp_path, x, "storagevol", "v.xml")
        assert "<volume type='network'>" in x
    # by key and by path, as virsh finds volumes
    assert pools.json("vol-info", keys[0])["name"] == "unit:0:0:1"
    assert pools.json("vol-info", by["unit:0:0:2"]["path"])["name"] == \
        "unit:0:0:2"


def test_refresh_is_deterministic_and_follows_the_target(
        pools, iscsi_target, disks):
    iqn, tid, paths = disks
    define(pools, iscsi_target, iqn, kind="iscsi")
    pools("pool-start", "ip")
    first = pools.json("vol-list", "ip", "--details")
    keys = {v["name"]: pools("vol-key", v["name"], "ip").stdout
            for v in first}
    for _ in range(5):
        pools("pool-refresh", "ip")
        assert pools.json("vol-list", "ip", "--details") == first
    # a LUN added on the target appears; one removed goes
    iscsi_target.tgtd.add_lun(tid, 7, paths[1] + ".7", 4 * MiB)
    pools("pool-refresh", "ip")
    assert [v["name"] for v in pools.json("vol-list", "ip")] == \
        ["unit:0:0:1", "unit:0:0:2", "unit:0:0:4", "unit:0:0:7"]
    iscsi_target.tgtd.delete_lun(tid, 2)
    pools("pool-refresh", "ip")
    assert [v["name"] for v in pools.json("vol-list", "ip")] == \
        ["unit:0:0:1", "unit:0:0:4", "unit:0:0:7"]
    for name in ("unit:0:0:1", "unit:0:0:4"):
        assert pools("vol-key", name, "ip").stdout == keys[name]


def test_images_on_luns(pools, iscsi_target, disks, tmp_path):
    """An image command puts a qcow2 onto a LUN (LUNs exist: no
    vol-create); the pool then shows its format and virtual size."""
    iqn, _, _ = disks
    define(pools, iscsi_target, iqn)
    pools("pool-start", "ip")
    pools("create", "-f", "qcow2", "vol:ip/unit:0:0:4", "12M")
    v = pools.json("vol-info", "unit:0:0:4", "ip")
    assert v["capacity"] == 12 * MiB
    x = pools("vol-dumpxml", "unit:0:0:4", "ip").stdout
    assert "<format type='qcow2'/>" in x
    url = f"iscsi://{iscsi_target.portal}/{iqn}/4"
    assert json.loads(qemu_img("info", "--output=json", url).stdout)[
        "format"] == "qcow2"
    src = tmp_path / "src.qcow2"
    qemu_img("create", "-f", "qcow2", src, "40M")
    qemu_io("-f", "qcow2", "-c", "write -P 0x61 1M 2M", src)
    pools("convert", "-O", "qcow2", src, "vol:ip/unit:0:0:1")
    qemu_io("-f", "qcow2", "-c", "read -P 0x61 1M 2M",
            f"iscsi://{iscsi_target.portal}/{iqn}/1")
    assert pools.json("vol-info", "unit:0:0:1", "ip")["capacity"] == 40 * MiB
    # a wiped qcow2 volume is an empty qcow2 again, as in any pool
    pools("vol-wipe", "unit:0:0:1", "ip")
    assert "<format type='qcow2'/>" in pools("vol-dumpxml", "unit:0:0:1",
                                             "ip").stdout
    qemu_io("-f", "qcow2", "-c", "read -P 0 1M 2M",
            f"iscsi://{iscsi_target.portal}/{iqn}/1")


@pytest.mark.parametrize("alg", ["zero", "trim"])
def test_wipe(pools, iscsi_target, disks, alg):
    iqn, _, _ = disks
    define(pools, iscsi_target, iqn)
    pools("pool-start", "ip")
    url = f"iscsi://{iscsi_target.portal}/{iqn}/1"
    qemu_io("-f", "raw", "-c", "write -P 0x71 0 8M", url)
    assert pools.json("vol-info", "unit:0:0:1", "ip")["allocation"] == \
        8 * MiB
    pools("vol-wipe", "unit:0:0:1", "ip", "--algorithm", alg)
    qemu_io("-f", "raw", "-c", "read -P 0 0 8M", url)
    # a thin LUN that reads unmapped blocks as zero gives them back
    assert pools.json("vol-info", "unit:0:0:1", "ip")["allocation"] == 0


def test_upload_download(pools, iscsi_target, disks, tmp_path):
    iqn, _, _ = disks
    define(pools, iscsi_target, iqn)
    pools("pool-start", "ip")
    data = os.urandom(3 * MiB)
    up = tmp_path / "up"
    up.write_bytes(data)
    pools("vol-upload", "unit:0:0:2", up, "ip", "--offset", str(MiB))
    down = tmp_path / "down"
    pools("vol-download", "unit:0:0:2", down, "ip", "--offset", str(MiB),
          "--length", str(3 * MiB))
    assert down.read_bytes() == data


def test_chap_pool(pools, iscsi_target, tmp_path):
    iqn, _, _ = iscsi_target.new_target([(1, 8 * MiB, {})],
                                        chap=(CHAP_USER, CHAP_PASSWORD))
    pw = tmp_path / "pw"
    pw.write_text(CHAP_PASSWORD)
    bad = tmp_path / "bad"
    bad.write_text("wrong")
    define(pools, iscsi_target, iqn, "cp", "iscsi-direct", "--auth-type",
           "chap", "--auth-username", CHAP_USER, "--secret-usage", "chap")
    x = pools("pool-dumpxml", "cp").stdout
    assert "<secret usage='chap'/>" in x and CHAP_PASSWORD not in x
    assert "No secret with id 'chap'" in pools.fails("pool-start", "cp")
    assert "authentication failure" in pools.fails(
        "pool-start", "cp", "--object", f"secret,id=chap,file={bad}")
    obj = ["--object", f"secret,id=chap,file={pw}"]
    pools("pool-start", "cp", *obj)
    assert [v["name"] for v in pools.json("vol-list", "cp", *obj)] == \
        ["unit:0:0:1"]
    # image commands log in with the pool's credentials
    pools("create", "-f", "qcow2", *obj, "vol:cp/unit:0:0:1", "4M")
    pools("io", *obj, "-c", "write -P 0x12 0 64k", "vol:cp/unit:0:0:1")
    pools("io", *obj, "-c", "read -P 0x12 0 64k", "vol:cp/unit:0:0:1")
    assert pools.json("vol-info", "unit:0:0:1", "cp", *obj)["capacity"] == \
        4 * MiB


def test_what_a_target_does_not_do_here(pools, iscsi_target, disks):
    iqn, _, _ = disks
    define(pools, iscsi_target, iqn)
    assert "nothing to build" in pools.fails("pool-build", "ip")
    pools("pool-start", "ip")
    assert "LUNs are made on the iSCSI server" in \
        pools.fails("vol-create-as", "ip", "unit:0:0:9", "1M")
    assert "named unit:0:0:LUN" in pools.fails("vol-create-as", "ip", "x",
                                               "1M")
    assert "removed on the iSCSI server" in \
        pools.fails("vol-delete", "unit:0:0:1", "ip")
    assert "resized on the iSCSI server" in \
        pools.fails("vol-resize", "unit:0:0:1", "32M", "ip", "--shrink")
    pools.fails("vol-resize", "unit:0:0:1", "128M", "ip")   # no room
    pools("pool-destroy", "ip")
    assert "removed on the iSCSI server" in pools.fails("pool-delete", "ip")
    # a portal nobody answers on, a target that is not there
    pools("pool-define-as", "gone", "iscsi-direct", "--source-host",
          "127.0.0.1:1", "--source-dev", iqn, "--source-initiator",
          "iqn.2024-01.org.imgtool.test:host")
    assert "cannot connect" in pools.fails("pool-start", "gone")
    define(pools, iscsi_target, "iqn.2024-01.org.imgtool.test:none", "none")
    assert "not found" in pools.fails("pool-start", "none")
    assert "IQN" in pools.fails("pool-define-as", "bad", "iscsi-direct",
                                "--source-host", "h", "--source-dev",
                                "/dev/sda", "--source-initiator",
                                "iqn.2024-01.a:b")
