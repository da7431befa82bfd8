"""SIGUSR1 asks for a progress report and never kills imgtool.

qemu-img blocks SIGUSR1 from its start and, without -p, prints
"    (NN.NN/100%)" on stderr when it comes; with -p it just keeps going.
imgtool used to die of it (exit 138, half a copy) whenever -p was given,
before the copy started, or after it ended.  Each test here sends real
signals, again and again, from the moment imgtool has set itself up (its
main thread blocks SIGUSR1: /proc/PID/status says so) until it exits,
then checks the exit code, the whole output and the result against
qemu-img.  Rate limits (-r) make convert and commit last about a second
so that reports can be seen; the other commands are hit wherever the
signals land.
"""
import os
import re
import signal
import shutil
import subprocess
import time

import pytest

from conftest import (IMGTOOL, no_leak_check_env, qemu_img, qemu_io,
                      same_content, write_random_file)

MiB = 1024 * 1024
SIGUSR1_BIT = 1 << (signal.SIGUSR1 - 1)
REPORT = re.compile(r"    \(\d+\.\d\d/100%\)")


def blocks_sigusr1(pid):
    """Whether pid blocks or catches SIGUSR1 (it got past its start)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("SigBlk:", "SigCgt:")) and \
                        int(line.split()[1], 16) & SIGUSR1_BIT:
                    return True
    except OSError:
        pass
    return False


def hang_report(pid):
    """The state and every thread's stack of a process that hangs."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().split()[2]
    except OSError:
        state = "?"
    bt = subprocess.run(["gdb", "-p", str(pid), "-batch", "-ex",
                         "thread apply all bt"], capture_output=True,
                        text=True, timeout=60).stdout if shutil.which(
                            "gdb") else "(no gdb)"
    return f"state {state}\n{bt[-6000:]}"


def run_signalled(tmp, *args, interval=0.02, stdin_feed=None):
    """Runs imgtool with args, sending SIGUSR1 every interval seconds
    from the moment it blocks or catches the signal, or has printed
    something (so that a binary that does neither is hit too, past its
    start), until it exits; returns (exit code, stdout, stderr, signals
    sent).  stdin_feed(p), if given, runs after the first signal."""
    out, err = tmp / "stdout", tmp / "stderr"
    with open(out, "w") as fo, open(err, "w") as fe:
        # LeakSanitizer off (sanitizer builds): its exit-time check stops
        # every thread with ptrace, and our SIGCONT, landing then,
        # discards the SIGSTOP it waits for, so it waits forever (seen
        # in CI: a command hung, running, after its work was done).
        p = subprocess.Popen([IMGTOOL, *map(str, args)], stdout=fo,
                             stderr=fe, env=no_leak_check_env())
        try:
            start = time.monotonic()
            # Busy: the fastest commands here run for a few milliseconds.
            # (A signal before the process is set up kills any program,
            # qemu-img too: never send one before.)
            while (not blocks_sigusr1(p.pid) and p.poll() is None and
                   os.path.getsize(out) == 0 and
                   time.monotonic() - start < 20):
                pass
            sent = 0
            if p.poll() is None:
                # One signal for sure, however fast the command: it is
                # pending while the process is stopped and lands as it
                # resumes.
                p.send_signal(signal.SIGSTOP)
                p.send_signal(signal.SIGUSR1)
                p.send_signal(signal.SIGCONT)
                sent += 1
            if stdin_feed:
                stdin_feed(p)
            deadline = time.monotonic() + 90
            while p.poll() is None:
                p.send_signal(signal.SIGUSR1)
                sent += 1
                time.sleep(interval)
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"{args[0]} did not end in 90 s under SIGUSR1:\n" +
                        hang_report(p.pid))
            rc = p.wait(timeout=120)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
    # Bytes, not read_text: universal newlines would turn the bar's \r
    # into \n.
    return rc, out.read_bytes().decode(), err.read_bytes().decode(), sent


def reports(err):
    """The progress reports in stderr; anything else there fails."""
    lines = err.splitlines()
    assert all(REPORT.fullmatch(l) for l in lines), err
    return lines


def assert_bar_complete(out, tail=""):
    """A -p bar that ran to its end (redraws, 100.00 last, a newline),
    then tail."""
    assert out.endswith("    (100.00/100%)\r\n" + tail), out[-200:]
    bar = out[:len(out) - len(tail) - 2]
    assert all(REPORT.fullmatch(x) for x in bar.split("\r")), out


@pytest.fixture
def src(tmp):
    """A 4 MiB qcow2 image full of data."""
    path = tmp / "src.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", path, "4M")
    raw = tmp / "data.raw"
    write_random_file(raw, 4 * MiB, seed=7)
    qemu_img("convert", "-n", "-f", "raw", "-O", "qcow2", raw, path)
    return path


@pytest.mark.parametrize("bar", [False, True])
def test_convert(tmp, src, bar):
    dst = tmp / "dst.raw"
    rc, out, err, sent = run_signalled(
        tmp, "convert", *(["-p"] if bar else []), "-r", "4M", "-O", "raw",
        src, dst)
    assert rc == 0, err
    assert sent > 10
    assert same_content(src, dst, "qcow2", "raw")
    if bar:
        assert err == ""
        assert_bar_complete(out)
    else:
        assert out == ""
        assert len(reports(err)) >= 1


@pytest.mark.parametrize("bar", [False, True])
def test_commit(tmp, src, bar):
    top = tmp / "top.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-b", src, "-F", "qcow2", top)
    qemu_io("-c", "write -P 9 0 4M", top)
    rc, out, err, sent = run_signalled(
        tmp, "commit", *(["-p"] if bar else []), "-r", "4M", top)
    assert rc == 0, err
    assert sent > 10
    assert same_content(top, src)
    qemu_io("-c", "read -P 9 0 4M", src)
    if bar:
        assert err == ""
        assert_bar_complete(out, "Image committed.\n")
    else:
        assert len(reports(err)) >= 1
        assert out == "Image committed.\n"


def test_commands_without_rate_limit(tmp, src):
    """rebase, amend, snapshot --external and compare, with and without
    -p: hit wherever the signals land (before, during or after the work;
    they take milliseconds), none may die of them."""
    over = tmp / "over.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-b", src, "-F", "qcow2", over)
    qemu_io("-c", "write -P 5 1M 1M", over)
    want = tmp / "want.raw"
    qemu_img("convert", "-O", "raw", over, want)
    steps = [
        ["rebase", "-p", "-b", "", over],
        ["amend", "-p", "-o", "refcount_bits=8", over],
        ["amend", "-o", "refcount_bits=16", over],
        ["snapshot", "--external", "-c", "one", over],
        ["snapshot", "--external", "-p", "-d", "one", over],
        ["compare", "-p", over, want],
        ["compare", over, want],
    ]
    total = 0
    for argv in steps:
        rc, out, err, sent = run_signalled(tmp, *argv, interval=0.002)
        assert rc == 0, (argv, err)
        # A command done within the moment between our seeing it ready
        # and stopping it gets none (rare, on a loaded machine).
        total += sent
        reports(err)
        if "-p" in argv:
            assert "    (100.00/100%)\r" in out, (argv, out)
        assert same_content(over, want, "qcow2", "raw"), argv
    assert total >= len(steps) // 2
    assert qemu_img("info", "--output=json", over).stdout.count(
        '"backing-filename"') == 0


def test_command_without_progress(tmp, src):
    """io waiting on a FIFO: signalled while it waits, it carries on."""
    fifo = tmp / "fifo"
    os.mkfifo(fifo)
    data = tmp / "chunk"
    data.write_bytes(b"\x42" * 65536)

    def feed(p):
        deadline = time.monotonic() + 5
        while not blocks_sigusr1(p.pid) and time.monotonic() < deadline:
            time.sleep(0.002)
        for _ in range(20):
            p.send_signal(signal.SIGUSR1)
            time.sleep(0.005)
        # Non-blocking, so that an imgtool that never opens the FIFO
        # fails the test instead of hanging it.
        deadline = time.monotonic() + 10
        while True:
            try:
                fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
                break
            except OSError:
                assert p.poll() is None and time.monotonic() < deadline
                time.sleep(0.01)
        os.set_blocking(fd, True)
        os.write(fd, data.read_bytes())
        os.close(fd)

    rc, out, err, _ = run_signalled(
        tmp, "io", "-c", f"write -q -s {fifo} 0 64k", src,
        stdin_feed=feed)
    assert rc == 0, err
    assert err == ""
    qemu_io("-c", "read -P 0x42 0 64k", src)
