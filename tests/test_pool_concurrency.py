"""Many commands at once on one store and one pool: the locks serialise
what must be, every command succeeds or fails with one line, and what
is left on disk is whole (definitions validate, state parses, every
listed volume opens)."""
import glob
import json
import os
import subprocess

from conftest import IMGTOOL, qemu_img
from poolenv import dir_pool, pools, validate  # noqa: F401


def start(pools, *args):
    return subprocess.Popen([IMGTOOL, *map(str, args)], env=pools.env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def finish(procs):
    out = []
    for p in procs:
        so, se = p.communicate(timeout=120)
        out.append((p.returncode, so, se))
    return out


def test_parallel_volume_commands(pools, dir_pool, tmp_path):
    for i in range(8):
        pools("vol-create-as", "p", f"old{i}", "1M")
    procs = []
    for i in range(24):
        fmt = ["--format", "qcow2"] if i % 2 else []
        procs.append(start(pools, "vol-create-as", "p", f"v{i}", "1M", *fmt))
        if i < 8:
            procs.append(start(pools, "vol-delete", f"old{i}", "p"))
        if i % 3 == 0:
            procs.append(start(pools, "pool-refresh", "p"))
            procs.append(start(pools, "vol-list", "p", "--details"))
            procs.append(start(pools, "pool-autostart", "p",
                               *(["--disable"] if i % 2 else [])))
    # one name asked for by six commands at once: one wins
    same = [start(pools, "vol-create-as", "p", "same", "1M")
            for _ in range(6)]
    for rc, so, se in finish(procs):
        assert rc == 0, se
    results = finish(same)
    assert sum(rc == 0 for rc, _, _ in results) == 1
    for rc, so, se in results:
        if rc:
            lines = se.strip().splitlines()
            assert len(lines) == 1 and ("in use" in se or "busy" in se), se
    vols = pools.vols("p")
    assert sorted(vols) == sorted([f"v{i}" for i in range(24)] + ["same"])
    for name, v in vols.items():
        qemu_img("info", v["path"])
        want = "qcow2" if name.startswith("v") and int(name[1:]) % 2 \
            else "raw"
        assert v["format"] == want, name
    run = tmp_path / "cfg" / ".imgtool" / "pools" / "p"
    json.loads((run / "state").read_text())
    json.loads((run / "cache").read_text())
    assert os.listdir(run / "ops") == []
    assert not glob.glob(str(run / "*.tmp.*"))
    validate(tmp_path / "cfg" / "p.xml", "storagepool")


def test_parallel_pool_definitions(pools, tmp_path):
    procs = [start(pools, "pool-define-as", f"p{i}", "dir", "--target",
                   tmp_path / f"d{i}") for i in range(12)]
    procs += [start(pools, "pool-define-as", "same", "dir", "--target",
                    tmp_path / "same") for _ in range(6)]
    procs += [start(pools, "pool-list", "--all") for _ in range(4)]
    for rc, so, se in finish(procs):
        assert rc == 0, se
    listed = pools.json("pool-list", "--all")
    assert sorted(p["name"] for p in listed) == \
        sorted([f"p{i}" for i in range(12)] + ["same"])
    assert len({p["uuid"] for p in listed}) == 13
    for f in glob.glob(str(tmp_path / "cfg" / "*.xml")):
        validate(f, "storagepool")
    # and started, refreshed and destroyed all at once
    procs = [start(pools, "pool-start", f"p{i}", "--build")
             for i in range(12)]
    for rc, so, se in finish(procs):
        assert rc == 0, se
    procs = [start(pools, "pool-destroy", f"p{i}") for i in range(12)]
    procs += [start(pools, "pool-info", f"p{i}") for i in range(12)]
    for rc, so, se in finish(procs):
        assert rc == 0, se
    assert all(p["state"] == "inactive"
               for p in pools.json("pool-list", "--all"))
