"""Gluster pools against a real glusterd: the files of a directory on a
Gluster volume as volumes, with every volume command (libvirt's gluster
pool can only delete): create raw, qcow2 and luks, backing volumes,
clone, resize, upload, download, wipe, delete; image commands making new
volumes by name; libvirt's XML checked with virt-xml-validate and virsh's
pool-define-as checked against virsh.  The images are checked on the
brick with local tools (see test_gluster.py for why)."""
import os

import pytest

from conftest import qemu_img, qemu_io
from poolenv import pools, validate_text, virsh  # noqa: F401

pytestmark = pytest.mark.xdist_group("gluster")

MiB = 1 << 20


@pytest.fixture
def gpool(pools, gluster, request):
    """An active gluster pool "gp" on a directory of its own."""
    sub = "pool-" + "".join(c for c in request.node.name if c.isalnum())[:40]
    pools("pool-define-as", "gp", "gluster", "--source-host", "127.0.0.1",
          "--source-name", gluster.volume, "--source-path", "/" + sub)
    pools("pool-build", "gp")
    pools("pool-start", "gp")
    yield sub
    for name in os.listdir(gluster.brick(sub)) if \
            os.path.isdir(gluster.brick(sub)) else []:
        pools("vol-delete", name, "gp", check=False)


def test_define_as_matches_virsh(pools, tmp_path):
    node = tmp_path / "n.xml"
    node.write_text("<node/>")
    args = ["pool-define-as", "g", "gluster", "--source-host", "h",
            "--source-name", "vol", "--source-path", "/dir", "--print-xml"]
    out = pools(*args).stdout
    assert out == virsh(node, *args)
    validate_text(tmp_path, out, "storagepool")


def test_volume_commands(pools, gluster, gpool, tmp_path):
    url = lambda name: gluster.url(f"{gpool}/{name}")   # noqa: E731
    brick = lambda name: gluster.brick(f"{gpool}/{name}")   # noqa: E731
    info = pools.json("pool-info", "gp")
    assert info["state"] == "running" and info["capacity"] > 0
    validate_text(tmp_path, pools("pool-dumpxml", "gp").stdout,
                  "storagepool")
    pools("vol-create-as", "gp", "base.qcow2", "32M", "--format", "qcow2")
    pools("vol-create-as", "gp", "top.qcow2", "32M", "--format", "qcow2",
          "--backing-vol", "base.qcow2", "--backing-vol-format", "qcow2")
    pools("vol-create-as", "gp", "disk.raw", "8M", "--allocation", "8M")
    vols = pools.vols("gp")
    assert sorted(vols) == ["base.qcow2", "disk.raw", "top.qcow2"]
    assert vols["top.qcow2"]["path"] == url("top.qcow2")
    assert pools("vol-key", "top.qcow2", "gp").stdout.strip() == \
        url("top.qcow2")
    for v in vols:
        validate_text(tmp_path, pools("vol-dumpxml", v, "gp").stdout,
                      "storagevol", "v.xml")
    # preallocated raw; the overlay reads through its backing volume
    assert os.stat(brick("disk.raw")).st_blocks * 512 >= 8 * MiB
    pools("io", "-c", "write -P 0x21 0 2M", "vol:gp/base.qcow2")
    pools("io", "-c", "write -P 0x22 1M 64k", "vol:gp/top.qcow2")
    pools("io", "-c", "read -P 0x21 0 1M", "-c", "read -P 0x22 1M 64k",
          "vol:gp/top.qcow2")
    # clone: a copy of the overlay's own layer over the same backing
    pools("vol-clone", "top.qcow2", "clone.qcow2", "--pool", "gp")
    pools("io", "-c", "read -P 0x22 1M 64k", "-c", "read -P 0x21 0 1M",
          "vol:gp/clone.qcow2")
    # resize, upload, download, wipe
    pools("vol-resize", "disk.raw", "12M", "--pool", "gp")
    assert pools.vols("gp")["disk.raw"]["capacity"] == 12 * MiB
    data = os.urandom(2 * MiB)
    (tmp_path / "up").write_bytes(data)
    pools("vol-upload", "disk.raw", tmp_path / "up", "--pool", "gp",
          "--offset", str(MiB))
    pools("vol-download", "disk.raw", tmp_path / "down", "--pool", "gp",
          "--offset", str(MiB), "--length", str(2 * MiB))
    assert (tmp_path / "down").read_bytes() == data
    with open(brick("disk.raw"), "rb") as f:
        f.seek(MiB)
        assert f.read(2 * MiB) == data
    pools("vol-wipe", "disk.raw", "--pool", "gp")
    qemu_io("-f", "raw", "-c", "read -P 0 0 12M", brick("disk.raw"))
    # QEMU's view of what is on the brick
    assert qemu_img("check", brick("top.qcow2")).returncode == 0
    # delete
    pools("vol-delete", "clone.qcow2", "--pool", "gp")
    assert not os.path.exists(brick("clone.qcow2"))
    assert "clone.qcow2" not in pools.vols("gp")


def test_luks_volume(pools, gluster, gpool, tmp_path):
    key = tmp_path / "key"
    key.write_text("volume passphrase")
    obj = ["--object", f"secret,id=k,file={key}"]
    pools("vol-create-as", "gp", "enc.luks", "8M", "--format", "luks",
          "--key-secret", "k", "--iter-time", "10", *obj)
    pools("io", *obj, "-c", "write -P 0x3e 0 1M", "vol:gp/enc.luks")
    pools("io", *obj, "-c", "read -P 0x3e 0 1M", "vol:gp/enc.luks")
    assert pools.vols("gp")["enc.luks"]["capacity"] == 8 * MiB


def test_refresh_and_image_commands(pools, gluster, gpool, tmp_path):
    """Volumes made by image commands by name (vol:gp/NAME) and files
    made on the volume by others both show up; formats imgtool made are
    remembered, never probed."""
    src = tmp_path / "src.raw"
    src.write_bytes(os.urandom(3 * MiB))
    pools("convert", "-O", "qcow2", src, "vol:gp/conv.qcow2")
    pools("create", "-f", "raw", "vol:gp/made.raw", "2M")
    pools("create", "-f", "qcow2", gluster.url(f"{gpool}/outside.qcow2"),
          "4M")
    pools("pool-refresh", "gp")
    vols = pools.vols("gp")
    assert sorted(vols) == ["conv.qcow2", "made.raw", "outside.qcow2"]
    assert "<format type='qcow2'/>" in pools("vol-dumpxml", "conv.qcow2",
                                             "gp").stdout
    assert vols["outside.qcow2"]["capacity"] == 4 * MiB
    # a guest writing a qcow2 header into the raw volume does not make it
    # a qcow2 volume
    hdr = tmp_path / "hdr.qcow2"
    qemu_img("create", "-f", "qcow2", hdr, "1M")
    pools("dd", f"if={hdr}", "of=vol:gp/made.raw", "-f", "raw", "-O", "raw",
          check=False)
    pools("io", "-f", "raw", "-c", f"write -s {hdr} 0 512",
          "vol:gp/made.raw")
    pools("pool-refresh", "gp")
    assert "<format type='raw'/>" in pools("vol-dumpxml", "made.raw",
                                           "gp").stdout
    assert pools.vols("gp")["made.raw"]["capacity"] == 2 * MiB


def test_pool_delete_and_bad_definitions(pools, gluster):
    pools("pool-define-as", "d", "gluster", "--source-host", "127.0.0.1",
          "--source-name", gluster.volume, "--source-path", "/to-delete")
    pools("pool-start", "d", "--build")
    assert os.path.isdir(gluster.brick("to-delete"))
    pools("pool-destroy", "d")
    pools("pool-delete", "d")
    assert not os.path.exists(gluster.brick("to-delete"))
    assert "source name" in pools.fails(
        "pool-define-as", "x", "gluster", "--source-host", "127.0.0.1")
    assert "source host" in pools.fails(
        "pool-define-as", "x", "gluster", "--source-name", gluster.volume)
    pools("pool-define-as", "nodir", "gluster", "--source-host", "127.0.0.1",
          "--source-name", gluster.volume, "--source-path", "/not-there")
    assert "not-there" in pools.fails("pool-start", "nodir")
    pools("pool-define-as", "novol", "gluster", "--source-host",
          "127.0.0.1", "--source-name", "no-such-volume")
    assert "no-such-volume" in pools.fails("pool-start", "novol")
