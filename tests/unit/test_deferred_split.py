"""The deferred split queue (mm/huge_memory.c 6.12: deferred_split_folio,
deferred_split_scan): an anon large folio left partially mapped by a pte
unmap keeps its unmapped pages allocated until memory pressure runs the
shrinker, which splits it and frees them."""
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
