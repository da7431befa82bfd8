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
