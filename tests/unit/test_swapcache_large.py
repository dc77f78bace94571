"""A large folio in the swapcache (core/swap.pxi swapout_large_whole,
do_swap_page_cached, swapcache_reclaim_large; semantics.md 12.3/12.4).

A folio written out whole to a block device that is not synchronous (an
SSD partition; a rotational one from 6.14) stays one large folio in the
swapcache, unmapped, with a reference per page for the cache: until the
next reclaim pass frees it (shrink_folio_list -> __remove_mapping), its
last swap entry goes (free_swap_and_cache_nr -> __try_to_reclaim_swap),
or a fault finds it. do_swap_page maps the faulting page only up to 6.10;
from 6.11 ("mm: swap: entirely map large folios found in swapcache") it
maps the whole folio when every pte of its range is the matching swap
entry, and should_try_to_free_swap counts the folio's nr cache references.
"""
import pytest

import mmemu
import mmemu.constants as C
from mmemu.uffd import (O_NONBLOCK, UFFD_FEATURE_PAGEFAULT_FLAG_WP, UFFDIO_REGISTER_MODE_WP,
                        UFFDIO_WRITEPROTECT_MODE_WP)
from anon_region import aligned_anon, fill

PAGE = C.PAGE_SIZE
THP = 2 << 20
K64 = 64 << 10
RW = C.PROT_READ | C.PROT_WRITE
PRIV = C.MAP_PRIVATE | C.MAP_ANONYMOUS


def machine(kernel="6.18", device="ssd", **kw):
    return mmemu.Machine(kernel=kernel, memory=64 << 20, swap=16 << 20, swap_device=device, **kw)


def swapped_mthp(kernel, device="ssd", size=K64, **kw):
    """A 64 KiB mTHP written out whole with MADV_PAGEOUT: (m, p, a, head pfn)."""
    m = machine(kernel, device, **kw)
    m.thp.sizes[size] = "always"
    p = m.spawn()
    a = aligned_anon(p, 1 << 20, 1 << 20)
    p.write(a, fill(size))
    head = p.pagemap(a).pfn
    p.madvise(a, size, C.MADV_PAGEOUT)
    assert p.pagemap(a).swapped
    return m, p, a, head


def swapped_thp(kernel, device="ssd"):
    m = machine(kernel, device)
    p = m.spawn()
    a = aligned_anon(p, THP, THP)
    p.madvise(a, THP, C.MADV_HUGEPAGE)
    p.write(a, fill(THP))
    head = p.pagemap(a).pfn
    assert m.folio_order(head) == 9
    p.madvise(a, THP, C.MADV_PAGEOUT)
    return m, p, a, head


def used(m):
    return m._engine.swap_info()["used"]


def present(p, a, n):
    return sum(p.pagemap(a + i * PAGE).present for i in range(n))


# ---- after the write: one folio in the swapcache ------------------------------

@pytest.mark.parametrize("kernel,device,order", [("6.18", "ssd", 9), ("6.14", "hdd", 9), ("6.10", "ssd", 9),
                                                 ("6.18", "ssd", 4), ("6.10", "ssd", 4)])
def test_written_folio_stays_large_in_the_swapcache(kernel, device, order):
    # If the folio were split at its write (the old simplification), its
    # pages would be order 0 with a reference each.
    if order == 9:
        m, p, a, head = swapped_thp(kernel, device)
    else:
        m, p, a, head = swapped_mthp(kernel, device)
    nr = 1 << order
    assert m.folio_order(head) == order
    assert all("swapcache" in m.frame(head + i).flags for i in (0, 1, nr - 1))
    assert m.frame(head).refcount == nr                 # the cache's, one a page
    assert used(m) == nr
    assert p.rss_anon == 0
    m.check()


def test_reclaim_frees_the_written_folio_and_keeps_its_slots():
    # shrink_folio_list: unmapped, clean, only the cache holds it ->
    # __remove_mapping; the swap ptes still name the slots. Without the
    # pass the folio would stay in memory.
    m, p, a, head = swapped_thp("6.18")
    frames = m.memory_usage()["frames_used"]
    assert m.reclaim() >= 512
    assert m.memory_usage()["frames_used"] <= frames - 512
    assert used(m) == 512
    assert "swapcache" not in m.frame(head).flags
    m.check()
    swpin = m.stats()["swap_in"]
    assert p.read(a + 7 * PAGE, PAGE) == fill(THP)[7 * PAGE:8 * PAGE]
    assert m.stats()["swap_in"] == swpin + 1            # read from the device now: a base page
    assert m.folio_order(p.pagemap(a + 7 * PAGE).pfn) == 0
    m.check()


@pytest.mark.parametrize("kernel", ["6.10", "6.18"])
def test_reclaim_takes_a_mapped_cached_folio_whole(kernel):
    # 6.10 maps one page back (the folio mapped in part), 6.18 all of it.
    # shrink_folio_list finds it in the swapcache already: no add_to_swap,
    # so no split in any era; try_to_unmap turns the ptes back into the
    # folio's swap entries and it is freed whole. A split would leave order-0
    # pages (and thp_split_page counted).
    m, p, a, head = swapped_mthp(kernel)
    p.read(a + 3 * PAGE, 1)
    splits = m.stats()["thp_split_page"]
    frames = m.memory_usage()["frames_used"]
    assert m.reclaim() >= 16
    assert m.memory_usage()["frames_used"] <= frames - 16
    assert m.stats()["thp_split_page"] == splits
    assert all(p.pagemap(a + i * PAGE).swap_offset == p.pagemap(a).swap_offset + i for i in range(16))
    assert p.rss_anon == 0 and used(m) == 16
    m.check()
    assert p.read(a, K64) == fill(K64)
    m.check()


# ---- direct reclaim of large folios (Machine.reclaim) -----------------------------

@pytest.mark.parametrize("kernel,device,whole", [("6.9", "ssd", False), ("6.10", "ssd", True),
                                                 ("6.18", "file", False), ("6.13", "hdd", False),
                                                 ("6.14", "hdd", True)])
def test_reclaim_swaps_an_mthp_whole_or_splits_it_per_era(kernel, device, whole):
    # shrink_folio_list: a PTE-mapped large folio goes whole from 6.10
    # (5ed890ce5147 + 845982eb264b) where the device gives a cluster; before,
    # or without one, it is split and its pages go out one by one.
    m = machine(kernel, device)
    m.thp.sizes[K64] = "always"
    p = m.spawn()
    a = aligned_anon(p, 1 << 20, 1 << 20)
    p.write(a, fill(K64))
    head = p.pagemap(a).pfn
    splits = m.stats()["thp_split_page"]
    assert m.reclaim() >= 16
    assert all(p.pagemap(a + i * PAGE).swapped for i in range(16))
    assert m.stats()["thp_split_page"] == splits + (0 if whole else 1)
    if m.thp.sizes.stats(K64).get("swpout") is not None:
        assert m.thp.sizes.stats(K64)["swpout"] == (1 if whole else 0)
    offs = [p.pagemap(a + i * PAGE).swap_offset for i in range(16)]
    if whole:
        assert offs[0] % 16 == 0 and offs == list(range(offs[0], offs[0] + 16))
    assert m.frame(head).refcount == 0                  # freed (written at once, as a base page is)
    m.check()
    assert p.read(a, K64) == fill(K64)
    m.check()


@pytest.mark.parametrize("device,whole", [("ssd", True), ("file", False)])
def test_reclaim_swaps_a_pmd_thp_whole_where_a_cluster_is_free(device, whole):
    # THP_SWAP in every era: a PMD-mapped THP goes whole when the device
    # gives it a cluster; a swap file never does (thp_swpout_fallback).
    m = machine("6.1", device)
    p = m.spawn()
    a = aligned_anon(p, THP, THP)
    p.madvise(a, THP, C.MADV_HUGEPAGE)
    p.write(a, fill(THP))
    st = m.stats()
    m.reclaim()
    assert m.stats()["thp_swpout"] == st["thp_swpout"] + (1 if whole else 0)
    assert m.stats()["thp_swpout_fallback"] == st["thp_swpout_fallback"] + (0 if whole else 1)
    assert p.rss_anon == 0
    m.check()
    assert p.read(a + 200 * PAGE, PAGE) == fill(THP)[200 * PAGE:201 * PAGE]
    m.check()


def test_reclaim_leaves_mlocked_large_folios():
    # An mlocked folio is unevictable: not split, not written.
    m = machine("6.18", "ssd")
    m.thp.sizes[K64] = "always"
    p = m.spawn()
    raw = p.mmap(0, 2 << 20, RW, PRIV | C.MAP_LOCKED)
    a = (raw + (1 << 20) - 1) & ~((1 << 20) - 1)
    p.write(a, fill(K64))
    assert m.folio_order(p.pagemap(a).pfn) == 4
    m.reclaim()
    assert present(p, a, 16) == 16 and m.folio_order(p.pagemap(a).pfn) == 4
    m.check()


def test_reclaim_budget_stops_after_the_first_folios():
    # reclaim(n) takes about n pages: one 64 KiB folio, not all four.
    m = machine("6.18", "ssd")
    m.thp.sizes[K64] = "always"
    p = m.spawn()
    a = aligned_anon(p, 1 << 20, 1 << 20)
    p.write(a, fill(4 * K64))
    m.reclaim(16)
    assert sum(p.pagemap(a + i * K64).swapped for i in range(4)) == 1
    m.check()


# ---- do_swap_page on a page of it -------------------------------------------------

@pytest.mark.parametrize("kernel,mapped", [("6.10", 1), ("6.11", 16), ("6.18", 16)])
def test_read_fault_maps_the_page_or_the_whole_folio(kernel, mapped):
    # Up to 6.10 one pte; from 6.11 all 16 (set_ptes over the folio). Either
    # way the same frames (no read: swpin not counted) and the folio stays
    # large and in the swapcache (a read fault does not free it).
    m, p, a, head = swapped_mthp(kernel)
    swpin = m.stats()["swap_in"]
    assert p.read(a + 5 * PAGE, PAGE) == fill(K64)[5 * PAGE:6 * PAGE]
    assert p.pagemap(a + 5 * PAGE).pfn == head + 5
    assert present(p, a, 16) == mapped
    assert p.rss_anon == mapped * PAGE
    assert m.folio_order(head) == 4 and "swapcache" in m.frame(head).flags
    assert m.frame(head).refcount == 16 + mapped
    assert used(m) == 16
    assert m.stats()["swap_in"] == swpin
    assert m.thp.sizes.stats(K64).get("swpin", 0) == 0
    if mapped == 16:
        assert [p.pagemap(a + i * PAGE).pfn for i in range(16)] == list(range(head, head + 16))
    assert p.read(a, K64) == fill(K64)
    m.check()


@pytest.mark.parametrize("kernel", ["6.10", "6.11"])
def test_exclusive_bit_makes_the_pages_exclusive_and_writable(kernel):
    # The swap ptes carry PageAnonExclusive (SWP_EXCLUSIVE): the pages
    # mapped come back exclusive, and the write after the read takes no
    # fault from 6.11 (mapped writable on the read, c18160dba5ff).
    m, p, a, head = swapped_mthp(kernel)
    p.read(a + 2 * PAGE, 1)
    mapped = range(16) if kernel == "6.11" else [2]
    assert all(p.pagemap(a + i * PAGE).exclusive for i in mapped)
    wp = m.stats()["wp_faults"]
    p.write(a + 2 * PAGE, b"\xee")
    assert p.pagemap(a + 2 * PAGE).pfn == head + 2       # no COW
    assert (m.stats()["wp_faults"] == wp) == (kernel == "6.11")
    m.check()


@pytest.mark.parametrize("kernel,freed", [("6.10", False), ("6.11", True)])
def test_write_fault_frees_the_swapcache_when_only_it_holds_the_folio(kernel, freed):
    # should_try_to_free_swap: a write fault with the folio referenced only
    # by the cache and the fault: 2 up to 6.10 (never true for a large
    # folio, whose cache holds nr), 1 + nr from 6.11, after swap_free_nr of
    # the whole range, so folio_free_swap finds no slot in use.
    m, p, a, head = swapped_mthp(kernel)
    p.write(a + 9 * PAGE, b"\x01")
    assert ("swapcache" not in m.frame(head).flags) == freed
    assert used(m) == (0 if freed else 16)
    assert m.frame(head).refcount == (16 if freed else 17)
    assert p.read(a + 9 * PAGE, 2) == b"\x01" + fill(K64)[9 * PAGE + 1:9 * PAGE + 2]
    m.check()


def test_whole_map_wants_every_pte_the_matching_entry():
    # A hole in the range (one pte zapped): only the faulting page, 6.11+.
    m, p, a, head = swapped_mthp("6.18")
    p.madvise(a + 11 * PAGE, PAGE, C.MADV_DONTNEED)
    assert used(m) == 16                                # the folio still holds slot 11
    p.read(a, 1)
    assert present(p, a, 16) == 1
    assert m.folio_order(head) == 4
    m.check()


def test_whole_map_wants_the_same_uffd_wp_bit():
    # pte_same compares the whole swap pte: one entry write-protected by
    # uffd and the others not is no batch.
    m, p, a, head = swapped_mthp("6.18")
    u = p.userfaultfd(O_NONBLOCK)
    u.api(UFFD_FEATURE_PAGEFAULT_FLAG_WP)
    u.register(a, K64, UFFDIO_REGISTER_MODE_WP)
    u.writeprotect(a + 6 * PAGE, PAGE, UFFDIO_WRITEPROTECT_MODE_WP)
    assert p.pagemap(a + 6 * PAGE).uffd_wp and not p.pagemap(a + 5 * PAGE).uffd_wp
    p.read(a, 1)
    assert present(p, a, 16) == 1
    p.read(a + 6 * PAGE, 1)
    assert present(p, a, 16) == 2 and p.pagemap(a + 6 * PAGE).uffd_wp
    m.check()


def test_whole_map_wants_the_folio_inside_the_vma():
    # The folio's range must lie in the VMA (and the page table): after an
    # mprotect splits the VMA inside it, only the faulting page.
    m, p, a, head = swapped_mthp("6.18")
    p.mprotect(a + 8 * PAGE, 8 * PAGE, C.PROT_READ)
    p.read(a, 1)
    assert present(p, a, 16) == 1
    assert p.read(a, K64) == fill(K64)
    assert present(p, a, 16) == 16
    m.check()


def test_pmd_thp_comes_back_whole_as_ptes_from_6_11():
    # A PMD THP in the swapcache is mapped by 512 ptes (do_swap_page never
    # maps a PMD), and still one folio.
    m, p, a, head = swapped_thp("6.18")
    p.read(a + 100 * PAGE, 1)
    assert present(p, a, 512) == 512
    assert m.folio_order(p.pagemap(a + 511 * PAGE).pfn) == 9
    assert p.rss_anon == THP
    m.check()


# ---- what else meets it ---------------------------------------------------------

def test_fork_then_swap_in_shares_the_folio_then_cow():
    # fork drops the exclusive bit (counts 2): both map the cached folio,
    # read-only; the parent's write copies its page, the child keeps the
    # original.
    m, p, a, head = swapped_mthp("6.18")
    c = p.fork()
    assert used(m) == 16
    c.read(a, 1)
    p.read(a, 1)
    assert present(c, a, 16) == 16 and present(p, a, 16) == 16
    assert not p.pagemap(a + 4 * PAGE).exclusive
    p.write(a + 4 * PAGE, b"\xff")
    assert p.pagemap(a + 4 * PAGE).pfn != head + 4
    assert c.read(a + 4 * PAGE, 1) == fill(K64)[4 * PAGE:4 * PAGE + 1]
    m.check()
    c.exit()
    p.exit()
    assert used(m) == 0
    m.check()


@pytest.mark.parametrize("kernel", ["6.10", "6.18"])
def test_munmap_after_the_fault_frees_folio_and_slots(kernel):
    # zap: the present ptes' references go (free_pages_and_swap_cache frees
    # the unmapped folio's cache when no slot is referenced), the swap
    # entries' slots go (free_swap_and_cache_nr): nothing is left.
    m, p, a, head = swapped_mthp(kernel)
    p.read(a + 1, 1)
    frames = m.memory_usage()["frames_used"]
    p.munmap(a, K64)
    assert used(m) == 0
    assert m.memory_usage()["frames_used"] <= frames - 16
    m.check()


def test_pageout_of_a_partly_mapped_cached_folio_splits_it():
    # 6.10: one page mapped back; MADV_PAGEOUT over part of the folio splits
    # it (split_folio of a swapcache folio: each page keeps its slot) and
    # the page goes out again as a small page to the same slot.
    m, p, a, head = swapped_mthp("6.10")
    p.read(a + 3 * PAGE, 1)
    p.madvise(a, 8 * PAGE, C.MADV_PAGEOUT)
    assert m.folio_order(head + 3) == 0
    assert p.pagemap(a + 3 * PAGE).swap_offset == p.pagemap(a).swap_offset + 3
    assert used(m) == 16
    m.check()
    assert p.read(a, K64) == fill(K64)
    m.check()


def test_deferred_split_of_a_cached_folio_keeps_the_slots():
    # 6.11: mapped whole, then part of it zapped: partially mapped, queued;
    # the shrinker splits it in the swapcache, each page at its slot.
    m, p, a, head = swapped_mthp("6.18")
    p.read(a, 1)
    p.madvise(a + 12 * PAGE, 4 * PAGE, C.MADV_DONTNEED)
    assert m.folio_order(head) == 4
    m.reclaim(1)
    assert m.folio_order(head) == 0 and "swapcache" in m.frame(head).flags
    assert p.pagemap(a + 5 * PAGE).pfn == head + 5
    m.check()
    assert p.read(a, 12 * PAGE) == fill(K64)[:12 * PAGE]
    m.check()


def test_collapse_takes_a_cached_folio_and_frees_its_swapcache():
    # is_refcount_suitable counts a swapcache folio's nr references (6.12
    # khugepaged); the copy's end frees the old folio's swapcache
    # (free_page_and_swap_cache) once no slot is referenced. Without the nr
    # the collapse fails (SCAN_PAGE_COUNT); without the free the old
    # folio lingers in the swapcache holding its slots.
    m = machine("6.18", "ssd")
    m.thp.sizes[K64] = "always"
    p = m.spawn()
    a = aligned_anon(p, THP, THP)
    p.write(a, fill(K64))
    head = p.pagemap(a).pfn
    assert m.folio_order(head) == 4
    p.madvise(a, K64, C.MADV_PAGEOUT)
    p.read(a, 1)                                        # mapped whole again, slots free of ptes
    assert present(p, a, 16) == 16 and "swapcache" in m.frame(head).flags
    p.madvise(a, THP, C.MADV_HUGEPAGE)
    p.madvise(a, THP, C.MADV_COLLAPSE)
    assert m.folio_order(p.pagemap(a).pfn) == 9
    assert used(m) == 0
    assert m.frame(head).refcount == 0                  # the old folio freed
    assert p.read(a, K64) == fill(K64)
    m.check()


# ---- migration --------------------------------------------------------------------

@pytest.mark.parametrize("kernel,mapped", [("6.10", 1), ("6.18", 16)])
def test_move_pages_migrates_a_cached_folio_whole_with_its_slots(kernel, mapped):
    # migrate_folio(): a folio in the swapcache expects the isolation
    # reference and one per page for the cache (folio_expected_refs), and
    # __folio_migrate_mapping hands its slots to the new folio: the same
    # slots now name the new pages, which take the cache's references.
    m, p, a, head = swapped_mthp(kernel, nodes=2)
    p.read(a + 5 * PAGE, 1)
    slot = p.pagemap(a).swap_offset if mapped == 1 else None
    assert m.node_of(head) == 0 and m.frame(head).refcount == 16 + mapped
    assert p.move_pages([a + 5 * PAGE], [1], C.MPOL_MF_MOVE) == [1]
    new = p.pagemap(a + 5 * PAGE).pfn - 5
    assert new != head and m.node_of(new) == 1 and m.folio_order(new) == 4
    assert all("swapcache" in m.frame(new + i).flags for i in range(16))
    assert m.frame(new).refcount == 16 + mapped and present(p, a, 16) == mapped
    assert all(m.frame(head + i).flags == {"buddy"} for i in range(16))   # the old folio is free
    assert used(m) == 16
    if slot is not None:
        assert p.pagemap(a).swap_offset == slot                         # the unmapped pages' entries stay
    m.check()
    assert p.read(a, K64) == fill(K64)      # the rest comes in from the new folio, no read from swap
    assert m.stats()["swap_in"] == 0
    m.check()
