"""khugepaged (mm/khugepaged.c 6.12: khugepaged_do_scan, hpage_collapse_scan_pmd):
Machine.khugepaged_scan() collapses PTE-mapped 2 MiB of VMAs THP may use,
with khugepaged's limits where MADV_COLLAPSE has none. Each rule has a case
that fails without it."""
import pytest

import mmemu
import mmemu.constants as C

PAGE = C.PAGE_SIZE
THP = C.PMD_SIZE
RW = C.PROT_READ | C.PROT_WRITE
PRIV = C.MAP_PRIVATE | C.MAP_ANONYMOUS


def setup(kernel="6.18", thp="never", blocks=1, touch=512, swap=16 << 20):
    """A machine whose process has `blocks` aligned 2 MiB of base pages, the
    first `touch` pages of each written (with THP off), then THP `thp`."""
    m = mmemu.Machine(kernel=kernel, memory=64 << 20, swap=swap, thp="never")
    p = m.spawn()
    raw = p.mmap(0, (blocks + 1) * THP, RW, PRIV)
    A = (raw + THP - 1) & ~(THP - 1)
    for b in range(blocks):
        p.touch(A + b * THP, touch, write=True, value=b + 1)
    assert not is_thp(m, p, A)
    m.thp.enabled = thp
    return m, p, A


def is_thp(m, p, addr):
    e = p.pagemap(addr)
    return e.present and "thp" in m.frame(e.pfn).flags and p.pagemap(addr + THP - PAGE).pfn == e.pfn + 511


def test_collapses_only_where_thp_is_enabled_for_the_vma():
    m, p, A = setup()
    assert m.khugepaged_scan() == 0                 # enabled=never
    m.thp.enabled = "madvise"
    assert m.khugepaged_scan() == 0                 # no MADV_HUGEPAGE
    p.madvise(A, THP, C.MADV_HUGEPAGE)
    before = p.versions(A, 512).copy()
    assert m.khugepaged_scan() == 1
    assert is_thp(m, p, A) and (p.versions(A, 512) == before).all()
    assert m.thp.khugepaged.pages_collapsed == 1
    m.check()


@pytest.mark.parametrize("limit,collapsed", [(511, True), (510, False)])
def test_max_ptes_none(limit, collapsed):
    m, p, A = setup(thp="always", touch=1)
    m.thp.khugepaged.max_ptes_none = limit
    assert bool(m.khugepaged_scan()) == collapsed
    assert is_thp(m, p, A) == collapsed
    m.check()


@pytest.mark.parametrize("swapped,collapsed", [(64, True), (65, False)])
def test_max_ptes_swap(swapped, collapsed):
    m, p, A = setup(thp="always")
    p.madvise(A, swapped * PAGE, C.MADV_PAGEOUT)
    assert p.pagemap(A).swapped
    assert bool(m.khugepaged_scan()) == collapsed
    assert is_thp(m, p, A) == collapsed
    m.check()


@pytest.mark.parametrize("touched,collapsed", [(300, True), (200, False)])
def test_swapping_in_needs_half_the_ptes_young(touched, collapsed):
    """SCAN_LACK_REFERENCED_PAGE: with a swap entry to bring back, fewer than
    256 young ptes is not worth it for khugepaged; MADV_COLLAPSE does it."""
    m, p, A = setup(thp="always", touch=touched)
    p.madvise(A, PAGE, C.MADV_PAGEOUT)
    assert bool(m.khugepaged_scan()) == collapsed
    if not collapsed:
        p.madvise(A, THP, C.MADV_COLLAPSE)
    assert is_thp(m, p, A)
    m.check()


@pytest.mark.parametrize("limit,collapsed", [(256, False), (300, True)])
def test_max_ptes_shared(limit, collapsed):
    m, p, A = setup(thp="always")
    c = p.fork()
    c.munmap(A + 300 * PAGE, 212 * PAGE)            # 300 pages still shared with the child
    m.thp.khugepaged.max_ptes_shared = limit
    assert bool(m.khugepaged_scan()) == collapsed
    assert c.read(A, 1) == b"\x01"
    m.check()


def test_uffd_armed_block_with_holes_is_left_alone():
    m, p, A = setup(thp="always", touch=100)
    u = p.userfaultfd()
    u.api()
    u.register(A, THP, mmemu.uffd.UFFDIO_REGISTER_MODE_MISSING)
    assert m.khugepaged_scan() == 0
    m.check()


def test_a_scan_stops_at_its_budget_and_the_next_goes_on():
    m, p, A = setup(thp="always", blocks=3)
    assert m.khugepaged_scan(pages=512) == 1
    assert is_thp(m, p, A) and not is_thp(m, p, A + THP)
    assert m.khugepaged_scan(pages=1024) == 2
    assert is_thp(m, p, A + THP) and is_thp(m, p, A + 2 * THP)
    assert m.khugepaged_scan() == 0                 # nothing left
    m.check()


def test_settings_are_checked():
    k = mmemu.Machine(memory=64 << 20).thp.khugepaged
    for name, bad in (("max_ptes_none", 512), ("max_ptes_swap", -1), ("max_ptes_shared", 1.5),
                      ("pages_to_scan", 0)):
        with pytest.raises(ValueError):
            setattr(k, name, bad)
