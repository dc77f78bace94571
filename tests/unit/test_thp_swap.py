"""Swap of large folios per era and swap device (core/swap.pxi
swapout_large_whole, do_swap_page_large; core/huge.pxi split_folios_in).

shrink_folio_list sends a PMD-mapped THP to swap whole when the swap area
gives it a cluster (add_to_swap -> folio_alloc_swap; THP_SWAP): a block
device with clusters - an SSD partition or zram in every version, a
rotational partition from 6.14 (Kairui Song's allocator rework), never a
swap file (scan_swap_map_slots wants SWP_BLKDEV). A PTE-mapped large folio
and an mTHP go whole from 6.10 (845982eb264b, 5ed890ce5147); before, they
are split first. No cluster: split, thp_swpout_fallback. zram is
SWP_SYNCHRONOUS_IO: the folio leaves the swapcache at once, a swap-in of an
entry nobody else references skips the swapcache, and from 6.12
(242d12c98174) comes back as an mTHP when the settings allow it.
"""
import pytest

import mmemu
import mmemu.constants as C
from mmemu.eras import policy_for
from mmemu.uffd import (O_NONBLOCK, UFFD_FEATURE_PAGEFAULT_FLAG_WP, UFFDIO_REGISTER_MODE_MISSING,
                        UFFDIO_REGISTER_MODE_WP, UFFDIO_WRITEPROTECT_MODE_WP)
from mmemu.errors import WouldBlock
from anon_region import aligned_anon, fill

PAGE = C.PAGE_SIZE
THP = 2 << 20
K64 = 64 << 10
RW = C.PROT_READ | C.PROT_WRITE
PRIV = C.MAP_PRIVATE | C.MAP_ANONYMOUS


def machine(kernel="6.18", device="ssd", swap=16 << 20, **kw):
    return mmemu.Machine(kernel=kernel, memory=64 << 20, swap=swap, swap_device=device, **kw)


def region(p, length=THP, align=THP):
    return aligned_anon(p, length, align)


def pmd_thp(m):
    """A process with a populated PMD-mapped THP at a (thp=always)."""
    p = m.spawn()
    a = region(p)
    p.madvise(a, THP, C.MADV_HUGEPAGE)
    p.write(a, fill(THP))
    assert m.folio_order(p.pagemap(a).pfn) == 9
    return p, a


def mthp(m, size=K64):
    m.thp.sizes[size] = "always"
    p = m.spawn()
    a = region(p, 1 << 20, 1 << 20)
    p.write(a, fill(size))
    assert m.folio_order(p.pagemap(a).pfn) == (size // PAGE).bit_length() - 1
    return p, a


def one_base_page_out(p):
    """Take slot 0 with a base page, so that a split folio's pages (slots
    from 1) and a whole one (its own aligned run) land apart."""
    b = p.mmap(0, PAGE, RW, PRIV)
    p.write(b, b"x")
    p.madvise(b, PAGE, C.MADV_PAGEOUT)
    assert p.pagemap(b).swap_offset == 0


def offsets(p, a, n):
    return [p.pagemap(a + i * PAGE).swap_offset for i in range(n)]


def whole(offs):
    """One naturally aligned run of consecutive slots: the folio's cluster."""
    return offs[0] is not None and offs[0] % len(offs) == 0 \
        and offs == list(range(offs[0], offs[0] + len(offs)))


# ---- swap-out: which eras and devices send a THP whole ----------------------

@pytest.mark.parametrize("kernel,device,expect", [
    ("5.7", "ssd", True), ("6.18", "ssd", True), ("5.7", "zram", True),
    ("5.7", "file", False), ("6.18", "file", False),
    ("6.13", "hdd", False), ("6.14", "hdd", True),
])
def test_pmd_thp_goes_out_whole_where_the_device_gives_a_cluster(kernel, device, expect):
    # If the device kind were ignored, a swap file (the host's case, which
    # splits) would get a cluster, or an SSD would split.
    m = machine(kernel, device)
    p, a = pmd_thp(m)
    data = p.read(a, THP)
    p.madvise(a, THP, C.MADV_PAGEOUT)
    offs = offsets(p, a, 512)
    assert all(o is not None for o in offs)
    st = m.stats()
    assert (st["thp_swpout"], st["thp_swpout_fallback"]) == ((1, 0) if expect else (0, 1))
    assert st["swap_out"] == 512
    m.check()
    assert p.read(a, THP) == data
    m.check()


def test_hdd_gate_is_the_6_14_knob():
    assert not policy_for("6.13", ()).knobs["swap_large_rotational"]
    assert policy_for("6.14", ()).knobs["swap_large_rotational"]
    m = machine("6.13", "hdd", backports=["swap-cluster-lock-hdd"])
    p, a = pmd_thp(m)
    p.madvise(a, THP, C.MADV_PAGEOUT)
    assert m.stats()["thp_swpout"] == 1
    m.check()


def test_whole_swap_out_takes_one_aligned_cluster():
    # try_to_unmap with TTU_SPLIT_HUGE_PMD: 512 swap ptes of one cluster,
    # in page order; a base page swapped first does not shift it.
    m = machine("6.12", "ssd")
    p = m.spawn()
    one_base_page_out(p)
    a = region(p)
    p.madvise(a, THP, C.MADV_HUGEPAGE)
    p.write(a, fill(THP))
    p.madvise(a, THP, C.MADV_PAGEOUT)
    offs = offsets(p, a, 512)
    assert whole(offs) and offs[0] == 512
    m.check()


def test_swap_file_splits_and_its_slots_are_not_a_cluster_run_from_6_12():
    # The split path of 6.12+: all-zero pages go to the zero page, so a
    # sparse THP leaves zero-page ptes; the whole path swaps every page.
    for device, zero_mapped in (("file", True), ("ssd", False)):
        m = machine("6.12", device)
        p = m.spawn()
        a = region(p)
        p.madvise(a, THP, C.MADV_HUGEPAGE)
        p.write(a, b"\x01")                 # pages 1..511 stay zero
        p.madvise(a, THP, C.MADV_PAGEOUT)
        e = p.pagemap(a + 5 * PAGE)
        assert (e.present and e.pfn == 0) == zero_mapped, device
        assert e.swapped == (not zero_mapped), device
        m.check()


def test_no_free_cluster_falls_back_to_splitting():
    # 256 slots: no cluster of 512, so the THP is split and its pages go
    # one by one (thp_swpout_fallback), not left in memory.
    m = machine("6.18", "ssd", swap=1 << 20)
    p, a = pmd_thp(m)
    p.madvise(a, THP, C.MADV_PAGEOUT)
    st = m.stats()
    assert (st["thp_swpout"], st["thp_swpout_fallback"]) == (0, 1)
    assert st["swap_out"] == 256
    assert m.folio_order(p.pagemap(a + 300 * PAGE).pfn) == 0
    m.check()


def test_fragmented_swap_falls_back():
    # Every cluster holds a base page: a whole THP finds no free cluster.
    m = machine("6.18", "ssd", swap=4 << 20)   # 1024 slots: two clusters
    p = m.spawn()
    b = p.mmap(0, 1024 * PAGE, RW, PRIV, )
    p.madvise(b, 1024 * PAGE, C.MADV_NOHUGEPAGE)
    p.write(b, fill(1024 * PAGE))
    p.madvise(b, 1024 * PAGE, C.MADV_PAGEOUT)
    p.madvise(b + PAGE, 511 * PAGE, C.MADV_DONTNEED)      # slot 0 stays taken
    p.madvise(b + 513 * PAGE, 511 * PAGE, C.MADV_DONTNEED)  # slot 512 too
    a = region(p)
    p.madvise(a, THP, C.MADV_HUGEPAGE)
    p.write(a, fill(THP))
    p.madvise(a, THP, C.MADV_PAGEOUT)
    assert m.stats()["thp_swpout_fallback"] == 1
    m.check()


def test_mthp_goes_whole_from_6_10():
    # 845982eb264b (6.10): every mTHP order gets a cluster; 6.9 splits the
    # folio first (no PMD mapping), without counting a fallback.
    for kernel, expect in (("6.9", False), ("6.10", True)):
        m = machine(kernel, "ssd")
        p, a = mthp(m)
        one_base_page_out(p)
        p.madvise(a, K64, C.MADV_PAGEOUT)
        offs = offsets(p, a, 16)
        assert whole(offs) == expect, kernel
        assert offs[0] == (16 if expect else 1)
        assert m._engine.swap_stats(4)[:2] == ((1, 0) if expect else (0, 0)), kernel
        assert m.stats()["thp_split_page"] == (0 if expect else 1), kernel
        assert p.read(a, K64) == fill(K64)
        m.check()


def test_mthp_stats_files_per_era():
    m = machine("6.10", "ssd")
    p, a = mthp(m)
    p.madvise(a, K64, C.MADV_PAGEOUT)
    st = m.thp.sizes.stats(K64)
    assert st["swpout"] == 1 and st["swpout_fallback"] == 0 and "swpin" not in st
    assert "swpout" not in machine("6.9", "ssd").thp.sizes.stats(K64)
    assert "swpin" in machine("6.12", "ssd").thp.sizes.stats(K64)


def test_mthp_on_a_swap_file_counts_its_fallback():
    m = machine("6.12", "file")
    p, a = mthp(m)
    p.madvise(a, K64, C.MADV_PAGEOUT)
    assert m._engine.swap_stats(4)[:2] == (0, 1)
    assert all(p.pagemap(a + i * PAGE).swapped for i in range(16))
    m.check()


def test_pte_mapped_thp_goes_whole_from_6_10():
    # A THP whose PMD was split (mprotect of part, then back) is mapped by
    # 512 ptes: 5ed890ce5147 (6.10) stopped splitting it before add_to_swap.
    for kernel, expect in (("6.9", False), ("6.10", True)):
        m = machine(kernel, "ssd")
        p, a = pmd_thp(m)
        p.mprotect(a, PAGE, C.PROT_READ)
        p.mprotect(a, PAGE, RW)
        assert m.folio_order(p.pagemap(a).pfn) == 9
        one_base_page_out(p)
        p.madvise(a, THP, C.MADV_PAGEOUT)
        assert whole(offsets(p, a, 512)) == expect, kernel
        assert m.stats()["thp_swpout"] == int(expect), kernel
        m.check()


def test_pinned_thp_stays():
    # can_split_folio / folio_maybe_dma_pinned: a pinned THP is not unmapped.
    m = machine("6.18", "ssd")
    p, a = pmd_thp(m)
    pin = p.pin_user_pages(a, 1, C.FOLL_WRITE | C.FOLL_LONGTERM)
    p.madvise(a, THP, C.MADV_PAGEOUT)
    assert p.pagemap(a + 7 * PAGE).present and m.stats()["thp_swpout"] == 0
    m.check()
    pin.release()
    m.check()


# ---- after the swap-out: swapcache, swap-in -----------------------------------

def test_ssd_keeps_the_written_pages_in_the_swapcache_zram_frees_them():
    for device, cached in (("ssd", True), ("zram", False)):
        m = machine("6.18", device)
        p, a = pmd_thp(m)
        pfn = p.pagemap(a + 3 * PAGE).pfn
        used = m.memory_usage()["frames_used"]
        p.madvise(a, THP, C.MADV_PAGEOUT)
        freed = used - m.memory_usage()["frames_used"]
        assert (freed < 512) == cached, device
        if cached:
            assert "swapcache" in m.frame(pfn).flags
        if cached:
            assert m.folio_order(pfn) == 9      # still one folio in the swapcache
        p.read(a + 3 * PAGE, 1)
        # The swapcache hands the same frame back, still large (6.11+ maps it
        # whole: test_swapcache_large.py); zram reads a fresh base page.
        assert (p.pagemap(a + 3 * PAGE).pfn == pfn) == cached, device
        assert m.folio_order(p.pagemap(a + 3 * PAGE).pfn) == (9 if cached else 0)
        m.check()


def test_zram_swap_in_skips_the_swapcache_and_frees_the_slot():
    # do_swap_page with SWP_SYNCHRONOUS_IO and swap count 1: a fresh page,
    # exclusive, the slot freed at once (no swapcache copy left behind).
    m = machine("6.18", "zram")
    p, a = pmd_thp(m)
    p.madvise(a, THP, C.MADV_PAGEOUT)
    assert m._engine.swap_info()["used"] == 512
    p.read(a, 1)
    e = p.pagemap(a)
    assert e.present and e.exclusive
    assert "swapcache" not in m.frame(e.pfn).flags
    assert m._engine.swap_info()["used"] == 511
    m.check()


def test_zram_swaps_an_mthp_back_in_whole_from_6_12():
    # 242d12c98174 (6.12): alloc_swap_folio takes the largest enabled order
    # whose ptes are consecutive entries; 6.11 swaps in page by page. Never
    # the PMD size (a swapped THP comes back as base pages).
    for kernel, order in (("6.11", 0), ("6.12", 4)):
        m = machine(kernel, "zram")
        p, a = mthp(m)
        p.madvise(a, K64, C.MADV_PAGEOUT)
        assert p.read(a + 5 * PAGE, PAGE) == fill(K64)[5 * PAGE:6 * PAGE]
        assert m.folio_order(p.pagemap(a + 5 * PAGE).pfn) == order, kernel
        present = sum(p.pagemap(a + i * PAGE).present for i in range(16))
        assert present == (16 if order else 1), kernel
        assert m._engine.swap_stats(4)[2] == (1 if order else 0)
        assert p.read(a, K64) == fill(K64)
        m.check()


def test_large_swap_in_needs_zram():
    # Read back from an SSD (once reclaim has freed the swapcache folio):
    # base pages, alloc_swap_folio is for SWP_SYNCHRONOUS_IO only.
    m = machine("6.18", "ssd")
    p, a = mthp(m)
    p.madvise(a, K64, C.MADV_PAGEOUT)
    m.reclaim()
    p.read(a, 1)
    assert m.folio_order(p.pagemap(a).pfn) == 0
    m.check()


def test_large_swap_in_wants_every_entry_and_an_unarmed_vma():
    # A hole in the run (one page zapped) or a uffd-armed VMA: base pages.
    m = machine("6.18", "zram")
    p, a = mthp(m)
    p.madvise(a, K64, C.MADV_PAGEOUT)
    p.madvise(a + 9 * PAGE, PAGE, C.MADV_DONTNEED)
    p.read(a, 1)
    assert m.folio_order(p.pagemap(a).pfn) == 0
    m.check()
    m = machine("6.18", "zram")
    p, a = mthp(m)
    p.madvise(a, K64, C.MADV_PAGEOUT)
    u = p.userfaultfd(O_NONBLOCK)
    u.api(0)
    u.register(a, 1 << 20, UFFDIO_REGISTER_MODE_MISSING)
    p.read(a, 1)                        # swap entries: no MISSING fault
    assert m.folio_order(p.pagemap(a).pfn) == 0
    m.check()


def test_large_swap_in_is_writable_and_exclusive():
    m = machine("6.18", "zram")
    p, a = mthp(m)
    p.madvise(a, K64, C.MADV_PAGEOUT)
    p.read(a, 1)
    pfn = p.pagemap(a + 2 * PAGE).pfn
    assert all(p.pagemap(a + i * PAGE).exclusive for i in range(16))
    p.write(a + 2 * PAGE, b"\xee")        # no COW: mapped writable
    assert p.pagemap(a + 2 * PAGE).pfn == pfn
    m.check()


# ---- fork, COW, DONTNEED, uffd on a whole-swapped THP --------------------------

@pytest.mark.parametrize("device", ["ssd", "zram", "file"])
def test_fork_after_swap_out_then_cow(device):
    # fork copies the 512 swap entries (count 2 each, exclusivity dropped):
    # if COW were missed, the child would see the parent's write.
    m = machine("6.18", device)
    p, a = pmd_thp(m)
    p.madvise(a, THP, C.MADV_PAGEOUT)
    c = p.fork()
    m.check()
    p.write(a + 10 * PAGE, b"\xff" * PAGE)
    assert c.read(a + 10 * PAGE, PAGE) == fill(THP)[10 * PAGE:11 * PAGE]
    assert p.read(a + 10 * PAGE, PAGE) == b"\xff" * PAGE
    assert p.pagemap(a + 10 * PAGE).pfn != c.pagemap(a + 10 * PAGE).pfn
    assert p.read(a, THP)[:10 * PAGE] == c.read(a, THP)[:10 * PAGE]
    m.check()
    c.exit()
    m.check()


def test_swapped_thp_keeps_exclusivity_for_cow():
    # try_to_unmap_one records PageAnonExclusive in each swap pte (5.19+,
    # 1493a1913e34): the read swap-in of a page still in the swapcache maps
    # it writable (6.11+), so the write after it takes no fault. Without the
    # bit the swapcache's reference makes the page look shared: R/O, and the
    # write faults.
    m = machine("6.18", "ssd")
    p, a = pmd_thp(m)
    p.madvise(a, THP, C.MADV_PAGEOUT)
    p.read(a + 4 * PAGE, 1)
    pfn = p.pagemap(a + 4 * PAGE).pfn
    wp = m.stats()["wp_faults"]
    p.write(a + 4 * PAGE, b"\x07")
    assert m.stats()["wp_faults"] == wp
    assert p.pagemap(a + 4 * PAGE).pfn == pfn
    m.check()


def test_dontneed_part_of_a_swapped_thp_frees_those_slots():
    # zap_pte_range -> free_swap_and_cache_nr: the zapped entries' slots go,
    # the rest stay readable. On the SSD the folio is still in the swapcache:
    # __try_to_reclaim_swap leaves it (and so every slot of it) while any
    # slot is referenced; the last zap frees it all.
    for device in ("ssd", "zram"):
        m = machine("6.18", device)
        p, a = pmd_thp(m)
        p.madvise(a, THP, C.MADV_PAGEOUT)
        p.madvise(a + 100 * PAGE, 123 * PAGE, C.MADV_DONTNEED)
        assert m._engine.swap_info()["used"] == (512 if device == "ssd" else 512 - 123), device
        assert p.read(a + 100 * PAGE, PAGE) == bytes(PAGE)
        assert p.read(a + 300 * PAGE, PAGE) == fill(THP)[300 * PAGE:301 * PAGE]
        m.check()
        p.munmap(a, THP)
        assert m._engine.swap_info()["used"] == 0
        m.check()


def test_uffd_wp_survives_whole_swap_out():
    # try_to_unmap_one moves uffd-wp into the swap pte; the swap-in maps
    # the page write-protected again, so the write is a WP fault.
    m = machine("6.18", "ssd")
    p, a = pmd_thp(m)
    u = p.userfaultfd(O_NONBLOCK)
    u.api(UFFD_FEATURE_PAGEFAULT_FLAG_WP)
    u.register(a, THP, UFFDIO_REGISTER_MODE_WP)
    u.writeprotect(a, THP, UFFDIO_WRITEPROTECT_MODE_WP)
    p.madvise(a, THP, C.MADV_PAGEOUT)
    assert m.stats()["thp_swpout"] == 1
    e = p.pagemap(a + 8 * PAGE)
    assert e.swapped and e.uffd_wp
    with pytest.raises(WouldBlock):
        p.write(a + 8 * PAGE, b"\x01")
    m.check()


def test_soft_dirty_survives_whole_swap_out():
    m = machine("6.18", "ssd")
    p, a = pmd_thp(m)
    p.clear_refs(C.CLEAR_REFS_SOFT_DIRTY)
    p.write(a + 3 * PAGE, b"\x02")           # a write fault on the THP marks it all
    p.madvise(a, THP, C.MADV_PAGEOUT)
    assert p.pagemap(a + 3 * PAGE).soft_dirty and p.pagemap(a + 3 * PAGE).swapped
    m.check()


# ---- the device setting ---------------------------------------------------------

def test_swap_device_default_and_bad_values():
    assert mmemu.Machine(memory=1 << 20).swap_device == "file"
    with pytest.raises(ValueError):
        mmemu.Machine(memory=1 << 20, swap_device="nvme")
    with pytest.raises(TypeError):
        mmemu.Machine(memory=1 << 20, swap_device=2)
    m = machine()
    with pytest.raises(ValueError):
        m._engine.swap_device = 9
    with pytest.raises(ValueError):
        m._engine.swap_stats(1)


def test_save_and_load_keep_the_device_and_old_saves_load_as_a_file(tmp_path):
    m = machine("6.18", "zram")
    p, a = pmd_thp(m)
    p.madvise(a, THP, C.MADV_PAGEOUT)
    m.save(tmp_path / "m")
    m2 = mmemu.Machine.load(tmp_path / "m")
    assert m2.swap_device == "zram" and m2.stats()["thp_swpout"] == 1
    m2.check()
    st = m._engine.get_state()
    del st["scalars"]["swap_device"]
    del st["swap_large_stats"]
    from mmemu._core import engine_from_state
    e = engine_from_state(m._engine.knobs, m._engine.nframes, 2, 4096, st)
    assert e.swap_device == 0 and e.swap_stats(9) == (0, 0, 0)


def test_large_swap_in_wants_the_entries_in_slot_order():
    # can_swapin_thp / swap_pte_batch: the ptes must be consecutive entries
    # of the folio's slot range. Pages swapped out one by one, page 0 first
    # then 15 down to 1, hold slots 0, 15, 14 ... 1: no 64 KiB swap-in (a
    # read of slots 0..15 in order would put page 15's data in page 1).
    m = machine("6.18", "zram")
    p = m.spawn()
    a = region(p, 1 << 20, 1 << 20)
    data = fill(16 * PAGE)
    p.write(a, data)
    for i in [0] + list(range(15, 0, -1)):
        p.madvise(a + i * PAGE, PAGE, C.MADV_PAGEOUT)
    assert p.pagemap(a).swap_offset == 0 and p.pagemap(a + PAGE).swap_offset == 15
    m.thp.sizes[K64] = "always"
    p.read(a, 1)
    assert m.folio_order(p.pagemap(a).pfn) == 0
    assert p.read(a, 16 * PAGE) == data
    m.check()
