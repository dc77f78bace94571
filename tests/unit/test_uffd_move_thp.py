"""UFFDIO_MOVE of THPs (mm/userfaultfd.c 6.12 move_pages): a PMD-mapped
THP moves whole when both addresses are 2 MiB aligned and 2 MiB is left to
move (move_pages_huge_pmd; uffd-unit-tests' move-pmd); otherwise it is split
and its pages move one by one (move-pmd-split), a pte-mapped large folio
being split by move_pages_pte. Only exclusive, unpinned folios move."""
import errno

import pytest

import mmemu
import mmemu.constants as C
import mmemu.uffd as U

PAGE = C.PAGE_SIZE
THP = C.PMD_SIZE
RW = C.PROT_READ | C.PROT_WRITE
PRIV = C.MAP_PRIVATE | C.MAP_ANONYMOUS


def setup(fill=b"\x05", dst_thp=False):
    m = mmemu.Machine(kernel="6.18", memory=64 << 20, thp="always")
    p = m.spawn()
    raw = p.mmap(0, 6 * THP, RW, PRIV)
    A = (raw + THP - 1) & ~(THP - 1)
    if fill is not None:
        p.write(A, fill * THP)
    else:
        p.read(A, 1)                                # the huge zero page
    D = A + 2 * THP
    if dst_thp:
        p.write(D, b"\x01")                         # a THP at dst, before registering
    u = p.userfaultfd()
    u.api(U.UFFD_FEATURE_MOVE)
    u.register(D, 2 * THP, U.UFFDIO_REGISTER_MODE_MISSING)
    return m, p, u, A, D


def is_pmd_thp(m, p, addr):
    e = p.pagemap(addr)
    return e.present and "thp" in m.frame(e.pfn).flags and p.pagemap(addr + THP - PAGE).pfn == e.pfn + 511


def test_move_pmd_moves_the_thp_whole():
    m, p, u, A, D = setup()
    pfn = p.pagemap(A).pfn
    assert u.move(D, A, THP, 0) == THP
    assert p.pagemap(D).pfn == pfn and is_pmd_thp(m, p, D) and not p.pagemap(A).present
    assert p.read(D + THP - 1, 1) == b"\x05"
    f0 = p.minflt
    p.write(D + 7, b"w")                            # dirty and writable in dst: no fault
    assert p.minflt == f0
    m.check()


def test_move_pmd_split_moves_pages_of_a_split_folio():
    m, p, u, A, D = setup()
    assert u.move(D + PAGE, A + PAGE, 4 * PAGE, 0) == 4 * PAGE    # unaligned: split first
    assert not is_pmd_thp(m, p, A) and "thp" not in m.frame(p.pagemap(A).pfn).flags
    assert p.read(D + PAGE, 4 * PAGE) == b"\x05" * 4 * PAGE and not p.pagemap(A + PAGE).present
    assert p.read(A, 1) == b"\x05" and p.read(A + 5 * PAGE, 1) == b"\x05"
    m.check()


def test_a_shared_thp_does_not_move():
    m, p, u, A, D = setup()
    p.fork()
    for length in (THP, 4 * PAGE):
        with pytest.raises(OSError) as e:
            u.move(D, A, length, 0)
        assert e.value.errno == errno.EBUSY
    m.check()


def test_a_pinned_thp_does_not_move_or_split():
    m, p, u, A, D = setup()
    pin = p.pin_user_pages(A + 9 * PAGE, 1, C.FOLL_WRITE)
    with pytest.raises(OSError) as e:
        u.move(D, A, THP, 0)
    assert e.value.errno == errno.EBUSY             # move_pages_huge_pmd: maybe pinned
    with pytest.raises(OSError) as e:
        u.move(D + PAGE, A + PAGE, PAGE, 0)
    assert e.value.errno == errno.EAGAIN            # split_folio: can_split_folio fails
    pin.release()
    m.check()


def test_a_pmd_leaf_at_dst_is_eexist():
    m, p, u, A, D = setup(dst_thp=True)
    with pytest.raises(OSError) as e:
        u.move(D, A, THP, 0)
    assert e.value.errno == errno.EEXIST
    m.check()


def test_the_huge_zero_page_moves_whole():
    m, p, u, A, D = setup(fill=None)
    zero = p.pagemap(A).pfn
    assert u.move(D, A, THP, 0) == THP
    assert p.pagemap(D).pfn == zero and p.read(D, 1) == b"\0"
    m.check()
