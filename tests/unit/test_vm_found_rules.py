"""Rules a real kernel booted under QEMU showed the engine had wrong
(`mmemu diff --against vm:6.1` / `vm:6.12`), each pinned at the versions
the kernels showed and the history places.

Each test fails if the rule is undone or moved to another release.
"""
import pytest

import mmemu
from mmemu import MAP_ANONYMOUS, MAP_PRIVATE, PAGE_SIZE, PROT_READ, PROT_WRITE
from mmemu.constants import KPF_KSM, MAP_HUGE_2MB, MAP_HUGETLB


def _anon_page_flags(kernel, hugetlb=False):
    if hugetlb:
        m = mmemu.Machine(kernel=kernel, hugepages={2 << 20: 1})
        size, flags = 2 << 20, MAP_HUGETLB | MAP_HUGE_2MB
    else:
        m = mmemu.Machine(kernel=kernel)
        size, flags = PAGE_SIZE, 0
    p = m.spawn()
    a = p.mmap(0, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | flags)
    p.write(a, b"x")
    return m.frame(p.pagemap(a).pfn)


@pytest.mark.parametrize("kernel, ksm", [
    ("6.1.176", False),    # before dee3d0bef2b0 (6.10): PageKsm() proper
    ("6.9", False),
    ("6.10", True),        # the rewrite's test matches any anon mapping
    ("6.12.118", True),    # seen on Debian's 6.12.118 guest
    ("6.18", True),
    ("6.18.44", False),    # 81401cebfc15 in 6.18.y: the 6.18.44 host shows it fixed
])
@pytest.mark.parametrize("hugetlb", [False, True], ids=["small", "hugetlb"])
def test_kpageflags_reports_ksm_on_every_anon_page_from_the_rewrite_to_its_fix(kernel, ksm,
                                                                               hugetlb):
    # A hugetlb page too (the 6.12.118 guest's MAP_HUGETLB page read as KSM).
    f = _anon_page_flags(kernel, hugetlb)
    assert ("ksm" in f.flags) == ksm
    assert bool(f.kpageflags & (1 << KPF_KSM)) == ksm


@pytest.mark.parametrize("kernel, raw", [
    ("5.19", 0x428000000000003e),      # 9f186f9e5fa9's SWP_SWAPIN_ERROR is type 31
    ("6.1.176", 0x428000000000003e),   # seen on Debian's 6.1.176 guest
    ("6.2", 0x428000000000003f),       # 15520a3f0469: swapin errors become markers
    ("6.12.118", 0x428000000000003f),  # seen on Debian's 6.12.118 guest
])
def test_a_uffd_wp_marker_reads_as_the_swap_type_below_swapin_errors_until_6_2(kernel, raw):
    from mmemu import MAP_SHARED
    from mmemu import constants as C
    m = mmemu.Machine(kernel=kernel)
    p = m.spawn()
    fd = p.memfd_create("m")
    p.ftruncate(fd, 4 * PAGE_SIZE)
    p.pwrite(fd, b"cached", 0)
    a = p.mmap(0, PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
    u = p.userfaultfd(0)
    u.api(0)
    u.register(a, PAGE_SIZE, C.UFFDIO_REGISTER_MODE_WP)
    u.writeprotect(a, PAGE_SIZE, C.UFFDIO_WRITEPROTECT_MODE_WP)   # a marker over the none pte
    assert p.pagemap(a).raw == raw


@pytest.mark.parametrize("kernel, err", [("6.1.176", "EFAULT"), ("6.12.118", "EFAULT"),
                                         ("6.16", "EFAULT"), ("6.17", "EINVAL"), ("6.18", "EINVAL")])
def test_mremap_looks_the_old_vma_up_before_checking_the_new_range_until_6_17(kernel, err):
    import errno
    from mmemu.constants import MREMAP_FIXED, MREMAP_MAYMOVE
    m = mmemu.Machine(kernel=kernel)
    p = m.spawn()
    a = p.mmap(0, 3 * PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS)
    p.munmap(a, PAGE_SIZE)
    with pytest.raises(OSError) as e:       # nothing at a, and [a+1, a+3) overlaps [a, a+3)
        p.mremap(a, 3 * PAGE_SIZE, 2 * PAGE_SIZE, MREMAP_MAYMOVE | MREMAP_FIXED, a + PAGE_SIZE)
    assert e.value.errno == getattr(errno, err)


@pytest.mark.parametrize("kernel, faults", [("6.1.176", 1), ("6.10", 1), ("6.11", 0), ("6.12.118", 0)])
def test_a_read_swap_in_maps_an_exclusive_page_writable_from_6_11(kernel, faults):
    from mmemu.constants import MADV_PAGEOUT
    m = mmemu.Machine(kernel=kernel, swap=64 * PAGE_SIZE)
    p = m.spawn()
    a = p.mmap(0, PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS)
    p.write(a, b"\x01")
    p.madvise(a, PAGE_SIZE, MADV_PAGEOUT)
    assert p.pagemap(a).swapped
    assert p.read(a, 1) == b"\x01"          # the read fault swaps it in
    f0 = p.minflt
    p.write(a, b"\x02")                     # 6.1.176 faulted here (S78 on the guest)
    assert p.minflt - f0 == faults


@pytest.mark.parametrize("kernel, target_and_tail_gone", [
    ("6.1.176", True), ("6.12.118", True),     # seen on Debian's 6.12.118 guest
    ("6.16", True), ("6.17", False), ("6.18", False)])
def test_a_moving_mremap_across_two_vmas_unmaps_target_and_tail_before_failing_until_6_17(
        kernel, target_and_tail_gone):
    # Up to 6.16 mremap_to() unmaps the FIXED target and the shrunk tail, and
    # only then vma_to_resize() finds the kept part spans two VMAs (EFAULT);
    # from 6.17 check_prep_vma() fails first and nothing is unmapped.
    import errno
    from mmemu.constants import MREMAP_FIXED, MREMAP_MAYMOVE
    m = mmemu.Machine(kernel=kernel)
    p = m.spawn()
    a = p.mmap(0, 3 * PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS)
    b = p.mmap(0, 3 * PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS)
    p.mprotect(a, PAGE_SIZE, PROT_READ)         # [a, a+1) and [a+1, a+3): two VMAs
    with pytest.raises(OSError) as e:
        p.mremap(a, 3 * PAGE_SIZE, 2 * PAGE_SIZE, MREMAP_MAYMOVE | MREMAP_FIXED, b)
    assert e.value.errno == errno.EFAULT
    for addr in (b, a + 2 * PAGE_SIZE):
        if target_and_tail_gone:
            with pytest.raises(OSError) as e:
                p.madvise(addr, PAGE_SIZE, mmemu.constants.MADV_DONTNEED)
            assert e.value.errno == errno.ENOMEM
        else:
            p.madvise(addr, PAGE_SIZE, mmemu.constants.MADV_DONTNEED)
    p.madvise(a, 2 * PAGE_SIZE, mmemu.constants.MADV_DONTNEED)   # the kept part stays


def test_a_multi_vma_move_stops_at_a_uffd_registered_vma_with_the_ones_before_moved():
    # remap_move() (6.17+): VMA by VMA; a userfaultfd-armed one that is not
    # the first fails the call with EFAULT after the VMAs before it moved.
    # Found by `mmemu diff --uffd --programs 2000 --seed 8` on the 6.18.44 host.
    import errno
    from mmemu import uffd as U
    from mmemu.constants import MREMAP_FIXED, MREMAP_MAYMOVE
    p = mmemu.Machine(kernel="6.18").spawn()
    a = p.mmap(0, 2 * PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS)
    b = p.mmap(0, 2 * PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS)
    p.write(a + PAGE_SIZE, b"A")
    p.write(b, b"B")
    u = p.userfaultfd(0)
    u.api(0)
    u.register(b + PAGE_SIZE, PAGE_SIZE, U.UFFDIO_REGISTER_MODE_MISSING)
    with pytest.raises(OSError) as e:
        p.mremap(b, 2 * PAGE_SIZE, 2 * PAGE_SIZE, MREMAP_MAYMOVE | MREMAP_FIXED, a)
    assert e.value.errno == errno.EFAULT
    assert p.read(a, 1) == b"B"                    # [b, b+1) moved to a
    assert p.read(a + PAGE_SIZE, 1) == b"A"        # its share of the target untouched
    with pytest.raises(mmemu.Sigsegv):
        p.read(b, 1)
    # The registered VMA first, with more after it: EFAULT before anything moves.
    c = p.mmap(0, 2 * PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS)
    d = p.mmap(0, 2 * PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS)
    p.write(c + PAGE_SIZE, b"C")
    u.register(c, PAGE_SIZE, U.UFFDIO_REGISTER_MODE_MISSING)
    with pytest.raises(OSError) as e:
        p.mremap(c, 2 * PAGE_SIZE, 2 * PAGE_SIZE, MREMAP_MAYMOVE | MREMAP_FIXED, d)
    assert e.value.errno == errno.EFAULT
    assert p.read(c + PAGE_SIZE, 1) == b"C"


@pytest.mark.parametrize("kernel, kept", [("6.1.176", True), ("6.8", True), ("6.9", False),
                                          ("6.12.118", False)])
def test_closing_a_userfaultfd_resets_its_uffd_wp_markers_from_6_9(kernel, kept):
    # c88033efe9a3 (6.9): userfaultfd_release() resets wr-protected ptes as
    # UNREGISTER does; before, the markers stayed. Found by `mmemu diff
    # --against vm:6.1 --uffd --programs 2000 --seed 8` (a fork context
    # closed; 6.1.176 kept the child's marker, 6.12.118 did not).
    from mmemu import MAP_SHARED
    from mmemu import uffd as U
    p = mmemu.Machine(kernel=kernel).spawn()
    fd = p.memfd_create("m")
    p.ftruncate(fd, PAGE_SIZE)
    a = p.mmap(0, PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
    u = p.userfaultfd(0)
    u.api(0)
    u.register(a, PAGE_SIZE, U.UFFDIO_REGISTER_MODE_WP)
    u.writeprotect(a, PAGE_SIZE, U.UFFDIO_WRITEPROTECT_MODE_WP)    # a marker over the none pte
    assert p.pagemap(a).uffd_wp
    u.close()
    assert p.pagemap(a).uffd_wp == kept
