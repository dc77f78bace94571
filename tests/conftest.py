import os
import sys

import pytest
from hypothesis import HealthCheck, settings

# CI runs a bounded number of examples; locally `HYPOTHESIS_PROFILE=thorough`.
settings.register_profile("ci", max_examples=60, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=1000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_addoption(parser):
    # tests/robust: the fuzzer, the random-sequence runner and the two-thread
    # hammer run a few seconds by default; --long scales them to nightly size.
    parser.addoption("--long", action="store_true", default=False,
                     help="run tests/robust at nightly size (fuzz calls, random ops, hammer time)")


class _NoExclusiveBit:
    """A 'kernel' whose pagemap never sets bit 56 (PM_MMAP_EXCLUSIVE), as an
    engine that forgot mapcounts would: every program that maps a page
    diverges on the pagemap. It offers only per-page pagemap(), as the
    engine may: run() must work without the host's batch call."""

    def __init__(self):
        from mmemu.host import HostMachine
        self.m = HostMachine()

    def spawn(self):
        return _PagemapWithoutExclusive(self.m.spawn())

    def frame(self, pfn):
        return self.m.frame(pfn)

    def check(self):
        pass

    def close(self):
        self.m.close()


class _PagemapWithoutExclusive:
    def __init__(self, p):
        self.p = p

    def __getattr__(self, name):
        if name in ("pagemap_range", "pagemap_ranges"):
            raise AttributeError(name)
        return getattr(self.p, name)

    def pagemap(self, addr):
        from mmemu.constants import PM_MMAP_EXCLUSIVE
        entry = self.p.pagemap(addr)
        return type(entry)(entry.raw & ~PM_MMAP_EXCLUSIVE)

    def fork(self):
        return _PagemapWithoutExclusive(self.p.fork())


@pytest.fixture
def no_exclusive_bit():
    """The class of a broken 'engine' for mmemu diff to catch (host tests)."""
    return _NoExclusiveBit


@pytest.fixture
def child_python():
    """(argv prefix, env, cwd) for a child Python that imports the mmemu these
    tests import: the installed package in CI, the in-place build in a
    checkout. The child runs outside the source tree (`-m` and `-c` put the
    cwd first on sys.path, and CI's source tree has no compiled core); the
    test packages (tests/robust) stay importable through PYTHONPATH."""
    paths = [os.path.abspath(p) if p else os.getcwd() for p in sys.path]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(paths))
    return [sys.executable], env, "/"
