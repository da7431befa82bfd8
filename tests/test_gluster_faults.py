"""gluster:// when things go wrong: URLs with parts missing, a server that
cannot be reached, a volume or file that does not exist (one line each);
the server (glusterd and its brick) killed in the middle of a convert and
of io writes: one line, and the qcow2 on the volume opens afterwards with
no corruption, at most leaks.
"""
import os
import signal
import subprocess
import time

import pytest

from conftest import (IMGTOOL, imgtool, no_leak_check_env, one_error_line,
                      qemu_img, write_random_file)

pytestmark = pytest.mark.xdist_group("gluster")

MiB = 1 << 20


@pytest.mark.parametrize("url, words", [
    ("gluster://", "names no volume"),
    ("gluster://127.0.0.1", "names no volume"),
    ("gluster://127.0.0.1/", "names no volume"),
    ("gluster://127.0.0.1/vol", "no image path"),
    ("gluster://127.0.0.1/vol/", "no image path"),
    ("gluster://127.0.0.1:abc/vol/x.qcow2", "bad port"),
    ("gluster://127.0.0.1:0/vol/x.qcow2", "bad port"),
    ("gluster://[::1/vol/x.qcow2", "IPv6"),
    ("gluster+unix:///vol/x.qcow2", "socket"),
    ("gluster+unix://host/vol/x.qcow2?socket=/s", "host"),
    ("gluster://127.0.0.1/vol/x.qcow2?socket=/s", "query"),
])
def test_bad_urls_one_line(url, words):
    p = imgtool("info", url, check=False, timeout=60)
    assert words in one_error_line(p)
    assert qemu_img("info", url, check=False, timeout=60).returncode != 0


def test_server_volume_file_missing(gluster):
    p = imgtool("info", f"gluster://127.0.0.1:1/{gluster.volume}/x.qcow2",
                check=False, timeout=120)
    assert "cannot reach Gluster server 127.0.0.1:1" in one_error_line(p)
    p = imgtool("info", "gluster://127.0.0.1/no-such-volume/x.qcow2",
                check=False, timeout=120)
    assert "no-such-volume" in one_error_line(p)
    p = imgtool("info", gluster.url("no-such-file.qcow2"), check=False)
    assert "No such file" in one_error_line(p)
    p = imgtool("create", "-f", "qcow2", gluster.url("no/such/dir.qcow2"),
                "1M", check=False)
    assert "No such file" in one_error_line(p)
    # a convert fails before it creates anything
    p = imgtool("convert", "-O", "qcow2", gluster.url("no-such-file.qcow2"),
                gluster.url("never.qcow2"), check=False)
    one_error_line(p)
    assert not os.path.exists(gluster.brick("never.qcow2"))


def kill_server(gluster):
    """glusterd and the volume's brick die (the server machine goes)."""
    pid = gluster.glusterd.brick_pid(gluster.volume)
    gluster.glusterd.kill_glusterd()
    if pid:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        # not our child: wait until it is gone, so that the brick glusterd
        # starts next does not meet its port or pid file still held
        end = time.monotonic() + 10
        while os.path.exists(f"/proc/{pid}") and time.monotonic() < end:
            time.sleep(0.05)


def revive(gluster):
    """glusterd again; it starts the brick of the started volume.  When
    it does not (under load glusterd may still see the dead brick's pid
    file, or its port), the brick is started by hand, as an admin would:
    `volume start VOL force`."""
    gluster.glusterd.restart_glusterd()
    deadline = time.monotonic() + 90
    next_force = time.monotonic() + 5
    probe = gluster.url("probe.raw")
    while imgtool("create", "-f", "raw", probe, "1M",
                  check=False).returncode != 0:
        assert time.monotonic() < deadline, "the volume did not come back"
        if time.monotonic() > next_force:
            gluster.glusterd.cli("volume", "start", gluster.volume, "force",
                                 check=False)
            next_force = time.monotonic() + 10
        time.sleep(0.5)


def run_and_kill(gluster, argv, brick_file, past):
    """Runs argv and kills the server once brick_file holds `past` bytes.
    Returns the finished process and whether the kill came first."""
    proc = subprocess.Popen([str(a) for a in argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env=no_leak_check_env())
    killed = False
    while proc.poll() is None:
        time.sleep(0.02)
        try:
            size = os.stat(brick_file).st_blocks * 512
        except FileNotFoundError:
            continue
        if not killed and size > past:
            if proc.poll() is not None:
                break           # it finished first: the caller says so
            kill_server(gluster)
            killed = True
    out, err = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(argv, proc.returncode, out, err), killed


def test_server_killed_during_convert(gluster, tmp):
    url = gluster.url("victim-convert.qcow2")
    brick = gluster.brick("victim-convert.qcow2")
    if os.path.exists(brick):
        os.unlink(brick)
    imgtool("create", "-f", "qcow2", url, "300M")
    src = str(tmp / "src.raw")
    write_random_file(src, 200 * MiB, seed=21)
    try:
        p, killed = run_and_kill(
            gluster, [IMGTOOL, "convert", "-n", "-f", "raw", "-O", "qcow2",
                      src, url], brick, 24 * MiB)
        assert killed, "the convert ended before the server was killed"
        assert "not connected" in one_error_line(p)
    finally:
        revive(gluster)
    c = qemu_img("check", "-f", "qcow2", brick, check=False)
    assert c.returncode in (0, 3), c.stdout + c.stderr
    imgtool("check", url, rc=c.returncode)


def test_server_killed_during_io_writes(gluster):
    url = gluster.url("victim-io.qcow2")
    brick = gluster.brick("victim-io.qcow2")
    if os.path.exists(brick):
        os.unlink(brick)
    imgtool("create", "-f", "qcow2", url, "300M")
    imgtool("io", "-c", "write -P 1 0 1M", url)
    try:
        p, killed = run_and_kill(
            gluster, [IMGTOOL, "io", "-c", "write -P 2 1M 280M", url],
            brick, 8 * MiB)
        assert killed, "io ended before the server was killed"
        assert "not connected" in one_error_line(p)
    finally:
        revive(gluster)
    c = qemu_img("check", "-f", "qcow2", brick, check=False)
    assert c.returncode in (0, 3), c.stdout + c.stderr
    imgtool("io", "-c", "read -P 1 0 1M", url)
