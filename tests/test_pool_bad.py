"""Bad input to the pool and volume commands gets one line (imgtool:
<what>: <why>), a non-zero exit, and loses nothing: unknown pools and
volumes, hostile names, broken or unsupported XML, missing storage,
volumes in use or used as backing files, full pools, shrinking resizes,
and vol-create / vol-wipe killed half way."""
import json
import os
import signal
import subprocess
import time

import pytest

from conftest import IMGTOOL, no_leak_check_env, qemu_img
from poolenv import Pools, dir_pool, pools  # noqa: F401

MiB = 1 << 20


def names(tmp_path):
    """Every file under tmp_path (to show that nothing was created)."""
    out = set()
    for d, _, fs in os.walk(tmp_path):
        for f in fs + [""]:
            out.add(os.path.relpath(os.path.join(d, f), tmp_path))
    return out


def test_unknown_pools_and_volumes(pools, dir_pool):
    for args in (["pool-info", "nope"], ["pool-start", "nope"],
                 ["pool-destroy", "nope"], ["pool-undefine", "nope"],
                 ["vol-list", "nope"], ["pool-dumpxml", "nope"],
                 ["vol-create-as", "nope", "v", "1M"],
                 ["info", "vol:nope/v"]):
        assert "no storage pool with matching name 'nope'" in \
            pools.fails(*args)
    for args in (["vol-info", "v", "--pool", "p"], ["vol-delete", "v", "p"],
                 ["vol-wipe", "v", "p"], ["vol-resize", "v", "1M", "p"],
                 ["vol-download", "v", "/dev/null", "p"],
                 ["info", "vol:p/v"], ["io", "-c", "read 0 1", "vol:p/v"],
                 ["vol-path", "/no/such/file"], ["vol-pool", "v"]):
        assert "no storage vol with matching" in pools.fails(*args), args
    pools("pool-destroy", "p")
    assert "is not active" in pools.fails("vol-list", "p")
    assert "is not active" in pools.fails("info", "vol:p/x")


@pytest.mark.parametrize("bad", ["a/b", "..", ".", "a\nb", "tab\there",
                                 "esc\x1b", ""])
def test_bad_names(pools, dir_pool, tmp_path, bad):
    before = names(tmp_path)
    pools.fails("pool-define-as", bad, "dir", "--target", tmp_path / "x")
    pools.fails("vol-create-as", "p", bad, "1M")
    pools.fails("create", "-f", "raw", f"vol:p/{bad}", "1M")
    pools.fails("info", f"vol:p/{bad}")
    f = tmp_path / "v.xml"
    f.write_text(f"<volume><name>{bad}</name><capacity>1</capacity>"
                 "</volume>")
    pools.fails("vol-create", "p", f)
    os.unlink(f)
    assert names(tmp_path) == before
    assert [p["name"] for p in pools.json("pool-list", "--all")] == ["p"]
    assert pools.json("vol-list", "p") == []


def test_bad_xml(pools, tmp_path):
    cases = {
        "garbage": "this is not xml",
        "truncated": "<pool type='dir'><name>x</name><target><path>/x",
        "no type": "<pool><name>x</name></pool>",
        "no name": "<pool type='dir'><target><path>/x</path></target></pool>",
        "bad uuid": "<pool type='dir'><name>x</name><uuid>1234</uuid>"
                    "<target><path>/x</path></target></pool>",
        "no target": "<pool type='dir'><name>x</name></pool>",
        "relative target": "<pool type='dir'><name>x</name><target>"
                           "<path>x</path></target></pool>",
        "wrong root": "<volume><name>x</name></volume>",
        "bad mode": "<pool type='dir'><name>x</name><target><path>/x</path>"
                    "<permissions><mode>999</mode></permissions></target>"
                    "</pool>",
        "entities": """<?xml version="1.0"?>
<!DOCTYPE pool [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;">
<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;"><!ENTITY d "&c;&c;&c;&c;&c;&c;&c;">]>
<pool type='dir'><name>&d;</name><target><path>/x</path></target></pool>""",
        "external entity": """<?xml version="1.0"?>
<!DOCTYPE pool [<!ENTITY e SYSTEM "file:///etc/passwd">]>
<pool type='dir'><name>&e;</name><target><path>/x</path></target></pool>""",
        "unsupported type": "<pool type='rbd'><name>x</name><source>"
                            "<host name='h'/></source></pool>",
        "unknown type": "<pool type='floppy'><name>x</name></pool>",
        "huge": "<pool type='dir'><name>x</name><!-- " + "x" * (2 * MiB) +
                " --></pool>",
    }
    for what, text in cases.items():
        f = tmp_path / "p.xml"
        f.write_text(text)
        line = pools.fails("pool-define", f)
        assert "passwd" not in line and "root:" not in line, what
        if what == "unsupported type":
            assert "unsupported storage pool type 'rbd'" in line
        if what == "entities":
            assert "DOCTYPE" in line or "entity" in line
    assert pools.json("pool-list", "--all") == []
    pools.fails("pool-define", tmp_path / "missing.xml")
    # --validate catches what the parser lets through
    f = tmp_path / "p.xml"
    f.write_text("<pool type='dir'><name>x</name><target><path>/x</path>"
                 "</target><bogus/></pool>")
    assert "validate" in pools.fails("pool-define", f, "--validate")
    # bad volume XML
    pools("pool-define-as", "p", "dir", "--target", tmp_path / "p")
    pools("pool-start", "p", "--build")
    for text in ("<volume><name>v</name></volume>",
                 "<volume><name>v</name><capacity unit='parsecs'>1"
                 "</capacity></volume>",
                 "<volume><name>v</name><capacity>-1</capacity></volume>",
                 "<volume><name>v</name><capacity>1</capacity><target>"
                 "<format type='vmdk'/></target></volume>",
                 "<volume><name>v</name><capacity>1</capacity><target>"
                 "<encryption format='qcow'/></target></volume>"):
        f.write_text(text)
        pools.fails("vol-create", "p", f)
    assert pools.json("vol-list", "p") == []


def test_missing_storage(pools, tmp_path):
    pools("pool-define-as", "p", "dir", "--target", tmp_path / "gone")
    line = pools.fails("pool-start", "p")
    assert "cannot open directory" in line and "No such file" in line
    assert pools.json("pool-info", "p")["state"] == "inactive"
    (tmp_path / "file").write_text("")
    pools("pool-define-as", "f", "dir", "--target", tmp_path / "file")
    assert "Not a directory" in pools.fails("pool-start", "f")
    pools("pool-define-as", "lv", "logical", "--source-dev",
          "/dev/no-such-disk")
    assert "no-such-disk" in pools.fails("pool-build", "lv")
    assert "no-such-disk" in pools.fails("pool-start", "lv")
    pools("pool-define-as", "lv2", "logical")
    assert "no source devices" in pools.fails("pool-build", "lv2")
    # the pool's directory removed behind its back
    pools("pool-define-as", "d", "dir", "--target", tmp_path / "d")
    pools("pool-start", "d", "--build")
    os.rmdir(tmp_path / "d")
    assert "cannot" in pools.fails("vol-list", "d")
    assert "cannot" in pools.fails("vol-create-as", "d", "v", "1M")


def test_conflicting_definitions(pools, dir_pool, tmp_path):
    u = pools.json("pool-info", "p")["uuid"]
    assert "Storage source conflict" in pools.fails(
        "pool-define-as", "q", "dir", "--target", dir_pool)
    f = tmp_path / "x.xml"
    f.write_text(f"<pool type='dir'><name>q</name><uuid>{u}</uuid><target>"
                 f"<path>{tmp_path}/q</path></target></pool>")
    assert "already exists with uuid" in pools.fails("pool-define", f)
    f.write_text("<pool type='dir'><name>p</name><target>"
                 f"<path>{tmp_path}/other</path></target></pool>")
    assert "is active" in pools.fails("pool-define", f)
    assert pools.json("pool-info", "p")["target"] == str(dir_pool)
    pools("vol-create-as", "p", "v", "1M")
    assert "already in use" in pools.fails("vol-create-as", "p", "v", "1M")
    assert "Malformed size" in pools.fails("vol-create-as", "p", "w", "1Q")
    assert "too large" in pools.fails("vol-create-as", "p", "w", "9E")


def wait_open(pid, path):
    """Waits until process pid has path open (and so holds its lock)."""
    for _ in range(1000):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except FileNotFoundError:
            return False
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == str(path):
                    return True
            except FileNotFoundError:
                pass
        time.sleep(0.01)
    return False


def test_in_use_volumes_are_refused(pools, dir_pool):
    """An imgtool holding the volume (a vol-upload reading a pipe) keeps
    the others off it: delete, wipe, resize and writers are refused."""
    pools("vol-create-as", "p", "v", "4M")
    up = subprocess.Popen([IMGTOOL, "vol-upload", "v", "-", "p"],
                          stdin=subprocess.PIPE, stderr=subprocess.PIPE,
                          env=no_leak_check_env() | {
                              "IMGTOOL_CONFIG_DIR": pools.cfg})
    try:
        up.stdin.write(b"\x11" * 4096)
        up.stdin.flush()
        assert wait_open(up.pid, dir_pool / "v"), up.poll()
        assert "lock" in pools.fails("io", "-c", "write 0 512", "vol:p/v")
        for args in (["vol-delete", "v", "p"], ["vol-wipe", "v", "p"],
                     ["vol-resize", "v", "8M", "p"],
                     ["vol-upload", "v", "/dev/null", "p"]):
            assert "lock" in pools.fails(*args), args
        assert (dir_pool / "v").exists()
    finally:
        up.stdin.close()
        up.wait(timeout=60)
    assert up.returncode == 0, up.stderr.read()
    pools("vol-delete", "v", "p")


def test_backing_volume_delete_refused(pools, dir_pool):
    pools("vol-create-as", "p", "base", "1M", "--format", "qcow2")
    pools("vol-create-as", "p", "top", "1M", "--format", "qcow2",
          "--backing-vol", "base")
    line = pools.fails("vol-delete", "base", "p")
    assert "backing file of volume 'top'" in line
    assert (dir_pool / "base").exists()
    pools("vol-delete", "top", "p")
    pools("vol-delete", "base", "p")
    # a backing volume that is not one
    assert "backing volume" in pools.fails(
        "vol-create-as", "p", "x", "1M", "--format", "qcow2",
        "--backing-vol", "nope")
    assert "cannot have a backing" in pools.fails(
        "vol-create-as", "p", "x", "1M", "--backing-vol", "/etc/hostname",
        "--backing-vol-format", "raw")
    assert pools.json("vol-list", "p") == []


@pytest.fixture
def small_fs(tmp_path):
    mnt = tmp_path / "full"
    mnt.mkdir()
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs",
                        str(mnt)], capture_output=True, text=True)
    if p.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {p.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_full_pool(pools, small_fs, tmp_path):
    pools("pool-define-as", "f", "dir", "--target", small_fs)
    pools("pool-start", "f")
    line = pools.fails("vol-create-as", "f", "big", "32M", "--allocation",
                       "32M")
    assert "not enough space" in line
    assert pools.json("vol-list", "f") == []
    # sparse is fine, until the data does not fit
    pools("vol-create-as", "f", "sparse", "64M")
    data = tmp_path / "data"
    data.write_bytes(os.urandom(24 * MiB))
    line = pools.fails("vol-upload", "sparse", data, "f")
    assert "No space left on device" in line
    pools("vol-delete", "sparse", "f")
    # a copy that does not fit leaves no half volume
    pools("pool-define-as", "src", "dir", "--target", tmp_path / "src")
    pools("pool-start", "src", "--build")
    pools("vol-create-as", "src", "v", "24M")
    pools("vol-upload", "v", data, "src")
    f = tmp_path / "v.xml"
    f.write_text("<volume><name>copy</name><capacity>1</capacity></volume>")
    line = pools.fails("vol-create-from", "f", f, "v", "--inputpool", "src")
    assert "No space left on device" in line
    assert pools.json("vol-list", "f") == []
    assert os.listdir(small_fs) == []
    assert "Not enough space left" in pools.fails("vol-resize", "v", "1E",
                                                  "src")


def test_killed_create_is_never_listed(pools, dir_pool, tmp_path):
    pools("vol-create-as", "p", "src", "48M")
    data = tmp_path / "data"
    data.write_bytes(os.urandom(48 * MiB))
    pools("vol-upload", "src", data, "p")
    os.unlink(data)
    f = tmp_path / "v.xml"
    f.write_text("<volume><name>copy</name><capacity>1</capacity><target>"
                 "<format type='qcow2'/></target></volume>")
    marker = tmp_path / "cfg" / ".imgtool" / "pools" / "p" / "ops" / "copy"
    killed = 0
    for attempt in range(5):
        c = subprocess.Popen([IMGTOOL, "vol-create-from", "p", f, "src",
                              "--inputpool", "p"],
                             stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL,
                             env=no_leak_check_env() | {
                                 "IMGTOOL_CONFIG_DIR": pools.cfg})
        while c.poll() is None and not marker.exists():
            time.sleep(0.001)
        c.send_signal(signal.SIGKILL)
        c.wait()
        if c.returncode == -signal.SIGKILL:
            killed += 1
            # listed nowhere, opened by nobody, its leftovers cleaned up
            assert "copy" not in pools.vols("p")
            assert not (dir_pool / "copy").exists()
            assert not marker.exists()
            assert "no storage vol" in pools.fails("info", "vol:p/copy")
        else:
            pools("vol-delete", "copy", "p")
    assert killed, "vol-create-from always finished before the kill"
    # the name is free again
    pools("vol-create-from", "p", f, "src", "--inputpool", "p")
    qemu_img("compare", "-F", "raw", dir_pool / "copy", dir_pool / "src")


def test_killed_wipe_is_flagged(pools, dir_pool, tmp_path):
    pools("vol-create-as", "p", "w", "16M", "--allocation", "16M")
    marker = tmp_path / "cfg" / ".imgtool" / "pools" / "p" / "ops" / "w"
    c = subprocess.Popen([IMGTOOL, "vol-wipe", "w", "p", "--algorithm",
                          "gutmann"], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL,
                         env=no_leak_check_env() | {
                             "IMGTOOL_CONFIG_DIR": pools.cfg})
    while c.poll() is None and not marker.exists():
        time.sleep(0.001)
    time.sleep(0.05)
    c.send_signal(signal.SIGKILL)
    c.wait()
    assert c.returncode == -signal.SIGKILL, "the wipe finished too soon"
    p = pools("vol-list", "p")
    assert "half wiped" in p.stderr
    assert pools.json("vol-info", "w", "p")["state"] == "wipe-interrupted"
    for args in (["info", "vol:p/w"], ["vol-resize", "w", "32M", "p"],
                 ["vol-clone", "w", "w2", "--pool", "p"],
                 ["vol-upload", "w", "/dev/null", "p"]):
        assert "half wiped" in pools.fails(*args), args
    pools("vol-wipe", "w", "p")
    assert pools.json("vol-info", "w", "p")["state"] == "ok"
    assert (dir_pool / "w").read_bytes() == bytes(16 * MiB)
    pools("info", "vol:p/w")


def test_resize_below_data(pools, dir_pool):
    pools("vol-create-as", "p", "q", "16M", "--format", "qcow2")
    pools("io", "-c", "write -P 9 15M 1M", "vol:p/q")
    line = pools.fails("vol-resize", "q", "8M", "p")
    assert "shrink" in line
    assert "requires --shrink" in pools.fails("vol-resize", "q", "-8M", "p")
    assert pools.json("vol-info", "q", "p")["capacity"] == 16 * MiB
    pools("io", "-c", "read -P 9 15M 1M", "vol:p/q")
