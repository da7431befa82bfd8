"""pytest plugin (loaded by tests/run with -p sanitizer_guard) that fails
any test during which imgtool crashed or a sanitizer reported an error.

Exit codes alone are not enough: a test that expects "any non-zero exit"
would accept a process that a sanitizer (or an assert) aborted.  Two nets:

 - every imgtool process that dies of SIGABRT/SIGSEGV/SIGBUS/SIGILL/SIGFPE
   fails the running test (tests/run sets abort_on_error=1, so every
   ASan/UBSan/LSan report ends in SIGABRT);
 - when IMGTOOL_SANITIZER_LOG_DIR is set, each test gets its own ASan
   log_path (inherited by the processes it starts) and any report written
   there fails the test and is shown.  Per-test directories keep reports
   attributed correctly under pytest-xdist.
"""
import os
import re
import signal
import subprocess

import pytest

_BASE = os.environ.get("IMGTOOL_SANITIZER_LOG_DIR")
_IMGTOOL = os.path.realpath(os.environ.get("IMGTOOL", "build/imgtool"))
_CRASH_SIGNALS = {signal.SIGABRT, signal.SIGSEGV, signal.SIGBUS,
                  signal.SIGILL, signal.SIGFPE}
_crashes = []


def _is_imgtool(args):
    if isinstance(args, (str, bytes, os.PathLike)):
        argv0 = str(args).split()[0] if isinstance(args, str) else str(args)
    else:
        args = list(args)
        argv0 = str(args[0]) if args else ""
    return os.path.basename(argv0) == os.path.basename(_IMGTOOL) and \
        os.path.realpath(argv0) == _IMGTOOL


_orig_handle_exitstatus = subprocess.Popen._handle_exitstatus


def _handle_exitstatus(self, *a, **kw):
    _orig_handle_exitstatus(self, *a, **kw)
    rc = self.returncode
    if rc is not None and rc < 0 and -rc in _CRASH_SIGNALS and _is_imgtool(self.args):
        argv = self.args if isinstance(self.args, str) else " ".join(map(str, self.args))
        _crashes.append(f"{argv}: killed by {signal.Signals(-rc).name}")


def pytest_configure(config):
    subprocess.Popen._handle_exitstatus = _handle_exitstatus


def _with_log_path(opts, path):
    kept = [o for o in (opts or "").split(":") if o and not o.startswith("log_path=")]
    return ":".join(kept + [f"log_path={path}"])


@pytest.fixture(autouse=True)
def _sanitizer_reports(request):
    del _crashes[:]
    logdir = None
    saved = {}
    if _BASE:
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.nodeid)[-150:]
        logdir = os.path.join(_BASE, name)
        os.makedirs(logdir, exist_ok=True)
        saved = {"ASAN_OPTIONS": os.environ.get("ASAN_OPTIONS")}
        os.environ["ASAN_OPTIONS"] = _with_log_path(saved["ASAN_OPTIONS"],
                                                    os.path.join(logdir, "asan"))
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    problems = ""
    if _crashes:
        problems += "imgtool crashed (sanitizer report or assertion):\n  " + \
            "\n  ".join(_crashes) + "\n"
    if logdir:
        for f in sorted(os.listdir(logdir)):
            path = os.path.join(logdir, f)
            if os.path.getsize(path) > 0:
                with open(path, errors="replace") as fh:
                    problems += f"==> sanitizer log {f}\n{fh.read()[-6000:]}\n"
    if problems:
        pytest.fail(problems, pytrace=False)
