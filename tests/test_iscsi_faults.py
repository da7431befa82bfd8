"""iscsi:// when things go wrong: unreachable portals, wrong targets and
LUNs, URLs with parts missing (one line each, as qemu-img also refuses
them); connections dropped in the middle of a copy (re-established, the
commands in flight sent again, nothing lost); a target killed or removed
in the middle of convert and of io writes (one line, and the qcow2 on the
LUN opens afterwards with no corruption, at most leaks).
"""
import os
import subprocess
import threading
import time

import pytest

from conftest import (IMGTOOL, ISCSI_IQN, imgtool, io_args, no_leak_check_env,
                      one_error_line, qemu_img, qemu_io, same_content,
                      write_random_file)
from netservices import Tgtd

pytestmark = pytest.mark.xdist_group("iscsi")

MiB = 1 << 20


@pytest.mark.parametrize("url, words", [
    ("iscsi://127.0.0.1:1/iqn.2024-01.x:y/1", "cannot connect"),
    ("iscsi://no-such-host.invalid/iqn.2024-01.x:y/1", "cannot connect"),
    ("iscsi://", "no host"),
    ("iscsi://127.0.0.1", "no target"),
    ("iscsi://127.0.0.1/", "no target"),
    ("iscsi://127.0.0.1/iqn.2024-01.x:y", "no LUN"),
    ("iscsi://127.0.0.1/iqn.2024-01.x:y/", "no LUN"),
    ("iscsi://127.0.0.1/iqn.2024-01.x:y/one", "not a number"),
    ("iscsi://127.0.0.1/iqn.2024-01.x:y/99999", "not a number"),
    ("iscsi://127.0.0.1:99999/iqn.2024-01.x:y/1", "bad port"),
    ("iscsi://127.0.0.1:/iqn.2024-01.x:y/1", "bad port"),
    ("iscsi://[::1/iqn.2024-01.x:y/1", "IPv6"),
    ("iscsi://@127.0.0.1/iqn.2024-01.x:y/1", "empty user"),
    ("iscsi://someone@127.0.0.1/iqn.2024-01.x:y/1", "password"),
])
def test_bad_urls_one_line(url, words):
    p = imgtool("info", url, check=False, timeout=60)
    assert words in one_error_line(p)
    # qemu-img refuses them too (its words differ)
    assert qemu_img("info", url, check=False, timeout=60).returncode != 0


def test_wrong_target_and_lun(iscsi_target, lun):
    url, _ = lun
    portal = iscsi_target.portal
    p = imgtool("info", f"iscsi://{portal}/iqn.2024-01.org.nope:x/1",
                check=False)
    assert "not found" in one_error_line(p)
    p = imgtool("info", f"iscsi://{portal}/{ISCSI_IQN}/200", check=False)
    assert "no LUN 200" in one_error_line(p)
    # LUN 0 of a tgtd target is its controller, not a disk
    p = imgtool("info", f"iscsi://{portal}/{ISCSI_IQN}/0", check=False)
    assert "not a disk" in one_error_line(p)
    # as the target of a convert too, before anything is written
    p = imgtool("convert", "-n", "-f", "raw", "-O", "raw", url,
                f"iscsi://{portal}/{ISCSI_IQN}/200", check=False)
    assert "no LUN 200" in one_error_line(p)


def run_while(argv, action, every=0.1, env=None, most=3):
    """Runs argv; calls action() every `every` s while it runs, until it
    returned something true `most` times.  Returns (process result, how
    many times action returned something true)."""
    proc = subprocess.Popen([str(a) for a in argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    hits = 0
    while proc.poll() is None:
        time.sleep(every)
        if hits < most and proc.poll() is None and action():
            hits += 1
    out, err = proc.communicate()
    return subprocess.CompletedProcess(argv, proc.returncode, out, err), hits


def test_dropped_connections_are_reestablished(iscsi_target, tmp):
    """tgtd closes the session again and again in the middle of a
    convert onto a LUN, of io writes and of a convert off it: libiscsi
    logs in again, what was in flight is sent again, nothing is lost."""
    url, _ = iscsi_target.new_lun(256 * MiB)
    src = str(tmp / "src.raw")
    write_random_file(src, 200 * MiB, seed=12)
    tgtd = iscsi_target.tgtd
    p, drops = run_while([IMGTOOL, "convert", "-n", "-f", "raw", "-O", "raw",
                          src, url], lambda: tgtd.drop_connections(1),
                         every=0.3)
    assert p.returncode == 0, p.stderr
    assert drops >= 1
    # the 200 MiB copied, the rest of the LUN still zero
    assert same_content(src, url, "raw", "raw")
    out = str(tmp / "back.raw")
    p, drops = run_while([IMGTOOL, "convert", "-f", "raw", "-O", "raw", url,
                          out], lambda: tgtd.drop_connections(1), every=0.3)
    assert p.returncode == 0, p.stderr
    with open(src, "rb") as a, open(out, "rb") as b:
        assert a.read() == b.read(200 * MiB)
    cmds = [f"write -P {i % 250 + 1} {i * MiB} 1M" for i in range(200)]
    p, drops = run_while([IMGTOOL, "io", "-f", "raw", *io_args(cmds), url],
                         lambda: tgtd.drop_connections(1), every=0.1)
    assert p.returncode == 0, p.stderr
    qemu_io("-f", "raw", *io_args([f"read -P {i % 250 + 1} {i * MiB} 1M"
                                   for i in range(0, 200, 7)]), url)


@pytest.fixture
def private_target(tmp):
    """A tgtd of this test's own (it gets killed), with one 256 MiB LUN
    whose backing file outlives it: (tgtd, url, backing file)."""
    t = Tgtd(tmp / "tgtd", slot=1)
    backing = str(tmp / "lun.img")
    t.start()
    try:
        t.add_target(1, "iqn.2024-01.org.imgtool.test:victim",
                     [(1, backing, 256 * MiB, {})])
        yield t, f"iscsi://{t.portal}/iqn.2024-01.org.imgtool.test:victim/1", \
            backing
    finally:
        t.stop()


def restart(t, backing):
    t.start()
    t.add_target(1, "iqn.2024-01.org.imgtool.test:victim",
                 [(1, backing, 256 * MiB, {})])


def kill_when_written(t, backing, past):
    """Kills tgtd once the LUN holds more than `past` bytes (so the
    command is in the middle of its writes)."""
    if os.stat(backing).st_blocks * 512 > past and t.proc.poll() is None:
        t.kill()
        return True
    return False


def run_and_kill(argv, t, backing, past):
    """Runs argv, killing the target once the LUN holds `past` bytes
    while argv still runs.  (result, whether the kill came first)."""
    proc = subprocess.Popen([str(a) for a in argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env=no_leak_check_env())
    killed = False
    while proc.poll() is None:
        time.sleep(0.02)
        if not killed and proc.poll() is None:
            killed = kill_when_written(t, backing, past)
    out, err = proc.communicate()
    return subprocess.CompletedProcess(argv, proc.returncode, out, err), \
        killed


def target_opts(url, fmt="qcow2", timeout=2):
    portal, iqn, lun = url[len("iscsi://"):].split("/")
    return (f"driver={fmt},file.driver=iscsi,file.portal={portal},"
            f"file.target={iqn},file.lun={lun},file.timeout={timeout}")


def test_target_killed_during_convert(private_target, tmp):
    t, url, backing = private_target
    imgtool("create", "-f", "qcow2", url, "240M")
    src = str(tmp / "src.raw")
    write_random_file(src, 200 * MiB, seed=3)
    p, killed = run_and_kill(
        [IMGTOOL, "convert", "-n", "-f", "raw", "--target-image-opts", src,
         target_opts(url)], t, backing, 8 * MiB)
    assert killed, "the convert ended before the target was killed"
    assert "connect" in one_error_line(p)
    restart(t, backing)
    c = qemu_img("check", "-f", "qcow2", url, check=False)
    assert c.returncode in (0, 3), c.stdout + c.stderr   # leaks at most
    imgtool("check", "-f", "qcow2", url, rc=c.returncode)


def test_target_killed_during_io_writes(private_target):
    t, url, backing = private_target
    imgtool("create", "-f", "qcow2", url, "240M")
    imgtool("io", "-f", "qcow2", "-c", "write -P 1 0 1M", url)
    p, killed = run_and_kill(
        [IMGTOOL, "io", "-c", "write -P 2 1M 230M", "--image-opts",
         target_opts(url)], t, backing, 8 * MiB)
    assert killed, "io ended before the target was killed"
    assert "connect" in one_error_line(p)
    restart(t, backing)
    c = qemu_img("check", "-f", "qcow2", url, check=False)
    assert c.returncode in (0, 3), c.stdout + c.stderr
    # what was written before the kill reads back
    qemu_io("-f", "qcow2", "-c", "read -P 1 0 1M", url)


def test_target_removed_while_in_use(private_target):
    """The target goes away for us (access withdrawn on the server,
    session closed) during a bench: the reconnects are refused and the
    command ends with one line once its timeout is up."""
    t, url, _ = private_target
    removed = []

    def remove():
        # tgtd keeps a LUN that is in use; taking our access away and
        # closing the session is the same to the initiator
        time.sleep(0.3)
        t.tgtadm("--lld", "iscsi", "--op", "unbind", "--mode", "target",
                 "--tid", 1, "-I", "127.0.0.1")
        removed.append(t.drop_connections(1))
    th = threading.Thread(target=remove)
    th.start()
    p = subprocess.run([IMGTOOL, "bench", "-w", "-c", "100000000", "-d", "8",
                        "-s", "4k", "--image-opts", target_opts(url, "raw")],
                       capture_output=True, text=True, timeout=120,
                       env=no_leak_check_env())
    th.join()
    assert removed == [1]
    assert "not connected" in one_error_line(p)
