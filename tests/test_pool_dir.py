"""Directory pools with virsh's vocabulary: every pool and volume command,
virsh's layouts checked against virsh itself (libvirt's test driver, no
daemon), XML checked with virt-xml-validate, libvirt-written definitions
accepted, volumes used by name (vol:POOL/NAME) in image commands and
opened by qemu-img, qemu-io and QEMU."""
import json
import os
import signal
import subprocess
import time

import pytest

from conftest import IMGTOOL, qemu_img, qemu_io, run
from poolenv import (Pools, dir_pool, pools, validate, validate_text,  # noqa
                     virsh)

MiB = 1 << 20


def node_xml(tmp_path, pools, pool, target):
    """A test-driver node holding `pool` with the volumes imgtool lists,
    same sizes: virsh then prints what imgtool should."""
    info = pools.json("pool-info", pool)
    vols = pools.json("vol-list", pool)
    x = [f"<node><pool type='dir'><name>{pool}</name>"
         f"<uuid>{info['uuid']}</uuid><target><path>{target}</path>"
         "</target>"]
    for v in vols:
        x.append(f"<volume type='file'><name>{v['name']}</name>"
                 f"<capacity unit='bytes'>{v['capacity']}</capacity>"
                 f"<allocation unit='bytes'>{v['allocation']}</allocation>"
                 f"<target><path>{v['path']}</path></target></volume>")
    x.append("</pool></node>")
    path = tmp_path / "node.xml"
    path.write_text("".join(x))
    return path


def test_pool_lifecycle(pools, tmp_path):
    target = tmp_path / "images"
    assert pools("pool-define-as", "p", "dir", "--target", target).stdout \
        == "Pool p defined\n\n"
    assert pools.json("pool-list", "--all")[0]["state"] == "inactive"
    empty = tmp_path / "empty.xml"
    empty.write_text("<node/>")
    assert pools("pool-list").stdout == virsh(empty, "pool-list")
    assert pools("pool-build", "p").stdout == "Pool p built\n\n"
    assert target.is_dir() and (target.stat().st_mode & 0o777) == 0o711
    assert pools("pool-start", "p").stdout == "Pool p started\n\n"
    assert pools("pool-refresh", "p").stdout == "Pool p refreshed\n\n"
    info = pools.json("pool-info", "p")
    assert info["state"] == "running" and info["persistent"]
    st = os.statvfs(target)
    assert info["capacity"] == st.f_frsize * st.f_blocks
    # by UUID too, as virsh
    assert pools.json("pool-info", info["uuid"])["name"] == "p"
    assert pools("pool-autostart", "p").stdout == \
        "Pool p marked as autostarted\n\n"
    link = tmp_path / "cfg" / "autostart" / "p.xml"
    assert os.readlink(link) == "../p.xml"      # libvirt's layout
    assert pools.json("pool-info", "p")["autostart"]
    assert pools("pool-autostart", "p", "--disable").stdout == \
        "Pool p unmarked as autostarted\n\n"
    assert not link.exists()
    pools.fails("pool-start", "p")              # already active
    pools.fails("pool-undefine", "p")           # still active
    pools.fails("pool-delete", "p")
    assert pools("pool-destroy", "p").stdout == "Pool p destroyed\n\n"
    pools.fails("pool-refresh", "p")            # not active
    assert pools("pool-delete", "p").stdout == "Pool p deleted\n\n"
    assert not target.exists()
    assert pools("pool-undefine", "p").stdout == \
        "Pool p has been undefined\n\n"
    assert pools.json("pool-list", "--all") == []
    assert not (tmp_path / "cfg" / "p.xml").exists()


def test_start_build_and_create_as(pools, tmp_path):
    pools("pool-define-as", "a", "dir", "--target", tmp_path / "a")
    pools("pool-start", "a", "--build")
    assert (tmp_path / "a").is_dir()
    # pool-create-as: transient, started, gone once destroyed
    assert pools("pool-create-as", "t", "dir", "--target", tmp_path / "t",
                 "--build").stdout == "Pool t created\n\n"
    t = pools.json("pool-info", "t")
    assert t["state"] == "running" and not t["persistent"]
    assert [p["name"] for p in pools.json("pool-list", "--transient")] == ["t"]
    assert [p["name"] for p in pools.json("pool-list", "--persistent")] == \
        ["a"]
    assert not (tmp_path / "cfg" / "t.xml").exists()
    pools.fails("pool-undefine", "t")
    pools.fails("pool-autostart", "t")
    pools("pool-destroy", "t")
    assert [p["name"] for p in pools.json("pool-list", "--all")] == ["a"]
    # a failed pool-create-as leaves nothing defined
    pools.fails("pool-create-as", "u", "dir", "--target", tmp_path / "none")
    assert [p["name"] for p in pools.json("pool-list", "--all")] == ["a"]


def test_layouts_match_virsh(pools, dir_pool, tmp_path):
    pools("vol-create-as", "p", "a.raw", "1M", "--allocation", "1M")
    pools("vol-create-as", "p", "longer-name.qcow2", "1G", "--format",
          "qcow2")
    pools("vol-create-as", "p", "sparse", "5G")
    node = node_xml(tmp_path, pools, "p", dir_pool)
    for args in (["vol-list", "p"], ["vol-list", "p", "--details"],
                 ["vol-info", "a.raw", "p"],
                 ["vol-info", "--bytes", "longer-name.qcow2", "--pool", "p"],
                 ["vol-path", "sparse", "p"], ["vol-key", "sparse", "p"],
                 ["pool-list"], ["pool-list", "--all"],
                 ["pool-list", "--name"], ["pool-list", "--uuid"]):
        assert pools(*args).stdout == virsh(node, *args), args
    # an inactive pool, with the details table's dashes
    pools("pool-destroy", "p")
    for args in (["pool-info", "p"], ["pool-list", "--all", "--details"]):
        want = virsh(node, "pool-destroy p; " + " ".join(args))
        assert want.startswith("Pool p destroyed\n\n")
        assert pools(*args).stdout == want[len("Pool p destroyed\n\n"):]


def test_xml_validates_and_round_trips(pools, dir_pool, tmp_path):
    validate(tmp_path / "cfg" / "p.xml", "storagepool")
    validate_text(tmp_path, pools("pool-dumpxml", "p").stdout, "storagepool")
    validate_text(tmp_path, pools("pool-dumpxml", "--inactive", "p").stdout,
                  "storagepool")
    pools("vol-create-as", "p", "base", "64M", "--format", "qcow2")
    pools("vol-create-as", "p", "top", "64M", "--format", "qcow2",
          "--backing-vol", "base", "--backing-vol-format", "qcow2")
    pools("vol-create-as", "p", "r", "1M")
    for v in ("base", "top", "r"):
        validate_text(tmp_path, pools("vol-dumpxml", v, "p").stdout,
                      "storagevol", f"{v}.xml")
    x = pools("vol-dumpxml", "top", "--pool", "p").stdout
    assert f"<path>{dir_pool}/base</path>" in x
    assert "<format type='qcow2'/>" in x
    # a volume's XML makes the same volume again (vol-create)
    f = tmp_path / "top.xml"
    f.write_text(x.replace("<name>top</name>", "<name>top2</name>"))
    assert pools("vol-create", "p", f, "--validate").stdout == \
        f"Vol top2 created from {f}\n\n"
    v = pools.json("vol-info", "top2", "--pool", "p")
    assert v["format"] == "qcow2" and v["capacity"] == 64 * MiB
    assert v["backing-path"] == str(dir_pool / "base")
    # pool XML round trip: dumpxml -> define elsewhere keeps the uuid
    other = Pools(tmp_path / "cfg2")
    f = tmp_path / "p.xml"
    f.write_text(pools("pool-dumpxml", "p").stdout)
    other("pool-define", f, "--validate")
    assert other.json("pool-info", "p")["uuid"] == \
        pools.json("pool-info", "p")["uuid"]


def test_print_xml_matches_virsh(pools, tmp_path):
    node = tmp_path / "n.xml"
    node.write_text("<node/>")
    args = ["pool-define-as", "x", "logical", "--source-dev", "/dev/sdz",
            "--source-name", "vg", "--target", "/dev/vg", "--print-xml"]
    assert pools(*args).stdout == virsh(node, *args)
    args = ["pool-define-as", "x", "dir", "-", "-", "-", "-", "/srv/x",
            "--print-xml"]    # virsh's positional filling, '-' literal
    assert pools(*args).stdout == virsh(node, *args)


def test_libvirt_written_definitions(pools, tmp_path):
    node = tmp_path / "n.xml"
    node.write_text("<node/>")
    # what virsh writes...
    f = tmp_path / "virsh.xml"
    f.write_text(virsh(node, "pool-define-as", "fromvirsh", "dir",
                       "--target", str(tmp_path / "v"), "--print-xml"))
    assert pools("pool-define", f).stdout == \
        f"Pool fromvirsh defined from {f}\n\n"
    # ...and a file as libvirtd keeps it in /etc/libvirt/storage
    f = tmp_path / "default.xml"
    f.write_text(f"""<!--
WARNING: THIS IS AN AUTO-GENERATED FILE. CHANGES TO IT ARE LIKELY TO BE
OVERWRITTEN AND LOST. Changes to this xml configuration should be made using:
  virsh pool-edit default
or other application using the libvirt API.
-->

<pool type='dir'>
  <name>default</name>
  <uuid>0a3a0d3e-2b6c-4e04-9e6b-5d3c8a6f1f11</uuid>
  <capacity unit='bytes'>0</capacity>
  <allocation unit='bytes'>0</allocation>
  <available unit='bytes'>0</available>
  <source>
  </source>
  <target>
    <path>{tmp_path}/images</path>
    <permissions>
      <mode>0755</mode>
      <owner>0</owner>
      <group>0</group>
    </permissions>
  </target>
</pool>
""")
    validate(f, "storagepool")
    pools("pool-define", f)
    pools("pool-build", "default")
    assert (tmp_path / "images").stat().st_mode & 0o777 == 0o755
    pools("pool-start", "default")
    x = pools("pool-dumpxml", "default").stdout
    assert "0a3a0d3e-2b6c-4e04-9e6b-5d3c8a6f1f11" in x
    assert "<mode>0755</mode>" in x
    validate_text(tmp_path, x, "storagepool")
    # a logical pool as virsh writes it is accepted too (defined only)
    f = tmp_path / "lv.xml"
    f.write_text(virsh(node, "pool-define-as", "vg", "logical",
                       "--source-dev", "/dev/loop99", "--print-xml"))
    pools("pool-define", f)
    x = pools("pool-dumpxml", "vg").stdout
    assert "<name>vg</name>\n    <format" not in x
    assert "<path>/dev/vg</path>" in x          # libvirt's default target
    validate_text(tmp_path, x, "storagepool")


def test_volume_commands(pools, dir_pool, tmp_path):
    out = pools("vol-create-as", "p", "r", "8M", "--allocation", "2M").stdout
    assert out == "Vol r created\n\n"
    v = pools.json("vol-info", "r", "p")
    assert (v["capacity"], v["format"], v["type"]) == (8 * MiB, "raw", "file")
    assert 2 * MiB <= v["allocation"] < 3 * MiB
    assert v["key"] == v["path"] == str(dir_pool / "r")
    assert (dir_pool / "r").stat().st_mode & 0o777 == 0o600
    pools("vol-create-as", "p", "full", "4M", "--allocation", "4M")
    assert pools.json("vol-info", "full", "p")["allocation"] >= 4 * MiB
    pools("vol-create-as", "p", "q", "1G", "--format", "qcow2",
          "--prealloc-metadata")
    q = qemu_img("info", "--output=json", dir_pool / "q").stdout
    assert json.loads(q)["virtual-size"] == 1 << 30
    # the L2 tables are there: more than an empty qcow2, a full-size file
    assert pools.json("vol-info", "q", "p")["allocation"] > 256 << 10
    assert pools.json("vol-info", "q", "p")["physical"] >= 1 << 30
    # a volume from XML with qcow2 details
    f = tmp_path / "v.xml"
    f.write_text("""<volume><name>x.qcow2</name>
      <capacity unit='G'>2</capacity>
      <target><format type='qcow2'/><compat>1.1</compat>
        <clusterSize unit='KiB'>128</clusterSize>
        <features><lazy_refcounts/></features>
        <permissions><mode>0640</mode></permissions></target></volume>""")
    pools("vol-create", "p", f)
    i = json.loads(qemu_img("info", "--output=json",
                            dir_pool / "x.qcow2").stdout)
    assert i["cluster-size"] == 128 << 10
    assert i["format-specific"]["data"]["lazy-refcounts"]
    assert (dir_pool / "x.qcow2").stat().st_mode & 0o777 == 0o640
    # lookups by name, key, path
    path = str(dir_pool / "r")
    assert pools("vol-path", "r", "--pool", "p").stdout == path + "\n\n"
    assert pools("vol-key", path).stdout == path + "\n\n"
    assert pools("vol-name", path).stdout == "r\n\n"
    assert pools("vol-pool", path).stdout == "p\n\n"
    assert pools("vol-pool", "--uuid", path).stdout.strip() == \
        pools.json("pool-info", "p")["uuid"]
    assert pools.json("vol-path", "r", "p") == {"path": path}
    assert pools.json("vol-info", path)["name"] == "r"
    assert sorted(pools.vols("p")) == ["full", "q", "r", "x.qcow2"]
    assert pools("vol-delete", "r", "--pool", "p").stdout == \
        "Vol r deleted\n\n"
    pools("vol-delete", str(dir_pool / "full"))
    assert sorted(pools.vols("p")) == ["q", "x.qcow2"]
    assert not (dir_pool / "r").exists()


def test_vol_names_in_image_commands(pools, dir_pool, tmp_path):
    pools("vol-create-as", "p", "base", "16M", "--format", "qcow2")
    pools("io", "-c", "write -P 0x11 0 4M", "vol:p/base")
    # create -b vol:, convert to vol:, io, compare, map, check
    pools("create", "-f", "qcow2", "-b", "vol:p/base", "vol:p/top")
    assert pools.json("vol-info", "top", "p")["backing-path"] == \
        str(dir_pool / "base")
    pools("io", "-c", "write -P 0x22 1M 1M", "vol:p/top")
    qemu_io("-c", "read -P 0x11 0 1M", "-c", "read -P 0x22 1M 1M",
            "-c", "read -P 0x11 2M 2M", dir_pool / "top")
    pools("convert", "-O", "qcow2", "vol:p/top", "vol:p/flat")
    assert pools.json("vol-info", "flat", "p")["format"] == "qcow2"
    assert pools("compare", "vol:p/top", "vol:p/flat").returncode == 0
    qemu_img("compare", dir_pool / "top", dir_pool / "flat")
    pools("check", "vol:p/flat")
    assert json.loads(pools("map", "--output=json", "vol:p/flat").stdout)
    info = json.loads(pools("info", "--output=json", "--backing-chain",
                            "vol:p/top").stdout)
    assert [i["filename"] for i in info] == [str(dir_pool / "top"),
                                             str(dir_pool / "base")]
    # snapshot and commit through volume names
    pools("snapshot", "-c", "s1", "vol:p/flat")
    assert "s1" in pools("snapshot", "-l", "vol:p/flat").stdout
    pools("commit", "vol:p/top")
    qemu_io("-c", "read -P 0x22 1M 1M", dir_pool / "base")
    pools("rebase", "-u", "-b", "vol:p/flat", "vol:p/top")
    assert pools.json("vol-info", "top", "p")["backing-path"] == \
        str(dir_pool / "flat")
    # dd of= a new volume
    pools("dd", "if=vol:p/base", "of=vol:p/dd", "-O", "raw", "bs=1M")
    assert pools.json("vol-info", "dd", "p")["format"] == "raw"
    qemu_img("compare", "-F", "raw", dir_pool / "base", dir_pool / "dd")
    # a name the pool knows is never something else
    line = pools.fails("info", "-f", "raw", "vol:p/base")
    assert "format is qcow2" in line
    pools.fails("create", "-f", "raw", "vol:p/base", "1M")   # exists
    assert "vol:POOL/NAME" in pools.fails("info", "vol:p")
    # a file really named vol:... is ./vol:...
    (tmp_path / "vol:x").mkdir()
    qemu_img("create", "-f", "raw", tmp_path / "vol:x" / "y", "1M")
    p = subprocess.run([IMGTOOL, "info", "./vol:x/y"], cwd=tmp_path,
                       env=pools.env, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr


def test_refresh_follows_changes_and_keeps_formats(pools, dir_pool):
    pools("vol-create-as", "p", "raw", "1M")
    assert pools.json("vol-info", "raw", "p")["capacity"] == MiB
    # files appearing, changing and vanishing behind the pool's back
    qemu_img("create", "-f", "qcow2", dir_pool / "ext.qcow2", "3M")
    assert pools.vols("p")["ext.qcow2"]["capacity"] == 3 * MiB
    qemu_img("resize", dir_pool / "ext.qcow2", "5M")
    assert pools.vols("p")["ext.qcow2"]["capacity"] == 5 * MiB
    os.unlink(dir_pool / "ext.qcow2")
    assert sorted(pools.vols("p")) == ["raw"]
    # A guest writing a qcow2 header into its raw volume does not make
    # it a qcow2 with a backing file of its choosing.
    qemu_img("create", "-f", "qcow2", "-b", "/etc/hostname", "-F", "raw",
             dir_pool / "evil", "1M")
    with open(dir_pool / "evil", "rb") as f:
        header = f.read(65536)
    with open(dir_pool / "raw", "r+b") as f:
        f.write(header)
    os.unlink(dir_pool / "evil")
    v = pools.json("vol-info", "raw", "p")
    assert v["format"] == "raw" and "backing-path" not in v
    assert json.loads(pools("info", "--output=json", "vol:p/raw").stdout)[
        "format"] == "raw"


def test_clone_and_create_from(pools, dir_pool, tmp_path):
    pools("vol-create-as", "p", "q", "1G", "--format", "qcow2")
    pools("io", "-c", "write -P 0x42 100M 1M", "vol:p/q")
    out = pools("vol-clone", "q", "c", "--pool", "p").stdout
    assert out == "Vol c cloned from q\n\n"
    c = pools.json("vol-info", "c", "p")
    assert c["format"] == "qcow2" and c["capacity"] == 1 << 30
    assert c["allocation"] < 3 * MiB          # thin, as its source
    qemu_img("compare", dir_pool / "q", dir_pool / "c")
    qemu_img("check", dir_pool / "c")
    # a clone of an overlay is an overlay on the same backing file
    pools("vol-create-as", "p", "o", "1G", "--format", "qcow2",
          "--backing-vol", "q", "--backing-vol-format", "qcow2")
    pools("io", "-c", "write -P 0x43 0 64k", "vol:p/o")
    pools("vol-clone", str(dir_pool / "o"), "o2")
    o2 = pools.json("vol-info", "o2", "p")
    assert o2["backing-path"] == str(dir_pool / "q")
    assert o2["allocation"] < 1 * MiB
    qemu_img("compare", dir_pool / "o", dir_pool / "o2")
    # vol-create-from converts: raw from a qcow2, never smaller
    f = tmp_path / "r.xml"
    f.write_text("<volume><name>r</name><capacity>1</capacity>"
                 "<target><format type='raw'/></target></volume>")
    assert "no storage vol" in pools.fails("vol-create-from", "p", f, "q")
    out = pools("vol-create-from", "p", f, "q", "--inputpool", "p",
                "-p").stdout
    assert out.endswith("Vol r created from input vol q\n\n")
    r = pools.json("vol-info", "r", "p")
    assert r["format"] == "raw" and r["capacity"] == 1 << 30
    assert r["allocation"] < 3 * MiB          # holes stay holes
    qemu_img("compare", "-f", "qcow2", "-F", "raw", dir_pool / "q",
             dir_pool / "r")
    # ...and flattens an overlay unless the XML names a backing store
    f.write_text("<volume><name>flat</name><capacity>1</capacity>"
                 "<target><format type='qcow2'/></target></volume>")
    pools("vol-create-from", "p", f, "o", "--inputpool", "p")
    flat = pools.json("vol-info", "flat", "p")
    assert "backing-path" not in flat
    qemu_img("compare", dir_pool / "o", dir_pool / "flat")


def test_resize(pools, dir_pool):
    pools("vol-create-as", "p", "r", "1M")
    pools("io", "-c", "write -P 0x7 0 1M", "-f", "raw", "vol:p/r")
    assert pools("vol-resize", "r", "4M", "--pool", "p").stdout == \
        "Size of volume 'r' successfully changed to 4M\n\n"
    assert pools.json("vol-info", "r", "p")["capacity"] == 4 * MiB
    pools("vol-resize", "r", "1M", "--delta", "--pool", "p")
    assert pools.json("vol-info", "r", "p")["capacity"] == 5 * MiB
    line = pools.fails("vol-resize", "r", "2M", "--pool", "p")
    assert "shrink" in line
    assert pools.json("vol-info", "r", "p")["capacity"] == 5 * MiB
    assert "requires --shrink" in pools.fails("vol-resize", "r", "-1M", "p")
    pools("vol-resize", "r", "-1M", "--pool", "p", "--shrink")
    assert pools.json("vol-info", "r", "p")["capacity"] == 4 * MiB
    pools("vol-resize", "r", "2M", "--pool", "p", "--shrink")
    assert pools.json("vol-info", "r", "p")["capacity"] == 2 * MiB
    qemu_io("-f", "raw", "-c", "read -P 0x7 0 1M", "-c", "read -P 0 1M 1M",
            dir_pool / "r")
    pools("vol-resize", "r", "8M", "--pool", "p", "--allocate")
    assert pools.json("vol-info", "r", "p")["allocation"] >= 7 * MiB
    pools("vol-create-as", "p", "q", "16M", "--format", "qcow2")
    pools("vol-resize", "q", "+16M", "--pool", "p")
    assert json.loads(qemu_img("info", "--output=json", dir_pool / "q")
                      .stdout)["virtual-size"] == 32 * MiB
    assert "Malformed size" in pools.fails("vol-resize", "q", "1X", "p")


def test_upload_download(pools, dir_pool, tmp_path):
    data = os.urandom(3 * MiB)
    src = tmp_path / "src"
    src.write_bytes(data)
    pools("vol-create-as", "p", "v", "4M")
    assert pools("vol-upload", "v", src, "--pool", "p").stdout == ""
    assert (dir_pool / "v").read_bytes()[:3 * MiB] == data
    # stdin, at an offset, with a length
    p = subprocess.run([IMGTOOL, "vol-upload", "v", "-", "--pool", "p",
                        "--offset", str(MiB), "--length", "4096"],
                       input=b"\x55" * 8192, env=pools.env,
                       capture_output=True)
    assert p.returncode == 0, p.stderr
    raw = (dir_pool / "v").read_bytes()
    assert raw[MiB:MiB + 4096] == b"\x55" * 4096
    assert raw[MiB + 4096:MiB + 8192] == data[MiB + 4096:MiB + 8192]
    # download to a file and to stdout
    out = tmp_path / "out"
    pools("vol-download", "v", out, "--pool", "p", "--offset", "4096",
          "--length", str(MiB))
    assert out.read_bytes() == raw[4096:4096 + MiB]
    p = subprocess.run([IMGTOOL, "vol-download", "v", "-", "p"],
                       env=pools.env, capture_output=True)
    assert p.returncode == 0 and p.stdout == raw
    # --sparse: zeroes become holes
    pools("vol-create-as", "p", "z", "64M")
    pools("io", "-f", "raw", "-c", "write -P 1 0 4k", "vol:p/z")
    pools("vol-download", "z", out, "p", "--sparse")
    assert out.stat().st_size == 64 * MiB
    assert out.stat().st_blocks * 512 < MiB
    sparse = tmp_path / "sparse"
    with open(sparse, "wb") as f:
        f.truncate(32 * MiB)
        f.write(b"x")
    pools("vol-upload", "z", sparse, "p", "--sparse")
    assert (dir_pool / "z").stat().st_blocks * 512 < MiB
    # an upload into a qcow2 volume's bytes makes it what was uploaded
    img = tmp_path / "img.qcow2"
    qemu_img("create", "-f", "qcow2", img, "2M")
    pools("vol-upload", "z", img, "p")
    assert pools.json("vol-info", "z", "p")["format"] == "qcow2"


@pytest.mark.parametrize("alg,last", [("zero", 0), ("dod", 0xff),
                                      ("bsi", 0x7f), ("nnsa", 0),
                                      ("random", None), ("trim", 0)])
def test_wipe(pools, dir_pool, alg, last):
    pools("vol-create-as", "p", "v", "1M", "--allocation", "1M")
    pools("io", "-f", "raw", "-c", "write -P 0x3c 0 1M", "vol:p/v")
    assert pools("vol-wipe", "v", "--pool", "p", "--algorithm",
                 alg).stdout == "Vol v wiped\n\n"
    data = (dir_pool / "v").read_bytes()
    assert len(data) == MiB
    if last is None:
        assert data.count(0x3c) < 16 * 1024 and data.count(0) < 16 * 1024
    else:
        assert data == bytes([last]) * MiB


def test_wipe_qcow2_and_patterns(pools, dir_pool):
    pools("vol-create-as", "p", "q", "8M", "--format", "qcow2")
    pools("io", "-c", "write -P 0x3c 0 2M", "vol:p/q")
    pools("vol-wipe", "q", "p", "--algorithm", "schneier")
    # an empty qcow2 of the same capacity again
    qemu_img("check", dir_pool / "q")
    qemu_io("-c", "read -P 0 0 8M", dir_pool / "q")
    assert pools.json("vol-info", "q", "p")["capacity"] == 8 * MiB
    assert "unsupported algorithm" in pools.fails("vol-wipe", "q", "p",
                                                  "--algorithm", "bogus")


def test_gutmann_patterns(pools, dir_pool, tmp_path):
    """Gutmann's 35 passes end with random ones: no byte value
    dominates what is left."""
    pools("vol-create-as", "p", "g", "64k", "--allocation", "64k")
    pools("vol-wipe", "g", "p", "--algorithm", "gutmann")
    data = (dir_pool / "g").read_bytes()
    assert len(data) == 65536 and max(data.count(b) for b in range(256)) < 600


def test_luks_volume(pools, dir_pool, tmp_path):
    sec = tmp_path / "pass"
    sec.write_text("hunter2")
    obj = f"secret,id=sec0,file={sec}"
    pools("vol-create-as", "p", "l", "4M", "--format", "luks",
          "--key-secret", "sec0", "--iter-time", "10", "--object", obj)
    v = pools.json("vol-info", "l", "p")
    assert v["format"] == "luks" and v["capacity"] == 4 * MiB
    x = pools("vol-dumpxml", "l", "p").stdout
    assert "<secret type='passphrase' usage='sec0'/>" in x
    validate_text(tmp_path, x, "storagevol")
    pools("io", "--object", obj, "-c", "write -P 0x61 0 1M", "vol:p/l")
    pools("io", "--object", obj, "-c", "read -P 0x61 0 1M", "vol:p/l")
    qemu_io("--object", obj, "--image-opts", "-c", "read -P 0x61 0 1M",
            f"driver=luks,key-secret=sec0,file.filename={dir_pool}/l")
    assert "secret" in pools.fails("vol-create-as", "p", "l2", "4M",
                                   "--format", "luks")


def test_autostart_after_reboot(pools, dir_pool, tmp_path):
    """A pool started before a reboot is inactive after it, unless it is
    autostarted (the first command after the reboot starts it), and a
    transient pool is gone: what libvirtd does at boot."""
    pools("pool-define-as", "b", "dir", "--target", tmp_path / "b")
    pools("pool-start", "b", "--build")
    pools("pool-autostart", "p")
    pools("pool-create-as", "t", "dir", "--target", tmp_path / "t",
          "--build")
    run_dir = tmp_path / "cfg" / ".imgtool" / "pools"
    for name in ("p", "b", "t"):
        f = run_dir / name / "state"
        s = json.loads(f.read_text())
        s["boot_id"] = "an-earlier-boot"
        f.write_text(json.dumps(s))
    states = {p["name"]: p["state"] for p in pools.json("pool-list", "--all")}
    assert states == {"p": "running", "b": "inactive"}


def test_qemu_uses_volume(pools, dir_pool, tmp_path):
    """QEMU opens a volume imgtool made; while it runs, its image lock
    keeps imgtool from deleting, wiping, resizing or writing it."""
    pools("vol-create-as", "p", "disk", "64M", "--format", "qcow2")
    pools("io", "-c", "write -P 0x5 0 1M", "vol:p/disk")
    path = dir_pool / "disk"
    qmp = tmp_path / "qmp.sock"
    q = subprocess.Popen(
        ["qemu-system-x86_64", "-machine", "q35", "-accel", "tcg",
         "-nodefaults", "-display", "none", "-S", "-qmp",
         f"unix:{qmp},server=on,wait=off",
         "-blockdev", f"driver=file,filename={path},node-name=f0",
         "-blockdev", "driver=qcow2,file=f0,node-name=d0",
         "-device", "virtio-blk-pci,drive=d0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        for _ in range(200):
            if qmp.exists() or q.poll() is not None:
                break
            time.sleep(0.05)
        assert q.poll() is None, q.stderr.read()
        for args in (["vol-delete", "disk", "p"], ["vol-wipe", "disk", "p"],
                     ["vol-resize", "disk", "128M", "p"],
                     ["io", "-c", "write 0 4k", "vol:p/disk"]):
            line = pools.fails(*args)
            assert "lock" in line, line
        assert path.exists()
        pools("io", "-r", "-U", "-c", "read -P 0x5 0 1M", "vol:p/disk")
    finally:
        q.send_signal(signal.SIGTERM)
        q.wait(timeout=30)
    pools("vol-delete", "disk", "p")
    assert not path.exists()


def test_json_everywhere(pools, dir_pool, tmp_path):
    j = pools.json
    assert j("pool-list", "--all")[0]["name"] == "p"
    assert j("pool-info", "p")["type"] == "dir"
    assert "<pool" in j("pool-dumpxml", "p")["xml"]
    assert j("pool-refresh", "p") == {"pool": "p"}
    assert j("vol-create-as", "p", "v", "1M")["name"] == "v"
    assert "<volume>" in j("vol-create-as", "p", "w", "1M",
                           "--print-xml")["xml"]
    assert j("vol-list", "p")[0]["name"] == "v"
    assert j("vol-info", "v", "p")["capacity"] == MiB
    assert j("vol-key", "v", "p") == {"key": str(dir_pool / "v")}
    assert j("vol-name", str(dir_pool / "v")) == {"name": "v"}
    assert j("vol-pool", str(dir_pool / "v")) == {"pool": "p"}
    assert "<volume" in j("vol-dumpxml", "v", "p")["xml"]
    assert j("vol-clone", "v", "v2", "p")["name"] == "v2"
    assert j("vol-resize", "v", "2M", "p") == {"volume": "v"}
    assert j("vol-wipe", "v", "p") == {"volume": "v"}
    assert j("vol-delete", "v2", "p") == {"volume": "v2"}
    assert j("pool-autostart", "p") == {"pool": "p"}
    assert j("pool-destroy", "p") == {"pool": "p"}
    assert j("pool-start", "p") == {"pool": "p"}


def test_help_and_argument_mistakes(pools):
    h = pools("pool-define-as", "--help").stdout
    assert h.startswith("usage: imgtool pool-define-as <name> <type>")
    assert "--source-dev" in h
    assert "requires <pool> option" in pools.fails("pool-info")
    assert "doesn't support option --bogus" in pools.fails(
        "pool-info", "x", "--bogus")
    assert "unexpected data 'extra'" in pools.fails("pool-info", "x",
                                                    "extra")
    assert "already seen" in pools.fails("pool-info", "--pool", "a",
                                         "--pool", "b")
    assert "--output" in pools.fails("pool-list", "--output=xml")
