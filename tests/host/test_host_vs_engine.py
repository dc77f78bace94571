"""Differential tests: the same programs on the engine (kernel="host") and on
the real kernel must be observed alike (mmemu.host.compare).

Each case says what a divergence would mean. Divergences the oracle has
found and the engine does not model yet are listed in KNOWN with the reason;
they are strict xfails, so fixing one makes its test fail until the entry
is removed. Skipped when mmemu.Machine is not importable.
"""
import pytest

from mmemu import program as P
from mmemu.host import HostMachine, diff
from mmemu.host.compare import compare

pytestmark = pytest.mark.host


def _engine():
    try:
        import mmemu
        return mmemu.Machine
    except (ImportError, AttributeError) as e:   # the engine is not built
        pytest.skip(f"mmemu.Machine is not available: {e}")


def _region(name="a", pages=2):
    return {"op": "mmap", "name": name, "pages": pages, "prot": "PROT_READ|PROT_WRITE",
            "flags": "MAP_PRIVATE|MAP_ANONYMOUS"}


PIN = "FOLL_WRITE|FOLL_PIN|FOLL_LONGTERM"

CASES = {
    # If COW is not broken, the parent reads the child's data (or the frames
    # stay shared in the snapshot after the child's write).
    "cow-child-write": [
        _region(), {"op": "write", "at": ["a", 0], "data": "parent"},
        {"op": "fork", "name": "c", "body": [{"op": "write", "at": ["a", 0], "data": "child!"}]},
        {"op": "read", "at": ["a", 0], "len": 6},
        {"op": "read", "proc": "c", "at": ["a", 0], "len": 6}],
    # CVE-2020-29374: the pipe must keep the old data, and the parent's
    # write must copy although bit 56 says "mapped once".
    "cow-vmsplice-child-unmap": [
        _region(), {"op": "write", "at": ["a", 0], "data": "secret"},
        {"op": "fork", "name": "c", "body": [
            {"op": "vmsplice", "at": ["a", 0], "pages": 1, "name": "p"},
            {"op": "munmap", "at": ["a", 0], "pages": 1}]},
        {"op": "write", "at": ["a", 0], "data": "public"},
        {"op": "pipe_read", "pipe": "p", "len": 6}],
    # exit drops the pipe's reference: the parent's next write reuses.
    "vmsplice-then-exit-reuse": [
        _region(), {"op": "write", "at": ["a", 0], "data": "x"},
        {"op": "fork", "name": "c", "body": [
            {"op": "vmsplice", "at": ["a", 0], "pages": 1, "name": "p"}, {"op": "exit"}]},
        {"op": "write", "at": ["a", 0], "data": "y"}],
    # A pinned page is copied for the child at fork (70e806e4e645): else
    # the device and the child would share a page the child may write.
    "pin-early-cow-at-fork": [
        _region(), {"op": "write", "at": ["a", 0], "data": "dma"},
        {"op": "pin_user_pages", "at": ["a", 0], "pages": 1, "gup_flags": PIN, "name": "u"},
        {"op": "fork", "name": "c"},
        {"op": "write", "proc": "c", "at": ["a", 0], "data": "CHILD"},
        {"op": "pin_read", "pin": "u", "off": 0, "len": 5},
        {"op": "pin_release", "pin": "u"},
        {"op": "fork", "name": "d"}],
    # WIPEONFORK: empty in the child; DONTFORK: not mapped in the child.
    "wipeonfork-dontfork": [
        _region(), {"op": "write", "at": ["a", 0], "data": "w"},
        {"op": "write", "at": ["a", 1], "data": "d"},
        {"op": "madvise", "at": ["a", 0], "pages": 1, "advice": "MADV_WIPEONFORK"},
        {"op": "madvise", "at": ["a", 1], "pages": 1, "advice": "MADV_DONTFORK"},
        {"op": "fork", "name": "c", "body": [
            {"op": "read", "at": ["a", 0], "len": 1}, {"op": "read", "at": ["a", 1], "len": 1}]}],
    # mprotect over a hole: ENOMEM after changing the part before the hole.
    "mprotect-hole-partial": [
        _region(pages=3), {"op": "write", "at": ["a", 2], "data": "z"},
        {"op": "munmap", "at": ["a", 1], "pages": 1},
        {"op": "mprotect", "at": ["a", 0], "pages": 3, "prot": "PROT_READ"},
        {"op": "write", "at": ["a", 0], "data": "q"},
        {"op": "write", "at": ["a", 2], "data": "q"}],
    # FOLL_FORCE write to a PROT_READ private mapping COWs into an anon page.
    "proc-mem-force-cow": [
        {"op": "mmap", "name": "r", "pages": 1, "prot": "PROT_READ",
         "flags": "MAP_PRIVATE|MAP_ANONYMOUS"},
        {"op": "read", "at": ["r", 0], "len": 1},
        {"op": "proc_mem_write", "at": ["r", 0], "data": "forced"},
        {"op": "read", "at": ["r", 0], "len": 6}],
    # A read maps the zero page (kpagecount 0); fork of a VMA that has no
    # anon_vma copies no pte at all (copy_page_range skips it).
    "zero-page-fork": [
        _region(pages=1), {"op": "read", "at": ["a", 0], "len": 4}, {"op": "fork", "name": "c"},
        {"op": "read", "proc": "c", "at": ["a", 0], "len": 4}],
}

# Divergences found and not fixed yet: case name -> why (strict xfail).
KNOWN = {}


def _known_reason(d):
    """The KNOWN entry a random-program divergence is an instance of, if any."""
    return None


@pytest.fixture(scope="module")
def shared_host():
    with HostMachine() as m:
        yield m


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=KNOWN[n])) if n in KNOWN else n
    for n in CASES])
def test_case_agrees(name, shared_host, need):
    need("pfns", "kpage")
    Machine = _engine()
    prog = CASES[name]
    host_obs = P.run(prog, shared_host)
    engine_obs = P.run(prog, Machine(kernel="host", seed=0), cleanup=False)
    d = compare(host_obs, engine_obs, prog)
    assert d is None, str(d)


def test_random_programs_agree(shared_host, need):
    """Random programs: every divergence must be a KNOWN one."""
    need("pfns", "kpage")
    Machine = _engine()
    make = lambda: Machine(kernel="host", seed=0)   # noqa: E731
    features, _dropped = diff.probe(make)
    results = diff.survey(30, 0, shared_host, make, features=features)
    compared = [o for _p, o in results if o.status in ("agree", "diverge")]
    assert len(compared) >= 20
    unknown = [o for o in compared if o.status == "diverge" and not _known_reason(o.divergence)]
    assert not unknown, str(unknown[0].divergence)
