"""Multi-size THP for anonymous memory (19eaf44954df, 6.8): the per-size
settings of /sys/kernel/mm/transparent_hugepage/hugepages-<size>kB/enabled
(Machine.thp.sizes), do_anonymous_page allocating the largest allowed folio
whose aligned range fits the VMA and is still empty (mm/memory.c 6.12
alloc_anon_folio), and what comes after: COW per era, fork, pins, partial
unmaps and the deferred split queue, the madvise splits, kpageflags,
Machine.check() and save/load."""
import errno

import pytest

import mmemu
import mmemu.constants as C
from anon_region import aligned_anon

PAGE = C.PAGE_SIZE
K64 = 64 << 10
RW = C.PROT_READ | C.PROT_WRITE
PRIV = C.MAP_PRIVATE | C.MAP_ANONYMOUS


def machine(kernel="6.12", sizes=None, thp="never", memory=64 << 20):
    m = mmemu.Machine(kernel=kernel, memory=memory, thp=thp)
    for size, v in (sizes or {}).items():
        m.thp.sizes[size] = v
    return m


def region(p, length=1 << 20, align=1 << 20):
    """An anon mapping of `length` at an `align`-aligned address."""
    return aligned_anon(p, length, align)


def order_at(m, p, addr):
    e = p.pagemap(addr)
    assert e.present
    return m.folio_order(e.pfn)


def used(m):
    return m.memory_usage()["frames_used"]


# ---- settings and era gates ---------------------------------------------------

def test_defaults_are_the_kernels_and_change_nothing():
    # hugepage_init_sysfs: the PMD size inherits, every smaller one is never.
    m = machine()
    assert m.thp.sizes[2 << 20] == "inherit"
    assert all(m.thp.sizes[s] == "never" for s in m.thp.sizes if s < 2 << 20)
    assert list(m.thp.sizes) == [PAGE << o for o in range(2, 10)]
    p = m.spawn()
    a = region(p)
    p.write(a, b"x" * (64 * PAGE))
    assert all(order_at(m, p, a + i * PAGE) == 0 for i in range(64))
    m.check()


@pytest.mark.parametrize("kernel", ["5.15", "6.7"])
def test_before_6_8_there_are_no_per_size_files(kernel):
    # No hugepages-<size>kB directories before 6.8: writing one is ENOENT.
    m = machine(kernel)
    assert list(m.thp.sizes) == []
    with pytest.raises(FileNotFoundError) as ei:
        m.thp.sizes[K64] = "always"
    assert ei.value.errno == errno.ENOENT
    with pytest.raises(FileNotFoundError):
        m.thp.sizes[K64]


@pytest.mark.parametrize("kernel", ["6.8", "6.12", "6.18"])
def test_from_6_8_a_size_set_always_allocates_on_a_write_fault(kernel):
    m = machine(kernel, {K64: "always"})
    p = m.spawn()
    a = region(p)
    p.write(a + 5 * PAGE, b"x")
    e = p.pagemap(a + 5 * PAGE)
    head = p.pagemap(a).pfn
    assert m.folio_order(e.pfn) == 4 and e.pfn == head + 5
    st = m.thp.sizes.stats(K64)
    assert (st["anon_fault_alloc"], st["anon_fault_fallback"]) == (1, 0)
    m.check()


def test_bad_settings_are_refused():
    m = machine()
    with pytest.raises(ValueError):
        m.thp.sizes[K64] = "sometimes"
    for size in (PAGE, 2 * PAGE, 3 * PAGE * 4, 4 << 20, 0, -PAGE):
        with pytest.raises(FileNotFoundError):
            m.thp.sizes[size] = "always"
    with pytest.raises(TypeError):
        m.thp.sizes["64K"] = "always"
    assert m.thp.sizes[K64] == "never"


def test_settings_round_trip():
    m = machine()
    for v in ("always", "madvise", "inherit", "never"):
        m.thp.sizes[K64] = v
        assert m.thp.sizes[K64] == v
    m.thp.sizes[2 << 20] = "never"
    assert m.thp.sizes[2 << 20] == "never"


# ---- which order do_anonymous_page allocates ----------------------------------

def test_the_new_folio_is_mapped_as_set_ptes_maps_it():
    # do_anonymous_page (6.12): one reference per pte on the folio, each page
    # mapped once and PageAnonExclusive, rss by 16, every pte young, dirty,
    # writable (the VMA may be written); pagemap exclusive, kpageflags THP.
    m = machine(sizes={K64: "always"})
    p = m.spawn()
    a = region(p)
    rss = p.rss_anon
    p.write(a + 3 * PAGE, b"x")
    head = p.pagemap(a).pfn
    for i in range(16):
        e = p.pagemap(a + i * PAGE)
        assert e.present and e.exclusive and e.pfn == head + i
        f = m.frame(head + i)
        assert f.kpagecount == 1 and f.refcount == 16
        assert {"anon", "anon_exclusive", "thp"} <= set(f.flags)
        assert ("compound_head" if i == 0 else "compound_tail") in f.flags
    assert p.read(a, 3 * PAGE) == bytes(3 * PAGE) and p.read(a + 3 * PAGE, 1) == b"x"
    assert p.rss_anon == rss + 16 * PAGE
    # Not yet 17: the page after the folio is still empty.
    assert not p.pagemap(a + 16 * PAGE).present
    m.check()


def test_a_read_fault_still_maps_the_zero_page():
    # do_anonymous_page: a read uses the zero page before alloc_anon_folio.
    m = machine(sizes={K64: "always"})
    p = m.spawn()
    a = region(p)
    assert p.read(a, 1) == b"\0"
    assert m.folio_order(p.pagemap(a).pfn) == 0 and "zero_page" in m.frame(p.pagemap(a).pfn).flags
    assert not p.pagemap(a + PAGE).present
    m.check()


def test_the_highest_order_whose_range_is_empty_wins():
    # alloc_anon_folio: pte_range_none over the aligned range, order by order.
    m = machine(sizes={16 << 10: "always"})
    p = m.spawn()
    a = region(p)
    p.write(a + 8 * PAGE, b"y")                 # a 16 KiB folio at 8..11
    m.thp.sizes[K64] = "always"
    p.write(a, b"x")                            # 64 KiB at 0..15 holds a pte: 16 KiB
    assert order_at(m, p, a) == 2 and not p.pagemap(a + 4 * PAGE).present
    p.write(a + 16 * PAGE, b"z")                # 16..31 is empty: 64 KiB
    assert order_at(m, p, a + 16 * PAGE) == 4
    m.check()


def test_no_order_fits_a_small_vma():
    # thp_vma_suitable_orders: the aligned range must lie inside the VMA.
    m = machine(sizes={K64: "always", 32 << 10: "always"})
    p = m.spawn()
    base = region(p, 2 << 20)
    p.munmap(base, 2 << 20)
    a = p.mmap(base + PAGE * 8, 8 * PAGE, RW, PRIV | C.MAP_FIXED)   # 32 KiB at an odd 32 KiB
    p.write(a, b"x")
    assert order_at(m, p, a) == 3                # 64 KiB would leave the VMA
    b = p.mmap(base + K64 * 4 + PAGE, 3 * PAGE, RW, PRIV | C.MAP_FIXED)
    p.write(b, b"x")
    assert order_at(m, p, b) == 0                # nothing fits: a base page
    m.check()


def test_a_userfaultfd_armed_vma_gets_base_pages():
    # alloc_anon_folio: "per-page fault fidelity" under uffd.
    m = machine(sizes={K64: "always"})
    p = m.spawn()
    a = region(p)
    u = p.userfaultfd()
    u.api()
    u.register(a, 1 << 20, C.UFFDIO_REGISTER_MODE_WP)
    p.write(a, b"x")
    assert order_at(m, p, a) == 0
    m.check()


@pytest.mark.parametrize("size_setting, enabled, hugepage, order", [
    ("always", "never", False, 4),
    ("madvise", "never", False, 0),
    ("madvise", "never", True, 4),
    ("inherit", "never", True, 0),
    ("inherit", "madvise", False, 0),
    ("inherit", "madvise", True, 4),
    ("inherit", "always", False, 4),
    ("never", "always", True, 0),
])
def test_thp_vma_allowable_orders(size_setting, enabled, hugepage, order):
    # huge_mm.h thp_vma_allowable_orders (6.12): always; madvise with
    # VM_HUGEPAGE; inherit as the top-level enabled says. A VMA smaller than
    # 2 MiB so the PMD size never applies.
    m = machine(sizes={K64: size_setting}, thp=enabled)
    p = m.spawn()
    a = region(p, 1 << 20)
    if hugepage:
        p.madvise(a, 1 << 20, C.MADV_HUGEPAGE)
    p.write(a, b"x")
    assert order_at(m, p, a) == order
    m.check()


def test_nohugepage_vma_gets_base_pages():
    m = machine(sizes={K64: "always"})
    p = m.spawn()
    a = region(p)
    p.madvise(a, 1 << 20, C.MADV_NOHUGEPAGE)
    p.write(a, b"x")
    assert order_at(m, p, a) == 0


def test_the_pmd_size_has_its_own_setting_from_6_8():
    # hugepages-2048kB/enabled: never turns PMD THPs off under enabled=always,
    # always turns them on under enabled=never.
    m = machine(thp="always")
    m.thp.sizes[2 << 20] = "never"
    p = m.spawn()
    a = region(p, 2 << 20, 2 << 20)
    p.write(a, b"x")
    assert order_at(m, p, a) == 0
    m = machine(thp="never")
    m.thp.sizes[2 << 20] = "always"
    p = m.spawn()
    a = region(p, 2 << 20, 2 << 20)
    p.write(a, b"x")
    assert order_at(m, p, a) == 9
    m.check()


def test_khugepaged_follows_the_pmd_size_setting():
    # hugepage_vma_check -> thp_vma_allowable_order(PMD_ORDER) with the
    # sysfs enforced: hugepages-2048kB=never keeps khugepaged off the VMA.
    for setting, made in (("inherit", 1), ("never", 0)):
        m = machine(thp="always")
        m.thp.sizes[2 << 20] = "never"          # base pages to collapse
        p = m.spawn()
        a = region(p, 2 << 20, 2 << 20)
        p.write(a, b"\x01" * (2 << 20))
        m.thp.sizes[2 << 20] = setting
        assert m.khugepaged_scan() == made, setting
        m.check()


def test_fallback_to_smaller_orders_when_no_block_is_left():
    # vma_alloc_folio fails (no free aligned block, no compaction here):
    # MTHP_STAT_ANON_FAULT_FALLBACK and the next order, then a base page.
    m = machine(sizes={K64: "always"}, memory=4 << 20)
    p = m.spawn()
    a = region(p, 3 << 20, K64)                # more than the one free 2 MiB block
    got = []
    for i in range(0, 3 << 20, K64):
        p.write(a + i, b"x")
        got.append(order_at(m, p, a + i))
    assert 4 in got and 0 in got
    assert m.thp.sizes.stats(K64)["anon_fault_fallback"] > 0
    m.check()


# ---- after the fault: COW, fork, pins, unmaps, splits --------------------------

def forked(kernel, child_exits=True):
    m = machine(kernel, {K64: "always"})
    p = m.spawn()
    a = region(p)
    p.write(a, b"\x01" * (32 * PAGE))          # two folios side by side in one block
    c = p.fork()
    if child_exits:
        c.exit()
    return m, p, c, a


@pytest.mark.parametrize("kernel, reused", [("6.8", False), ("6.9", False), ("6.12", False), ("6.15", True)])
def test_cow_of_an_mthp_page_per_era(kernel, reused):
    # After fork and the child's exit the parent alone maps the folio, none
    # of it PageAnonExclusive any more. 6.8 (refcount == 1 rule): 16
    # references, copy; 6.9 (781a3ca5c345): a large folio's page is never
    # reused; 6.15 (1da190f4d0a6): every reference a mapping of this mm: reuse.
    m, p, c, a = forked(kernel)
    before = p.pagemap(a + PAGE).pfn
    p.write(a + PAGE, b"\x02")
    after = p.pagemap(a + PAGE).pfn
    assert (after == before) == reused
    assert p.read(a, 2) == b"\x01\x01" and p.read(a + PAGE, 1) == b"\x02"
    m.check()


@pytest.mark.parametrize("kernel, reused", [("6.8", True), ("6.9", False)])
def test_cow_of_the_last_mapped_page_of_an_mthp(kernel, reused):
    # 5.18-6.8: a folio whose one reference is this pte is reused (refcount
    # == 1); 6.9 (781a3ca5c345) never reuses a large folio's page.
    m, p, c, a = forked(kernel)
    p.madvise(a + PAGE, 15 * PAGE, C.MADV_DONTNEED)
    before = p.pagemap(a).pfn
    p.write(a, b"\x02")
    assert (p.pagemap(a).pfn == before) == reused
    assert p.read(a, 2) == b"\x02\x01"
    m.check()


def test_fork_shares_the_folio_and_a_child_write_copies_one_page():
    m, p, c, a = forked("6.12", child_exits=False)
    head = p.pagemap(a).pfn
    assert c.pagemap(a + 2 * PAGE).pfn == head + 2
    assert m.frame(head).refcount == 32 and m.frame(head + 2).kpagecount == 2
    assert m.frame(head + 16).refcount == 32          # the next folio's own references
    c.write(a + 2 * PAGE, b"\x09")
    assert c.pagemap(a + 2 * PAGE).pfn != head + 2 and m.folio_order(c.pagemap(a + 2 * PAGE).pfn) == 0
    assert p.read(a + 2 * PAGE, 1) == b"\x01"
    m.check()


def test_a_pin_on_one_mthp_is_not_another_ones():
    # folio_maybe_dma_pinned of a large folio is its own _pincount: two
    # mTHPs in one 2 MiB block keep theirs apart. fork copies the pinned
    # exclusive folio's page (early COW) and shares the other folio.
    m = machine(sizes={K64: "always"})
    p = m.spawn()
    a = region(p)
    p.write(a, b"\x01" * (32 * PAGE))
    assert p.pagemap(a + 16 * PAGE).pfn == p.pagemap(a).pfn + 16     # same block, next folio
    pin = p.pin_user_pages(a, 1, C.FOLL_WRITE | C.FOLL_LONGTERM)
    c = p.fork()
    assert c.pagemap(a).pfn != p.pagemap(a).pfn          # the pinned page: copied
    assert c.pagemap(a + 16 * PAGE).pfn == p.pagemap(a + 16 * PAGE).pfn
    pin.release()
    m.check()


def test_partial_unmap_defers_the_split_to_reclaim():
    # __folio_remove_rmap: partially mapped -> deferred split queue; the
    # shrinker splits it and frees the unmapped pages.
    m = machine(sizes={K64: "always"})
    p = m.spawn()
    a = region(p)
    p.write(a, b"\x01" * (16 * PAGE))
    u0 = used(m)
    p.madvise(a + 4 * PAGE, 12 * PAGE, C.MADV_DONTNEED)
    assert used(m) == u0 and order_at(m, p, a) == 4
    m.check()
    assert m.reclaim(1) == 12
    assert used(m) == u0 - 12 and order_at(m, p, a) == 0
    assert p.read(a, 4 * PAGE) == b"\x01" * (4 * PAGE)
    m.check()


def test_two_mthps_of_one_block_are_queued_each():
    # Each folio's deferred-split state is its own (the kernel's
    # _deferred_list per folio): two partially unmapped 64 KiB folios of one
    # 2 MiB block are both split by the shrinker.
    m = machine(sizes={K64: "always"})
    p = m.spawn()
    a = region(p)
    p.write(a, b"\x01" * (32 * PAGE))
    p.madvise(a + 4 * PAGE, 12 * PAGE, C.MADV_DONTNEED)
    p.madvise(a + 20 * PAGE, 12 * PAGE, C.MADV_DONTNEED)
    assert m.reclaim(1) == 24
    assert order_at(m, p, a) == 0 and order_at(m, p, a + 16 * PAGE) == 0
    m.check()


def test_unmapping_the_whole_folio_frees_it():
    m = machine(sizes={K64: "always"})
    p = m.spawn()
    a = region(p)
    p.write(a, b"\x01" * (16 * PAGE))
    u0 = used(m)
    p.munmap(a, 16 * PAGE)
    assert used(m) == u0 - 16
    m.check()


@pytest.mark.parametrize("advice", [C.MADV_COLD, C.MADV_PAGEOUT])
def test_madvise_over_part_of_a_folio_splits_it(advice):
    # madvise_cold_or_pageout_pte_range (6.12): a large folio covered in part
    # is split (its all-zero pages to the zero page from 6.12).
    m = mmemu.Machine(kernel="6.12", memory=64 << 20, swap=16 << 20)
    m.thp.sizes[K64] = "always"
    p = m.spawn()
    a = region(p)
    p.write(a, b"\x01" * (16 * PAGE))
    p.madvise(a, 4 * PAGE, advice)
    assert m.folio_order(p.pagemap(a + 8 * PAGE).pfn) == 0
    assert p.read(a, 16 * PAGE) == b"\x01" * (16 * PAGE)
    m.check()


def test_pageout_of_a_whole_folio_swaps_its_pages_out():
    m = mmemu.Machine(kernel="6.12", memory=64 << 20, swap=16 << 20)
    m.thp.sizes[K64] = "always"
    p = m.spawn()
    a = region(p)
    p.write(a, bytes(range(1, 17)) * (PAGE))
    p.madvise(a, 16 * PAGE, C.MADV_PAGEOUT)
    assert all(p.pagemap(a + i * PAGE).swapped for i in range(16))
    assert p.read(a, 16 * PAGE) == bytes(range(1, 17)) * PAGE
    m.check()


def test_splitting_remaps_zero_pages_from_6_12():
    for kernel, remapped in (("6.11", False), ("6.12", True)):
        m = machine(kernel, {K64: "always"})
        p = m.spawn()
        a = region(p)
        p.write(a, b"\x01")                     # pages 1..15 all zeros
        p.madvise(a, 2 * PAGE, C.MADV_COLD)
        zero = "zero_page" in m.frame(p.pagemap(a + 5 * PAGE).pfn).flags
        assert zero == remapped, kernel
        m.check()


def test_ksm_splits_an_mthp_before_merging():
    m = machine(sizes={K64: "always"})
    p = m.spawn()
    a = region(p)
    p.write(a, b"\x07" * (32 * PAGE))
    p.madvise(a, 1 << 20, C.MADV_MERGEABLE)
    m.ksm_scan()
    m.ksm_scan()
    assert m.folio_order(p.pagemap(a).pfn) == 0
    assert p.read(a, 32 * PAGE) == b"\x07" * (32 * PAGE)
    m.check()


def test_save_and_load_keep_orders_and_settings(tmp_path):
    m = machine(sizes={K64: "always", 16 << 10: "madvise"})
    p = m.spawn()
    a = region(p)
    p.write(a, b"\x01" * (16 * PAGE))
    p.madvise(a + 8 * PAGE, 8 * PAGE, C.MADV_DONTNEED)     # queued for the split
    path = tmp_path / "m.snap"
    m.save(path)
    n = mmemu.Machine.load(path)
    q = n.processes[0]
    assert n.thp.sizes[K64] == "always" and n.thp.sizes[16 << 10] == "madvise"
    assert n.folio_order(q.pagemap(a).pfn) == 4
    n.check()
    assert n.reclaim(1) == 8
    assert n.folio_order(q.pagemap(a).pfn) == 0
    q.write(a + 16 * PAGE, b"x")
    assert n.folio_order(q.pagemap(a + 16 * PAGE).pfn) == 4
    n.check()
