"""A QEMU process for the online backup tests, driven through QMP.

Without a guest (paused with -S) it is a block layer that takes writes
through HMP's qemu-io (the devices share their write permission), which
is fast and deterministic; with a guest (tests/guest.py's kernel and
initramfs) its /test.sh writes.  What the VM's disks hold at a moment
is read through an NBD export of QEMU's own (qemu-img convert), so the
oracle is what QEMU itself serves, cached metadata included.
"""
import json
import os
import signal
import socket
import subprocess
import threading
import time

from conftest import qemu_img


class Vm:
    def __init__(self, tmp, disks, guest=None, extra=()):
        """disks: [(path, fmt, id)] as virtio-blk devices with node names
        d0, d1, ...; guest: (kernel, initrd) to boot, else paused."""
        self.tmp = str(tmp)
        # QEMU serves one client per QMP socket: one for the test, one
        # for imgtool.
        self.qmp_path = os.path.join(self.tmp, "qmp.sock")
        self.test_qmp = os.path.join(self.tmp, "test-qmp.sock")
        self.disks = disks
        self.lines = []
        self.lock = threading.Lock()
        argv = ["qemu-system-x86_64", "-nodefaults", "-no-user-config",
                "-nographic", "-machine", "q35", "-accel", "tcg", "-m", "256",
                "-qmp", f"unix:{self.qmp_path},server=on,wait=off",
                "-qmp", f"unix:{self.test_qmp},server=on,wait=off"]
        for i, (path, fmt, dev) in enumerate(disks):
            argv += ["-blockdev", f"driver=file,filename={path},"
                     f"node-name=f{i}",
                     "-blockdev", f"driver={fmt},file=f{i},node-name=d{i}",
                     "-device", f"virtio-blk-pci,drive=d{i},id={dev}" +
                     ("" if guest else ",share-rw=on")]
        if guest:
            kernel, initrd = guest
            argv += ["-cpu", "max", "-smp", "1", "-kernel", kernel,
                     "-initrd", initrd, "-append",
                     "console=ttyS0 panic=-1 quiet", "-serial", "stdio",
                     "-no-reboot"]
        else:
            argv += ["-S", "-display", "none"]
        argv += list(extra)
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self.sock = None
        for _ in range(200):
            try:
                s = socket.socket(socket.AF_UNIX)
                s.connect(self.test_qmp)
                self.sock = s
                break
            except OSError:
                s.close()
                if self.proc.poll() is not None:
                    break
                time.sleep(0.05)
        if not self.sock:
            self.stop()
            raise RuntimeError("QEMU did not start: " + self.output())
        self.f = self.sock.makefile("rw")
        self.f.readline()
        self.qmp("qmp_capabilities")

    def _read(self):
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").rstrip("\r\n")
            with self.lock:
                self.lines.append(line)

    def output(self):
        with self.lock:
            return "\n".join(self.lines)

    def console(self):
        with self.lock:
            return list(self.lines)

    def qmp(self, cmd, **args):
        req = {"execute": cmd}
        if args:
            req["arguments"] = args
        self.f.write(json.dumps(req) + "\n")
        self.f.flush()
        while True:
            r = json.loads(self.f.readline())
            if "event" in r:
                continue
            if "error" in r:
                raise RuntimeError(f"{cmd}: {r['error']['desc']}")
            return r["return"]

    def hmp(self, line):
        out = self.qmp("human-monitor-command", **{"command-line": line})
        assert out == "" or "wrote" in out, out
        return out

    def write(self, node, pattern, off, length):
        """Writes through the device's own block backend (-d), as the
        guest does: through a backup's copy-before-write filter too."""
        dev = self.disks[int(node[1:])][2]
        self.hmp(f'qemu-io -d {dev}/virtio-backend '
                 f'"write -P {pattern} {off} {length}"')

    def snapshot(self, node, out):
        """What node reads now, as a raw file at out (through an NBD
        export of QEMU's)."""
        sock = os.path.join(self.tmp, "oracle.sock")
        self.qmp("nbd-server-start", addr={"type": "unix",
                                           "data": {"path": sock}})
        try:
            self.qmp("block-export-add", type="nbd", id="oracle", name="oracle",
                     **{"node-name": node}, writable=False)
            if os.path.exists(out):
                os.unlink(out)
            qemu_img("convert", "-f", "raw", "-O", "raw",
                     f"nbd+unix:///oracle?socket={sock}", out)
            self.qmp("block-export-del", id="oracle")
        finally:
            for _ in range(100):
                try:
                    self.qmp("nbd-server-stop")
                    break
                except RuntimeError:
                    time.sleep(0.05)
        return out

    def bitmaps(self, node):
        for b in self.qmp("query-named-block-nodes", flat=True):
            if b["node-name"] == node:
                return {x["name"]: x for x in b.get("dirty-bitmaps", [])
                        if "name" in x}
        return {}

    def leftovers(self):
        """Anything a backup put in QEMU and should have removed."""
        out = []
        out += [e["id"] for e in self.qmp("query-block-exports")]
        out += [j["device"] for j in self.qmp("query-block-jobs")]
        for n in self.qmp("query-named-block-nodes", flat=True):
            if n["node-name"].startswith("imgtool-"):
                out.append(n["node-name"])
            for b in n.get("dirty-bitmaps", []):
                if b.get("name", "").endswith(".frozen"):
                    out.append(b["name"])
        return out

    def wait_console(self, text, timeout=300):
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if any(text in l for l in self.console()):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"no '{text}' on the console:\n" +
                             self.output()[-3000:])

    def quit(self):
        """A clean shutdown: QEMU stores its persistent bitmaps."""
        try:
            self.qmp("quit")
        except (OSError, ValueError, json.JSONDecodeError):
            pass
        self.proc.wait(timeout=60)
        self.stop()

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.stop()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.sock:
            self.sock.close()
            self.sock = None
