"""Multi-size THP for anonymous shmem (6.11: 4b98995530b7 sysfs,
e7a2ab7b3bb5 allocation, 66f44583f9b6 counters, 43e027e41423 finish_fault):
the per-size hugepages-<size>kB/shmem_enabled below 2 MiB
(Machine.thp.shmem_sizes), shmem_allowable_huge_orders and
shmem_suitable_orders choosing the folio a MAP_SHARED|MAP_ANONYMOUS fault
allocates (mm/shmem.c, 6.12), finish_fault mapping it whole by ptes, and
what follows: a hole punch splits it (truncate_inode_partial_folio) unless
it is pinned, MADV_PAGEOUT splits and swaps it, fork, save/load. memfd
keeps to the PMD size in 6.12."""
import errno

import pytest

import mmemu
import mmemu.constants as C
from mmemu.errors import WouldBlock
from mmemu.uffd import O_NONBLOCK, UFFDIO_REGISTER_MODE_WP

PAGE = C.PAGE_SIZE
PMD = 2 << 20
K16, K32, K64 = 16 << 10, 32 << 10, 64 << 10
RW = C.PROT_READ | C.PROT_WRITE
SHARED_ANON = C.MAP_SHARED | C.MAP_ANONYMOUS


def machine(kernel="6.12", sizes=None, shmem="never", **kw):
    m = mmemu.Machine(kernel=kernel, memory=kw.pop("memory", 64 << 20), **kw)
    m.thp.shmem_enabled = shmem
    for size, v in (sizes or {}).items():
        m.thp.shmem_sizes[size] = v
    return m


def hole(p, length):
    """A free, 2 MiB-aligned address range of `length`."""
    raw = p.mmap(0, length + PMD, RW, C.MAP_PRIVATE | C.MAP_ANONYMOUS)
    p.munmap(raw, length + PMD)
    return (raw + PMD - 1) & ~(PMD - 1)


def shared_anon(p, length=1 << 20, misalign=0):
    a = hole(p, length + PMD) + misalign
    return p.mmap(a, length, RW, SHARED_ANON | C.MAP_FIXED)


def order_of(m, p, addr):
    e = p.pagemap(addr)
    assert e.present
    return m.folio_order(e.pfn)


def present(p, addr, n):
    return [p.pagemap(addr + i * PAGE).present for i in range(n)]


# ---- the sysfs files ----------------------------------------------------------------

def test_defaults_and_values_round_trip():
    # hugepage_init_sysfs / shmem_init: 2 MiB inherits, smaller sizes never;
    # every size takes the five values, none takes force or deny.
    m = machine()
    assert m.thp.shmem_sizes[PMD] == "inherit"
    assert all(m.thp.shmem_sizes[s] == "never" for s in m.thp.shmem_sizes if s < PMD)
    for v in ("always", "inherit", "within_size", "advise", "never"):
        m.thp.shmem_sizes[K64] = v
        assert m.thp.shmem_sizes[K64] == v
    for bad in ("force", "deny", "madvise"):
        with pytest.raises(ValueError):
            m.thp.shmem_sizes[K64] = bad


@pytest.mark.parametrize("kernel", ["6.6", "6.10"])
def test_before_6_11_the_files_do_not_exist(kernel):
    # No hugepages-<size>kB/shmem_enabled before 6.11: ENOENT, and a shared
    # anon fault gets base pages whatever the anon sizes say.
    m = machine(kernel)
    with pytest.raises(FileNotFoundError) as ei:
        m.thp.shmem_sizes[K64] = "always"
    assert ei.value.errno == errno.ENOENT
    if m.policy.mthp:
        m.thp.sizes[K64] = "always"
    p = m.spawn()
    a = shared_anon(p)
    p.write(a, b"x")
    assert order_of(m, p, a) == 0 and present(p, a, 2) == [True, False]


def test_force_and_inherit_below_the_pmd_size_exclude_each_other():
    # thpsize_shmem_enabled_store / shmem_enabled_store: with force, only
    # 2 MiB may inherit; force is refused while a smaller size inherits. If
    # either were accepted, a non-PMD size would override huge=.
    m = machine()
    m.thp.shmem_sizes[K64] = "inherit"
    with pytest.raises(OSError) as ei:
        m.thp.shmem_enabled = "force"
    assert ei.value.errno == errno.EINVAL and m.thp.shmem_enabled == "never"
    m.thp.shmem_sizes[K64] = "always"
    m.thp.shmem_enabled = "force"
    with pytest.raises(OSError) as ei:
        m.thp.shmem_sizes[K32] = "inherit"
    assert ei.value.errno == errno.EINVAL and m.thp.shmem_sizes[K32] == "never"
    m.thp.shmem_sizes[K32] = "advise"                   # other values stay allowed


# ---- which folio a fault allocates ------------------------------------------------------

def test_always_allocates_the_size_and_finish_fault_maps_it_whole():
    # shmem_get_folio_gfp -> shmem_alloc_and_add_folio at order 4, then
    # finish_fault (43e027e41423) maps all 16 ptes at once: one fault, 16
    # present ptes, each page mapped once and the folio referenced by the
    # cache (16) and the ptes (16). If only the faulting pte were mapped,
    # the neighbours would be absent.
    m = machine(sizes={K64: "always"})
    p = m.spawn()
    a = shared_anon(p)
    p.write(a + 5 * PAGE, b"x")
    head = p.pagemap(a).pfn
    assert present(p, a, 17) == [True] * 16 + [False]
    for i in range(16):
        e = p.pagemap(a + i * PAGE)
        assert e.pfn == head + i and m.folio_order(e.pfn) == 4
        f = m.frame(head + i)
        assert f.kpagecount == 1 and {"file", "thp", "mmap"} <= set(f.flags)
        assert ("compound_head" if i == 0 else "compound_tail") in f.flags
    assert m.frame(head).refcount == 32
    assert m.thp.shmem_sizes.stats(K64) == {"shmem_alloc": 1, "shmem_fallback": 0, "shmem_fallback_charge": 0}
    assert m.stats()["thp_file_alloc"] == 0
    assert p.read(a + 5 * PAGE, 1) == b"x" and p.read(a, 5 * PAGE) == bytes(5 * PAGE)
    m.check()


def test_memfd_gets_no_mthp_in_6_12():
    # shmem_allowable_huge_orders (6.12): the per-size files are for anon
    # shmem (vma_is_anon_shmem); a memfd follows shmem_enabled / huge= and
    # its PMD size only. A memfd page of order 4 would mean the rule leaked.
    m = machine(sizes={K64: "always", K16: "always"})
    p = m.spawn()
    fd = p.memfd_create("m")
    p.ftruncate(fd, 1 << 20)
    a = p.mmap(hole(p, 1 << 20), 1 << 20, RW, C.MAP_SHARED | C.MAP_FIXED, fd, 0)
    p.write(a, b"x")
    p.pwrite(fd, b"y" * (64 << 10), 128 << 10)
    assert p.read(a + (128 << 10), 1) == b"y"
    assert order_of(m, p, a) == 0 and order_of(m, p, a + (128 << 10)) == 0
    assert m.thp.shmem_sizes.stats(K64)["shmem_alloc"] == 0
    m.check()


@pytest.mark.parametrize("top, hugepage, expect", [
    ("never", False, 0), ("always", False, 4), ("advise", False, 0), ("advise", True, 4),
    ("deny", False, 0)])
def test_inherit_follows_shmem_enabled(top, hugepage, expect):
    # "inherit" below 2 MiB: allowed where shmem_enabled would allow the PMD
    # size (global_orders > 0); deny turns everything off. A 1 MiB VMA so
    # the PMD size itself is never suitable and 64 KiB is what is left.
    m = machine(sizes={K64: "inherit"}, shmem=top)
    p = m.spawn()
    a = shared_anon(p)
    if hugepage:
        p.madvise(a, 1 << 20, C.MADV_HUGEPAGE)
    p.write(a, b"x")
    assert order_of(m, p, a) == expect
    m.check()


def test_advise_needs_madv_hugepage_and_nohugepage_forbids_all():
    m = machine(sizes={K64: "advise", K16: "always"})
    p = m.spawn()
    a = shared_anon(p)
    p.write(a, b"x")
    assert order_of(m, p, a) == 2                       # 64 KiB not advised: 16 KiB
    b = shared_anon(p)
    p.madvise(b, 1 << 20, C.MADV_HUGEPAGE)
    p.write(b, b"x")
    assert order_of(m, p, b) == 4
    c = shared_anon(p)
    p.madvise(c, 1 << 20, C.MADV_NOHUGEPAGE)            # vma_thp_disabled
    p.write(c, b"x")
    assert order_of(m, p, c) == 0
    m.check()


def test_within_size_needs_a_folio_inside_i_size():
    # A shared anon file is the mapping's size (96 KiB: 24 pages). Page 0:
    # round_up(1, 16) = 16 <= 24, 64 KiB allowed. Page 20: round_up(21, 16)
    # = 32 > 24 and no smaller within_size size: base page.
    m = machine("6.12.9", sizes={K64: "within_size"})     # the fixed rounding (below)
    p = m.spawn()
    a = shared_anon(p, 96 << 10)
    p.write(a, b"x")
    p.write(a + 20 * PAGE, b"y")
    assert order_of(m, p, a) == 4 and order_of(m, p, a + 20 * PAGE) == 0
    m.check()


def test_within_size_any_size_that_fits_allows_them_all():
    # The loop from the highest within_size order: once 16 KiB fits
    # (round_up(21, 4) = 24 <= 24) every within_size order is allowed; 64 KiB
    # then fails only on the VMA's end, and 16 KiB is mapped.
    m = machine("6.12.9", sizes={K64: "within_size", K16: "within_size"})
    p = m.spawn()
    a = shared_anon(p, 96 << 10)
    p.write(a + 20 * PAGE, b"y")
    assert order_of(m, p, a + 20 * PAGE) == 2
    assert present(p, a + 20 * PAGE, 4) == [True] * 4
    m.check()


def test_the_highest_order_that_fits_the_vma_and_the_cache():
    # shmem_suitable_orders: thp_vma_suitable_orders (aligned range inside
    # the VMA), then from the highest order the first whose aligned range
    # has nothing cached (xa_find). A 40 KiB VMA: page 0 gets 32 KiB, page 9
    # gets a base page (neither [8, 16) nor [8, 12) ends inside the VMA).
    m = machine(sizes={K64: "always", K32: "always", K16: "always"})
    p = m.spawn()
    a = shared_anon(p, 40 << 10)
    p.write(a, b"x")
    p.write(a + 9 * PAGE, b"y")
    assert order_of(m, p, a) == 3 and order_of(m, p, a + 9 * PAGE) == 0
    # Something cached inside the 64 KiB: the next order down.
    m2 = machine(sizes={K16: "always"})
    p2 = m2.spawn()
    b = shared_anon(p2)
    p2.write(b + 5 * PAGE, b"x")                        # [4, 8) cached, order 2
    m2.thp.shmem_sizes[K64] = "always"
    p2.write(b, b"y")
    assert order_of(m2, p2, b) == 2 and order_of(m2, p2, b + 5 * PAGE) == 2
    p2.write(b + 16 * PAGE, b"z")                       # [16, 32) empty: 64 KiB
    assert order_of(m2, p2, b + 16 * PAGE) == 4
    assert m2.thp.shmem_sizes.stats(K16)["shmem_alloc"] == 2
    assert p2.read(b + 5 * PAGE, 1) == b"x"
    m2.check()


def test_a_vma_misaligned_to_the_file_gets_base_pages():
    # thp_vma_suitable_order for a file VMA: (vm_start >> PAGE_SHIFT) -
    # vm_pgoff must be a multiple of the folio's pages. Shared anon's pgoff
    # is 0, so a start 4 KiB off a 16 KiB boundary rules out every size.
    m = machine(sizes={K64: "always", K16: "always"})
    p = m.spawn()
    a = shared_anon(p, misalign=PAGE)
    p.write(a + 3 * PAGE, b"x")
    assert order_of(m, p, a + 3 * PAGE) == 0
    m.check()


def test_allocation_failure_falls_back_and_counts():
    # shmem_alloc_and_add_folio: no free block for the order -> the next
    # order down, stats/shmem_fallback of the one that failed. Memory is
    # used up by base pages first, so no 2 MiB block is left to carve.
    m = machine(sizes={K64: "always"}, memory=8 << 20)
    p = m.spawn()
    filler = p.mmap(0, 8 << 20, RW, C.MAP_PRIVATE | C.MAP_ANONYMOUS)
    n = 0
    while m._engine.nr_free > 300:
        p.write(filler + n * PAGE, b"f")
        n += 1
    a = shared_anon(p)
    p.write(a, b"x")
    st = m.thp.shmem_sizes.stats(K64)
    assert st["shmem_fallback"] >= 1 and order_of(m, p, a) == 0
    m.check()


# ---- mapping ------------------------------------------------------------------------

def test_uffd_armed_vma_maps_one_pte():
    # finish_fault: userfaultfd_armed -> nr_pages = 1 (per-page faults keep
    # uffd-wp's granularity); the folio is still allocated whole.
    m = machine(sizes={K64: "always"})
    p = m.spawn()
    a = shared_anon(p)
    u = p.userfaultfd(O_NONBLOCK)
    u.api(0)
    u.register(a, 1 << 20, UFFDIO_REGISTER_MODE_WP)
    p.read(a + 2 * PAGE, 1)
    assert present(p, a, 4) == [False, False, True, False]
    assert order_of(m, p, a + 2 * PAGE) == 4
    m.check()


@pytest.mark.parametrize("kernel, whole", [("6.10", False), ("6.11", True), ("6.12", True)])
def test_a_pmd_thp_a_vma_cannot_map_by_pmd_gets_all_its_ptes_from_6_11(kernel, whole):
    # 43e027e41423 (6.11): finish_fault maps the whole large folio of anon
    # shmem by ptes when do_set_pmd declines. The child's MADV_NOHUGEPAGE
    # VMA over the parent's THP: one write fault (do_shared_fault: no
    # fault-around), 512 ptes (6.11+) or 1 (before).
    m = machine(kernel, shmem="always")
    p = m.spawn()
    a = shared_anon(p, PMD)
    p.write(a, b"x")
    q = p.fork()
    q.madvise(a, PMD, C.MADV_NOHUGEPAGE)
    q.write(a + 7 * PAGE, b"c")
    assert all(present(q, a, 512)) if whole else present(q, a, 9) == [False] * 7 + [True, False]
    assert p.read(a + 7 * PAGE, 1) == b"c"
    m.check()


def test_fork_child_faults_map_the_whole_folio_too():
    m = machine(sizes={K64: "always"})
    p = m.spawn()
    a = shared_anon(p)
    p.write(a + PAGE, b"p")
    q = p.fork()
    assert q.read(a + PAGE, 1) == b"p"
    assert all(present(q, a, 16)) and q.pagemap(a).pfn == p.pagemap(a).pfn
    q.write(a + 3 * PAGE, b"q")
    assert p.read(a + 3 * PAGE, 1) == b"q"              # shared: one folio
    assert m.frame(p.pagemap(a).pfn).kpagecount == 2
    m.check()


# ---- split, pins, reclaim, save/load ----------------------------------------------------

def test_a_punch_splits_the_folio_and_keeps_the_rest_cached():
    # shmem_undo_range -> truncate_inode_partial_folio -> split_folio (to
    # order 0: shmem folios split only so in 6.12): every pte of it goes
    # (a file folio is unmapped, not remapped), the page in the hole is
    # freed, the other 15 stay in the cache with their data. If the split
    # took 512 pages, or none, the counts or the data would be wrong.
    m = machine(sizes={K64: "always"})
    p = m.spawn()
    a = shared_anon(p)
    p.write(a, b"".join(bytes([i + 1]) * PAGE for i in range(16)))
    p.write(a + 16 * PAGE, b"n")                        # the next folio: untouched
    used = m.memory_usage()["frames_used"]
    p.madvise(a + 2 * PAGE, PAGE, C.MADV_REMOVE)
    assert not any(present(p, a, 16)) and p.pagemap(a + 16 * PAGE).present
    assert m.memory_usage()["frames_used"] == used - 1
    assert p.read(a + 2 * PAGE, 1) == b"\0"
    assert p.read(a + 3 * PAGE, 1) == b"\x04" and p.read(a + 15 * PAGE, 1) == b"\x10"
    assert order_of(m, p, a + 3 * PAGE) == 0 and order_of(m, p, a + 16 * PAGE) == 4
    m.check()


def test_a_pinned_folio_is_not_split_and_the_hole_reads_zero():
    # can_split_folio fails with a pin (its count lives apart from the file
    # index in the tails): the folio stays whole, the part in the hole is
    # zeroed (folio_zero_range); once unpinned the next punch splits it.
    m = machine(sizes={K64: "always"})
    p = m.spawn()
    a = shared_anon(p)
    p.write(a, b"B" * (16 * PAGE))
    pin = p.pin_user_pages(a + 3 * PAGE, 1, C.FOLL_WRITE | C.FOLL_LONGTERM)
    assert m.frame(int(pin.pfns[0])).pincount == 1
    p.madvise(a + PAGE, PAGE, C.MADV_REMOVE)
    assert m.folio_order(int(pin.pfns[0])) == 4
    assert p.read(a + PAGE, 2) == b"\0\0" and p.read(a + 2 * PAGE, 1) == b"B"
    m.check()
    pin.release()
    p.madvise(a + PAGE, PAGE, C.MADV_REMOVE)
    assert p.read(a + 2 * PAGE, 1) == b"B" and order_of(m, p, a + 2 * PAGE) == 0
    m.check()


def test_pageout_splits_and_swaps_each_folio_and_reads_back():
    # MADV_PAGEOUT: shmem_writepage splits a large folio (6.12) and each
    # page goes to swap; all 4 folios of the 256 KiB, not just the first of
    # each 2 MiB.
    m = machine(sizes={K64: "always"}, swap=16 << 20)
    p = m.spawn()
    a = shared_anon(p)
    p.write(a, b"S" * (64 * PAGE))
    assert m.thp.shmem_sizes.stats(K64)["shmem_alloc"] == 4
    p.madvise(a, 64 * PAGE, C.MADV_PAGEOUT)
    assert m.stats()["swap_out"] == 64 and not any(present(p, a, 64))
    m.check()
    assert p.read(a + 40 * PAGE, 2) == b"SS"
    m.check()


def test_save_and_load_keep_the_sizes_and_the_folios(tmp_path):
    m = machine(sizes={K64: "always", K16: "advise"})
    p = m.spawn()
    a = shared_anon(p)
    p.write(a, b"saved")
    path = tmp_path / "m.mmemu"
    m.save(str(path))
    m2 = mmemu.Machine.load(str(path))
    assert m2.thp.shmem_sizes[K64] == "always" and m2.thp.shmem_sizes[K16] == "advise"
    assert m2.thp.shmem_sizes.stats(K64)["shmem_alloc"] == 1
    p2 = m2.processes[0]
    assert p2.read(a, 5) == b"saved" and order_of(m2, p2, a + 9 * PAGE) == 4
    m2.check()
    p2.madvise(a + PAGE, PAGE, C.MADV_REMOVE)           # the order survived: it splits
    assert not p2.pagemap(a).present and p2.read(a, 5) == b"saved" and order_of(m2, p2, a) == 0
    m2.check()


def test_the_order_table_costs_nothing_until_the_first_shmem_mthp(tmp_path):
    """A shmem mTHP's order and pin count live in tables made with the
    first one: until then the frame table is its 24 bytes per frame (the
    issue's <= 32 bytes per resident page), and a save carries no table; a
    machine saved with shmem mTHPs loads them back."""
    m = machine(sizes={K64: "always"})
    nframes = m._engine.nframes
    assert m.memory_usage()["frames"] == nframes * 24
    p = m.spawn()
    q = p.mmap(0, 16 * PAGE, RW, C.MAP_PRIVATE | C.MAP_ANONYMOUS)
    p.write(q, b"private")                                      # anon: no table
    empty = tmp_path / "empty.mmemu"
    m.save(str(empty))
    assert m.memory_usage()["frames"] == nframes * 24
    assert "forder" not in m._engine.get_state()
    a = shared_anon(p)
    p.write(a, b"x")
    assert order_of(m, p, a) == 4
    assert m.memory_usage()["frames"] == nframes * 25 + ((nframes >> 1) + 1) * 4
    m2 = mmemu.Machine.load(str(empty))
    p2 = m2.processes[0]
    b = shared_anon(p2)
    p2.write(b, b"y")
    assert order_of(m2, p2, b) == 4 and p2.read(q, 7) == b"private"
    m.check()
    m2.check()


# ---- order 1: hugepages-8kB (6.12) ----------------------------------------------------

K8 = 8 << 10


@pytest.mark.parametrize("kernel, present", [("6.11", False), ("6.12", True), ("6.18", True)])
def test_8k_has_a_shmem_file_from_6_12_but_no_anon_one(kernel, present):
    # "mm: tidy up shmem mTHP controls and stats" (6.12): a directory per
    # THP_ORDERS_ALL_FILE_DEFAULT order; order 1 gets only shmem_enabled.
    m = machine(kernel)
    assert (K8 in m.thp.shmem_sizes) == present
    if present:
        assert m.thp.shmem_sizes[K8] == "never"
        m.thp.shmem_sizes[K8] = "always"
        assert m.thp.shmem_sizes[K8] == "always"
    else:
        with pytest.raises(FileNotFoundError):
            m.thp.shmem_sizes[K8] = "always"
    with pytest.raises(FileNotFoundError):
        m.thp.sizes[K8] = "always"                      # THP_ORDERS_ALL_ANON has no order 1


def test_order_1_folios_fill_a_vma_and_a_pin_holds_one():
    # Two 8 KiB folios side by side in a 16 KiB VMA; the third page of a
    # 12 KiB VMA cannot get one ([2, 4) leaves the VMA). A pinned page is
    # one of the first folio's, and check() holds throughout.
    m = machine(sizes={K8: "always"})
    p = m.spawn()
    a = shared_anon(p, 16 << 10)
    p.write(a, b"a")
    p.write(a + 2 * PAGE, b"b")
    assert [order_of(m, p, a + i * PAGE) for i in range(4)] == [1, 1, 1, 1]
    first, second = p.pagemap(a).pfn, p.pagemap(a + 2 * PAGE).pfn
    assert m.folio_order(first) == 1 and m.folio_order(second) == 1 and first != second
    pin = p.pin_user_pages(a, 1, C.FOLL_WRITE | C.FOLL_LONGTERM)
    assert m.frame(first).pincount == 1 and m.frame(second).pincount == 0
    assert m.thp.shmem_sizes.stats(K8)["shmem_alloc"] == 2
    m.check()
    pin.release()
    b = shared_anon(p, 12 << 10)
    p.write(b + 2 * PAGE, b"c")
    assert order_of(m, p, b + 2 * PAGE) == 0
    m.check()


@pytest.mark.parametrize("kernel, expect", [("6.11", 0), ("6.12", 0), ("6.12.8", 0), ("6.12.9", 2), ("6.13", 2),
                                            ("6.18", 2)])
def test_within_size_index_rounding_bug_until_6_12_9(kernel, expect):
    # A 16 KiB mapping, within_size for 128 KiB and 16 KiB, a fault at page
    # 0. Fixed (d0e6983a6d17, 6.13; 6.12.9): round_up(1, 32) = 32 > 4, then
    # round_up(1, 4) = 4 <= 4, so 16 KiB. Before, the index itself went
    # round_up(1, 5) = 5, then round_up(6, 2) = 6 > 4: a base page.
    m = machine(kernel, sizes={128 << 10: "within_size", K16: "within_size"})
    p = m.spawn()
    a = shared_anon(p, K16)
    p.write(a, b"x")
    assert order_of(m, p, a) == expect
    m.check()


def test_sizes_take_numpy_integers_and_refuse_what_is_not_a_size():
    import numpy as np
    m = machine()
    m.thp.shmem_sizes[np.int64(K64)] = "always"
    assert m.thp.shmem_sizes[np.uint32(K64)] == "always" == m.thp.shmem_sizes[K64]
    assert m.thp.shmem_sizes.stats(np.int64(K64))["shmem_alloc"] == 0
    for bad in (True, 1.5, "64K", None):
        with pytest.raises(TypeError):
            m.thp.shmem_sizes[bad] = "always"
    for bad in (-K64, 0, 3 << 10, 1 << 70):
        with pytest.raises(FileNotFoundError):
            m.thp.shmem_sizes[bad] = "always"
    assert m.thp.shmem_sizes[K64] == "always"
