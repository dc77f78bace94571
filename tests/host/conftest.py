"""Fixtures of the host-oracle tests: capabilities and a fresh HostMachine.

A test that needs something this host lacks (PFNs without CAP_SYS_ADMIN,
io_uring, ...) is skipped with the reason, never failed.
"""
import pytest

from mmemu.host import HostMachine, Unsupported, capabilities


@pytest.fixture(scope="session")
def caps():
    return capabilities()


@pytest.fixture
def need(caps):
    """need("pfns", "kpage") skips the test unless the host has them all."""
    def check(*names):
        for name in names:
            if not getattr(caps, name):
                pytest.skip(caps.why_not(name))
    return check


@pytest.fixture
def host():
    with HostMachine(timeout=10.0) as m:
        yield m


@pytest.fixture
def unsupported_is_skip():
    """Turn mmemu.host.Unsupported raised inside the with-block into a skip."""
    class _Guard:
        def __enter__(self):
            return self

        def __exit__(self, typ, exc, tb):
            if typ is not None and issubclass(typ, Unsupported):
                pytest.skip(f"host cannot: {exc}")
            return False
    return _Guard()


_HOLD_SWAP = """
import sys
from mmemu.host import swap
try:
    s = swap.HostSwap(int(sys.argv[1])).enable()
except swap.SwapUnavailable as e:
    print("unavailable", e, flush=True)
    sys.exit(0)
print("on", s.path, flush=True)
try:
    sys.stdin.read()            # until the test closes our stdin (or dies)
finally:
    s.disable()
"""


@pytest.fixture
def foreign_swap():
    """Swap that another process turned on, as a concurrent run of the
    oracle (or the machine's own swap) would: a helper process enables a
    small swap file and holds it until the test ends. Yields its path.
    Skipped, with the reason, where swapon is impossible; always off and
    deleted afterwards (the helper turns it off when its stdin closes, even
    if this process dies; a killed helper's file is removed by the next
    swap.remove_stale, as it names the helper's pid)."""
    import os
    import subprocess
    import sys

    from mmemu.host import swap
    if os.geteuid() != 0:
        pytest.skip("swapon needs root (CAP_SYS_ADMIN)")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    helper = subprocess.Popen([sys.executable, "-c", _HOLD_SWAP, str(64 << 10)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, cwd="/")
    path = None
    try:
        word, _, rest = helper.stdout.readline().decode().strip().partition(" ")
        if word != "on":
            pytest.skip(f"cannot turn on a foreign swap file: {rest or 'helper failed'}")
        path = rest
        assert path in dict(swap.active_swaps())
        yield path
    finally:
        helper.stdin.close()
        try:
            helper.wait(timeout=60)
        except subprocess.TimeoutExpired:
            helper.kill()
            helper.wait()
        if path is not None and path in dict(swap.active_swaps()):
            swap.sc.swapoff(path)
        if path is not None and os.path.exists(path):
            os.unlink(path)


@pytest.fixture
def agreement():
    """agreement(text): the counts of `mmemu diff`'s agreement line, as a
    dict; asserts that any program the host did not run was left out for
    foreign swap alone."""
    return _agreement


def _agreement(text):
    import re
    m = re.search(r"agreement: (\d+)/(\d+) programs \([\d.]+%\); ran (\d+), diverged (\d+), "
                  r"not modelled by the engine (\d+), unsupported on the host (\d+), "
                  r"placement-dependent (\d+), host-flaky (\d+)", text)
    assert m, text[-3000:]
    keys = ("agree", "compared", "ran", "diverge", "engine-gap", "unsupported", "invalid",
            "host-flaky")
    got = dict(zip(keys, map(int, m.groups())))
    reasons = re.findall(r"unsupported on the host \((\d+) programs\): (.*)", text)
    from mmemu.host.machine import FOREIGN_SWAP
    assert sum(int(k) for k, _ in reasons) == got["unsupported"], text[-3000:]
    assert all(r == FOREIGN_SWAP for _, r in reasons), text[-3000:]
    return got
