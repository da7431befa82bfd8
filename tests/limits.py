"""Running imgtool on hostile input with bounded resources.

Crafted images may claim terabytes of tables or billions of iterations:
imgtool must refuse them within a time limit and a 256 MiB address-space
limit, and never leave a core file.  A build with AddressSanitizer
reserves terabytes of shadow address space, so there the address-space
limit is left off (the sanitizer then catches runaway allocations).
"""
import resource
import subprocess

import pytest

from conftest import IMGTOOL, sanitized

AS_LIMIT = 256 * 1024 * 1024
SANITIZED = sanitized()


def limit_resources():
    """preexec_fn for a child that runs hostile input."""
    if not SANITIZED:
        resource.setrlimit(resource.RLIMIT_AS, (AS_LIMIT, AS_LIMIT))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def run_limited(*args, timeout):
    """imgtool args under limit_resources; a run still going after timeout
    seconds fails the test (a hostile header must not buy unbounded
    work)."""
    try:
        return subprocess.run([IMGTOOL, *map(str, args)], capture_output=True,
                              text=True, timeout=timeout,
                              preexec_fn=limit_resources)
    except subprocess.TimeoutExpired:
        pytest.fail(f"imgtool {' '.join(map(str, args))}: still running "
                    f"after {timeout} s")
