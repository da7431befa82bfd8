"""pytest plugin (loaded by tests/run with -p sanitizer_guard) that fails
any test during which a sanitized imgtool wrote an ASan/UBSan/LSan report.

Exit codes alone are not enough: a test that expects "any non-zero exit"
would accept a process that the sanitizer aborted.  So tests/run points
the sanitizers at a log directory, and this plugin gives every test its own
directory (via log_path in ASAN_OPTIONS/UBSAN_OPTIONS, inherited by the
subprocesses the test starts) and fails the test if anything was written
there.  Per-test directories keep reports attributed correctly under
pytest-xdist, where two tests run at once.
"""
import os
import re

import pytest

_BASE = os.environ.get("IMGTOOL_SANITIZER_LOG_DIR")


def _with_log_path(opts, path):
    kept = [o for o in (opts or "").split(":") if o and not o.startswith("log_path=")]
    return ":".join(kept + [f"log_path={path}"])


@pytest.fixture(autouse=True)
def _sanitizer_reports(request):
    if not _BASE:
        yield
        return
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.nodeid)[-150:]
    logdir = os.path.join(_BASE, name)
    os.makedirs(logdir, exist_ok=True)
    saved = {k: os.environ.get(k) for k in ("ASAN_OPTIONS", "UBSAN_OPTIONS")}
    os.environ["ASAN_OPTIONS"] = _with_log_path(saved["ASAN_OPTIONS"],
                                                os.path.join(logdir, "asan"))
    os.environ["UBSAN_OPTIONS"] = _with_log_path(saved["UBSAN_OPTIONS"],
                                                 os.path.join(logdir, "ubsan"))
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    reports = sorted(f for f in os.listdir(logdir)
                     if os.path.getsize(os.path.join(logdir, f)) > 0)
    if reports:
        text = ""
        for f in reports:
            with open(os.path.join(logdir, f), errors="replace") as fh:
                text += f"==> {f}\n{fh.read()[-6000:]}\n"
        pytest.fail(f"sanitizer report(s) written during this test:\n{text}",
                    pytrace=False)
