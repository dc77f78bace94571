"""A PMD leaf installed by a THP fault keeps its deposited table unexpanded
(entry 0 and a mark, core/huge.pxi set_pmd_leaf): the MMU fills the TLB
from entry 0 plus the page's offset, and every pte-level reader gets the
table written out first (pmd_leaf_table). Each test says what a reader
would get wrong if the expansion were missed or wrong.
"""
import numpy as np
import pytest

import mmemu
from mmemu import constants as C

PAGE = C.PAGE_SIZE
THP = C.PMD_SIZE
NR = THP // PAGE
RW = C.PROT_READ | C.PROT_WRITE
PRIV = C.MAP_PRIVATE | C.MAP_ANONYMOUS
PTE_WRITE, PTE_YOUNG = 1 << 1, 1 << 3          # core/mm_types.h
PMD_LEAF_UNEXPANDED = 0x4C415A5900000000        # core/mm_types.h


def _thp(kernel="6.18", memory=64 << 20):
    m = mmemu.Machine(kernel=kernel, memory=memory, thp="madvise")
    p = m.spawn()
    raw = p.mmap(0, 2 * THP, RW, PRIV)
    mem = (raw + THP - 1) & ~(THP - 1)
    p.madvise(mem, THP, C.MADV_HUGEPAGE)
    return m, p, mem


def _leaf(m, p, va):
    return m._engine._test_pmd_leaf(p.mm, va)


def _fault(p, va, write=True):
    p.thread().replay(np.array([va], np.uint64), np.array([write], np.uint8))


@pytest.mark.parametrize("kernel", ["5.7", "6.18"])
def test_a_pmd_fault_leaves_the_table_unexpanded_and_check_does_not_expand_it(kernel):
    m, p, mem = _thp(kernel)
    _fault(p, mem)
    assert m.stats()["thp_fault_alloc"] == 1
    unexpanded, pte = _leaf(m, p, mem + 7 * PAGE)
    assert unexpanded and pte & PTE_WRITE
    m.check()
    # check() reads the leaf as it is: had it expanded it, a reader that
    # forgot to would pass every test that calls check() first.
    assert _leaf(m, p, mem)[0]


def test_every_page_of_an_unexpanded_leaf_is_its_own_frame_through_the_tlb():
    """Each access misses the TLB and is filled from entry 0: without the
    page's offset every page would be the head page (the writes below would
    all land on one frame)."""
    m, p, mem = _thp()
    _fault(p, mem + 5 * PAGE)
    addrs = np.arange(mem, mem + THP, PAGE, dtype=np.uint64)
    p.thread().replay(addrs, np.ones(NR, np.uint8))
    assert _leaf(m, p, mem)[0]                  # young and dirty already: nothing to write
    for i in (0, 1, 2, 123, NR - 1):
        p.write(mem + i * PAGE, bytes([i & 0xff or 1]))
    assert _leaf(m, p, mem)[0]
    head = m._engine._test_pmd_leaf(p.mm, mem)[1] >> 12
    assert [p.read(mem + i * PAGE, 1) for i in (0, 1, 2, 123, NR - 1)] == \
        [bytes([i & 0xff or 1]) for i in (0, 1, 2, 123, NR - 1)]
    # pagemap is a pte-level reader: the table is written out for it.
    assert [p.pagemap(mem + i * PAGE).pfn for i in range(NR)] == list(range(head, head + NR))
    assert _leaf(m, p, mem)[0] is False
    m.check()


def test_a_walk_that_must_set_young_writes_the_leaf_out():
    """fork() gives the child the leaf old (young clear) and unexpanded: the
    child's first read sets young on that page's entry, which needs the
    entries to exist (missed, the entry would stay old)."""
    m, p, mem = _thp()
    _fault(p, mem)
    c = p.fork()
    unexpanded, pte = _leaf(m, c, mem + 9 * PAGE)
    assert unexpanded and not pte & (PTE_YOUNG | PTE_WRITE)
    assert _leaf(m, p, mem)[0] and not _leaf(m, p, mem)[1] & PTE_WRITE   # parent write-protected
    assert c.read(mem + 9 * PAGE, 1) == b"\0"
    unexpanded, pte = _leaf(m, c, mem + 9 * PAGE)
    assert not unexpanded and pte & PTE_YOUNG
    assert not _leaf(m, c, mem + 10 * PAGE)[1] & PTE_YOUNG
    m.check()


def test_fork_and_cow_of_an_unexpanded_leaf():
    """If fork missed write-protecting the unexpanded parent leaf, the
    parent's write would reach the page the child still maps."""
    m, p, mem = _thp()
    p.write(mem + 3 * PAGE, b"a")
    c = p.fork()
    p.write(mem + 3 * PAGE, b"b")
    assert c.read(mem + 3 * PAGE, 1) == b"a" and p.read(mem + 3 * PAGE, 1) == b"b"
    assert p.pagemap(mem + 3 * PAGE).pfn != c.pagemap(mem + 3 * PAGE).pfn
    assert p.pagemap(mem + 4 * PAGE).pfn == c.pagemap(mem + 4 * PAGE).pfn
    m.check()


def test_the_5_7_whole_thp_cow_keeps_an_unexpanded_leaf_unexpanded():
    """Before 5.8 a COW copies the THP whole and maps the copy by the same
    table: entry 0 alone changes; an expanded table would be rewritten."""
    m, p, mem = _thp("5.7")
    p.write(mem, b"a")
    c = p.fork()
    old = _leaf(m, p, mem)[1] >> 12
    _fault(p, mem + 200 * PAGE)
    unexpanded, pte = _leaf(m, p, mem + 200 * PAGE)
    assert unexpanded and pte & PTE_WRITE and (pte >> 12) != old + 200
    assert p.read(mem, 1) == b"a" and c.pagemap(mem).pfn == old
    m.check()


def test_split_of_an_unexpanded_leaf_maps_every_page_by_its_own_pte():
    """An mprotect of one page splits the leaf: each pte maps its page with
    the leaf's bits (a split that read the unwritten entries would map
    garbage)."""
    m, p, mem = _thp()
    _fault(p, mem)
    head = _leaf(m, p, mem)[1] >> 12
    p.mprotect(mem + 100 * PAGE, PAGE, C.PROT_READ)
    assert m.stats()["thp_split_pmd"] == 1 and _leaf(m, p, mem) is None
    assert [p.pagemap(mem + i * PAGE).pfn for i in range(NR)] == list(range(head, head + NR))
    p.write(mem + 101 * PAGE, b"w")
    assert p.read(mem + 101 * PAGE, 1) == b"w"
    m.check()


def test_zap_and_reuse_of_an_unexpanded_leaf():
    m, p, mem = _thp()
    _fault(p, mem)
    free = m._engine.nr_free
    p.madvise(mem, THP, C.MADV_DONTNEED)
    assert _leaf(m, p, mem) is None and m._engine.nr_free == free + NR
    _fault(p, mem + PAGE)
    assert _leaf(m, p, mem)[0] and p.read(mem + 2 * PAGE, 1) == b"\0"
    m.check()


def test_a_saved_unexpanded_leaf_holds_no_stale_entries_and_loads_back(tmp_path):
    """The deposit is a freed pte page here, still holding the expansion of
    an earlier leaf (a withdrawn deposit is not cleared): entries 2.. of
    the unexpanded leaf are saved as zeros (the state depends on the
    operations alone, not on what the pool page held), and the loaded leaf
    still reads as its expansion."""
    m, p, mem = _thp()
    raw = p.mmap(0, 2 * THP, RW, PRIV)
    other = (raw + THP - 1) & ~(THP - 1)
    p.madvise(other, THP, C.MADV_HUGEPAGE)
    _fault(p, other)
    assert p.pagemap(other + 5 * PAGE).present and not _leaf(m, p, other)[0]    # written out
    p.madvise(other, THP, C.MADV_DONTNEED)     # its deposit back to the pool, as it is
    _fault(p, mem + 3 * PAGE)
    unexpanded, pte0 = _leaf(m, p, mem)
    assert unexpanded
    pte = m._engine.get_state()["pte"].view(np.uint64).reshape(-1, 512)
    rows = pte[pte[:, 1] == PMD_LEAF_UNEXPANDED]
    assert len(rows) == 1 and rows[0, 0] == pte0 and not rows[0, 2:].any()
    m.save(tmp_path / "m")
    m2 = mmemu.Machine.load(tmp_path / "m")
    p2 = m2.processes[0]
    assert _leaf(m2, p2, mem)[0]
    assert p2.pagemap(mem + 300 * PAGE).pfn == (pte0 >> 12) + 300
    assert p2.read(mem + 4 * PAGE, 1) == b"\0" and p2.read(mem + 3 * PAGE, 1) == p.read(mem + 3 * PAGE, 1)
    m2.check()


# ---- the tails' flags of a THP faulted by replay/touch (core/huge.pxi thp_tails) ----
# Those loops leave the 511 tail flags unwritten (FAULT_FLAG_BATCH); every
# other way to a tail page writes them out first. Each test below reaches a
# tail by one of those ways and fails if it saw the unwritten (zero) flags.

PG_ANON, PG_TAIL, PG_USED = 1 << 0, 1 << 13, 1 << 15          # core/mm_types.h


def _replayed_thps(n, fault=None, memory=64 << 20, swap=0):
    """n THP-sized blocks MADV_HUGEPAGE'd, the first `fault` (all) faulted by one replay."""
    fault = n if fault is None else fault
    m = mmemu.Machine(memory=memory, swap=swap, thp="madvise")
    p = m.spawn()
    raw = p.mmap(0, (n + 1) * THP, RW, PRIV)
    mem = (raw + THP - 1) & ~(THP - 1)
    p.madvise(mem, n * THP, C.MADV_HUGEPAGE)
    p.thread().replay(np.arange(mem, mem + fault * THP, THP, dtype=np.uint64), np.ones(fault, np.uint8))
    assert m.stats()["thp_fault_alloc"] == fault
    return m, p, mem


def test_a_replayed_pmd_faults_tails_read_as_tails_from_python():
    m, p, mem = _replayed_thps(3, fault=2)
    e = m._engine
    head = int(np.flatnonzero(e.fflags & (1 << 12))[0])    # the array first, as C would read it
    tails = e.fflags[head + 1:head + NR]
    assert np.all(tails & (PG_TAIL | PG_USED | PG_ANON) == PG_TAIL | PG_USED | PG_ANON)
    p.thread().replay(np.array([mem + 2 * THP + 5 * PAGE], np.uint64), np.ones(1, np.uint8))
    assert m.stats()["thp_fault_alloc"] == 3
    f = m.frame(p.pagemap(mem + 2 * THP + 300 * PAGE).pfn)     # Engine entries
    assert "buddy" not in f.flags and {"anon", "thp", "compound_tail"} <= f.flags
    m.check()


def test_a_write_call_keeps_the_bytes_it_stored_in_a_fresh_thp():
    """Engine.write faults the THP and stores bytes in its tails within one
    call: that fault must write the tails' flags at once, or their byte-store
    flag would be overwritten when the flags are written out later."""
    m, p, mem = _thp()
    data = bytes(range(1, 256)) * 17
    p.write(mem + 9 * PAGE + 5, data)
    assert m.stats()["thp_fault_alloc"] == 1
    m.frame(0)
    assert p.read(mem + 9 * PAGE + 5, len(data)) == data
    m.check()


def test_direct_reclaim_inside_a_replay_sees_the_tails_of_thps_it_just_faulted():
    """Memory runs out within one replay: direct reclaim writes out the THPs
    that replay faulted a moment before (split or whole), which reads and
    rewrites their tail pages' flags."""
    nthp = 14
    m, p, mem = _replayed_thps(0, memory=32 << 20, swap=64 << 20)      # none faulted yet
    raw = p.mmap(0, (nthp + 1) * THP, RW, PRIV)
    thps = (raw + THP - 1) & ~(THP - 1)
    p.madvise(thps, nthp * THP, C.MADV_HUGEPAGE)
    base = p.mmap(0, 16 << 20, RW, PRIV)
    addrs = np.concatenate([np.arange(thps, thps + nthp * THP, THP, dtype=np.uint64),
                            np.arange(base, base + (16 << 20), PAGE, dtype=np.uint64)])
    r = p.thread().replay(addrs, np.ones(len(addrs), np.uint8))
    assert r["end"] == len(addrs)
    st = m.stats()
    assert st["thp_fault_alloc"] == nthp and st["swap_out"] > 0
    m.check()
    # Each THP's first page holds the version its write stored, the rest zeros.
    v = p.versions(thps, nthp * NR).reshape(nthp, NR)
    assert np.all(v[:, 0] != 0) and not v[:, 1:].any()


@pytest.mark.parametrize("pending", [0, 3])
def test_a_fresh_thp_reaches_the_lru_at_once_with_any_pages_waiting_in_the_batch(pending):
    """folio_add_lru(): a large folio moves the CPU's add batch at once, itself
    included (one drain), so it is on the LRU (PG_LRU) with no batch reference;
    base pages waiting there go with it."""
    m, p, mem = _replayed_thps(2, fault=0)
    t = p.thread()                              # one CPU: one batch
    base = p.mmap(0, pending * PAGE, RW, PRIV) if pending else 0
    if pending:
        t.replay(np.arange(base, base + pending * PAGE, PAGE, dtype=np.uint64), np.ones(pending, np.uint8))
        assert "lru" not in m.frame(p.pagemap(base).pfn).flags       # still in the batch
    drains = m.stats()["lru_drains"]
    t.replay(np.array([mem], np.uint64), np.ones(1, np.uint8))
    head = p.pagemap(mem).pfn
    assert "lru" in m.frame(head).flags and m.frame(head).refcount == 1
    assert m.stats()["lru_drains"] == drains + 1
    for i in range(pending):
        f = m.frame(p.pagemap(base + i * PAGE).pfn)
        assert "lru" in f.flags and f.refcount == 1
    m.check()
