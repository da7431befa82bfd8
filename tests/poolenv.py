"""Helpers for the storage pool tests (tests/test_pool*.py).

Every test gets its own store (IMGTOOL_CONFIG_DIR in a temp dir), so
tests never see each other's pools.  `virsh -c test:///FILE` (libvirt's
test driver, in-process, no daemon) is the oracle for virsh's layouts;
virt-xml-validate checks every XML imgtool writes.
"""
import json
import os
import shutil
import subprocess

import pytest

from conftest import IMGTOOL, run

SCHEMAS = "/usr/share/libvirt/schemas"


class Pools:
    """Runs imgtool with one store."""

    def __init__(self, cfg, extra_env=None):
        self.cfg = str(cfg)
        self.env = dict(os.environ, IMGTOOL_CONFIG_DIR=self.cfg,
                        **(extra_env or {}))

    def __call__(self, *args, rc=0, check=True, input=None, env=None):
        e = dict(self.env, **(env or {}))
        return run([IMGTOOL, *args], rc=rc, check=check, input=input, env=e)

    def json(self, *args, **kw):
        return json.loads(self(*args, "--output=json", **kw).stdout)

    def fails(self, *args, **kw):
        """The command fails with exactly one line on stderr; returns it."""
        p = self(*args, check=False, **kw)
        assert p.returncode != 0, f"{args}: succeeded\n{p.stdout}"
        lines = [l for l in p.stderr.splitlines() if l.strip()]
        assert len(lines) == 1, f"{args}: stderr {p.stderr!r}"
        assert lines[0].startswith("imgtool: "), lines[0]
        return lines[0]

    def vols(self, pool):
        return {v["name"]: v for v in self.json("vol-list", pool)}


@pytest.fixture
def pools(tmp_path):
    return Pools(tmp_path / "cfg")


@pytest.fixture
def dir_pool(pools, tmp_path):
    """An active directory pool "p" in tmp_path/pool."""
    target = tmp_path / "pool"
    pools("pool-define-as", "p", "dir", "--target", target)
    pools("pool-build", "p")
    pools("pool-start", "p")
    return target


def validate(path, schema):
    p = subprocess.run(["virt-xml-validate", str(path), schema],
                       capture_output=True, text=True)
    assert p.returncode == 0, f"{path}: {p.stdout}{p.stderr}\n" + \
        open(path).read()


def validate_text(tmp_path, text, schema, name="x.xml"):
    f = tmp_path / name
    f.write_text(text)
    validate(f, schema)


def virsh(node_xml, *args):
    """virsh on libvirt's test driver loaded from node_xml; stdout."""
    p = subprocess.run(["virsh", "-c", f"test://{node_xml}", *args],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return p.stdout


def have(*tools):
    return all(shutil.which(t) for t in tools)
