"""Transparent huge pages: PMD-mapped anon THP, the huge zero page, PMD COW
and split, PTE-mapped large folios, the sysfs knobs and the mmap alignment,
each rule in the era the kernel has it (semantics.md 3.2, 6.9; core/huge.pxi).
"""
import errno

import pytest

import mmemu
from mmemu import constants as C
from mmemu.errors import WouldBlock
from mmemu.uffd import (O_NONBLOCK, UFFD_FEATURE_PAGEFAULT_FLAG_WP, UFFDIO_REGISTER_MODE_MISSING,
                        UFFDIO_REGISTER_MODE_WP, UFFDIO_WRITEPROTECT_MODE_WP)

PAGE = C.PAGE_SIZE
THP = C.PMD_SIZE
NR = THP // PAGE
RW = C.PROT_READ | C.PROT_WRITE
PRIV = C.MAP_PRIVATE | C.MAP_ANONYMOUS


def _thp_range(p, advise=True):
    """An aligned 2 MiB inside a private anon mapping (cow.c's way)."""
    raw = p.mmap(0, 2 * THP, RW, PRIV)
    mem = (raw + THP - 1) & ~(THP - 1)
    if advise:
        p.madvise(mem, THP, C.MADV_HUGEPAGE)
    return mem


def _pfns(p, mem, n=NR):
    return [p.pagemap(mem + i * PAGE).pfn for i in range(n)]


def _is_thp(m, p, mem):
    """PMD-mapped or PTE-mapped, the pages are one aligned large folio."""
    pf = _pfns(p, mem)
    return None not in pf and pf[0] % NR == 0 and pf == list(range(pf[0], pf[0] + NR)) \
        and "thp" in m.frame(pf[0]).flags


def _machine(kernel="6.18", **kw):
    return mmemu.Machine(kernel=kernel, memory=64 << 20, **kw)


def test_a_write_fault_in_a_madv_hugepage_range_maps_a_pmd_thp():
    m = _machine()
    p = m.spawn()
    mem = _thp_range(p)
    p.write(mem + 5 * PAGE, b"x")
    assert _is_thp(m, p, mem)
    head = p.pagemap(mem).pfn
    assert "compound_head" in m.frame(head).flags and "compound_tail" in m.frame(head + 7).flags
    assert all(p.pagemap(mem + i * PAGE).exclusive for i in (0, 1, NR - 1))
    # page_count of a tail is the folio's; kpagecount counts the PMD mapping.
    assert m.frame(head + 3).refcount == m.frame(head).refcount >= 1
    assert m.frame(head + 3).kpagecount == 1
    assert m.stats()["thp_fault_alloc"] == 1 and m.stats()["thp_split_pmd"] == 0
    assert p.read(mem + 5 * PAGE, 1) == b"x" and p.read(mem + 6 * PAGE, 1) == b"\0"
    m.check()


@pytest.mark.parametrize("enabled,advice,thp", [
    ("madvise", None, False), ("madvise", C.MADV_HUGEPAGE, True), ("always", None, True),
    ("always", C.MADV_NOHUGEPAGE, False), ("never", C.MADV_HUGEPAGE, False)])
def test_sysfs_enabled_and_the_vma_flags_decide(enabled, advice, thp):
    m = _machine(thp=enabled)
    p = m.spawn()
    mem = _thp_range(p, advise=False)
    if advice is not None:
        p.madvise(mem, THP, advice)
    p.write(mem, b"x")
    assert _is_thp(m, p, mem) is thp
    m.check()


def test_a_thp_needs_the_aligned_2mib_inside_the_vma_and_an_empty_pmd():
    m = _machine(thp="always")
    p = m.spawn()
    mem = _thp_range(p)
    p.munmap(mem + THP - PAGE, PAGE)           # the block no longer fits in one VMA
    p.write(mem, b"x")
    assert m.stats()["thp_fault_alloc"] == 0
    m2 = _machine(thp="never")
    q = m2.spawn()
    mem = _thp_range(q)
    q.write(mem, b"x")                         # a pte table now covers the block
    m2.thp.enabled = "always"
    q.write(mem + PAGE, b"y")
    assert m2.stats()["thp_fault_alloc"] == 0 and not _is_thp(m2, q, mem)


def test_a_read_fault_maps_the_huge_zero_page_unless_use_zero_page_is_off():
    m = _machine()
    p = m.spawn()
    mem = _thp_range(p)
    assert p.read(mem + 9 * PAGE, 1) == b"\0"
    e = p.pagemap(mem)
    # pagemap_pmd_range: the huge zero page is not anon, so PM_FILE, and
    # mapped by no one as far as mapcount goes.
    assert e.present and e.file_shared and not e.exclusive and e.pfn % NR == 0
    assert {"zero_page", "thp", "compound_head"} <= m.frame(e.pfn).flags
    assert m.stats()["thp_zero_page_alloc"] == 1
    m.thp.use_zero_page = 0
    q = m.spawn()
    mem = _thp_range(q)
    q.read(mem, 1)                             # a read gets a fresh, exclusive THP
    assert _is_thp(m, q, mem) and q.pagemap(mem).exclusive and not q.pagemap(mem).file_shared
    m.check()


@pytest.mark.parametrize("kernel,whole", [("5.7", True), ("5.8", False), ("6.12", False), ("6.13", True),
                                          ("6.18", True)])
def test_a_write_to_the_huge_zero_page_splits_it_from_5_8_until_6_13(kernel, whole):
    """3917c80280c9 (5.8): the PMD becomes 512 ptes of the small zero page
    and only the page written is copied; 5.7 allocated a whole THP, and so
    does 6.13 again (1ced09e0331f, do_huge_zero_wp_pmd)."""
    m = _machine(kernel)
    p = m.spawn()
    mem = _thp_range(p)
    p.read(mem, 1)
    p.write(mem + 3 * PAGE, b"w")
    if whole:
        assert _is_thp(m, p, mem) and m.stats()["thp_split_pmd"] == 0
    else:
        assert p.pagemap(mem + 2 * PAGE).pfn == 0 and not p.pagemap(mem + 2 * PAGE).file_shared
        assert p.pagemap(mem + 3 * PAGE).pfn != 0 and m.stats()["thp_split_pmd"] == 1
    assert p.read(mem + 3 * PAGE, 1) == b"w"
    m.check()


@pytest.mark.parametrize("kernel,whole", [("5.7", True), ("5.8", False), ("6.1", False)])
def test_a_cow_after_fork_copies_the_thp_before_5_8_and_one_page_after(kernel, whole):
    m = _machine(kernel)
    p = m.spawn()
    mem = _thp_range(p)
    p.write(mem, b"\x01" * THP)
    before = _pfns(p, mem)
    c = p.fork()
    p.write(mem + 7 * PAGE, b"\xff")
    after = _pfns(p, mem)
    assert _pfns(c, mem) == before and c.read(mem + 7 * PAGE, 1) == b"\x01"
    if whole:
        assert _is_thp(m, p, mem) and after[0] != before[0]
    else:
        changed = [i for i in range(NR) if after[i] != before[i]]
        assert changed == [7] and m.stats()["thp_split_pmd"] == 1
    m.check()


@pytest.mark.parametrize("kernel,reused", [("5.10", True), ("5.17", True), ("5.18", False), ("6.18", False)])
def test_a_shared_thp_with_a_gup_reference_is_reused_by_mapcount_until_5_18(kernel, reused):
    """B2a: do_huge_pmd_wp_page reused by mapcount until 3bff7e3f1f16 (5.18):
    a pipe's reference to the THP does not stop the parent's write."""
    m = _machine(kernel)
    p = m.spawn()
    mem = _thp_range(p)
    p.write(mem, b"\x01" * THP)
    c = p.fork()
    pipe = c.vmsplice(mem, PAGE)
    c.munmap(mem, THP)
    head = p.pagemap(mem).pfn
    p.write(mem, b"\xff")
    assert (p.pagemap(mem).pfn == head) is reused
    assert (pipe.read(PAGE)[:1] == b"\xff") is reused
    m.check()


@pytest.mark.parametrize("kernel,copied", [("5.8", False), ("5.9", True), ("6.18", True)])
def test_fork_splits_a_pinned_thp_and_copies_it_for_the_child_from_5_9(kernel, copied):
    """d042035eaf5f (5.9): a maybe-pinned THP is split at fork and its pages
    copied into the child (copy_present_page), the parent keeping the pin."""
    m = _machine(kernel)
    p = m.spawn()
    mem = _thp_range(p)
    p.write(mem, b"\x01" * THP)
    pin = p.pin_user_pages(mem, 1, C.FOLL_WRITE | C.FOLL_LONGTERM)
    before = _pfns(p, mem)
    c = p.fork()
    assert _pfns(p, mem) == before
    child = _pfns(c, mem)
    assert (set(child).isdisjoint(before)) is copied
    p.write(mem, b"\xff")
    # Shared at fork (5.8), the parent's write copies away from its own pin.
    assert (pin.read(0, 1) == b"\xff") is copied
    assert c.read(mem, 1) == b"\x01"
    pin.release()
    m.check()


@pytest.mark.parametrize("pmd_mapped", [True, False])
def test_fork_does_not_take_a_thp_with_many_pipe_references_for_pinned(pmd_mapped):
    """A large folio counts its pins exactly (folio->_pincount, 47e29d32afba,
    5.7), so fork in a process that has pinned something (MMF_HAS_PINNED)
    shares a THP that pipes hold 1024 references to: a refcount past
    GUP_PIN_COUNTING_BIAS is no pin. If the engine guessed from the
    refcount, the child would get copies of the exclusive pages."""
    m = _machine()
    p = m.spawn()
    other = p.mmap(0, PAGE, RW, PRIV)
    pin = p.pin_user_pages(other, 1, C.FOLL_WRITE | C.FOLL_LONGTERM)      # MMF_HAS_PINNED
    mem = _thp_range(p)
    p.write(mem, b"\x01" * THP)
    if not pmd_mapped:
        p.mprotect(mem + PAGE, PAGE, C.PROT_READ)   # 512 pte mappings, still one folio
        p.mprotect(mem + PAGE, PAGE, RW)
    pipes = [p.vmsplice(mem, THP) for _ in range(2)]
    assert m.frame(p.pagemap(mem).pfn).refcount >= C.GUP_PIN_COUNTING_BIAS
    before = _pfns(p, mem)
    c = p.fork()
    assert _pfns(c, mem) == before
    for pipe in pipes:
        pipe.close()
    pin.release()
    m.check()


def test_partial_mprotect_splits_the_pmd_and_the_folio_stays_large():
    m = _machine()
    p = m.spawn()
    mem = _thp_range(p)
    p.write(mem, b"x")
    before = _pfns(p, mem)
    p.mprotect(mem + PAGE, PAGE, C.PROT_READ)
    assert m.stats()["thp_split_pmd"] == 1 and _pfns(p, mem) == before and _is_thp(m, p, mem)
    p.mprotect(mem, THP, C.PROT_READ)          # whole leaves are not split
    m.check()
    p.mprotect(mem, THP, RW)
    p.write(mem + 2 * PAGE, b"y")              # exclusive pages: reused, not copied
    assert _pfns(p, mem) == before
    m.check()


def test_partial_munmap_keeps_the_folio_until_its_last_mapping_goes():
    m = _machine()
    p = m.spawn()
    mem = _thp_range(p)
    p.write(mem, b"x")
    head = p.pagemap(mem).pfn
    free = m._engine.nr_free
    p.munmap(mem + PAGE, PAGE)                 # deferred split: nothing is freed yet
    assert m._engine.nr_free == free and m.frame(head + 1).refcount > 0
    p.munmap(mem, THP)
    assert m._engine.nr_free >= free + NR - 1
    m.check()


def test_whole_pmd_munmap_and_dontneed_zap_the_leaf_without_splitting():
    m = _machine()
    p = m.spawn()
    mem = _thp_range(p)
    p.write(mem, b"x")
    free = m._engine.nr_free
    p.madvise(mem, THP, C.MADV_DONTNEED)
    assert m.stats()["thp_split_pmd"] == 0 and m._engine.nr_free > free + NR - 1
    assert not p.pagemap(mem).present
    m.check()


@pytest.mark.parametrize("kernel,reused", [
    ("5.7", True), ("5.10", False), ("6.1", False), ("6.8", False), ("6.9", False),
    ("6.14", False), ("6.15", True), ("6.18", True)])
def test_cow_of_a_pte_mapped_thp_after_fork_per_era(kernel, reused):
    """A PTE-mapped THP whose child has exited: 5.7's reuse_swap_page()
    reuses (each page mapped once); 5.9-5.18 the folio's refcount (512) is
    not 1; 5.19-6.14 the pages lost PageAnonExclusive at fork and large
    folios are never reused (781a3ca5c345 in 6.9 makes that explicit);
    1da190f4d0a6 (6.15) reuses a folio this mm alone maps."""
    m = _machine(kernel)
    p = m.spawn()
    mem = _thp_range(p)
    p.write(mem, b"\x01" * THP)
    p.mprotect(mem + PAGE, PAGE, C.PROT_READ)
    p.mprotect(mem + PAGE, PAGE, RW)
    p.fork().exit()
    before = p.pagemap(mem).pfn
    p.write(mem, b"\xff")
    assert (p.pagemap(mem).pfn == before) is reused
    m.check()


def test_the_exclusive_owner_test_of_6_15_counts_another_processes_mappings():
    m = _machine("6.18")
    p = m.spawn()
    mem = _thp_range(p)
    p.write(mem, b"\x01" * THP)
    p.mprotect(mem + PAGE, PAGE, C.PROT_READ)
    p.mprotect(mem + PAGE, PAGE, RW)
    c = p.fork()
    c.munmap(mem, PAGE)                        # the child still maps the other 511 pages
    before = p.pagemap(mem).pfn
    p.write(mem, b"\xff")
    assert p.pagemap(mem).pfn != before and c.read(mem + PAGE, 1) == b"\x01"
    m.check()


@pytest.mark.parametrize("kernel,length,aligned", [
    ("6.6", 4 * THP // 2, False), ("6.7", 3 * THP // 2, True), ("6.11", 3 * THP // 2, True),
    ("6.12", 3 * THP // 2, False), ("6.12", 2 * THP, True), ("6.18", 4 * THP, True),
    ("6.18", THP // 2, False)])
def test_anonymous_mmap_is_thp_aligned_from_6_7_and_only_for_multiples_from_6_12(kernel, length, aligned):
    m = _machine(kernel, seed=1)
    p = m.spawn()
    a = p.mmap(0, length, RW, PRIV)
    b = p.mmap(0, length, RW, PRIV)
    assert (a % THP == 0 and b % THP == 0) is aligned
    m.check()


def test_uffd_missing_on_a_thp_vma_reports_the_page_and_copy_builds_ptes():
    m = _machine()
    p = m.spawn()
    mem = _thp_range(p)
    u = p.userfaultfd(O_NONBLOCK)
    u.api(0)
    u.register(mem, THP, UFFDIO_REGISTER_MODE_MISSING)
    with pytest.raises(WouldBlock) as e:
        p.read(mem + 3 * PAGE + 5, 1)
    assert e.value.msg.address == mem + 3 * PAGE
    u.copy(mem + 3 * PAGE, b"c" * PAGE)
    assert p.main.resume() == b"c"
    assert m.stats()["thp_fault_alloc"] == 0 and not _is_thp(m, p, mem)
    m.check()


def test_uffd_wp_on_a_whole_thp_keeps_the_pmd_and_a_partial_one_splits_it():
    m = _machine()
    p = m.spawn()
    mem = _thp_range(p)
    u = p.userfaultfd(O_NONBLOCK)
    u.api(UFFD_FEATURE_PAGEFAULT_FLAG_WP)
    u.register(mem, THP, UFFDIO_REGISTER_MODE_WP)
    p.write(mem, b"x")                          # a WP-only VMA gets a THP
    assert m.stats()["thp_fault_alloc"] == 1
    u.writeprotect(mem, THP, UFFDIO_WRITEPROTECT_MODE_WP)
    assert m.stats()["thp_split_pmd"] == 0 and p.pagemap(mem + 9 * PAGE).uffd_wp
    with pytest.raises(WouldBlock) as e:
        p.write(mem + 9 * PAGE, b"y")
    assert e.value.msg.address == mem + 9 * PAGE and m.stats()["thp_split_pmd"] == 0
    u.writeprotect(mem + 9 * PAGE, PAGE, 0)    # part of the leaf: split
    p.main.resume()
    assert p.read(mem + 9 * PAGE, 1) == b"y"
    u.writeprotect(mem + PAGE, PAGE, 0)
    assert m.stats()["thp_split_pmd"] == 1 and not p.pagemap(mem + PAGE).uffd_wp
    assert p.pagemap(mem).uffd_wp and _is_thp(m, p, mem)
    m.check()


def test_a_machine_with_thps_saves_and_loads():
    m = _machine()
    p = m.spawn()
    mem = _thp_range(p)
    p.write(mem, b"s")
    m2 = m.__deepcopy__({})
    q = m2.processes[0]
    assert _is_thp(m2, q, mem) and q.read(mem, 1) == b"s"
    q.fork()
    q.write(mem, b"t")
    m2.check()
    assert p.read(mem, 1) == b"s"


def test_a_pmd_thp_costs_no_more_engine_state_than_its_base_pages():
    sizes = {}
    for enabled in ("always", "never"):
        m = _machine(thp=enabled)
        p = m.spawn()
        mem = _thp_range(p)
        p.write(mem, b"\x01" * THP)
        sizes[enabled] = m.memory_usage()
    assert sizes["always"]["page_tables"] <= sizes["never"]["page_tables"]


def test_the_sysfs_knobs_refuse_what_linux_refuses():
    with pytest.raises(ValueError):
        _machine(thp="sometimes")
    m = _machine()
    assert (m.thp.enabled, m.thp.defrag, m.thp.use_zero_page, m.thp.shmem_enabled) == \
        ("madvise", "madvise", 1, "never")
    with pytest.raises(ValueError):
        m.thp.defrag = "often"
    with pytest.raises(ValueError):
        m.thp.use_zero_page = 2
    with pytest.raises(ValueError):
        m.thp.shmem_enabled = "sometimes"
    m.thp.shmem_enabled = "always"          # shmem THP: tests/unit/test_shmem_thp.py
    assert m.thp.shmem_enabled == "always"
    m.thp.enabled = "always"
    assert m.thp.enabled == "always"


@pytest.mark.parametrize("kernel,reused", [
    ("5.7", True), ("5.10", True), ("5.18", True), ("6.8", True), ("6.9", False), ("6.15", False),
    ("6.18", False)])
def test_the_last_pte_of_a_large_folio_is_reused_until_6_9(kernel, reused):
    """single-PTE-THP after fork, the child gone: one pte maps the folio and
    nothing else holds it, so the small-page rules (mapcount to 5.8,
    refcount after) reuse it; 781a3ca5c345 (6.9) copies instead and frees
    the large folio, and 1da190f4d0a6 (6.15) keeps that for a folio mapped
    once."""
    m = _machine(kernel)
    p = m.spawn()
    mem = _thp_range(p)
    p.write(mem, b"\x01" * THP)
    p.madvise(mem + PAGE, THP - PAGE, C.MADV_DONTNEED)
    p.fork().exit()
    before = p.pagemap(mem).pfn
    p.write(mem, b"\xff")
    assert (p.pagemap(mem).pfn == before) is reused
    m.check()


@pytest.mark.parametrize("kernel,zero_remap", [("6.11", False), ("6.12", True), ("6.18", True)])
def test_a_partial_madv_cold_splits_the_folio_and_6_12_maps_zero_pages_to_the_zero_page(kernel, zero_remap):
    """madvise_cold_or_pageout_pte_range splits a large folio the range
    covers in part (this mm alone maps it); b1f202060afe (6.12) remaps the
    pages that are all zeros to the shared zero page as the split ends."""
    m = _machine(kernel)
    p = m.spawn()
    mem = _thp_range(p)
    p.write(mem + 3 * PAGE, b"x")
    before = _pfns(p, mem)
    p.madvise(mem + PAGE, PAGE, C.MADV_COLD)
    assert m.stats()["thp_split_page"] == 1
    assert "thp" not in m.frame(before[3]).flags and p.pagemap(mem + 3 * PAGE).pfn == before[3]
    if zero_remap:
        assert p.pagemap(mem + 4 * PAGE).pfn == 0 and p.pagemap(mem).pfn == 0
    else:
        assert _pfns(p, mem) == before
    assert p.read(mem + 3 * PAGE, 1) == b"x"
    m.check()


def test_a_folio_that_is_pinned_or_mapped_by_another_process_is_not_split():
    m = _machine()
    p = m.spawn()
    mem = _thp_range(p)
    p.write(mem, b"x")
    pin = p.pin_user_pages(mem, 1, C.FOLL_WRITE | C.FOLL_LONGTERM)
    p.madvise(mem + PAGE, PAGE, C.MADV_COLD)
    assert _is_thp(m, p, mem) and m.stats()["thp_split_page"] == 0
    pin.release()
    c = p.fork()
    p.madvise(mem + PAGE, PAGE, C.MADV_FREE)
    assert _is_thp(m, p, mem) and m.stats()["thp_split_page"] == 0
    c.exit()
    p.madvise(mem + PAGE, PAGE, C.MADV_FREE)
    assert m.stats()["thp_split_page"] == 1 and not _is_thp(m, p, mem)
    m.check()


def test_madv_pageout_of_a_thp_splits_it_and_swaps_its_pages_out():
    m = _machine(swap=8 << 20)
    p = m.spawn()
    mem = _thp_range(p)
    p.write(mem, b"x")
    p.write(mem + 9 * PAGE, b"y")
    p.madvise(mem, THP, C.MADV_PAGEOUT)
    assert p.pagemap(mem).swapped and p.pagemap(mem + 9 * PAGE).swapped
    assert p.pagemap(mem + 5 * PAGE).pfn == 0          # all zeros: the zero page (6.12+)
    assert p.read(mem, 1) == b"x" and p.read(mem + 9 * PAGE, 1) == b"y"
    m.check()


def _swapcache_after_rewrite(m, p, mem, written):
    """MADV_PAGEOUT over the THP at mem, then a write to each written page in
    turn: which of them the write fault left in the swapcache ("S")."""
    for i in written:
        p.write(mem + i * PAGE, b"w%d" % i)
    p.madvise(mem, THP, C.MADV_PAGEOUT)
    kept = ""
    for i in written:
        p.write(mem + i * PAGE, b"again")
        kept += "S" if "swapcache" in m.frame(p.pagemap(mem + i * PAGE).pfn).flags else "."
    m.check()
    return kept


@pytest.mark.parametrize("kernel,kept", [("6.11", "."), ("6.12", "S"), ("6.18", "S")])
def test_a_thp_page_swapped_out_alone_keeps_its_swapcache_on_the_write_fault(kernel, kept):
    """MADV_PAGEOUT of a THP written only at page 0: reclaim splits it; from
    b1f202060afe (6.12) its 511 all-zero pages go to the zero page and only
    page 0 is written out. reclaim_folio_list puts the 512 pages back through
    the per-CPU add batch (head first), so page 0 reaches the LRU when the
    zero pages behind it fill the batch; its write completes after madvise's
    block plug is flushed, and folio_end_writeback rotates it into the rotate
    batch, whose reference do_swap_page cannot drain (the folio is PG_lru):
    should_try_to_free_swap fails and the swapcache stays (6.18.44 host:
    pagemap + kpageflags, seed-41 diff program). Before 6.12 all 512 pages
    are written and rotated, whole batches that move at once: freed."""
    m = _machine(kernel, swap=8 << 20)
    p = m.spawn()
    assert _swapcache_after_rewrite(m, p, _thp_range(p), [0]) == kept


def test_a_base_page_swapped_out_alone_leaves_the_swapcache_on_the_write_fault():
    """The same on a base page: put back, it waits in the add batch (not on
    the LRU), is not rotated, and the write fault's local drain frees it."""
    m = _machine(swap=8 << 20)
    p = m.spawn()
    P = p.mmap(0, PAGE, RW, PRIV)
    p.write(P, b"x")
    pfn = p.pagemap(P).pfn
    p.madvise(P, PAGE, C.MADV_PAGEOUT)
    flags = m.frame(pfn).flags
    assert p.pagemap(P).swapped and "swapcache" in flags and "lru" not in flags
    p.write(P, b"y")
    assert "swapcache" not in m.frame(p.pagemap(P).pfn).flags
    m.check()


@pytest.mark.parametrize("kernel,kept", [
    # 9cecde80aae0 (6.9): batches of 31. Putback order 0, 511..1: the last 16
    # (16..1) stay in the add batch; 0 and 29..17 were rotated, 14 < 31.
    ("6.18", "S" + "." * 16 + "S" * 13),
    # Batches of 15 and no zero page (6.11): 510 of 512 rotated, all moved.
    ("6.8", "." * 30)])
def test_which_pages_of_a_split_thp_keep_their_swapcache(kernel, kept):
    """Pages 0..29 written, measured on the 6.18.44 host (process pinned to
    either CPU or not): 0 and 17..29 keep their swapcache on the rewrite."""
    m = _machine(kernel, swap=8 << 20)
    p = m.spawn()
    assert _swapcache_after_rewrite(m, p, _thp_range(p), range(30)) == kept


def test_a_saved_machine_keeps_its_rotate_batch():
    """The rotate batch is machine state: a copy keeps the reference, so its
    write fault keeps the swapcache too."""
    import copy
    m = _machine(swap=8 << 20)
    p = m.spawn()
    mem = _thp_range(p)
    p.write(mem, b"x")
    p.madvise(mem, THP, C.MADV_PAGEOUT)
    m2 = copy.deepcopy(m)
    p2 = m2.processes[0]
    p2.write(mem, b"y")
    assert "swapcache" in m2.frame(p2.pagemap(mem).pfn).flags
    m2.check()


def test_the_rotate_batch_reference_goes_with_a_drain_of_its_cpu():
    """lru_add_drain_all (here: migration's) moves the rotate batch too: the
    write fault then frees the swapcache."""
    m = _machine(swap=8 << 20, nodes=2)
    p = m.spawn()
    mem = _thp_range(p)
    p.write(mem, b"x")
    p.madvise(mem, THP, C.MADV_PAGEOUT)
    other = p.mmap(0, PAGE, RW, PRIV)
    p.write(other, b"o")
    p.move_pages([other], [1])
    p.write(mem, b"y")
    assert "swapcache" not in m.frame(p.pagemap(mem).pfn).flags
    m.check()


def _small_pages(p, mem, every=3):
    for i in range(0, NR, every):
        p.write(mem + i * PAGE, b"z%d" % i)


@pytest.mark.parametrize("kernel,ro_refused", [("6.1", True), ("6.17", True), ("6.18", False)])
def test_madv_collapse_copies_the_range_into_an_exclusive_thp(kernel, ro_refused):
    """MADV_COLLAPSE (6.1) ignores the sysfs setting: a fresh THP holds
    a copy, empty ptes read zeros, the THP is PageAnonExclusive even over
    pages shared with a child, which keeps its own. Until b9f85966d1be
    (6.18) a range with no writable pte (all COW-shared) is refused."""
    m = _machine(kernel, thp="never")
    p = m.spawn()
    mem = _thp_range(p, advise=False)
    _small_pages(p, mem)
    c = p.fork()
    shared = p.pagemap(mem + 3 * PAGE).pfn
    if ro_refused:
        with pytest.raises(OSError) as e:           # fork left every pte read-only: SCAN_PAGE_RO
            p.madvise(mem, THP, C.MADV_COLLAPSE)
        assert e.value.errno == errno.EINVAL
        p.write(mem + 6 * PAGE, b"q")               # one writable pte (a COW copy)
    p.madvise(mem, THP, C.MADV_COLLAPSE)
    assert _is_thp(m, p, mem) and "anon_exclusive" in m.frame(p.pagemap(mem).pfn).flags
    assert p.read(mem + 3 * PAGE, 2) == b"z3" and p.read(mem + PAGE, 1) == b"\0"
    assert c.pagemap(mem + 3 * PAGE).pfn == shared and c.read(mem + 3 * PAGE, 2) == b"z3"
    p.write(mem + PAGE, b"w")                    # writable, no COW
    assert _is_thp(m, p, mem)
    m.check()


def test_madv_collapse_errors_follow_madvise_collapse_errno():
    m = _machine("6.18")
    p = m.spawn()
    mem = _thp_range(p, advise=False)
    with pytest.raises(OSError) as e:               # no page table: SCAN_PMD_NONE
        p.madvise(mem, THP, C.MADV_COLLAPSE)
    assert e.value.errno == errno.EINVAL
    _small_pages(p, mem)
    pin = p.pin_user_pages(mem + 3 * PAGE, 1, C.FOLL_WRITE | C.FOLL_LONGTERM)
    with pytest.raises(OSError) as e:               # a pinned page: SCAN_PAGE_COUNT
        p.madvise(mem, THP, C.MADV_COLLAPSE)
    assert e.value.errno == errno.EAGAIN and not _is_thp(m, p, mem)
    pin.release()
    p.madvise(mem, THP, C.MADV_NOHUGEPAGE)
    with pytest.raises(OSError) as e:
        p.madvise(mem, THP, C.MADV_COLLAPSE)
    assert e.value.errno == errno.EINVAL
    p.madvise(mem, THP, C.MADV_HUGEPAGE)
    p.madvise(mem, THP, C.MADV_COLLAPSE)
    p.madvise(mem, THP, C.MADV_COLLAPSE)            # already a PMD THP: success
    assert _is_thp(m, p, mem)
    m.check()


@pytest.mark.parametrize("kernel,err", [("6.3", errno.EINVAL), ("6.4", errno.EBUSY)])
def test_madv_collapse_of_a_uffd_armed_range_with_holes(kernel, err):
    m = _machine(kernel, thp="never")
    p = m.spawn()
    mem = _thp_range(p, advise=False)
    _small_pages(p, mem)
    u = p.userfaultfd(O_NONBLOCK)
    u.api(UFFD_FEATURE_PAGEFAULT_FLAG_WP)
    u.register(mem, THP, UFFDIO_REGISTER_MODE_WP)
    with pytest.raises(OSError) as e:
        p.madvise(mem, THP, C.MADV_COLLAPSE)
    assert e.value.errno == err
    m.check()


def test_madv_collapse_is_einval_before_6_1():
    m = _machine("6.0")
    p = m.spawn()
    mem = _thp_range(p)
    p.write(mem, b"x")
    with pytest.raises(OSError) as e:
        p.madvise(mem, THP, C.MADV_COLLAPSE)
    assert e.value.errno == errno.EINVAL


@pytest.mark.parametrize("aligned", [True, False])
def test_mremap_moves_an_aligned_pmd_whole_and_splits_otherwise(aligned):
    """move_huge_pmd(): with both ends 2 MiB aligned the leaf moves as one
    (still PMD-mapped: a write after fork copies by the PMD rules); else
    the PMD is split and its ptes move."""
    m = _machine("6.12")
    p = m.spawn()
    mem = _thp_range(p)
    p.write(mem, b"\x01" * THP)
    before = _pfns(p, mem)
    raw = p.mmap(0, 3 * THP, C.PROT_NONE, PRIV)
    to = ((raw + THP - 1) & ~(THP - 1)) + (0 if aligned else PAGE)
    new = p.mremap(mem, THP, THP, C.MREMAP_MAYMOVE | C.MREMAP_FIXED, to)
    assert new == to and _pfns(p, to) == before
    assert m.stats()["thp_split_pmd"] == (0 if aligned else 1)
    p.fork().exit()
    p.write(to, b"\xff")
    # PMD-mapped: reused by refcount (5.18+); PTE-mapped in 6.9-6.14: copied.
    assert (p.pagemap(to).pfn == before[0]) is aligned
    m.check()


@pytest.mark.parametrize("ncpus", [1, 2, 3])
def test_a_pmd_split_drops_exactly_the_leafs_tlb_entries_on_every_cpu(ncpus):
    """pmd_flush scans one half of each CPU's TLB instead of probing each
    page (tlb_flush_pmd_block): if that half or the tag test were wrong, a
    CPU would keep a translation of the split leaf (a stale entry past its
    pte), or lose one of another mm or another 2 MiB."""
    import random
    rng = random.Random(ncpus)
    m = mmemu.Machine(memory=64 << 20, ncpus=ncpus, thp="always")
    ps = [m.spawn() for _ in range(3)]
    p = ps[0]
    raw = p.mmap(0, 5 * THP, RW, PRIV)
    mem = (raw + THP - 1) & ~(THP - 1)
    for i in range(4):
        p.write(mem + i * THP, b"x")
    eng = m._engine
    entries = set()
    for _ in range(3000):
        x = (rng.randrange(ncpus), rng.choice(ps).mm, mem + rng.randrange(-THP, 5 * THP, PAGE))
        eng._test_tlb_fill(*x, 5, False)
        entries.add(x)
    held = {x for x in entries if eng.tlb_entry(*x) is not None}
    blk = mem + rng.randrange(4) * THP
    p.mprotect(blk + 7 * PAGE, PAGE, C.PROT_READ)          # splits that leaf
    assert m.stats()["thp_split_pmd"] == 1
    gone = {x for x in held if x[1] == p.mm and blk <= x[2] < blk + THP}
    assert gone and held - gone
    assert {x for x in held if eng.tlb_entry(*x) is None} == gone
