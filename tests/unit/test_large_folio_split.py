"""Splits of anon large folios that come later: the deferred split queue
(mm/huge_memory.c 6.12: deferred_split_folio, deferred_split_scan) - a folio
left partially mapped by a pte unmap keeps its unmapped pages allocated
until memory pressure runs the shrinker, which splits it and frees them -
and KSM's split before merging a page of one (mm/ksm.c try_to_merge_one_page)."""
import mmemu
import mmemu.constants as C

PAGE = C.PAGE_SIZE
THP = C.PMD_SIZE
RW = C.PROT_READ | C.PROT_WRITE
PRIV = C.MAP_PRIVATE | C.MAP_ANONYMOUS


def thp(kernel="6.18", fill=b"\x01"):
    m = mmemu.Machine(kernel=kernel, memory=64 << 20, thp="always")
    p = m.spawn()
    raw = p.mmap(0, 2 * THP, RW, PRIV)
    A = (raw + THP - 1) & ~(THP - 1)
    p.write(A, fill * THP if fill else b"\0")
    assert "thp" in m.frame(p.pagemap(A).pfn).flags
    return m, p, A


def used(m):
    return m.memory_usage()["frames_used"]


def test_partially_unmapped_thp_is_freed_by_the_shrinker_not_by_the_unmap():
    m, p, A = thp()
    u0 = used(m)
    p.madvise(A + PAGE, THP - PAGE, C.MADV_DONTNEED)
    assert used(m) == u0                    # queued: the 511 pages stay allocated
    assert "thp" in m.frame(p.pagemap(A).pfn).flags
    m.check()
    assert m.reclaim(1) == 511
    assert used(m) == u0 - 511
    assert "thp" not in m.frame(p.pagemap(A).pfn).flags and p.read(A, 1) == b"\x01"
    m.check()


def test_a_folio_mapped_whole_elsewhere_is_not_queued():
    m, p, A = thp()
    c = p.fork()
    p.madvise(A + PAGE, THP - PAGE, C.MADV_DONTNEED)    # the child still maps every page
    u0 = used(m)
    assert m.reclaim(1) == 0 and used(m) == u0
    assert c.read(A + THP - PAGE, 1) == b"\x01"
    m.check()


def test_a_folio_two_mms_map_waits_until_one_alone_does():
    m, p, A = thp()
    c = p.fork()
    c.madvise(A + THP // 2, THP // 2, C.MADV_DONTNEED)
    p.madvise(A + THP // 2, THP // 2, C.MADV_DONTNEED)  # the upper half is mapped by nobody
    u0 = used(m)
    m.reclaim(1)
    assert used(m) == u0                    # split_folio cannot unmap another mm: stays queued
    c.exit()
    assert m.reclaim(1) >= 256
    assert "thp" not in m.frame(p.pagemap(A).pfn).flags and p.read(A + THP // 2 - PAGE, 1) == b"\x01"
    m.check()


def test_a_pinned_folio_is_not_split_until_unpinned():
    m, p, A = thp()
    pin = p.pin_user_pages(A, 1, C.FOLL_WRITE)
    p.madvise(A + PAGE, THP - PAGE, C.MADV_DONTNEED)
    u0 = used(m)
    m.reclaim(1)
    assert used(m) == u0                    # can_split_folio: extra references
    pin.release()
    assert m.reclaim(1) == 511
    m.check()


def test_6_12_maps_a_remaining_zero_page_to_the_zero_page():
    for kernel, remapped in (("6.11", False), ("6.12", True)):
        m, p, A = thp(kernel, fill=None)    # only byte 0 written, with zero
        p.madvise(A + PAGE, THP - PAGE, C.MADV_DONTNEED)
        m.reclaim(1)
        zero = m.frame(p.pagemap(A).pfn)
        assert ("zero_page" in zero.flags) == remapped, kernel
        m.check()


def test_the_queue_survives_save_and_load(tmp_path):
    m, p, A = thp()
    p.madvise(A + PAGE, THP - PAGE, C.MADV_DONTNEED)
    m.save(tmp_path / "m")
    m2 = mmemu.Machine.load(tmp_path / "m")
    assert m2.reclaim(1) == 511
    m2.check()


# ---- KSM splits a large folio before merging one of its pages ---------------

def _distinct_pages(n):
    pat = bytearray(n * PAGE)
    for i in range(n):
        pat[i * PAGE:i * PAGE + 8] = (i + 1).to_bytes(8, "little")
    return bytes(pat)


def test_ksm_splits_a_thp_to_merge_a_page_of_it():
    """try_to_merge_one_page() (6.12): split_huge_page() of the folio first,
    then the page merges with its twin."""
    m, p, A = thp()
    p.write(A, _distinct_pages(512))
    q = m.spawn()
    B = q.mmap(0, PAGE, RW, PRIV)
    q.write(B, _distinct_pages(512)[5 * PAGE:6 * PAGE])      # the twin of A's page 5
    p.madvise(A, THP, C.MADV_MERGEABLE)
    q.madvise(B, PAGE, C.MADV_MERGEABLE)
    for _ in range(3):
        m.ksm_scan()
    assert "thp" not in m.frame(p.pagemap(A).pfn).flags      # split
    assert p.pagemap(A + 5 * PAGE).pfn == q.pagemap(B).pfn and m.ksm_stats()["pages_sharing"] == 1
    assert p.read(A + 511 * PAGE, 2) == (512).to_bytes(8, "little")[:2]
    m.check()


def test_ksm_leaves_a_thp_with_no_twin_whole():
    m, p, A = thp()
    p.write(A, _distinct_pages(512))
    p.madvise(A, THP, C.MADV_MERGEABLE)
    m.ksm_scan()
    m.ksm_scan()
    assert "thp" in m.frame(p.pagemap(A).pfn).flags
    m.check()
