"""scripts/nightly: the documented nightly backup job runs as shipped
(offline images and a raw volume, a running VM's volume served by imgtool
serve, a job that fails without stopping the others, retention and
verify after each backup), and its systemd units pass systemd-analyze
verify."""
import os
import shutil
import subprocess

import pytest

from backupenv import points
from conftest import IMGTOOL, ROOT, Serve, nbd_uri, qemu_img, qemu_io

SCRIPT = os.path.join(ROOT, "scripts", "nightly", "nightly-backup")


def run_nightly(conf):
    return subprocess.run([SCRIPT, str(conf)], capture_output=True,
                          text=True, timeout=300)


def test_nightly_backup_script(tmp_path):
    web = tmp_path / "web.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", web, "32M")
    qemu_io("-f", "qcow2", "-c", "write -P 1 0 2M", web)
    data = tmp_path / "data.raw"
    qemu_img("create", "-q", "-f", "raw", data, "16M")
    qemu_io("-f", "raw", "-c", "write -P 2 1M 1M", data)
    # A running VM's volume, served by imgtool serve (as `imgtool run`
    # does), written through its export between nights.
    vol = tmp_path / "files.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", vol, "16M")
    nbd, qmp = tmp_path / "nbd.sock", tmp_path / "qmp.sock"
    serve = Serve(tmp_path, "--nbd", nbd, "-w", "--name", "files", "--qmp",
                  qmp, vol).start()
    root = tmp_path / "backups"
    conf = tmp_path / "backup.conf"
    conf.write_text(f"""# test configuration
REPO_ROOT={root}
KEEP="--keep-last 2"
VERIFY_DAYS="Mon Tue Wed Thu Fri Sat Sun"
FULL_DAYS=""
IMGTOOL={IMGTOOL}
image web {web}
image data -f raw {data}
image broken {tmp_path / 'missing.qcow2'}
vm files {qmp} files
""")
    try:
        nights(conf, web, nbd)
        for name in ("web", "data", "files"):
            assert len(points(root / name)) == 2    # pruned to --keep-last 2
        assert qemu_img("compare", root / "web" / points(root / "web")[-1][
            "disks"][0]["file"], web).returncode == 0
        assert qemu_img("compare", "-F", "raw", root / "files" / points(
            root / "files")[-1]["disks"][0]["file"],
            nbd_uri(nbd, "files")).returncode == 0
    finally:
        serve.kill()
        serve.errfile.close()


def nights(conf, web, nbd):
    for night in range(3):
        qemu_io("-f", "qcow2", "-c", f"write -P {night + 5} 4M 64k", web)
        qemu_io("-f", "raw", "-c", f"write -P {night + 5} 1M 64k",
                nbd_uri(nbd, "files"))
        p = run_nightly(conf)
        assert p.returncode == 1, p.stdout + p.stderr
        lines = p.stdout.splitlines()
        ok = [l for l in lines if l.startswith("ok ")]
        failed = [l for l in lines if l.startswith("FAILED ")]
        assert [l.split()[1] for l in ok] == ["web", "data", "files"], \
            p.stdout
        assert len(failed) == 1 and failed[0].startswith(
            "FAILED broken: imgtool: "), p.stdout
        expect = "full" if night == 0 else "incremental"
        assert all(l.split()[3] == expect for l in ok), p.stdout


@pytest.mark.skipif(not shutil.which("systemd-analyze"),
                    reason="needs systemd-analyze")
def test_nightly_units_verify(tmp_path):
    d = os.path.join(ROOT, "scripts", "nightly")
    for unit in ("imgtool-backup.service", "imgtool-backup.timer"):
        shutil.copy(os.path.join(d, unit), tmp_path / unit)
    # The service's ExecStart must exist for verify: point it at the
    # script in the tree.
    svc = tmp_path / "imgtool-backup.service"
    svc.write_text(svc.read_text().replace("/usr/local/sbin/nightly-backup",
                                           SCRIPT))
    p = subprocess.run(["systemd-analyze", "verify", "--man=no",
                        str(tmp_path / "imgtool-backup.timer"), str(svc)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "imgtool-backup" not in p.stderr, p.stderr
