"""`imgtool help COMMAND` is `COMMAND --help`, and --version says the
version and what the build has: its drivers (built in or modules) and
the optional libraries, checked against what the binary links."""
import os
import re
import subprocess

from conftest import IMGTOOL, ROOT, imgtool


def commands():
    return re.findall(r"^  ([a-z][a-z0-9-]*) ", imgtool("--help").stdout,
                      re.M)


def test_help_command_is_command_help():
    cmds = commands()
    assert len(cmds) > 40
    for cmd in cmds:
        a = imgtool("help", cmd, check=False)
        b = imgtool(cmd, "--help", check=False)
        assert (a.returncode, a.stdout, a.stderr) == \
            (b.returncode, b.stdout, b.stderr), cmd
        assert a.returncode == 0 and a.stdout.startswith("usage: "), cmd


def test_help_unknown_command():
    p = imgtool("help", "frobnicate", check=False)
    assert p.returncode == 1
    # qemu-img's words (issue 15: scripts match on them)
    assert p.stderr == ("imgtool: Command not found: frobnicate\n"
                        "Try 'imgtool --help' for more information\n")


def project_version():
    with open(os.path.join(ROOT, "meson.build")) as f:
        return re.search(r"version : '([^']+)'", f.read()).group(1)


def test_version_lists_the_build():
    out = imgtool("--version").stdout
    lines = out.splitlines()
    assert lines[0] == f"imgtool version {project_version()}"
    assert imgtool("-V").stdout == out
    assert imgtool("serve", "--version").stdout == out
    fields = {l.split(":")[0]: l.split(":")[1].split() for l in lines[1:]}
    assert {"qcow2", "luks", "raw", "file"} <= set(fields["drivers"])
    # a module is listed when the build made it
    nbd_so = os.path.join(os.path.dirname(IMGTOOL), "modules",
                          "imgtool-nbd.so")
    assert ("nbd" in fields["modules"]) == os.path.exists(nbd_so)
    assert "libnbd(module)" in fields["features"]
    # the optional libraries: listed exactly when the binary links them
    ldd = subprocess.run(["ldd", IMGTOOL], capture_output=True,
                         text=True).stdout
    for lib, soname in (("libdeflate", "libdeflate.so"),
                        ("liburing", "liburing.so")):
        assert (lib in fields["features"]) == (soname in ldd), lib
