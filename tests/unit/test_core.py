"""Core mechanics: references, invariants, TLB, contents, determinism."""
import os
import re
import resource
from pathlib import Path

import numpy as np
import pytest

import mmemu
from mmemu._core import STAT_NAMES
from mmemu import (FOLL_LONGTERM, FOLL_WRITE, MAP_ANONYMOUS, MAP_PRIVATE, PAGE_SIZE as PAGE,
                   PROT_READ, PROT_WRITE)

RW = PROT_READ | PROT_WRITE
PRIV = MAP_PRIVATE | MAP_ANONYMOUS


def machine(**kw):
    kw.setdefault("memory", 32 << 20)
    return mmemu.Machine(**kw)


def test_fork_shares_and_write_protects():
    m = machine()
    p = m.spawn()
    a = p.mmap(0, 4 * PAGE, RW, PRIV)
    p.touch(a, 4, write=True)
    m._engine.lru_drain(0)
    pfns = [p.pagemap(a + i * PAGE).pfn for i in range(4)]
    c = p.fork()
    for i, pfn in enumerate(pfns):
        info = m.frame(pfn)
        assert (info.refcount, info.mapcount) == (2, 2)
        assert "anon_exclusive" not in info.flags
        assert c.pagemap(a + i * PAGE).pfn == pfn
        assert not (m._engine.pte(p.mm, a + i * PAGE) & 2), "parent pte still writable"
    m.check()


def test_pin_accounting_and_pincount():
    m = machine()
    p = m.spawn()
    a = p.mmap(0, PAGE, RW, PRIV)
    p.write(a, b"x")
    m._engine.lru_drain(0)
    pin = p.pin_user_pages(a, 1, FOLL_WRITE | FOLL_LONGTERM)
    pfn = p.pagemap(a).pfn
    info = m.frame(pfn)
    assert info.refcount == 1 + 1024 and info.pincount == 1
    assert p.has_pinned
    m.check()
    pin.release()
    assert m.frame(pfn).refcount == 1 and m.frame(pfn).pincount == 0
    m.check()


def test_pinned_page_survives_munmap_until_release():
    m = machine()
    p = m.spawn()
    a = p.mmap(0, PAGE, RW, PRIV)
    p.write(a, b"keep")
    pin = p.pin_user_pages(a, 1, FOLL_WRITE)
    pfn = p.pagemap(a).pfn
    p.munmap(a, PAGE)
    assert pin.read(0, 4) == b"keep" and m.frame(pfn).mapcount == 0
    m.check()
    free_before = m._engine.nr_free
    m._engine.lru_drain(0)
    pin.release()
    assert m._engine.nr_free == free_before + 1
    m.check()


@pytest.mark.parametrize("corrupt,rule", [
    (lambda m, pfn: m._engine.refcount.__setitem__(pfn, m._engine.refcount[pfn] + 1), "refcount"),
    (lambda m, pfn: m._engine.mapcount.__setitem__(pfn, 2), "mapcount"),
])
def test_check_catches_corruption(corrupt, rule):
    m = machine()
    p = m.spawn()
    a = p.mmap(0, PAGE, RW, PRIV)
    p.write(a, b"x")
    pfn = p.pagemap(a).pfn
    m.check()
    corrupt(m, pfn)
    with pytest.raises(mmemu.InvariantError, match=rule) as e:
        m.check()
    assert e.value.pfn == pfn


def _shared_page():
    m = machine()
    p = m.spawn()
    a = p.mmap(0, PAGE, RW, PRIV)
    p.write(a, b"x")
    p.fork()
    m.check()
    return m, p, a


def test_check_catches_writable_pte_on_cow_shared_page():
    # A writable pte to a page another process maps is exactly a COW leak.
    m, p, a = _shared_page()
    m._engine._test_pte_set_bits(p.mm, a, 0x2)          # PTE_WRITE
    with pytest.raises(mmemu.InvariantError, match="COW-shared") as e:
        m.check()
    assert e.value.pfn == p.pagemap(a).pfn


def test_check_catches_exclusive_flag_on_shared_page():
    m, p, a = _shared_page()
    m._engine.fflags[p.pagemap(a).pfn] |= 0x2           # PG_ANON_EXCLUSIVE
    with pytest.raises(mmemu.InvariantError, match="AnonExclusive"):
        m.check()


def test_check_catches_stale_writable_tlb_entry():
    # After fork write-protects, no CPU may still hold a writable translation.
    m, p, a = _shared_page()
    m._engine._test_tlb_fill(1, p.mm, a, p.pagemap(a).pfn, True)
    with pytest.raises(mmemu.InvariantError, match="TLB entry grants more"):
        m.check()


def test_tlb_hits_and_flush_on_cow():
    m = machine()
    p = m.spawn()
    a = p.mmap(0, PAGE, RW, PRIV)
    p.write(a, b"1")
    s0 = m.stats()
    for _ in range(10):
        p.read(a, 1)
    s1 = m.stats()
    assert s1["tlb_hits"] - s0["tlb_hits"] == 10 and s1["tlb_misses"] == s0["tlb_misses"]
    t = p.thread(cpu=1)
    assert t.read(a, 1) == b"1"          # CPU 1 caches its own translation
    c = p.fork()
    t.write(a, b"2")                     # CPU 1's stale writable entry was flushed by fork
    assert c.read(a, 1) == b"1" and p.read(a, 1) == b"2"
    m.check()


def test_content_versions_and_bytes():
    m = machine()
    p = m.spawn()
    a = p.mmap(0, 8 * PAGE, RW, PRIV)
    assert p.touch(a, 8, write=True, value=0x0102030405060708) == 8
    assert (p.versions(a, 8) == 0x0102030405060708).all()
    assert p.read(a, 8) == (0x0102030405060708).to_bytes(8, "little")
    p.write(a + 3, b"Z")                 # materialises byte-exact contents
    assert p.read(a, 8) == bytes([8, 7, 6]) + b"Z" + bytes([4, 3, 2, 1])
    p.touch(a + PAGE, 1, write=True)     # a fresh stamp
    v = p.versions(a, 3)
    assert v[0] == np.uint64(0xFFFFFFFFFFFFFFFF) and v[1] not in (0, 0x0102030405060708)
    c = p.fork()
    p.touch(a + 2 * PAGE, 1, write=True, value=7)
    assert c.versions(a + 2 * PAGE, 1)[0] == 0x0102030405060708
    m.check()


def test_determinism_same_seed_same_everything():
    def run(seed):
        m = mmemu.Machine(seed=seed, memory=32 << 20)
        p = m.spawn()
        a = p.mmap(0, 16 * PAGE, RW, PRIV)
        p.touch(a, 16, write=True)
        c = p.fork()
        c.touch(a, 16, write=True)
        return a, list(p.pagemap_range(a, 16)), list(c.pagemap_range(a, 16)), \
            list(c.versions(a, 16)), m.stats()
    assert run(1) == run(1)
    assert run(1)[0] != run(2)[0]


def test_out_of_memory_is_oom_not_crash():
    m = mmemu.Machine(memory=64 * PAGE)
    p = m.spawn()
    a = p.mmap(0, 128 * PAGE, RW, PRIV)
    with pytest.raises(mmemu.OutOfMemory) as e:
        p.touch(a, 128, write=True)
    assert a <= e.value.addr < a + 128 * PAGE
    m.check()
    p.munmap(a, 128 * PAGE)
    m._engine.lru_drain(0)
    p.touch(p.mmap(0, 32 * PAGE, RW, PRIV), 32, write=True)
    m.check()


def test_exit_frees_everything():
    m = machine()
    free0 = m._engine.nr_free
    p = m.spawn()
    a = p.mmap(0, 1000 * PAGE, RW, PRIV)
    p.touch(a, 1000, write=True)
    c = p.fork()
    c.touch(a, 500, write=True)
    c.exit()
    p.exit()
    m._engine.lru_drain(0)
    assert m._engine.nr_free == free0
    assert m.memory_usage()["pte_pages"] == 0
    m.check()


def test_pagemap_raw_matches_fields():
    m = machine()
    p = m.spawn()
    a = p.mmap(0, 2 * PAGE, RW, PRIV)
    p.write(a, b"x")
    e = p.pagemap(a)
    assert e.present and e.exclusive and not e.file_shared and e.soft_dirty
    assert e.raw == (1 << 63) | (1 << 56) | (1 << 55) | e.pfn
    hole = p.pagemap(a + PAGE)
    assert not hole.present and hole.soft_dirty      # VM_SOFTDIRTY of a new VMA
    host = mmemu.Machine(kernel="host", memory=32 << 20) if Path("/proc/self/pagemap").exists() else None
    if host is not None and not host.policy.soft_dirty:
        q = host.spawn()
        b = q.mmap(0, PAGE, RW, PRIV)
        q.write(b, b"x")
        assert not q.pagemap(b).soft_dirty           # CONFIG_MEM_SOFT_DIRTY=n


def test_readme_example_runs():
    text = Path(__file__).resolve().parents[2].joinpath("README.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    exec(compile(code, "README.md", "exec"), {})


def test_policy_enum_values_agree_with_core():
    # core/defs.pxi repeats these enum values; keep them equal.
    from mmemu import eras
    defs = Path(mmemu.__file__).parent.joinpath("core", "defs.pxi").read_text()
    for name in ("WP_REUSE_MAPCOUNT", "WP_REUSE_REFCOUNT", "WP_REUSE_REFCOUNT_DRAIN",
                 "WP_REUSE_ANON_EXCLUSIVE", "FOLL_COW_FORCE_DIRTY", "FOLL_COW_DIRTY",
                 "FOLL_FORCE_ANON_EXCLUSIVE", "FORCED_COW_GET_AND_PIN", "FORCED_COW_GET_ONLY"):
        assert re.search(rf"{name} = {getattr(eras, name)}\b", defs), name


def test_foll_constants_agree_with_core():
    defs = Path(mmemu.__file__).parent.joinpath("core", "defs.pxi").read_text()
    for name, value in re.findall(r"(FOLL_\w+) = 1 << (\d+)", defs):
        assert getattr(mmemu, name) == 1 << int(value), name


def test_the_cores_tables_grow_past_their_first_capacity():
    """array_grow (core/array.pxi) behind every table: address spaces,
    files, userfaultfd contexts, hugetlb reservation maps and the free
    stacks of page-table pages each outgrow their first allocation; a
    growth that lost or moved an entry would show in check() or in what
    the processes read back."""
    from mmemu import constants as C
    m = mmemu.Machine(memory=160 << 20, hugepages={2 << 20: 48})
    procs = []
    for i in range(40):
        p = m.spawn()
        a = p.mmap(0, PAGE, C.PROT_READ | C.PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS)
        p.write(a, bytes([i]))
        h = p.mmap(0, 2 << 20, C.PROT_READ | C.PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | C.MAP_HUGETLB)
        fd = p.memfd_create("f", 0)
        p.ftruncate(fd, PAGE)
        p.userfaultfd(0)
        procs.append((p, a, h))
    assert m.hugepages[2 << 20]["resv_hugepages"] == 40
    for i, (p, a, h) in enumerate(procs):
        assert p.read(a, 1) == bytes([i])
    m.check()
    for p, a, h in procs[::2]:
        p.exit()
    for i, (p, a, h) in enumerate(procs[1::2]):
        assert p.read(a, 1) == bytes([2 * i + 1])
    assert m.hugepages[2 << 20]["resv_hugepages"] == 20
    m.check()


def test_page_walks_keep_apart_gigabytes_that_share_an_index():
    """The MMU walk and the PMD-level lookup remember the PMD directory of
    the last 1 GiB reached (core/pgtable.pxi pmd_dir): addresses 1 GiB and
    512 GiB apart (the same PUD index under another PGD entry) each need
    their own directory, in any order of access, THP faults included."""
    G = 1 << 30
    m = mmemu.Machine(memory=64 << 20, thp="madvise")
    p = m.spawn()
    bases = [3 * G, 4 * G, 3 * G + (512 * G), 3 * G + 2 * (512 * G)]
    for b in bases:
        p.mmap(b, 4 << 20, RW, PRIV | mmemu.constants.MAP_FIXED)
        p.madvise(b + (2 << 20), 2 << 20, mmemu.constants.MADV_HUGEPAGE)
    # Base pages 0 and 1 of each region, then a THP at +2 MiB, interleaved.
    addrs = np.array([b + off for off in (0, PAGE, 2 << 20) for b in bases] * 2, np.uint64)
    p.thread().replay(addrs, np.ones(len(addrs), np.uint8))
    pfns = [p.pagemap(int(a)).pfn for a in addrs[:len(addrs) // 2]]
    assert len(set(pfns)) == len(pfns)               # every page its own frame
    v = [int(p.versions(int(a), 1)[0]) for a in addrs[:len(addrs) // 2]]
    assert v == list(range(len(v) + 1, 2 * len(v) + 1))   # each page's last store, its own
    assert m.stats()["thp_fault_alloc"] == len(bases)
    m.check()
    last = int(addrs[-1])
    p.exit()
    # The same mm id: nothing of p's walks may be remembered. Remembering
    # p's last directory, q's first access would walk p's freed tables to
    # p's old page there and take no fault.
    q = m.spawn()
    assert q.mm == p.mm
    for b in (bases[0], bases[-1]):
        q.mmap(b, 4 << 20, RW, PRIV | mmemu.constants.MAP_FIXED)
    q.thread().replay(np.array([bases[-1], last, bases[0]], np.uint64), np.ones(3, np.uint8))
    assert [int(q.versions(a, 1)[0]) for a in (bases[-1], last, bases[0])] == [v[-1] + k for k in (1, 2, 3)]
    m.check()


def _smaps_field(addr, field):
    """`field` of the /proc/self/smaps entry of the mapping holding addr."""
    cur = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()[0]
        if re.fullmatch(r"[0-9a-f]+-[0-9a-f]+", head):
            lo, hi = (int(x, 16) for x in head.split("-"))
            cur = lo <= addr < hi
        elif cur and line.startswith(field + ":"):
            return line.split()[1]
    return None


def test_a_large_frame_table_lives_in_memory_advised_for_host_huge_pages():
    """frame_table_array: each per-frame array of 2 MiB or more is zeroed,
    writable, 2 MiB-aligned and in a mapping the host may back with huge
    pages (smaps THPeligible, where the host has THP at all); a small one
    is plain memory."""
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    m = mmemu.Machine(memory=4 << 30)           # 1M frames: 2 MiB of flags, 8 MiB of versions
    e = m._engine
    for name in ("refcount", "mapcount", "version", "fflags", "mapping", "index"):
        a = getattr(e, name)
        assert len(a) == e.nframes and a.flags.writeable and a.ctypes.data % (2 << 20) == 0
        # Resident before any fault (MADV_POPULATE_WRITE, or a fill on a host before 5.14).
        assert int(_smaps_field(a.ctypes.data, "Rss")) * 1024 >= a.nbytes, name
        assert not a[1:].any()
        if thp.exists() and "[never]" not in thp.read_text() and _smaps_field(a.ctypes.data, "THPeligible"):
            assert _smaps_field(a.ctypes.data, "THPeligible") == "1", name
    assert mmemu.Machine(memory=16 << 20)._engine.version.base is None     # 32 KiB: numpy's own


@pytest.mark.skipif(not hasattr(os, "uname") or tuple(int(x) for x in re.findall(r"\d+", os.uname().release)[:2]) < (5, 14),
                    reason="the host lacks MADV_POPULATE_WRITE (5.14): tables fault in on first use there")
@pytest.mark.parametrize("thp", ["always", "never"])
def test_the_first_fault_of_a_fresh_machine_takes_no_host_page_fault(thp):
    """The frame table, the pte pages and the directories a first fault
    allocates (a PUD and a PMD) are resident before it: a host page fault
    there cost several times the emulated fault (a few microseconds here)."""
    def fresh():
        m = mmemu.Machine(memory=64 << 20, thp=thp)
        p = m.spawn()
        raw = p.mmap(0, 4 << 20, RW, PRIV)
        a = (raw + (2 << 20) - 1) & ~((2 << 20) - 1)
        p.madvise(a, 2 << 20, mmemu.MADV_HUGEPAGE)
        return m, p, np.array([a], np.uint64), np.ones(1, np.uint8)
    faults = []
    for _ in range(5):
        m, p, x, w = fresh()
        before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
        m._engine.replay(p.mm, 0, x, w)
        faults.append(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before)
        assert p.pagemap(int(x[0])).present and (m.stats()["thp_fault_alloc"] == 1) == (thp == "always")
    # A table left to fault in on use faults in every fresh machine's first
    # fault; Python's own allocations in the call (a new pymalloc pool) may
    # add a host fault now and then: the least count is the engine's.
    assert min(faults) == 0, faults


def test_stat_delta_is_the_growth_of_the_counters_it_is_asked_for():
    """Engine.stat_delta(): replay()'s counts, built in the core from a
    stat_values() list; a list of another length or an index outside
    STAT_NAMES is refused."""
    m = mmemu.Machine(memory=16 << 20)
    p = m.spawn()
    e = m._engine
    a = p.mmap(0, 4 * PAGE, RW, PRIV)
    before = e.stat_values()
    p.touch(a, 3, write=True)
    keys = (("faults", STAT_NAMES.index("faults")), ("cow", STAT_NAMES.index("cow")),
            ("tlb_misses", STAT_NAMES.index("tlb_misses")))
    assert e.stat_delta(before, keys) == {"faults": 3, "cow": 0, "tlb_misses": 3}
    assert e.stat_delta(e.stat_values(), keys) == {"faults": 0, "cow": 0, "tlb_misses": 0}
    with pytest.raises(ValueError, match="counters"):
        e.stat_delta(before[:-1], keys)
    for bad in (-1, len(STAT_NAMES)):
        with pytest.raises(ValueError, match="no counter"):
            e.stat_delta(before, (("x", bad),))
