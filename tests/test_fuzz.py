"""Short libFuzzer runs of the harnesses in fuzz/ (docs/reliability.md):
the qcow2 and LUKS parsers, the NBD server, the vhost-user virtqueue
walker and the SCSI target.

fuzz/build.sh builds the harnesses with clang, ASan and UBSan into
build-fuzz/ (or $IMGTOOL_FUZZ_BUILD).  Each harness then:
  - runs every saved crasher in fuzz/crashers/ and every seed: none may
    crash, leak or trip a sanitizer any more;
  - fuzzes from the committed seeds plus the larger generated ones for
    IMGTOOL_FUZZ_SECONDS (default 15) with a fixed seed; any crash fails
    the test and names the input libFuzzer saved.
Skipped when clang or its libFuzzer runtime is missing.
"""
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.environ.get("IMGTOOL_FUZZ_BUILD", os.path.join(ROOT, "build-fuzz"))
SECONDS = int(os.environ.get("IMGTOOL_FUZZ_SECONDS", "15"))
HARNESSES = ["qcow2_read", "qcow2_write", "qcow2_snapshot", "qcow2_bitmap",
             "luks_header", "nbd_server", "virtqueue", "scsi_cdb"]
# Harnesses whose inputs are not whole images have their own committed
# corpus (fuzz/corpus/NAME); the others share the qcow2 seeds.
OWN_CORPUS = {"qcow2_snapshot": "qcow2-snapshot",
              "qcow2_bitmap": "qcow2-bitmap",
              "luks_header": "luks",
              "nbd_server": "nbd",
              "virtqueue": "virtqueue",
              "scsi_cdb": "scsi-cdb"}
CRASHERS = os.path.join(ROOT, "fuzz", "crashers")
# -malloc_limit_mb bounds what one input may make a harness allocate at
# once (hostile headers must not buy memory); -rss_limit_mb only catches
# growth across inputs.
# -close_fd_mask=3 silences the harnesses' own output (check reports on
# fuzzed images: 86 MiB of them from 15 s of the bitmap harness); libFuzzer
# and the sanitizers still report on a duplicate of stderr.
LIBFUZZER_ARGS = ["-timeout=10", "-rss_limit_mb=2048", "-malloc_limit_mb=512",
                  "-max_len=65536", "-print_final_stats=1", "-close_fd_mask=3"]


def _spawn(harness, *args):
    """argv running harness from a fresh small process.  Linux carries a
    process's peak RSS across exec, and Python starts children with vfork,
    so a harness exec'd straight from a pytest worker that once held 2 GiB
    reports that as its own peak: libFuzzer then calls the first input out
    of memory (CI: 'used: 2206Mb' in two harnesses in a row, 2117 in
    another run).  A child forked by sh starts its count from sh's."""
    return ["sh", "-c", '"$@"; rc=$?; exit $rc', "sh", harness, *args]


def _fuzz_env():
    """ASan's default 256 MiB quarantine of freed blocks, with the
    allocator's fragmentation around the LUKS harness's 2 MiB areas, grows
    a harness's RSS with the inputs it runs while little is live
    (measured: 784 MiB after 180k inputs and still rising, 197 MiB flat
    with 32 MiB).  32 MiB still holds thousands of freed blocks for
    use-after-free checks."""
    opts = [o for o in os.environ.get("ASAN_OPTIONS", "").split(":")
            if o and not o.startswith("quarantine_size_mb=")]
    return dict(os.environ, ASAN_OPTIONS=":".join(opts +
                                                  ["quarantine_size_mb=32"]))


def _have_libfuzzer():
    if not shutil.which("clang"):
        return False
    p = subprocess.run(["clang", "-print-file-name=libclang_rt.fuzzer-x86_64.a"],
                       capture_output=True, text=True)
    path = p.stdout.strip()
    if os.path.isabs(path) and os.path.exists(path):
        return True
    # Newer layouts put it under a target triple directory.
    p = subprocess.run(["clang", "-print-runtime-dir"], capture_output=True,
                       text=True)
    d = p.stdout.strip()
    return os.path.exists(os.path.join(d, "libclang_rt.fuzzer.a"))


pytestmark = pytest.mark.skipif(not _have_libfuzzer(),
                                reason="clang with libFuzzer is required")


@pytest.fixture(scope="module")
def harnesses():
    p = subprocess.run([os.path.join(ROOT, "fuzz", "build.sh"), BUILD],
                       capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, f"fuzz/build.sh failed:\n{p.stdout}{p.stderr}"
    return {h: os.path.join(BUILD, f"fuzz_{h}") for h in HARNESSES}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("seeds")
    subprocess.run([sys.executable, os.path.join(ROOT, "fuzz",
                                                 "make_corpus.py"), str(d)],
                   check=True, timeout=300)
    for f in os.listdir(os.path.join(ROOT, "fuzz", "corpus", "qcow2")):
        shutil.copy(os.path.join(ROOT, "fuzz", "corpus", "qcow2", f), d)
    return d


def _seeds(harness, corpus):
    if harness in OWN_CORPUS:
        return os.path.join(ROOT, "fuzz", "corpus", OWN_CORPUS[harness])
    return corpus


def _crash_summary(out):
    lines = [l for l in out.splitlines()
             if "ERROR:" in l or "SUMMARY:" in l or "Test unit written" in l
             or l.lstrip().startswith("#") and " in " in l]
    return "\n".join(lines[:40])


def _saved_crashers():
    if not os.path.isdir(CRASHERS):
        return []
    return sorted(f for f in os.listdir(CRASHERS) if not f.startswith("."))


@pytest.mark.parametrize("harness", HARNESSES)
def test_seeds_and_saved_crashers(harnesses, corpus, harness, tmp_path):
    """Each input once: earlier crashers stay fixed."""
    inputs = [os.path.join(CRASHERS, f) for f in _saved_crashers()]
    seeds = _seeds(harness, corpus)
    inputs += [os.path.join(seeds, f) for f in sorted(os.listdir(seeds))]
    failed = []
    for path in inputs:
        # Check reports echo fuzzed names: not always UTF-8.
        p = subprocess.run(_spawn(harnesses[harness], *LIBFUZZER_ARGS, path),
                           capture_output=True, text=True, errors="replace",
                           timeout=120, env=_fuzz_env(),
                           cwd=tmp_path)
        if p.returncode != 0:
            failed.append(f"{path}:\n{_crash_summary(p.stdout + p.stderr)}")
    assert not failed, f"{harness}: {len(failed)} input(s) crash:\n" + \
        "\n\n".join(failed)


@pytest.mark.parametrize("harness", HARNESSES)
def test_fuzz_briefly(harnesses, corpus, harness, tmp_path):
    work = tmp_path / "corpus"
    shutil.copytree(_seeds(harness, corpus), work)
    art = tmp_path / "artifacts"
    art.mkdir()
    # To a file, not into this process: a pytest worker that grows keeps
    # its peak for every later test on it (see _spawn).
    log = tmp_path / "fuzz.log"
    with open(log, "wb") as f:
        p = subprocess.run(_spawn(harnesses[harness], *LIBFUZZER_ARGS,
                                  "-seed=1", f"-max_total_time={SECONDS}",
                                  f"-artifact_prefix={art}/", str(work)),
                           stdout=f, stderr=subprocess.STDOUT,
                           timeout=SECONDS + 300, env=_fuzz_env(),
                           cwd=tmp_path)
    out = log.read_text(errors="replace")
    saved = sorted(os.listdir(art))
    assert p.returncode == 0 and not saved, (
        f"{harness} crashed; input saved as {[str(art / s) for s in saved]} "
        f"(copy it to fuzz/crashers/ and report it):\n"
        f"{_crash_summary(out)}")
    stats = [l for l in out.splitlines() if l.startswith("stat::")]
    print(f"{harness}: " + ", ".join(stats))
