"""Driver modules (block/core/modules.c): nbd, iscsi and gluster are
loadable modules linking libnbd, libiscsi and libgfapi (and pools' XML
readers one linking libxml2), so

 - a command that never names one of their URLs maps neither the module
   nor its library (the dynamic loader's own account, LD_DEBUG=files, of
   every object it maps, dlopen'ed ones included);
 - a URL loads its own module and library, and no other;
 - pool commands that only define or list pools load nothing; a pool
   that talks to its server reaches it through the module;
 - a module that is not installed, or whose library is missing, is one
   line on stderr naming what is missing.

No server is needed: the URLs point at ports and sockets nobody listens
on, so each command loads what it needs, fails to connect and exits."""
import os
import re
import shutil

import pytest

from conftest import IMGTOOL, one_error_line, run, sanitized

MODULES = {"nbd": "libnbd.so", "iscsi": "libiscsi.so", "gluster": "libgfapi.so"}
URLS = {
    "nbd": "nbd://127.0.0.1:1/x",
    "iscsi": "iscsi://127.0.0.1:1/iqn.2024-01.org.imgtool.test:none/0",
    "gluster": "gluster+unix:///vol/img?socket=/nonexistent/imgtool.sock",
}
# Libraries a plain command must not map.  Sanitizer builds map libtirpc
# from the start on purpose (meson.build says why).
NET_LIBS = ["libnbd.so", "libiscsi.so", "libgfapi.so", "libglusterfs.so"] + \
    ([] if sanitized() else ["libtirpc.so"])


def mapped(*args, exe=IMGTOOL, env=None, rc=None):
    """Runs imgtool with LD_DEBUG=files and returns (process, the base
    names of every object the loader mapped)."""
    e = dict(env or os.environ, LD_DEBUG="files")
    p = run([exe, *args], check=False, env=e)
    if rc is not None:
        assert p.returncode == rc, p.stderr[-3000:]
    names = set()
    for m in re.finditer(r"file=(\S+)\s+\[\d+\];\s+(?:needed|dynamically)",
                         p.stderr):
        names.add(os.path.basename(m.group(1)))
    # what is left once the loader's lines are gone: imgtool's own
    p.stderr = "\n".join(l for l in p.stderr.splitlines()
                         if not re.match(r"\s*\d+:", l))
    return p, names


def has(names, prefix):
    return any(n.startswith(prefix) for n in names)


def test_plain_command_maps_no_module_nor_network_library(tmp_path):
    img = tmp_path / "x.qcow2"
    run([IMGTOOL, "create", "-q", "-f", "qcow2", img, "1M"])
    p, names = mapped("info", img, rc=0)
    assert "virtual size: 1 MiB" in p.stdout
    assert names, "LD_DEBUG listed nothing: the check would prove nothing"
    assert has(names, "libc.so"), names
    for m in MODULES:
        assert f"imgtool-{m}.so" not in names, names
    for lib in NET_LIBS:
        assert not has(names, lib), (lib, names)
    # pools' XML readers are a module too: libxml2 pulls in ICU and
    # libstdc++ (some 1.8 MiB resident)
    assert "imgtool-xml.so" not in names, names
    # (libasan itself needs libstdc++)
    for lib in ["libxml2.so", "libicuuc.so"] + \
            ([] if sanitized() else ["libstdc++.so"]):
        assert not has(names, lib), (lib, names)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_url_loads_its_module_and_library_only(module):
    p, names = mapped("info", URLS[module])
    line = one_error_line(p)
    assert "module" not in line, line      # loaded: the failure is the
    assert f"imgtool-{module}.so" in names, names  # connection's
    assert has(names, MODULES[module]), names
    for other, lib in MODULES.items():
        if other != module:
            assert f"imgtool-{other}.so" not in names, names
            assert not has(names, lib), (lib, names)


def test_driver_option_loads_the_module():
    p, names = mapped("info", "--image-opts",
                      "driver=iscsi,portal=127.0.0.1:1,"
                      "target=iqn.2024-01.org.imgtool.test:none,lun=0")
    assert "127.0.0.1:1" in one_error_line(p)
    assert "imgtool-iscsi.so" in names, names


def pools_env(tmp_path):
    return dict(os.environ, IMGTOOL_CONFIG_DIR=str(tmp_path / "cfg"))


def test_pool_definitions_load_no_module(tmp_path):
    env = pools_env(tmp_path)
    run([IMGTOOL, "pool-define-as", "g", "gluster", "--source-host",
         "127.0.0.1", "--source-name", "vol"], env=env)
    run([IMGTOOL, "pool-define-as", "i", "iscsi-direct", "--source-host",
         "127.0.0.1:1", "--source-dev", "iqn.2024-01.org.imgtool.test:none",
         "--source-initiator", "iqn.2024-01.org.imgtool.test:host"], env=env)
    for args in (["pool-list", "--all"], ["pool-dumpxml", "g"],
                 ["pool-dumpxml", "i"]):
        p, names = mapped(*args, env=env, rc=0)
        # reading the definitions is the XML module's work, and only that
        assert "imgtool-xml.so" in names and has(names, "libxml2.so"), names
        assert not any(n.startswith("imgtool-") and n != "imgtool-xml.so"
                       for n in names), (args, names)
        for lib in NET_LIBS:
            assert not has(names, lib), (args, lib, names)
    # starting the iSCSI pool asks the target: through the module
    p, names = mapped("pool-start", "i", env=env)
    assert "127.0.0.1:1" in one_error_line(p)
    assert "imgtool-iscsi.so" in names and has(names, "libiscsi.so"), names
    assert "imgtool-gluster.so" not in names, names


@pytest.fixture
def lone_imgtool(tmp_path):
    """A copy of imgtool with no modules directory next to it (and none
    in $IMGTOOL_MODULE_DIR): as if only the executable were installed."""
    d = tmp_path / "bin"
    d.mkdir()
    exe = d / "imgtool"
    shutil.copy2(IMGTOOL, exe)
    env = dict(os.environ)
    env.pop("IMGTOOL_MODULE_DIR", None)
    return exe, env


def test_missing_module_is_one_line(lone_imgtool, tmp_path):
    exe, env = lone_imgtool
    for module, url in URLS.items():
        p = run([exe, "info", url], check=False, env=env)
        line = one_error_line(p)
        assert (f"the {module} driver's module imgtool-{module}.so is not "
                f"installed (looked in {exe.parent}/modules") in line, line
    # by driver name too, and creating an image on a URL
    p = run([exe, "info", "--image-opts", "driver=gluster,volume=v,path=f,"
             "server.0.type=unix,server.0.path=/nonexistent"],
            check=False, env=env)
    assert "imgtool-gluster.so is not installed" in one_error_line(p)
    p = run([exe, "create", "-q", "-f", "qcow2",
             "gluster://127.0.0.1/vol/new.qcow2", "1M"], check=False, env=env)
    assert "imgtool-gluster.so is not installed" in one_error_line(p)


def test_missing_module_fails_pool_commands_in_one_line(lone_imgtool,
                                                        tmp_path):
    exe, env = lone_imgtool
    env["IMGTOOL_CONFIG_DIR"] = str(tmp_path / "cfg")
    # without the XML module no pool definition can be read at all
    p = run([exe, "pool-define-as", "d", "dir", "--target", tmp_path],
            check=False, env=env)
    assert "the xml module imgtool-xml.so is not installed" in \
        one_error_line(p)
    # with it (alone), each network pool needs its own module
    only_xml = tmp_path / "only-xml"
    only_xml.mkdir()
    shutil.copy2(os.path.join(os.path.dirname(IMGTOOL), "modules",
                              "imgtool-xml.so"), only_xml)
    env["IMGTOOL_MODULE_DIR"] = str(only_xml)
    run([exe, "pool-define-as", "g", "gluster", "--source-host",
         "127.0.0.1", "--source-name", "vol"], env=env)
    run([exe, "pool-define-as", "i", "iscsi-direct", "--source-host",
         "127.0.0.1:1", "--source-dev", "iqn.2024-01.org.imgtool.test:none",
         "--source-initiator", "iqn.2024-01.org.imgtool.test:host"], env=env)
    p = run([exe, "pool-start", "g"], check=False, env=env)
    assert "imgtool-gluster.so is not installed" in one_error_line(p)
    p = run([exe, "pool-start", "i"], check=False, env=env)
    assert "imgtool-iscsi.so is not installed" in one_error_line(p)


@pytest.mark.parametrize("module,lib", [("iscsi", b"libiscsi.so.7"),
                                        ("gluster", b"libgfapi.so.0")])
def test_missing_library_is_one_line(module, lib, tmp_path):
    """The real module, its library's name changed in its dynamic section
    (same length, one letter), so the loader cannot find the library:
    what a host without libiscsi7 or libgfapi0 meets."""
    src = os.path.join(os.path.dirname(IMGTOOL), "modules",
                       f"imgtool-{module}.so")
    data = open(src, "rb").read()
    assert data.count(lib + b"\0") >= 1
    gone = lib[:7] + b"X" + lib[8:]
    (tmp_path / f"imgtool-{module}.so").write_bytes(
        data.replace(lib + b"\0", gone + b"\0"))
    env = dict(os.environ, IMGTOOL_MODULE_DIR=str(tmp_path))
    p = run([IMGTOOL, "info", URLS[module]], check=False, env=env)
    line = one_error_line(p)
    # named by the command first, as qemu-img names an image it cannot
    # open ("Could not open 'URL': Unknown protocol ..." in QEMU)
    assert line.startswith(f"imgtool: Could not open '{URLS[module]}': "
                           f"cannot load the {module} driver: "
                           f"{gone.decode()}: cannot open shared object "
                           "file"), line
    assert "package lib" in line, line


def test_module_dir_is_searched_first_and_a_broken_module_says_so(tmp_path):
    (tmp_path / "imgtool-nbd.so").write_bytes(b"not an ELF file\n" * 64)
    env = dict(os.environ, IMGTOOL_MODULE_DIR=str(tmp_path))
    p = run([IMGTOOL, "info", URLS["nbd"]], check=False, env=env)
    line = one_error_line(p)
    assert line.startswith(f"imgtool: Could not open '{URLS['nbd']}': "
                           "cannot load the nbd driver: "
                           f"{tmp_path}/imgtool-nbd.so: "), line
