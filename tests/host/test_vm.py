"""The VM oracle on a real guest: Debian's 6.1 kernel (MMEMU_VM_KERNELS
names others, comma-separated) booted under QEMU once for the module.

What it shows: the guest's HostMachine answers through the wire as the
host's does (values, errno, signals, a driver-side uffd handler called
back), a short `mmemu diff` survey agrees with the engine at the guest's
exact version, and scenarios run there agree with the engine. Where QEMU or
the kernel package cannot be had, or the guest does not boot, every test
skips with the reason.
"""
import errno
import os

import pytest

import mmemu.program as P
from mmemu import constants as C
from mmemu.errors import Sigsegv

pytestmark = [pytest.mark.host, pytest.mark.vm]

KERNELS = [k for k in os.environ.get("MMEMU_VM_KERNELS", "6.1").split(",") if k]
PROGRAMS = int(os.environ.get("MMEMU_VM_PROGRAMS", "24"))
SWAP = 16 << 20


@pytest.fixture(scope="module", params=KERNELS)
def guest(request):
    from mmemu.host.vm import VmUnavailable, guest, why_no_vm
    reason = why_no_vm()
    if reason:
        pytest.skip(f"no VM oracle here: {reason}")
    try:
        g = guest(request.param)
    except VmUnavailable as e:
        pytest.skip(f"no VM oracle here: {e}")
    yield g
    g.close()


def _machine(guest, **kw):
    from mmemu.host.vm import VmMachine
    return VmMachine(guest.info["debian_version"], **kw)


def test_the_guest_runs_the_package_it_was_asked_for(guest):
    assert guest.release == guest.info["release"]
    assert guest.info["debian_version"] in guest.proc_version
    with _machine(guest) as m:
        # The policy the guest's scenarios branch on is the engine's for the
        # guest's exact version (a point release, with its backports).
        from mmemu.eras import policy_for
        pol, ref = m.policy, policy_for(guest.version)
        assert pol.version == guest.version
        assert {k: v for k, v in pol.knobs.items() if k not in ("soft_dirty", "memory_failure")} \
            == {k: v for k, v in ref.knobs.items() if k not in ("soft_dirty", "memory_failure")}


def test_calls_values_errors_and_signals_cross_the_wire(guest):
    with _machine(guest) as m:
        p = m.spawn()
        a = p.mmap(0, 2 * C.PAGE_SIZE, C.PROT_READ | C.PROT_WRITE, C.MAP_PRIVATE | C.MAP_ANONYMOUS)
        p.write(a, b"guest")
        c = p.fork()
        assert c.read(a, 5) == b"guest" and c is not p and c.pid != p.pid
        assert p.pagemap(a).present and p.pagemap(a).pfn == c.pagemap(a).pfn
        with pytest.raises(OSError) as e:
            p.munmap(a + 1, C.PAGE_SIZE)
        assert e.value.errno == errno.EINVAL
        p.munmap(a, C.PAGE_SIZE)
        with pytest.raises(Sigsegv) as s:
            p.read(a, 1)
        assert s.value.addr == a


def test_a_driver_side_uffd_handler_is_called_back(guest):
    seen = []

    def handler(u, msg):
        seen.append(msg.address)
        u.copy(msg.address & C.PAGE_MASK, b"\x5a" * C.PAGE_SIZE)

    with _machine(guest, uffd=True) as m:
        p = m.spawn()
        a = p.mmap(0, C.PAGE_SIZE, C.PROT_READ | C.PROT_WRITE, C.MAP_PRIVATE | C.MAP_ANONYMOUS)
        u = p.userfaultfd(0)
        u.api()
        u.register(a, C.PAGE_SIZE, C.UFFDIO_REGISTER_MODE_MISSING)
        u.serve(handler)
        assert p.read(a + 3, 2) == b"\x5a\x5a"
        assert seen == [a]


def test_a_short_diff_agrees_with_the_engine_at_the_guests_version(guest):
    from mmemu.host import diff
    make = diff.engine_factory(guest.version, 0, SWAP)
    features, _dropped = diff.probe(make, diff.Features(pins=False))
    with _machine(guest, swap=SWAP) as vm:
        results = diff.survey(PROGRAMS, 5, vm, make, (f"vm:{guest.version}", "engine"),
                              features=features)
    bad = [(p, o) for p, o in results if o.status in ("diverge", "host-flaky")]
    assert not bad, "\n\n".join(str(o.divergence) for _p, o in bad)
    assert sum(o.status == "agree" for _p, o in results) >= PROGRAMS * 3 // 4


def test_a_short_hugetlb_diff_agrees_with_the_engine(guest):
    """The guest's own hugetlb pool set for the run, the engine given the
    same: the hugetlb rules of the guest's exact version are checked."""
    from mmemu.host import diff
    pool = {C.PMD_SIZE: diff.HUGETLB_POOL}
    why = guest.func("mmemu.host.hugetlb:why_no_pool", pool)
    if why:
        pytest.skip(f"the guest's hugetlb pool cannot be set: {why}")
    # The guest's THP mode: a hugetlb range remapped anonymous is 2 MiB aligned.
    thp = guest.func("mmemu.host.caps:capabilities").thp
    make = diff.engine_factory(guest.version, 0, 0, thp, hugepages=pool)
    features, _dropped = diff.probe(make, diff.Features(pins=False, hugetlb=True))
    with _machine(guest, hugepages=pool) as vm:
        results = diff.survey(PROGRAMS // 2, 5, vm, make, (f"vm:{guest.version}", "engine"),
                              features=features)
    assert any("HUGETLB" in str(p) for p, _o in results)   # MAP_ or MFD_
    bad = [(p, o) for p, o in results if o.status in ("diverge", "host-flaky")]
    assert not bad, "\n\n".join(str(o.divergence) for _p, o in bad)


def test_a_short_uffd_diff_agrees_with_the_engine(guest):
    from mmemu.host import diff
    make = diff.engine_factory(guest.version, 0, 0)
    with _machine(guest, uffd=True) as vm:
        results = diff.survey(PROGRAMS // 2, 5, vm, make, (f"vm:{guest.version}", "engine"),
                              features=diff.Features(uffd=True))
    bad = [(p, o) for p, o in results if o.status in ("diverge", "host-flaky")]
    assert not bad, "\n\n".join(str(o.divergence) for _p, o in bad)


@pytest.mark.parametrize("sid", ["S1", "S3", "S24/anon", "S56"])
def test_scenarios_run_in_the_guest_agree_with_the_engine(guest, sid):
    from mmemu.host.oracle_scenarios import verdict
    from mmemu.scenarios import all_scenarios, run
    scn = {s.id: s for s in all_scenarios()}[sid]
    status, detail = guest.func("mmemu.host.oracle_scenarios:run_here", sid)
    if status == "skip":
        pytest.skip(f"{sid} cannot run in the guest: {detail}")
    engine = run(scn, guest.version)
    assert verdict(status, engine.status) == "agree", (status, detail, engine.status, engine.message)


def test_a_whole_program_runs_in_one_call(guest):
    prog = [{"op": "mmap", "name": "a", "pages": 1, "prot": "PROT_READ|PROT_WRITE",
             "flags": "MAP_PRIVATE|MAP_ANONYMOUS"},
            {"op": "write", "at": ["a", 0], "data": "w001"}]
    with _machine(guest) as m:
        obs = P.run(prog, m)
    assert [o["op"] for o in obs] == ["mmap", "write"]


def test_a_pin_io_uring_refuses_over_two_backings_is_unsupported_not_an_errno(guest):
    """io_pin_pages() before 6.5 refused (EINVAL) a buffer over an anon and a
    shmem mapping that pin_user_pages itself takes: the oracle says it cannot
    show that, instead of reporting io_uring's EINVAL as GUP's."""
    from mmemu.host import Unsupported
    if not guest.func("mmemu.host.caps:capabilities").io_uring:
        pytest.skip("no io_uring in the guest")
    with _machine(guest) as m:
        p = m.spawn()
        a = p.mmap(0, 2 * C.PAGE_SIZE, C.PROT_READ | C.PROT_WRITE, C.MAP_SHARED | C.MAP_ANONYMOUS)
        p.mmap(a, C.PAGE_SIZE, C.PROT_READ | C.PROT_WRITE,
               C.MAP_PRIVATE | C.MAP_ANONYMOUS | C.MAP_FIXED)
        flags = C.FOLL_WRITE | C.FOLL_PIN | C.FOLL_LONGTERM
        major, minor = (int(x) for x in guest.version.split(".")[:2])
        if (major, minor) < (6, 5):
            with pytest.raises(Unsupported, match="different files"):
                p.pin_user_pages(a, 2, flags)
        else:
            p.pin_user_pages(a, 2, flags).release()
