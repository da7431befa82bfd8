"""The README's main job, scripts/demo.sh, runs to the end against the
binary under test (it cross-checks every step with qemu-img itself)."""
import os

from conftest import IMGTOOL, ROOT, run


def test_demo_script(tmp_path):
    env = dict(os.environ, IMGTOOL=IMGTOOL)
    p = run(["bash", os.path.join(ROOT, "scripts", "demo.sh"), tmp_path / "demo"],
            env=env)
    assert "demo: OK" in p.stdout
    assert "Images are identical." in p.stdout
    # the demo runs on a directory pool in its folder, by volume names
    assert "Pool demo started" in p.stdout
    assert "overlay.qcow2" in p.stdout and "vol:demo/flat.qcow2" in p.stdout
    assert (tmp_path / "demo" / "storage" / "demo.xml").exists()
