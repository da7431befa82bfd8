"""pytest plugin (loaded by tests/run with -p big_asserts): short failure
explanations for `assert a == b` on large bytes/str values.

pytest's default explanation runs difflib over both operands, which takes
minutes to hours for images of a few MiB and so turns one failing content
check into a hung test suite.  For large operands we report the sizes and
the first differing offset instead.
"""

LIMIT = 4096


def _first_difference(a, b):
    n = min(len(a), len(b))
    lo, hi = 0, n
    if a[:n] == b[:n]:
        return n
    # Binary search on prefix equality: O(n log n) in C, not O(n) in Python.
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid
    return lo if a[lo] != b[lo] else hi


def pytest_assertrepr_compare(config, op, left, right):
    kinds = (bytes, bytearray, memoryview, str)
    if op != "==" or not isinstance(left, kinds) or not isinstance(right, kinds):
        return None
    if len(left) <= LIMIT and len(right) <= LIMIT:
        return None
    at = _first_difference(bytes(left) if isinstance(left, memoryview) else left,
                           bytes(right) if isinstance(right, memoryview) else right)
    def around(x):
        return repr(x[max(0, at - 16):at + 16])
    return [
        f"{type(left).__name__} of {len(left)} == {type(right).__name__} of {len(right)}",
        f"first difference at offset {at}",
        f"left  [{max(0, at - 16)}:{at + 16}]: {around(left)}",
        f"right [{max(0, at - 16)}:{at + 16}]: {around(right)}",
    ]
