"""Thread.replay: a trace of user accesses run in the core, with faults,
userfaults (in-core resolvers, service handlers, waits) and counts."""
import numpy as np
import pytest

import mmemu
from mmemu import MAP_ANONYMOUS, MAP_NORESERVE, MAP_PRIVATE, PAGE_SIZE as PAGE, PROT_READ, PROT_WRITE
from mmemu.uffd import UFFDIO_REGISTER_MODE_MISSING
from registered import registered

RW = PROT_READ | PROT_WRITE
PRIV = MAP_PRIVATE | MAP_ANONYMOUS


def machine(n=256, kernel="6.18"):
    m = mmemu.Machine(kernel=kernel, memory=(n + 512) * PAGE)
    p = m.spawn()
    a = p.mmap(0, n * PAGE, RW, PRIV | MAP_NORESERVE)
    return m, p, a


def missing(n):
    """n pages registered MISSING on a fresh context."""
    m = mmemu.Machine(memory=(n + 512) * PAGE)
    return (m, *registered(m, n))


def trace(a, n, count, seed, write_share=0.5):
    rng = np.random.default_rng(seed)
    addrs = (a + rng.integers(0, n, count) * PAGE + rng.integers(0, PAGE, count)).astype(np.uint64)
    writes = rng.random(count) < write_share
    return addrs, writes


@pytest.mark.parametrize("kernel", ["5.8", "5.10", "6.18"])
def test_replay_does_what_the_same_accesses_do_one_by_one(kernel):
    """Same faults, same frames and content versions, same counts, as a loop
    of single accesses on a twin machine (each write a fresh version stamp:
    touch(..., write=True) of one page)."""
    addrs, writes = trace(0, 64, 3000, seed=1)
    m1, p1, a1 = machine(64, kernel)
    m2, p2, a2 = machine(64, kernel)
    assert a1 == a2
    addrs += np.uint64(a1)
    got = p1.thread(cpu=1).replay(addrs, writes)
    t2 = p2.thread(cpu=1)
    s0 = m2.stats()
    for va, w in zip(addrs.tolist(), writes.tolist()):
        if w:
            t2.touch(va & ~(PAGE - 1), 1, write=True)
        else:
            t2.read(va, 1)
    s1 = m2.stats()
    assert got["accesses"] == 3000 and got["stopped"] is None
    assert got["faults"] == s1["faults"] - s0["faults"] > 0
    assert got["cow"] == s1["cow"] - s0["cow"]
    assert got["tlb_misses"] == s1["tlb_misses"] - s0["tlb_misses"]
    assert (p1.versions(a1, 64) == p2.versions(a2, 64)).all()
    assert (p1.pagemap_range(a1, 64) == p2.pagemap_range(a2, 64)).all()
    m1.check()


def test_every_distinct_page_takes_one_missing_fault_served_in_the_core():
    n = 512
    m, p, a, u = missing(n)
    src = np.arange(1, n + 1, dtype=np.uint64) * 7
    u.serve_core("copy", base=a, versions=src)
    addrs, writes = trace(a, n, 20000, seed=2, write_share=0.0)
    c = p.thread().replay(addrs, writes)
    distinct = len(np.unique(addrs >> np.uint64(12)))
    assert c["uffd_faults"] == c["uffd_resolved_in_core"] == distinct
    touched = np.unique((addrs - np.uint64(a)) >> np.uint64(12)).astype(np.int64)
    assert (p.versions(a, n)[touched] == src[touched]).all()      # the source image's pages
    m.check()


def test_a_python_handler_pauses_the_batch_and_it_resumes():
    n = 32
    m, p, a, u = missing(n)
    served = []

    def handler(ctx, msg):
        served.append(msg.address)
        ctx.zeropage(msg.address & ~(PAGE - 1), PAGE)
    u.serve(handler)
    addrs, writes = trace(a, n, 500, seed=3, write_share=0.3)
    c = p.thread().replay(addrs, writes)
    assert c["accesses"] == 500 and len(served) == c["uffd_faults"] - c["uffd_resolved_in_core"] > 0
    assert len(served) == len(np.unique(addrs >> np.uint64(12)))
    m.check()


def test_without_a_service_thread_it_waits_or_stops_where_asked():
    m, p, a = machine(8)
    u = p.userfaultfd()
    u.api()
    u.register(a + 4 * PAGE, 4 * PAGE, UFFDIO_REGISTER_MODE_MISSING)
    addrs = np.array([a, a + PAGE, a + 5 * PAGE, a + 2 * PAGE], np.uint64)
    t = p.thread()
    c = t.replay(addrs, stop_on="userfault")
    assert c["accesses"] == 2 and c["stopped"] == {"index": 2, "address": a + 5 * PAGE, "reason": "userfault"}
    with pytest.raises(mmemu.WouldBlock):
        t.replay(addrs[2:])
    with pytest.raises(mmemu.MmemuError, match="blocked"):
        t.replay(addrs[3:])                     # a blocked thread runs nothing
    assert not p.pagemap(a + 2 * PAGE).present
    (msg,) = u.read()
    u.zeropage(msg.address, PAGE)
    t.resume()                                  # the blocked batch runs to its end
    assert p.pagemap(a + 5 * PAGE).present and p.pagemap(a + 2 * PAGE).present
    m.check()


def test_any_integer_trace_replays_as_its_uint64_copy_would():
    """The usual trace (contiguous native uint64, uint8 flags) goes to the
    core as it is; any other layout or type is converted first, to the same
    result, from the same start."""
    forms = [lambda x: x, lambda x: x.astype(">u8"), lambda x: np.repeat(x, 2)[::2], lambda x: x.astype(np.int64),
             lambda x: [int(v) for v in x]]
    results = []
    for form in forms:
        m, p, a = machine(16)
        addrs = np.array([a + k * PAGE for k in (3, 1, 3, 7, 0, 7, 9)], np.uint64)
        writes = np.array([1, 0, 0, 1, 1, 0, 1], np.uint8)
        c = p.thread().replay(form(addrs), form(writes), start=1)
        results.append((c, p.versions(a, 16).tolist()))
    assert all(r == results[0] for r in results[1:])
    c, _ = results[0]
    assert c["accesses"] == c["end"] - 1 == 6 and c["faults"] == 5 and c["tlb_hits"] == 1


def test_bad_traces_are_clear_errors_and_a_hole_is_sigsegv():
    m, p, a = machine(8)
    t = p.thread()
    with pytest.raises(TypeError):
        t.replay(np.zeros((2, 2), np.uint64))
    with pytest.raises(TypeError):
        t.replay([0.5])
    with pytest.raises(ValueError, match="64 bits"):
        t.replay([a, 2**70])
    with pytest.raises(ValueError, match="negative"):
        t.replay(np.array([-4096]))
    with pytest.raises(ValueError, match="one per address"):
        t.replay(np.array([a], np.uint64), np.array([1, 0], np.uint8))
    with pytest.raises(ValueError, match="stop_on"):
        t.replay(np.array([a], np.uint64), stop_on="everything")
    with pytest.raises(mmemu.Sigsegv) as e:
        t.replay(np.array([a, a + 64 * PAGE], np.uint64))
    assert e.value.addr == a + 64 * PAGE
    with pytest.raises(mmemu.Sigsegv):
        t.replay(np.array([1 << 63], np.uint64))
    assert t.replay(np.zeros(0, np.uint64))["accesses"] == 0
    for bad in (None, 0.0, "0"):
        with pytest.raises(TypeError, match="start"):
            t.replay(np.array([a], np.uint64), start=bad)
    assert t.replay(np.array([a], np.uint64), start=np.int64(1))["accesses"] == 0
    m.check()


def test_a_trace_object_and_uint8_flags_work_like_arrays():
    class Trace:
        def __init__(self, addrs, writes):
            self.addrs, self.writes = addrs, writes
    addrs, writes = trace(0, 16, 400, seed=4)
    m1, p1, a1 = machine(16)
    m2, p2, a2 = machine(16)
    c1 = p1.thread().replay(Trace(addrs + np.uint64(a1), writes))
    c2 = p2.thread().replay(addrs + np.uint64(a2), writes.astype(np.uint8))
    assert c1 == c2
    assert (p1.versions(a1, 16) == p2.versions(a2, 16)).all()


def test_every_count_is_the_engine_counters_difference():
    """replay() diffs two Engine.stat_values() snapshots: each count it
    returns is what Machine.stats() moved by, name for name."""
    from mmemu._core import STAT_NAMES
    m, p, a = machine(256)
    eng = p._engine
    assert eng.stat_values() == [eng.stats()[n] for n in STAT_NAMES]
    addrs, writes = trace(0, 256, 2000, seed=3)
    addrs += np.uint64(a)
    p.thread().replay(addrs[:200], writes[:200])
    c = p.fork()                                    # COW and reuse in the rest
    s0 = m.stats()
    got = p.thread().replay(addrs, writes)
    s1 = m.stats()
    keys = {"swap_ins": "swap_in"}
    names = [k for k in got if k not in ("accesses", "end", "clock", "stopped")]
    assert len(names) == 12
    for k in names:
        assert got[k] == s1[keys.get(k, k)] - s0[keys.get(k, k)], k
    assert got["cow"] > 0 and got["zero_faults"] > 0 and got["tlb_hits"] > 0
    c.exit()
