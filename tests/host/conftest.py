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
