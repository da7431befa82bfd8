"""Running a tiny guest under `imgtool run` for the vhost-user tests and
benchmarks: a shell library for the guest's /test.sh, and a handle on the
running guest that reads its console line by line with timeouts and
always cleans up (the run, its daemon and QEMU) even when a test fails.

A test judges the guest by the lines /test.sh prints after checking its
data (GUEST_OK), never by exit codes.
"""
import os
import select
import signal
import subprocess
import time

import guest
from conftest import IMGTOOL

# Shell functions every guest script gets.
#   pat BYTE KIB FILE   FILE = KIB KiB of the byte (octal, e.g. 104)
#   same A B            cmp, printing nothing
#   wait_for CMD...     retries a command for up to 30 s (its arguments
#                       are expanded once: test changing values with a
#                       function such as size_is DEV SECTORS)
GUEST_LIB = r"""
pat() { dd if=/dev/zero bs=1k count=$2 2>/dev/null | tr '\000' "\\$1" > $3; }
same() { cmp -s "$1" "$2"; }
wait_for() {
    i=0
    while [ $i -lt 150 ]; do
        "$@" && return 0
        sleep 0.2
        i=$((i + 1))
    done
    return 1
}
fail() { echo "GUEST-FAIL $*"; }
size_is() { [ "$(cat /sys/block/$1/size)" = "$2" ]; }
"""

GUEST_OK = "GUEST-VERIFIED"
BOOT_TIMEOUT = int(os.environ.get("IMGTOOL_GUEST_TIMEOUT", "180"))


def skip_reason():
    return guest.available()


class Guest:
    """`imgtool run` of a guest running `script`, with disks given as
    --disk specs.  Use as a context manager."""

    def __init__(self, tmp_path, script, disks, run_dir=None, cpus=1,
                 memory="512M", extra_run=(), env=None, files=None):
        kernel, base = guest.build()
        initrd = guest.initrd_with(base, GUEST_LIB + script,
                                   str(tmp_path / "initrd"), files=files)
        self.run_dir = run_dir
        argv = [IMGTOOL, "run", "--kernel", kernel, "--initrd", initrd,
                "--append", guest.APPEND, "--memory", memory,
                "--cpus", str(cpus)]
        for d in disks:
            argv += ["--disk", d]
        if run_dir:
            argv += ["--run-dir", str(run_dir)]
        argv += list(extra_run)
        argv += ["--", "-no-reboot"]
        self.argv = argv
        self.log = []
        self.stderr_path = tmp_path / "run.stderr"
        self._stderr = open(self.stderr_path, "w")
        self.p = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                  stdout=subprocess.PIPE,
                                  stderr=self._stderr, env=env)
        self._buf = b""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.p.stdout.close()
        self._stderr.close()

    def stderr(self):
        return self.stderr_path.read_text(errors="replace")

    def lines_until(self, marker, timeout=BOOT_TIMEOUT):
        """Reads console lines until one contains marker; returns them.
        Fails the test (with the console so far) on timeout or exit."""
        deadline = time.monotonic() + timeout
        got = []
        while True:
            while b"\n" in self._buf:
                line, self._buf = self._buf.split(b"\n", 1)
                text = line.decode(errors="replace").rstrip("\r")
                self.log.append(text)
                got.append(text)
                if marker in text:
                    return got
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no '{marker}' from the guest in "
                                     f"{timeout} s:\n{self.console()}")
            r, _, _ = select.select([self.p.stdout], [], [], min(left, 1))
            if r:
                chunk = os.read(self.p.stdout.fileno(), 65536)
                if not chunk:
                    raise AssertionError(
                        f"the guest ended before '{marker}' (exit "
                        f"{self.p.wait()}):\n{self.console()}")
                self._buf += chunk

    def finish(self, timeout=BOOT_TIMEOUT):
        """Waits for the guest to power off; returns (exit code, lines)."""
        got = self.lines_until("GUEST-END", timeout)
        rc = self.p.wait(timeout=60)
        return rc, got

    def console(self):
        return "\n".join(self.log[-80:]) + "\n--- imgtool run stderr:\n" + \
            self.stderr()

    def daemon_pids(self):
        """The serve daemon(s) imgtool run started (its children that
        are imgtool serve)."""
        pids = []
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
            if ppid == self.p.pid and len(cmd) > 1 and cmd[1] == b"serve":
                pids.append(int(d))
        return pids
