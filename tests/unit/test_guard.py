"""MADV_GUARD_INSTALL / REMOVE details beyond S79 (mm/madvise.c,
662df3e5c376 6.13; f807123d578d 6.15): the VMA walk, what keeps or clears
a marker, and the gates. Each test fails if its rule is undone."""
import errno

import pytest

import mmemu
from mmemu import constants as C

PAGE = C.PAGE_SIZE
RW = C.PROT_READ | C.PROT_WRITE
PRIV = C.MAP_PRIVATE | C.MAP_ANONYMOUS


def _proc(kernel="6.18"):
    return mmemu.Machine(kernel=kernel, memory=8 << 20, swap=4 << 20).spawn()


def _is_guard(p, addr):
    try:
        p.read(addr, 1)
    except mmemu.Sigsegv:
        return True
    return False


@pytest.mark.parametrize("kernel, offered", [("6.12", False), ("6.13", True), ("6.18", True)])
def test_guard_advice_is_einval_before_6_13(kernel, offered):
    p = _proc(kernel)
    a = p.mmap(0, PAGE, RW, PRIV)
    for advice in (C.MADV_GUARD_INSTALL, C.MADV_GUARD_REMOVE):
        if offered:
            p.madvise(a, PAGE, advice)
        else:
            with pytest.raises(OSError) as e:
                p.madvise(a, PAGE, advice)
            assert e.value.errno == errno.EINVAL


def test_a_hole_is_enomem_after_the_mapped_parts_are_guarded():
    p = _proc()
    a = p.mmap(0, 3 * PAGE, RW, PRIV)
    p.munmap(a + PAGE, PAGE)
    with pytest.raises(OSError) as e:
        p.madvise(a, 3 * PAGE, C.MADV_GUARD_INSTALL)
    assert e.value.errno == errno.ENOMEM
    assert _is_guard(p, a) and _is_guard(p, a + 2 * PAGE)


def test_a_refused_vma_stops_the_walk_with_the_vmas_before_it_guarded():
    p = _proc("6.14")                       # shared anonymous memory is refused until 6.15
    a = p.mmap(0, 2 * PAGE, RW, PRIV)
    p.mmap(a + 2 * PAGE, PAGE, RW, C.MAP_SHARED | C.MAP_ANONYMOUS | C.MAP_FIXED)
    p.mmap(a + 3 * PAGE, PAGE, RW, PRIV | C.MAP_FIXED)
    with pytest.raises(OSError) as e:
        p.madvise(a, 4 * PAGE, C.MADV_GUARD_INSTALL)
    assert e.value.errno == errno.EINVAL
    assert _is_guard(p, a) and _is_guard(p, a + PAGE)
    assert not _is_guard(p, a + 3 * PAGE)


def test_install_drops_the_pages_it_covers_and_remove_leaves_other_pages():
    p = _proc()
    a = p.mmap(0, 3 * PAGE, RW, PRIV)
    p.write(a, b"\x05" * 3 * PAGE)
    p.madvise(a + PAGE, PAGE, C.MADV_GUARD_INSTALL)
    p.madvise(a, 3 * PAGE, C.MADV_GUARD_REMOVE)     # the present pages stay
    assert p.read(a, 1) == b"\x05" and p.read(a + 2 * PAGE, 1) == b"\x05"
    assert p.read(a + PAGE, 1) == b"\x00"            # the guarded page was zapped


def test_mprotect_pageout_and_populate_keep_the_marker():
    p = _proc()
    a = p.mmap(0, 2 * PAGE, RW, PRIV)
    p.write(a, b"\x01" * 2 * PAGE)
    p.madvise(a + PAGE, PAGE, C.MADV_GUARD_INSTALL)
    p.mprotect(a, 2 * PAGE, C.PROT_READ)
    p.mprotect(a, 2 * PAGE, RW)
    p.madvise(a, 2 * PAGE, C.MADV_PAGEOUT)
    assert p.pagemap(a).swapped
    with pytest.raises(OSError) as e:               # faultin_page(): SIGSEGV -> EFAULT
        p.madvise(a, 2 * PAGE, C.MADV_POPULATE_READ)
    assert e.value.errno == errno.EFAULT
    assert _is_guard(p, a + PAGE)
    assert p.read(a, 1) == b"\x01"


def test_a_wiped_vma_does_not_pass_its_guards_to_the_child():
    # dup_mmap() copies no page tables of a WIPEONFORK VMA.
    p = _proc()
    a = p.mmap(0, PAGE, RW, PRIV)
    p.madvise(a, PAGE, C.MADV_GUARD_INSTALL)
    p.madvise(a, PAGE, C.MADV_WIPEONFORK)
    c = p.fork()
    assert c.read(a, 1) == b"\x00"
    assert _is_guard(p, a)


@pytest.mark.parametrize("kernel, bit", [("6.13", False), ("6.14", False), ("6.15", True), ("6.18", True)])
def test_pagemap_bit_58_from_6_15(kernel, bit):
    p = _proc(kernel)
    a = p.mmap(0, PAGE, RW, PRIV)
    p.madvise(a, PAGE, C.MADV_GUARD_INSTALL)
    e = p.pagemap(a)
    assert e.swapped and not e.present           # a marker reads as a swap entry
    assert bool(e.raw & C.PM_GUARD_REGION) == bit


@pytest.mark.parametrize("kernel, offered", [("6.15", False), ("6.16", True)])
def test_pagemap_scan_reports_page_is_guard_from_6_16(kernel, offered):
    p = _proc(kernel)
    a = p.mmap(0, 2 * PAGE, RW, PRIV)
    p.madvise(a + PAGE, PAGE, C.MADV_GUARD_INSTALL)
    if not offered:
        with pytest.raises(OSError) as e:
            p.pagemap_scan(a, a + 2 * PAGE, category_mask=C.PAGE_IS_GUARD, return_mask=C.PAGE_IS_GUARD)
        assert e.value.errno == errno.EINVAL
        return
    regions, walk_end = p.pagemap_scan(a, a + 2 * PAGE, category_mask=C.PAGE_IS_GUARD,
                                       return_mask=C.PAGE_IS_GUARD)
    assert regions == [(a + PAGE, a + 2 * PAGE, C.PAGE_IS_GUARD)] and walk_end == a + 2 * PAGE
