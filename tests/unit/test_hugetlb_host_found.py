"""hugetlb rules the host oracle (`mmemu diff`, HostMachine(hugepages=))
found the engine getting wrong; each case is what 6.18.44 did.
"""
import errno

import pytest

import mmemu
import mmemu.constants as C

H2M = 2 << 20
RW = C.PROT_READ | C.PROT_WRITE
HUGE = C.MAP_PRIVATE | C.MAP_ANONYMOUS | C.MAP_HUGETLB


def _pool(m):
    h = m.hugepages[H2M]
    return h["nr_hugepages"], h["free_hugepages"], h["resv_hugepages"]


@pytest.mark.parametrize("advice, errno_", [
    (C.MADV_PAGEOUT, errno.EINVAL), (C.MADV_COLD, errno.EINVAL), (C.MADV_WILLNEED, None),
    (C.MADV_NORMAL, None), (C.MADV_DOFORK, None), (C.MADV_KEEPONFORK, None),
    (C.MADV_MERGEABLE, None), (C.MADV_UNMERGEABLE, None),
    (C.MADV_DONTFORK, errno.EINVAL), (C.MADV_RANDOM, errno.EINVAL)])
def test_advice_that_does_not_change_a_hugetlb_vma_never_cuts_it(advice, errno_):
    """madvise over 1.5 of two huge pages: advice that sets no new VMA
    flag (madvise_update_vma returns before splitting) or none at all
    (PAGEOUT, COLD, WILLNEED) leaves the VMA whole, so no reservation is
    lost and no EINVAL for a cut; advice that changes the flags must split
    there and fails (hugetlb_vm_op_split). If the engine cut the VMA, the
    half-page tail lost its reservation (resv 2 -> 1)."""
    m = mmemu.Machine(kernel="6.18", hugepages={H2M: 4})
    p = m.spawn()
    a = p.mmap(0, 2 * H2M, RW, HUGE)
    assert _pool(m) == (4, 4, 2)
    if errno_ is None:
        p.madvise(a, 3 * H2M // 2, advice)
    else:
        with pytest.raises(OSError) as e:
            p.madvise(a, 3 * H2M // 2, advice)
        assert e.value.errno == errno_
    assert _pool(m) == (4, 4, 2)
    assert [(v.start, v.end) for v in p.vmas] == [(a, a + 2 * H2M)]
    m.check()


@pytest.mark.parametrize("kernel, restored", [("6.7", False), ("6.8", True), ("6.18", True),
                                              ("6.1.176", False)])
def test_dontneed_of_the_owners_page_restores_its_reservation(kernel, restored):
    """MADV_DONTNEED of a faulted private hugetlb page by the mapping's
    creator: from df7a6d1f6405 (6.8) the page's reservation comes back
    (resv 0 -> 1 as it is freed), so the next fault is promised a page and
    munmap gives it back to the pool; before, the reservation stayed
    consumed (resv 0) and the refault took an unreserved page."""
    m = mmemu.Machine(kernel=kernel, hugepages={H2M: 4})
    p = m.spawn()
    a = p.mmap(0, H2M, RW, HUGE)
    p.write(a, b"x")
    assert _pool(m) == (4, 3, 0)
    p.madvise(a, H2M, C.MADV_DONTNEED)
    assert _pool(m) == (4, 4, 1 if restored else 0)
    p.write(a, b"y")
    assert _pool(m) == (4, 3, 0)
    p.madvise(a, H2M, C.MADV_DONTNEED)
    p.munmap(a, H2M)
    assert _pool(m) == (4, 4, 0)
    m.check()


@pytest.mark.parametrize("kernel, restored", [("6.18", True), ("6.18.44", True), ("6.12.109", True),
                                              ("6.12.110", False),
                                              ("6.12.118", False)])
def test_restore_while_a_child_still_maps_the_page(kernel, restored):
    """6.18.44 restores the owner's reservation even while fork's child
    maps the page: nothing changes at the owner's DONTNEED (the page stays
    the child's), the reservation comes back when the child's exit frees
    the page, and the owner's next fault consumes it. 6.12.110 restores only
    for the folio's last mapping ("hugetlb: only adjust reservation during
    unmapping if mapcount is 0"): the child's exit frees the page with no
    reservation, and the owner's next fault takes an unreserved page."""
    m = mmemu.Machine(kernel=kernel, hugepages={H2M: 4})
    p = m.spawn()
    a = p.mmap(0, H2M, RW, HUGE)
    p.write(a, b"x")
    c = p.fork()
    p.madvise(a, H2M, C.MADV_DONTNEED)
    assert _pool(m) == (4, 3, 0)
    c.exit()
    assert _pool(m) == (4, 4, 1 if restored else 0)
    p.write(a, b"y")
    assert _pool(m) == (4, 3, 0)
    m.check()


def test_mprotect_to_the_same_protection_never_cuts_a_hugetlb_vma():
    """mprotect over 1.5 of two huge pages with the protection they have:
    mprotect_fixup() returns before splitting, so it succeeds and the
    reservations stay; a new protection must split inside the page: EINVAL."""
    m = mmemu.Machine(kernel="6.18", hugepages={H2M: 4})
    p = m.spawn()
    a = p.mmap(0, 2 * H2M, RW, HUGE)
    p.mprotect(a, 3 * H2M // 2, RW)
    assert _pool(m) == (4, 4, 2)
    assert [(v.start, v.end) for v in p.vmas] == [(a, a + 2 * H2M)]
    with pytest.raises(OSError) as e:
        p.mprotect(a, 3 * H2M // 2, C.PROT_READ)
    assert e.value.errno == errno.EINVAL
    p.mprotect(a, H2M, C.PROT_READ)
    p.mprotect(a, 3 * H2M // 2, RW)          # the first VMA changes whole, the second stays
    assert _pool(m) == (4, 4, 2)
    # (VM_DONTEXPAND is VM_SPECIAL: hugetlb VMAs never merge back)
    assert [(v.start, v.end) for v in p.vmas] == [(a, a + H2M), (a + H2M, a + 2 * H2M)]
    m.check()


@pytest.mark.parametrize("kernel, zeroed", [("5.18", False), ("5.19", True), ("6.18", True)])
def test_punch_hole_zeroes_the_partial_huge_pages_at_its_edges(kernel, zeroed):
    """A hole punch of [4 KiB, 2 MiB + 4 KiB) of an MFD_HUGETLB file drops
    no whole huge page but zeroes what it covers of both partial ones
    (hugetlbfs_zero_partial_page, 5.19), seen through a shared mapping and
    read(2); a private COW copy keeps its bytes. Before 5.19 nothing changed."""
    m = mmemu.Machine(kernel=kernel, hugepages={H2M: 4})
    p = m.spawn()
    fd = p.memfd_create("h", C.MFD_HUGETLB)
    p.ftruncate(fd, 2 * H2M)
    s = p.mmap(0, 2 * H2M, RW, C.MAP_SHARED, fd, 0)
    q = p.mmap(0, H2M, RW, C.MAP_PRIVATE, fd, H2M)
    p.write(s, b"head")
    p.write(s + 8192, b"kept?")
    p.write(s + H2M, b"file")
    p.write(s + H2M + 4096, b"tail")
    p.write(q + 100, b"mine")
    p.fallocate(fd, C.FALLOC_FL_PUNCH_HOLE | C.FALLOC_FL_KEEP_SIZE, 4096, H2M)
    gone = bytes(5) if zeroed else b"kept?"
    assert p.read(s, 4) == b"head" and p.read(s + 8192, 5) == gone
    assert p.read(s + H2M, 4) == (bytes(4) if zeroed else b"file")
    assert p.pread(fd, 4, H2M + 4096) == b"tail"
    assert p.read(q + 100, 4) == b"mine"
    assert _pool(m) == (4, 1, 0)
    m.check()


@pytest.mark.parametrize("kernel, restored", [("6.7", False), ("6.8", True), ("6.1.176", False),
                                              ("6.12.118", True), ("6.18.44", True)])
def test_munmap_of_a_pinned_owners_page_hands_its_restored_reservation_back_first(kernel,
                                                                                 restored):
    """munmap zaps before it closes the VMA (unmap_region, then remove_vma):
    the zap restores the owner's reservation of a page no one else maps
    (__unmap_hugepage_range, df7a6d1f6405 6.8; in 6.12.118 too, the folio
    being unmapped), and hugetlb_vm_op_close then hands back every
    unconsumed reservation, that one included, while the pin still holds
    the page: resv_hugepages goes below zero (sysfs prints 2**64 - 1) until
    the pin's release frees the page and adds it back. Seen on 6.12.118
    under QEMU and on the 6.18.44 host. If the engine closed the VMA before
    the zap, the restore found no VMA and resv read 0."""
    m = mmemu.Machine(kernel=kernel, hugepages={H2M: 4})
    p = m.spawn()
    a = p.mmap(0, 2 * H2M, RW, HUGE)
    pin = p.pin_user_pages(a, 2, C.FOLL_WRITE | C.FOLL_LONGTERM)
    assert _pool(m) == (4, 3, 1)
    p.munmap(a, 2 * H2M)
    assert _pool(m) == (4, 3, (1 << 64) - 1 if restored else 0)
    pin.release()
    assert _pool(m) == (4, 4, 0)
    m.check()
