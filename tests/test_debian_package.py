"""The Debian packages: what debian/ puts in them, and that they install
into a scratch root, run, and purge without leaving files.

Two paths:
  - always (seconds): the built tree is installed with meson (as
    dh_auto_install does), split into packages by debian/*.install and
    *.examples, given control files by dpkg-gencontrol from
    debian/control and debian/changelog, and built with dpkg-deb.  The
    tree's prefix is the build's (e.g. /usr/local), re-rooted to /usr,
    and the units are made from systemd/*.in with Debian's paths, as
    meson's configure_file makes them.
  - IMGTOOL_TEST_DEB=1 (about a minute and a half on 2 cores): the real
    `dpkg-buildpackage -us -uc -b` on a copy of the source tree, lintian
    (no errors), and the .debs with debhelper's maintainer scripts
    installed and purged in a scratch root.

The scratch root is a dpkg database in a directory (dpkg --root); the
maintainer scripts run outside it (--force-script-chrootless, with
DPKG_ROOT set, which debhelper's snippets honour), and its libraries are
the host's (--force-depends).
"""
import glob
import os
import shutil
import subprocess

import pytest

from conftest import ROOT, run
from installtree import meson_install

pytestmark = pytest.mark.skipif(not shutil.which("dpkg-deb"),
                                reason="dpkg-dev not installed")

PACKAGES = ("imgtool", "libimgtool0", "libimgtool-dev")
DEBIAN = os.path.join(ROOT, "debian")


def debian_list(name):
    path = os.path.join(DEBIAN, name)
    if not os.path.exists(path):
        return []
    return [l.strip() for l in open(path) if l.strip()
            and not l.startswith("#")]


def stage(dest, prefix, tmp):
    """The tree as debian/tmp would hold it after dh_auto_install."""
    t = tmp / "debian-tmp"
    shutil.copytree(str(dest) + prefix, t / "usr", symlinks=True)
    # the units and the completion where debian/rules puts them
    shutil.rmtree(t / "usr" / "lib" / "systemd")
    unitdir = t / "lib" / "systemd" / "system"
    unitdir.mkdir(parents=True)
    for src in glob.glob(os.path.join(ROOT, "systemd", "*.service.in")):
        text = open(src).read().replace("@bindir@", "/usr/bin").replace(
            "@sysconfdir@", "/etc")
        (unitdir / os.path.basename(src)[:-3]).write_text(text)
    return t


def copy_into(src_root, pattern, pkgdir):
    hits = glob.glob(os.path.join(src_root, pattern))
    assert hits, f"debian pattern {pattern} matches nothing"
    for h in hits:
        rel = os.path.relpath(h, src_root)
        target = os.path.join(pkgdir, rel)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if os.path.isdir(h) and not os.path.islink(h):
            shutil.copytree(h, target, symlinks=True, dirs_exist_ok=True)
        else:
            shutil.copy2(h, target, follow_symlinks=False)


def build_debs(staged, tmp):
    """One .deb per package of debian/control, as dh would split them."""
    out = tmp / "debs"
    out.mkdir()
    debs = {}
    for pkg in PACKAGES:
        pkgdir = tmp / "pkg" / pkg
        pkgdir.mkdir(parents=True)
        for pattern in debian_list(pkg + ".install"):
            copy_into(staged, pattern, pkgdir)
        ex = pkgdir / "usr" / "share" / "doc" / pkg / "examples"
        for pattern in debian_list(pkg + ".examples"):
            for h in glob.glob(os.path.join(ROOT, pattern)):
                ex.mkdir(parents=True, exist_ok=True)
                shutil.copy2(h, ex)
        doc = pkgdir / "usr" / "share" / "doc" / pkg
        doc.mkdir(parents=True, exist_ok=True)
        shutil.copy2(os.path.join(DEBIAN, "copyright"), doc)
        # dpkg-gencontrol reads debian/ in the source tree; its list of
        # files and substvars go to tmp, not there
        (pkgdir / "DEBIAN").mkdir()
        p = subprocess.run(["dpkg-gencontrol", f"-p{pkg}", f"-P{pkgdir}",
                            f"-f{tmp / 'files'}", f"-T{tmp / 'substvars'}",
                            "-Vshlibs:Depends=libc6", "-Vmisc:Depends="],
                           cwd=ROOT, capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
        deb = out / f"{pkg}.deb"
        run(["dpkg-deb", "--root-owner-group", "-Zgzip", "-z1", "--build",
             pkgdir, deb])
        debs[pkg] = str(deb)
    return debs


def contents(deb):
    listing = run(["dpkg-deb", "-c", deb]).stdout.splitlines()
    return {l.split()[5].lstrip(".") for l in listing}


def check_contents(debs):
    main = contents(debs["imgtool"])
    for path in ("/usr/bin/imgtool", "/usr/share/man/man1/imgtool.1",
                 "/usr/share/bash-completion/completions/imgtool",
                 "/lib/systemd/system/imgtool-serve@.service",
                 "/lib/systemd/system/imgtool-pools-autostart.service",
                 "/usr/share/doc/imgtool/copyright"):
        assert path in main or path + ".gz" in main, path
    assert any(p.endswith("/imgtool/imgtool-nbd.so") for p in main)
    lib = contents(debs["libimgtool0"])
    assert any(p.endswith("/libimgtool.so.0") for p in lib)
    assert not any(p.endswith("/libimgtool.so") for p in lib)
    dev = contents(debs["libimgtool-dev"])
    assert "/usr/include/libimgtool.h" in dev
    assert any(p.endswith("/pkgconfig/libimgtool.pc") for p in dev)
    assert any(p.endswith("/examples/imgmap.c") for p in dev)
    info = run(["dpkg-deb", "-f", debs["libimgtool-dev"],
                "Depends"]).stdout
    assert "libimgtool0 (= " in info


def scratch_root(tmp):
    r = tmp / "root"
    (r / "var" / "lib" / "dpkg" / "info").mkdir(parents=True)
    (r / "var" / "lib" / "dpkg" / "updates").mkdir()
    (r / "var" / "lib" / "dpkg" / "status").write_text("")
    return r


def dpkg(root, *args):
    return run(["dpkg", f"--root={root}", "--force-script-chrootless",
                "--force-depends", "--log=/dev/null", *args],
               env=dict(os.environ, PATH="/usr/sbin:/usr/bin:/sbin:/bin"))


def files_under(root):
    out = set()
    for d, _, names in os.walk(root):
        if d.startswith(str(root / "var" / "lib" / "dpkg")):
            continue
        out |= {os.path.join(d, n) for n in names}
    return out


def install_run_purge(debs, tmp):
    root = scratch_root(tmp)
    dpkg(root, "-i", *debs.values())
    status = run(["dpkg-query", f"--admindir={root}/var/lib/dpkg", "-W",
                  "-f", "${Package} ${db:Status-Abbrev}\n"]).stdout
    assert sorted(status.split("\n")[:-1]) == sorted(
        f"{p} ii " for p in PACKAGES)
    exe = root / "usr" / "bin" / "imgtool"
    v = run([exe, "--version"]).stdout
    assert v.startswith("imgtool version ")
    # the installed completion, as bash-completion would load it
    comp = root / "usr/share/bash-completion/completions/imgtool"
    p = run(["bash", "-c",
             'source /usr/share/bash-completion/bash_completion; '
             'source "$1"; COMP_WORDS=(imgtool pool-li); COMP_CWORD=1; '
             'COMP_LINE="imgtool pool-li"; COMP_POINT=15; _imgtool; '
             'echo "${COMPREPLY[@]}"', "x", comp],
            env=dict(os.environ, PATH=f"{exe.parent}:{os.environ['PATH']}"))
    assert p.stdout.split() == ["pool-list"]
    installed = files_under(root)
    assert str(exe) in installed
    dpkg(root, "--purge", *PACKAGES)
    left = files_under(root)
    assert left == set(), sorted(left)[:10]
    return v


@pytest.mark.skipif(not os.path.exists("/usr/share/bash-completion/"
                                       "bash_completion"),
                    reason="bash-completion not installed")
def test_packages_from_the_built_tree(tmp):
    dest = tmp / "install"
    prefix = meson_install(dest)[len(str(dest)):]
    staged = stage(dest, prefix, tmp)
    debs = build_debs(staged, tmp)
    check_contents(debs)
    install_run_purge(debs, tmp)


@pytest.mark.skipif(os.environ.get("IMGTOOL_TEST_DEB") != "1",
                    reason="the full package build: set IMGTOOL_TEST_DEB=1")
def test_dpkg_buildpackage_lintian_install_remove(tmp):
    src = tmp / "src" / "imgtool"
    files = run(["git", "-C", ROOT, "ls-files", "-z"]).stdout.split("\0")
    for f in filter(None, files):
        s = os.path.join(ROOT, f)
        if not os.path.lexists(s):
            continue        # deleted in the work tree
        os.makedirs(os.path.dirname(src / f), exist_ok=True)
        shutil.copy2(s, src / f, follow_symlinks=False)
    p = subprocess.run(["dpkg-buildpackage", "-us", "-uc", "-b"], cwd=src,
                       capture_output=True, text=True, timeout=3600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    debs = {pkg: glob.glob(str(tmp / "src" / f"{pkg}_*.deb"))[0]
            for pkg in PACKAGES}
    check_contents(debs)
    changes = glob.glob(str(tmp / "src" / "imgtool_*.changes"))[0]
    lint = subprocess.run(["lintian", changes], capture_output=True,
                          text=True)
    errors = [l for l in lint.stdout.splitlines() if l.startswith("E:")]
    assert errors == [], lint.stdout
    root = scratch_root(tmp)
    dpkg(root, "-i", *debs.values())
    # debhelper's postinst enabled the autostart oneshot (not the template)
    wants = root / "etc/systemd/system/multi-user.target.wants"
    assert os.listdir(wants) == ["imgtool-pools-autostart.service"]
    exe = root / "usr" / "bin" / "imgtool"
    assert run([exe, "--version"]).stdout.startswith("imgtool version ")
    # the units as installed, with the paths they name
    units = root / "lib" / "systemd" / "system"
    for u in os.listdir(units):
        text = (units / u).read_text()
        assert "/usr/bin/imgtool " in text
    dpkg(root, "--purge", *PACKAGES)
    assert files_under(root) == set()
