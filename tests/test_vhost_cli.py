"""The vhost-user export options of `imgtool serve` and the `imgtool run`
command line, without booting anything: option errors give one line and
a non-zero exit, LUN exports share a controller by socket, QMP shows and
removes them, and --print-command shows exactly what run would start.
"""
import json
import os
import signal
import subprocess
import time

import pytest

from conftest import IMGTOOL, imgtool, qemu_img

MiB = 1 << 20


def serve_fails(*args):
    p = subprocess.run([IMGTOOL, "serve", *args], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode != 0
    lines = [l for l in p.stderr.splitlines() if l]
    assert len(lines) == 1 and lines[0].startswith("imgtool: "), p.stderr
    return lines[0]


@pytest.fixture
def img(tmp_path):
    path = tmp_path / "d.qcow2"
    qemu_img("create", "-f", "qcow2", str(path), str(16 * MiB))
    return path


def blockdev(img, name="n0"):
    return ["--blockdev", f"driver=qcow2,node-name={name},"
                          f"file.filename={img}"]


def test_export_option_errors(tmp_path, img):
    s = tmp_path / "s.sock"
    base = blockdev(img)
    assert "unix and fd" in serve_fails(
        *base, "--export", "type=vhost-user-blk,id=e0,node-name=n0,"
        "addr.type=inet,addr.host=127.0.0.1,addr.port=1234")
    assert "num-queues" in serve_fails(
        *base, "--export", "type=vhost-user-blk,id=e0,node-name=n0,"
        f"addr.type=unix,addr.path={s},num-queues=0")
    assert "logical-block-size" in serve_fails(
        *base, "--export", "type=vhost-user-blk,id=e0,node-name=n0,"
        f"addr.type=unix,addr.path={s},logical-block-size=1000")
    assert "addr.type" in serve_fails(
        *base, "--export", "type=vhost-user-scsi,id=e0,node-name=n0")
    assert "'bogus'" in serve_fails(
        *base, "--export", "type=vhost-user-scsi,id=e0,node-name=n0,"
        f"addr.type=unix,addr.path={s},bogus=1")
    assert "lun" in serve_fails(
        *base, "--export", "type=vhost-user-scsi,id=e0,node-name=n0,"
        f"addr.type=unix,addr.path={s},lun=256")
    assert "taken" in serve_fails(
        *base, "--export", f"type=vhost-user-scsi,id=e0,node-name=n0,"
        f"addr.type=unix,addr.path={s},lun=3",
        "--export", f"type=vhost-user-scsi,id=e1,node-name=n0,"
        f"addr.type=unix,addr.path={s},lun=3")
    assert "request queues" in serve_fails(
        *base, "--export", f"type=vhost-user-scsi,id=e0,node-name=n0,"
        f"addr.type=unix,addr.path={s},num-queues=2",
        "--export", f"type=vhost-user-scsi,id=e1,node-name=n0,"
        f"addr.type=unix,addr.path={s},num-queues=4")
    assert "read-only" in serve_fails(
        "--blockdev", f"driver=qcow2,node-name=n0,file.filename={img},"
        "read-only=on", "--export", "type=vhost-user-blk,id=e0,"
        f"node-name=n0,addr.type=unix,addr.path={s},writable=on")
    assert not s.exists()


def test_exports_over_qmp(tmp_path, img):
    qmp, s, b = tmp_path / "q.sock", tmp_path / "s.sock", tmp_path / "b.sock"
    p = subprocess.Popen([IMGTOOL, "serve", *blockdev(img),
                          "--chardev", f"socket,id=m,path={qmp},server=on,"
                          "wait=off", "--monitor", "chardev=m"],
                         stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(200):
            if qmp.exists():
                break
            time.sleep(0.05)
        ctl = lambda *a, **kw: imgtool("serve-ctl", str(qmp), *a, **kw)
        ctl("block-export-add", "type=vhost-user-blk", "id=b", "node-name=n0",
            "addr.type=unix", f"addr.path={b}", "num-queues=4")
        for i in range(3):
            ctl("block-export-add", "type=vhost-user-scsi", f"id=l{i}",
                "node-name=n0", "addr.type=unix", f"addr.path={s}")
        ex = json.loads(ctl("query-block-exports").stdout)
        assert [(e["id"], e.get("lun")) for e in ex] == [
            ("b", None), ("l0", 0), ("l1", 1), ("l2", 2)]
        assert all(e["clients"] == 0 and e["writable"] is False for e in ex)
        assert {e["addr"] for e in ex} == {f"unix:{b}", f"unix:{s}"}
        # LUN 1 goes, the next export takes the lowest free LUN again.
        ctl("block-export-del", "id=l1")
        for _ in range(100):
            ex = json.loads(ctl("query-block-exports").stdout)
            if "l1" not in [e["id"] for e in ex]:
                break
            time.sleep(0.05)
        ctl("block-export-add", "type=vhost-user-scsi", "id=l3",
            "node-name=n0", "addr.type=unix", f"addr.path={s}")
        ex = json.loads(ctl("query-block-exports").stdout)
        assert {e["id"]: e.get("lun") for e in ex}["l3"] == 1
        # The controller's socket lives as long as one of its LUNs.
        for i in ("l0", "l2", "l3"):
            ctl("block-export-del", f"id={i}")
        for _ in range(200):
            if not s.exists():
                break
            time.sleep(0.05)
        assert not s.exists() and b.exists()
        r = ctl("block_resize", "node-name=n0", f"size={32 * MiB}")
        assert json.loads(r.stdout) == {}
        bad = ctl("block_resize", "node-name=nope", "size=1", check=False)
        assert bad.returncode == 1 and "nope" in bad.stderr
    finally:
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=30) == 0, p.stderr.read()
    assert not b.exists() and not qmp.exists()
    assert json.loads(qemu_img("info", "--output=json", str(img)).stdout)[
        "virtual-size"] == 32 * MiB


def run_print(*args):
    p = imgtool("run", "--print-command", *args)
    serve, qemu = p.stdout.splitlines()
    return serve, qemu


def test_run_print_command(tmp_path, img):
    raw = tmp_path / "r,x.raw"
    qemu_img("create", "-f", "raw", str(raw), str(MiB))
    serve, qemu = run_print("--disk", str(img), "--disk",
                            f"{str(raw).replace(',', ',,')},bus=scsi,"
                            "readonly=on", "--disk", f"{img},bus=scsi,"
                            "format=qcow2,writethrough=on",
                            "--memory", "1G", "--cpus", "2",
                            "--kernel", "/k", "--append", "a b",
                            "--", "-no-reboot", "-snapshot")
    assert serve.startswith("imgtool serve ") and serve.endswith(" &")
    assert f"driver=qcow2,node-name=disk0,file.filename={img} " in serve
    # Probed raw; the comma in the name doubled for the option list.
    assert "driver=raw,node-name=disk1,file.filename=" + \
        str(raw).replace(",", ",,") + ",read-only=on" in serve
    assert ("type=vhost-user-blk,id=disk0,node-name=disk0,addr.type=unix,"
            "addr.path=RUNDIR/disk0.sock,writable=on,num-queues=2") in serve
    assert "lun=0,num-queues=2" in serve and "writable=off,lun=0" in serve
    assert "lun=1,num-queues=2,writethrough=on" in serve
    assert "--monitor chardev=qmp" in serve
    assert qemu.startswith("qemu-system-x86_64 ")
    assert "-object memory-backend-memfd,id=mem,size=1024M,share=on" in qemu
    assert "-machine q35,memory-backend=mem -m 1024M -smp 2" in qemu
    assert "-accel kvm -cpu host" in qemu or "-accel tcg -cpu max" in qemu
    assert "-kernel /k" in qemu and "-append 'a b'" in qemu
    assert ("-chardev socket,id=vhost0,path=RUNDIR/disk0.sock,reconnect=1 "
            "-device vhost-user-blk-pci,chardev=vhost0,num-queues=2 ") in qemu
    assert "bootindex" not in qemu
    assert ("-device vhost-user-scsi-pci,chardev=vhostscsi,num_queues=2 "
            "-no-reboot -snapshot") in qemu
    _, qemu = run_print("--disk", f"{img},bus=scsi", "--accel", "tcg")
    assert "num_queues=1,bootindex=0" in qemu and "-accel tcg" in qemu
    assert "-m 512M" in qemu


@pytest.mark.parametrize("args,words", [
    ([], "nothing to boot"),
    (["--disk", "x.img,bus=ide"], "bus must be blk or scsi"),
    (["--disk", "x.img,color=red"], "'color'"),
    (["--disk", ",bus=blk"], "no image named"),
    (["--kernel", "/k", "--memory", "lots"], "--memory"),
    (["--kernel", "/k", "--memory", "1000k"], "whole number of MiB"),
    (["--kernel", "/k", "--cpus", "0"], "--cpus"),
    (["--kernel", "/k", "--accel", "hvf"], "--accel"),
    (["--initrd", "/i"], "need --kernel"),
    (["--kernel", "/k", "extra"], "after --"),
    (["--disk", "/nonexistent/x.qcow2"], "x.qcow2"),
])
def test_run_errors(args, words):
    p = subprocess.run([IMGTOOL, "run", *args], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode != 0
    first = p.stderr.splitlines()[0]
    assert first.startswith("imgtool: ") and words in first, p.stderr


def test_run_cleans_up_when_qemu_fails(tmp_path, img):
    """QEMU refusing an argument: the daemon is stopped, the run
    directory removed, QEMU's exit code returned."""
    before = {n for n in os.listdir("/tmp") if n.startswith("imgtool-run.")}
    p = subprocess.run([IMGTOOL, "run", "--accel", "tcg", "--disk", str(img),
                        "--", "-no-such-option"], capture_output=True,
                       text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert p.returncode == 1, p.stderr
    assert "-no-such-option" in p.stderr
    after = {n for n in os.listdir("/tmp") if n.startswith("imgtool-run.")}
    assert after <= before
    # The daemon is gone: the image can be opened for writing again.
    qemu_img("check", str(img))
    imgtool("resize", str(img), "+1M")


def children(pid):
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{d}/cmdline", "rb") as f:
                cmd = f.read().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        if ppid == pid:
            out[int(d)] = cmd
    return out


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_run_stops_everything_on_signal(tmp_path, img, sig):
    """A guest that never ends (QEMU's -S: paused before the first
    instruction): the signal stops QEMU and the daemon and removes the
    run directory's sockets."""
    run_dir = tmp_path / "run"
    p = subprocess.Popen([IMGTOOL, "run", "--accel", "tcg", "--disk",
                          f"{img},bus=scsi", "--run-dir", str(run_dir),
                          "--", "-S"], stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         text=True)
    try:
        kids = {}
        for _ in range(600):
            kids = children(p.pid)
            if len(kids) == 2 and (run_dir / "scsi.sock").exists():
                break
            time.sleep(0.05)
        names = sorted(c[1] if c[1] == b"serve" else
                       os.path.basename(c[0]) for c in kids.values())
        assert names == [b"qemu-system-x86_64", b"serve"], kids
        p.send_signal(sig)
        assert p.wait(timeout=60) == 128 + sig, p.stderr.read()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    for pid in kids:
        assert not os.path.exists(f"/proc/{pid}") or \
            open(f"/proc/{pid}/stat").read().split()[2] == "Z"
    assert os.listdir(run_dir) == []
    imgtool("resize", str(img), "+1M")     # nobody holds it any more


def test_run_volume_disk(tmp_path):
    """--disk vol:POOL/NAME: the daemon opens the file the pool holds,
    in the format the pool records."""
    from poolenv import Pools
    pools = Pools(tmp_path / "cfg")
    target = tmp_path / "pool"
    pools("pool-define-as", "p", "dir", "--target", target)
    pools("pool-build", "p")
    pools("pool-start", "p")
    pools("vol-create-as", "p", "vm.qcow2", "16M", "--format", "qcow2")
    p = pools("run", "--print-command", "--disk", "vol:p/vm.qcow2,bus=scsi")
    serve = p.stdout.splitlines()[0]
    assert (f"driver=qcow2,node-name=disk0,file.filename={target}/vm.qcow2"
            in serve), serve
    bad = pools("run", "--print-command", "--disk", "vol:p/nope", check=False)
    assert bad.returncode == 1 and bad.stderr.startswith("imgtool: vol:p/nope")
    bad = pools("run", "--print-command", "--disk", "vol:p/vm.qcow2,format=raw",
                check=False)
    assert bad.returncode == 1 and "format is qcow2, not raw" in bad.stderr
