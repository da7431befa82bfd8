"""imgtool backup, restore, backup-list, backup-verify and backup-prune,
offline (the image is not in use while it is backed up).

Every point must restore byte-identical (qemu-img compare) to the image
as it was when the point was taken, kept aside by the test, and
qemu-img must read every point's qcow2 file directly with the same
content.  Incrementals must read no more than the clusters the workload
changed, plus 1 %: counted by the engine (the record's bytes-read) and
independently by the faulty filter under the source, which sees every
byte read from the image file.
"""
import json
import os
import random
import shutil
import subprocess
import time

import pytest

from backupenv import (CLUSTER, PREFIX, assert_bitmaps_consistent,
                       assert_point_restores, backup, backup_rec, bitmaps,
                       faulty_source, keep, our_bitmaps, points, read_stats,
                       restore, touched_clusters, verify)
from conftest import (IMGTOOL, imgtool, io_args, one_error_line, qemu_img,
                      qemu_io, random_io)

MiB = 1 << 20
SIZE = 64 * MiB
KINDS = ["data", "data", "data", "pzero", "zero", "zero-unmap", "discard"]
LENGTHS = [512, 4096, 65536, 100000, 300000, MiB]


def workload(r, n=40):
    return random_io(r, SIZE, n, KINDS, LENGTHS)


def make_image(path, cluster=65536, seed=1):
    qemu_img("create", "-q", "-f", "qcow2", "-o", f"cluster_size={cluster}",
             path, str(SIZE))
    r = random.Random(seed)
    cmds = [f"write -P {r.randrange(1, 256)} {r.randrange(0, SIZE // MiB) * MiB}"
            f" {MiB}" for _ in range(12)]
    qemu_io("-f", "qcow2", *io_args(cmds), path)
    return r


@pytest.mark.parametrize("cluster", [65536, 4096])
def test_chain_restores_every_point_and_reads_only_changes(tmp_path,
                                                           cluster):
    img = tmp_path / "vm.qcow2"
    repo = tmp_path / "repo"
    r = make_image(img, cluster)
    modes = ["full", "incremental", "incremental", "incremental",
             "differential", "incremental", "differential", "full",
             "incremental"]
    expected = {}
    since_point, since_full = set(), set()
    overhead = None
    for i, mode in enumerate(modes):
        if i == 1:
            # A point with no change: what reading an image's metadata
            # (header, tables, bitmaps) costs, data aside.
            st = tmp_path / "noop.stats"
            rec = backup_rec(faulty_source(img, st), repo, "--image-opts",
                             "--disk", "vm", "--mode", "incremental")
            assert rec["disks"][0]["bytes-read"] == 0
            assert rec["disks"][0]["clusters-changed"] == 0
            overhead = read_stats(st)["read_bytes"]
            expected[rec["id"]] = keep(img, tmp_path / "noop.raw")
        if i:
            cmds = workload(r)
            qemu_io("-f", "qcow2", *io_args(cmds), img)
            t = touched_clusters(cmds, SIZE)
            since_point |= t
            since_full |= t
        st = tmp_path / f"p{i}.stats"
        rec = backup_rec(faulty_source(img, st), repo, "--image-opts",
                         "--disk", "vm", "--mode", mode)
        d = rec["disks"][0]
        assert d["type"] == mode
        assert d["method"] == ("full" if mode == "full" else "bitmap")
        assert d["reason"] is None
        if mode != "full":
            changed = since_point if mode == "incremental" else since_full
            limit = len(changed) * CLUSTER * 1.01
            assert d["bytes-read"] <= limit, (mode, d, len(changed))
            # Independently: what the file under the image saw, less the
            # metadata of a change-free point; reading data may also need
            # the L2 table that maps it (one per 512 MiB here).
            data = read_stats(st)["read_bytes"] - overhead
            assert data <= limit + cluster, (mode, data, len(changed))
        expected[rec["id"]] = keep(img, tmp_path / f"p{i}.raw")
        since_point = set()
        if mode == "full":
            since_full = set()
        # Offline, the image keeps our bitmaps consistent: this point's,
        # and its chain's full's for differentials.
        assert_bitmaps_consistent(img)
        mine = {n.rsplit(".", 1)[1] for n in our_bitmaps(img)}
        assert rec["id"] in mine and len(mine) <= 3
    listed = points(repo)
    assert [p["id"] for p in listed] == sorted(expected)
    assert [p["seq"] for p in listed] == list(range(1, len(listed) + 1))
    for pid, exp in expected.items():
        assert_point_restores(repo, pid, exp, tmp_path)
    rep = json.loads(verify(repo).stdout)
    assert [e["status"] for e in rep] == ["ok"] * len(expected)
    for p in listed:
        qemu_img("check", "-f", "qcow2", repo / p["disks"][0]["file"])


def test_restore_is_thin_exact_and_streams(tmp_path):
    img = tmp_path / "vm.qcow2"
    make_image(img)
    qemu_io("-f", "qcow2", "-c", "write -z 3M 1M", "-c",
            "write -P 0 5M 1M", img)
    repo = tmp_path / "repo"
    backup(img, repo)
    exp = keep(img, tmp_path / "exp.raw")
    out = tmp_path / "out.qcow2"
    restore(repo, out)
    assert qemu_img("compare", out, img).returncode == 0

    def data_bytes(path):
        m = json.loads(qemu_img("map", "--output=json", path).stdout)
        return sum(e["length"] for e in m if e["data"])
    # Zeroes (written as data too) stay holes: within 1 % of the source.
    assert data_bytes(out) <= data_bytes(img) * 1.01
    raw = tmp_path / "out.raw"
    restore(repo, raw, "-O", "raw")
    assert open(raw, "rb").read() == open(exp, "rb").read()
    assert os.stat(raw).st_blocks * 512 <= data_bytes(img) * 1.01 + 65536
    p = subprocess.run([IMGTOOL, "restore", str(repo), "-"],
                       capture_output=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert p.stdout == open(exp, "rb").read()
    # An existing target is never overwritten without -n.
    line = one_error_line(imgtool("restore", repo, out, check=False))
    assert "exists" in line and "-n" in line
    imgtool("restore", "-n", repo, out)
    assert qemu_img("compare", out, img).returncode == 0


def test_raw_sources_get_incrementals_by_checksum(tmp_path):
    raw = tmp_path / "disk.raw"
    qemu_img("create", "-q", "-f", "raw", raw, str(SIZE))
    r = random.Random(7)
    qemu_io("-f", "raw", *io_args(workload(r, 20)), raw)
    repo = tmp_path / "repo"
    expected = {}
    for i in range(4):
        if i:
            cmds = workload(r, 10)
            qemu_io("-f", "raw", *io_args(cmds), raw)
            touched = touched_clusters(cmds, SIZE)
        rec = backup_rec(raw, repo, "-f", "raw")
        d = rec["disks"][0]
        assert d["type"] == ("full" if i == 0 else "incremental")
        assert d["method"] == ("full" if i == 0 else "checksum")
        assert d["bitmap"] is None
        if i:
            # Every cluster is read (sparse holes aside) but only changed
            # ones are stored.
            assert d["clusters-changed"] <= len(touched)
            assert d["bytes-written"] <= len(touched) * CLUSTER
        expected[rec["id"]] = keep(raw, tmp_path / f"e{i}.raw")
    for pid, exp in expected.items():
        out = tmp_path / "r.raw"
        restore(repo, out, "--point", pid)
        assert open(out, "rb").read() == open(exp, "rb").read()
    verify(repo)


def test_chain_heals_itself(tmp_path):
    """A bitmap that is missing, inconsistent, older than the last point,
    or a size change: one line says why, every cluster is read, only the
    changed ones are stored, and the chain goes on with bitmaps."""
    img = tmp_path / "vm.qcow2"
    r = make_image(img)
    repo = tmp_path / "repo"
    expected = {}
    rec = backup_rec(img, repo)
    expected[rec["id"]] = keep(img, tmp_path / "e0.raw")
    old_copy = tmp_path / "old.qcow2"
    shutil.copy(img, old_copy)

    def step(tag, why, change=True):
        if change:
            qemu_io("-f", "qcow2", *io_args(workload(r, 10)), img)
        p = backup(img, repo)
        rec = json.loads(p.stdout)
        d = rec["disks"][0]
        if why:
            lines = [l for l in p.stderr.splitlines() if l.strip()]
            assert len(lines) == 1 and why in lines[0], p.stderr
            assert d["method"] == "checksum" and why in d["reason"]
            assert d["bytes-read"] > 0
        else:
            assert p.stderr == "" and d["method"] == "bitmap"
        expected[rec["id"]] = keep(img, tmp_path / f"{tag}.raw")
        return rec

    step("ok1", None)
    # missing: removed by someone
    for n in our_bitmaps(img):
        imgtool("bitmap", "--remove", img, n)
    step("missing", "is missing")
    step("ok2", None)
    # inconsistent: a writer died with the image open (qemu-io killed)
    p = subprocess.Popen(
        ["qemu-io", "-f", "qcow2", "-c", "write -P 0x77 0 64k", "-c",
         "sleep 100000", str(img)], stdout=-3, stderr=-3)
    for _ in range(100):
        if any("in-use" in b["flags"] for b in bitmaps(img).values()):
            break
        time.sleep(0.05)
    p.kill()
    p.wait()
    assert any("in-use" in b["flags"] for b in our_bitmaps(img).values())
    step("inconsistent", "inconsistent", change=False)
    step("ok3", None)
    # older: the image put back from a copy made after the first point
    shutil.copy(old_copy, img)
    step("older", "older than point", change=False)
    step("ok4", None)
    # size change
    qemu_img("resize", "-f", "qcow2", img, str(SIZE + 3 * MiB))
    rec = step("resized", "size changed")
    assert rec["disks"][0]["virtual-size"] == SIZE + 3 * MiB
    step("ok5", None)
    for pid, exp in expected.items():
        assert_point_restores(repo, pid, exp, tmp_path)
    verify(repo)
    assert_bitmaps_consistent(img)


def test_auto_full_when_chain_broken_and_mode_errors(tmp_path):
    img = tmp_path / "vm.qcow2"
    make_image(img)
    repo = tmp_path / "repo"
    line = one_error_line(backup(img, repo, "--mode", "incremental",
                                 check=False))
    assert "no earlier point" in line
    assert not (repo / "imgtool-backup.json").exists() or points(repo) == []
    a = backup_rec(img, repo)
    b = backup_rec(img, repo, "--mode", "incremental")
    # The chain loses a layer: auto starts over with a full, incremental
    # says why it cannot.
    shutil.rmtree(repo / a["id"])
    line = one_error_line(backup(img, repo, "--mode", "incremental",
                                 check=False))
    assert "broken" in line and "full" in line
    p = backup(img, repo)
    rec = json.loads(p.stdout)
    assert rec["disks"][0]["type"] == "full"
    assert "taking a full backup" in p.stderr
    assert b["id"] in [q["id"] for q in points(repo)]


def test_retention_merges_removed_points(tmp_path):
    img = tmp_path / "vm.qcow2"
    r = make_image(img)
    repo = tmp_path / "repo"
    expected = {}
    modes = ["full", "incremental", "incremental", "differential",
             "incremental", "incremental", "full", "incremental"]
    for i, mode in enumerate(modes):
        if i:
            qemu_io("-f", "qcow2", *io_args(workload(r, 15)), img)
        rec = backup_rec(img, repo, "--mode", mode)
        expected[rec["id"]] = keep(img, tmp_path / f"e{i}.raw")
    ids = sorted(expected)
    # Spread the points over days (records say when a point was taken):
    # two per day, the newest last.
    day = 86400
    base = 1700000000 - 1700000000 % day + 12 * 3600
    for i, pid in enumerate(ids):
        f = repo / pid / "point.json"
        j = json.loads(f.read_text())
        j["timestamp"] = base + (i // 2) * day + (i % 2) * 60
        f.write_text(json.dumps(j))
    env = dict(os.environ, TZ="UTC")
    dry = json.loads(imgtool("backup-prune", "--output=json", "--keep-last",
                             "2", "--keep-daily", "3", "--dry-run", repo,
                             env=env).stdout)
    # keep-last 2: ids[6:]; daily 3: newest of each of the last 3 days:
    # ids[7], ids[5], ids[3].
    assert dry["keep"] == [ids[3], ids[5], ids[6], ids[7]]
    assert dry["remove"] == [ids[0], ids[1], ids[2], ids[4]]
    assert points(repo) and len(points(repo)) == len(ids)   # dry: nothing
    res = json.loads(imgtool("backup-prune", "--output=json", "--keep-last",
                             "2", "--keep-daily", "3", repo, env=env).stdout)
    assert res["keep"] == dry["keep"] and res["merges"] == dry["merges"]
    assert {(m["from"], m["into"]) for m in res["merges"]} >= {
        (ids[4], ids[5])}
    left = points(repo)
    assert [p["id"] for p in left] == dry["keep"]
    # The oldest kept point has no parent any more: it is a full now.
    assert left[0]["disks"][0]["type"] == "full"
    assert left[0]["disks"][0]["parent"] is None
    for pid in dry["keep"]:
        assert_point_restores(repo, pid, expected[pid], tmp_path)
    verify(repo)
    # The next backup goes on from the newest point with its bitmap.
    qemu_io("-f", "qcow2", *io_args(workload(r, 5)), img)
    rec = backup_rec(img, repo)
    assert rec["disks"][0]["method"] == "bitmap"
    assert rec["disks"][0]["parent"] == ids[7]
    assert_point_restores(repo, rec["id"], keep(img, tmp_path / "n.raw"),
                          tmp_path)
    line = one_error_line(imgtool("backup-prune", repo, check=False))
    assert "--keep" in line


def test_compressed_points(tmp_path):
    img = tmp_path / "vm.qcow2"
    r = make_image(img)
    repo = tmp_path / "repo"
    expected = {}
    for i in range(3):
        if i:
            qemu_io("-f", "qcow2", *io_args(workload(r, 10)), img)
        rec = backup_rec(img, repo, "-c")
        assert rec["disks"][0]["compressed"]
        expected[rec["id"]] = keep(img, tmp_path / f"e{i}.raw")
        f = repo / rec["disks"][0]["file"]
        info = json.loads(qemu_img("info", "--output=json", f).stdout)
        assert info["format-specific"]["data"]["compression-type"] == "zstd"
    qemu_img("check", "-f", "qcow2", f)
    chk = json.loads(qemu_img("check", "--output=json", "-f", "qcow2",
                              repo / points(repo)[0]["disks"][0]["file"]
                              ).stdout)
    assert chk["compressed-clusters"] > 0
    for pid, exp in expected.items():
        assert_point_restores(repo, pid, exp, tmp_path)
    verify(repo)


def test_encrypted_repository(tmp_path):
    img = tmp_path / "vm.qcow2"
    r = make_image(img)
    repo = tmp_path / "repo"
    pw = tmp_path / "pw"
    pw.write_text("correct horse")
    bad = tmp_path / "bad"
    bad.write_text("wrong horse")
    sec = ["--object", f"secret,id=k,file={pw}", "--key-secret", "k"]
    badsec = ["--object", f"secret,id=k,file={bad}", "--key-secret", "k"]
    expected = {}
    for i in range(3):
        if i:
            qemu_io("-f", "qcow2", *io_args(workload(r, 10)), img)
        rec = backup_rec(img, repo, *sec, "--iter-time", "10")
        assert rec["disks"][0]["encrypted"]
        expected[rec["id"]] = keep(img, tmp_path / f"e{i}.raw")
    # The maps are encrypted: no zstd frame, no plaintext hash in sight.
    sums = repo / points(repo)[0]["disks"][0]["checksums"]["file"]
    assert b"\x28\xb5\x2f\xfd" not in sums.read_bytes()[64:]
    # qemu-img opens a full point with the passphrase.
    full = repo / points(repo)[0]["disks"][0]["file"]
    p = qemu_img("compare", "--object", f"secret,id=k,file={pw}",
                 "--image-opts",
                 f"driver=qcow2,encrypt.key-secret=k,file.filename={full}",
                 f"driver=raw,file.filename={expected[sorted(expected)[0]]}",
                 check=False)
    assert p.returncode == 0, p.stdout + p.stderr
    for pid, exp in expected.items():
        out = tmp_path / "r.qcow2"
        restore(repo, out, "--point", pid, *sec)
        assert qemu_img("compare", "-F", "raw", out, exp).returncode == 0
    verify(repo, *sec)
    # Listing needs no key; everything else says what is missing, or
    # that the passphrase is wrong, in one line, and changes nothing.
    assert len(points(repo)) == 3
    before = sorted(os.listdir(repo))
    for args in (["restore", repo, tmp_path / "x.qcow2"],
                 ["backup", img, repo], ["backup-verify", repo]):
        line = one_error_line(imgtool(*args, check=False))
        assert "encrypted" in line and "--key-secret" in line
    for args in (["restore", *badsec, repo, tmp_path / "x.qcow2"],
                 ["backup", *badsec, img, repo],
                 ["backup-verify", *badsec, repo],
                 ["backup-prune", *badsec, "--keep-last", "1", repo]):
        line = one_error_line(imgtool(*args, check=False))
        assert "wrong passphrase" in line, line
    assert sorted(os.listdir(repo)) == before
    assert not (tmp_path / "x.qcow2").exists()
    line = one_error_line(backup(img, repo, *sec, "-c", check=False))
    assert "encrypt" in line


def test_verify_names_a_corrupted_point(tmp_path):
    img = tmp_path / "vm.qcow2"
    r = make_image(img)
    repo = tmp_path / "repo"
    ids = []
    for i in range(3):
        if i:
            qemu_io("-f", "qcow2", *io_args(workload(r, 10)), img)
        ids.append(backup_rec(img, repo)["id"])
    exp_last = keep(img, tmp_path / "last.raw")
    # Flip a byte in a data cluster of the middle point.
    f = repo / ids[1] / "vm.qcow2"
    m = json.loads(qemu_img("map", "--output=json", f).stdout)
    ext = next(e for e in m if e["data"] and "offset" in e and
               e.get("depth", 0) == 0)
    with open(f, "r+b") as fh:
        fh.seek(ext["offset"] + 100)
        b = fh.read(1)
        fh.seek(ext["offset"] + 100)
        fh.write(bytes([b[0] ^ 0xff]))
    p = imgtool("backup-verify", "--output=json", repo, check=False)
    assert p.returncode == 2
    rep = {e["id"]: e for e in json.loads(p.stdout)}
    assert rep[ids[1]]["status"] == "damaged"
    assert rep[ids[0]]["status"] == "ok" and rep[ids[2]]["status"] == "ok"
    line = one_error_line(p)
    assert ids[1] in line and "do" in line
    # A restore through the damaged layer fails naming it; one that does
    # not use the damaged cluster, or an older point, still works.
    out = tmp_path / "o.qcow2"
    pr = imgtool("restore", "--point", ids[1], repo, out, check=False)
    line = one_error_line(pr)
    assert ids[1] in line and "checksum" in line
    assert not out.exists()
    restore(repo, out, "--point", ids[0])
    # A damaged checksum map is named too.
    s = repo / ids[2] / "vm.sums"
    data = bytearray(s.read_bytes())
    data[70] ^= 1
    s.write_bytes(bytes(data))
    p = imgtool("backup-verify", repo, check=False)
    assert p.returncode == 2 and ids[2] in p.stdout
    assert exp_last


def test_volume_sources_and_targets(tmp_path):
    from poolenv import Pools
    pools = Pools(tmp_path / "cfg")
    target = tmp_path / "pool"
    pools("pool-define-as", "p", "dir", "--target", target)
    pools("pool-build", "p")
    pools("pool-start", "p")
    pools("vol-create-as", "p", "web.qcow2", "64M", "--format", "qcow2")
    path = target / "web.qcow2"
    qemu_io("-f", "qcow2", "-c", "write -P 0x5a 1M 3M", path)
    repo = tmp_path / "repo"
    rec = json.loads(pools("backup", "--output=json", "vol:p/web.qcow2",
                           repo).stdout)
    assert rec["disks"][0]["name"] == "web"
    qemu_io("-f", "qcow2", "-c", "write -P 0x5b 9M 1M", path)
    rec = json.loads(pools("backup", "--output=json", "vol:p/web.qcow2",
                           repo).stdout)
    assert rec["disks"][0]["method"] == "bitmap"
    pools("restore", repo, "vol:p/back.qcow2")
    assert "back.qcow2" in pools.vols("p")
    assert qemu_img("compare", target / "back.qcow2", path).returncode == 0


def test_several_disks_in_one_point(tmp_path):
    a, b = tmp_path / "a.qcow2", tmp_path / "b.img"
    make_image(a, seed=3)
    qemu_img("create", "-q", "-f", "raw", b, "8M")
    qemu_io("-f", "raw", "-c", "write -P 9 0 1M", b)
    repo = tmp_path / "repo"
    rec = json.loads(imgtool("backup", "--output=json", "--disk", "sys",
                             "--disk", "data", a, b, repo).stdout)
    assert [d["name"] for d in rec["disks"]] == ["sys", "data"]
    line = one_error_line(imgtool("restore", repo, tmp_path / "x",
                                  check=False))
    assert "--disk" in line and "sys" in line and "data" in line
    restore(repo, tmp_path / "x.raw", "--disk", "data")
    assert open(tmp_path / "x.raw", "rb").read() == open(b, "rb").read()
    restore(repo, tmp_path / "y.qcow2", "--disk", "sys")
    assert qemu_img("compare", tmp_path / "y.qcow2", a).returncode == 0


def test_bad_input_one_line_and_nothing_lost(tmp_path):
    img = tmp_path / "vm.qcow2"
    make_image(img)
    notrepo = tmp_path / "notrepo"
    notrepo.mkdir()
    (notrepo / "precious").write_text("x")
    line = one_error_line(backup(img, notrepo, check=False))
    assert "not a backup repository" in line
    assert os.listdir(notrepo) == ["precious"]
    repo = tmp_path / "repo"
    line = one_error_line(backup(tmp_path / "missing.qcow2", repo,
                                 check=False))
    assert "missing.qcow2" in line
    assert not repo.exists() or points(repo) == []
    backup(img, repo)
    for args, want in [
            (["backup", "--mode", "weekly", img, repo], "Invalid backup mode"),
            (["restore", "--point", "nope", repo, tmp_path / "o"],
             "no point 'nope'"),
            (["backup-list", tmp_path / "nothing"], "nothing"),
            (["backup", "--disk", "../x", img, repo], "cannot name a disk"),
            (["restore", "-O", "vmdk", repo, tmp_path / "o"],
             "Invalid target format")]:
        line = one_error_line(imgtool(*args, check=False))
        assert want in line, line
    assert len(points(repo)) == 1
    # A second writer is refused at once while one holds the repository.
    import fcntl
    with open(repo / ".lock", "r+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        line = one_error_line(backup(img, repo, check=False))
        assert "another backup or prune is running" in line
    # A damaged record is skipped by list and named by verify.
    (repo / "20000101T000000Z").mkdir()
    (repo / "20000101T000000Z" / "point.json").write_text("{")
    assert len(points(repo)) == 1
    p = imgtool("backup-verify", repo, check=False)
    assert p.returncode == 2 and "20000101T000000Z" in p.stderr
