"""The build tree of $IMGTOOL installed into a scratch directory (meson
install --destdir), as a package build installs it: for the tests of
what gets installed (the library, the units, the package contents)."""
import glob
import json
import os
import subprocess

from conftest import IMGTOOL

BUILD = os.path.dirname(os.path.abspath(IMGTOOL))


def meson_install(dest):
    """Installs BUILD under dest (no rebuild); returns the prefix there."""
    p = subprocess.run(["meson", "install", "-C", BUILD, "--no-rebuild",
                        "--quiet", "--destdir", str(dest)],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    return str(dest) + build_option("prefix")


def build_option(name):
    p = subprocess.run(["meson", "introspect", "--buildoptions", BUILD],
                       capture_output=True, text=True, check=True)
    for o in json.loads(p.stdout):
        if o["name"] == name:
            return o["value"]
    raise KeyError(name)


def c_compiler():
    """The build's C compiler (argv list) and whether it sanitizes."""
    p = subprocess.run(["meson", "introspect", "--targets", BUILD],
                       capture_output=True, text=True, check=True)
    for t in json.loads(p.stdout):
        for src in t.get("target_sources", []):
            if src.get("language") == "c":
                return (src["compiler"],
                        build_option("b_sanitize") != "none")
    raise AssertionError("no C compiler in the build's targets")


def find_one(root, pattern):
    hits = glob.glob(os.path.join(root, pattern), recursive=True)
    assert len(hits) == 1, (pattern, hits)
    return hits[0]
