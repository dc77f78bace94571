"""The checks of the kernel's PAGEMAP_SCAN selftest
(tools/testing/selftests/mm/pagemap_ioctl.c, 6.12), rewritten in Python and
run on the engine (Machine(kernel="6.18")) and on the host kernel
(HostMachine(uffd=True); skipped where the host lacks userfaultfd or
PAGEMAP_SCAN).

What is left out: the size/NULL-vec argument checks (the Python API has no
struct size or vec pointer), THP, hugetlb (test_pagemap_scan_hugetlb.py has
its own cases), the threaded transact test, and files other than memfd. Sizes are the selftest's except
the random "smaller vec" case, which runs fewer pages and iterations.

A failure means the engine's PAGEMAP_SCAN (do_pagemap_scan and its helpers
in fs/proc/task_mmu.c) disagrees with the kernel's: a scan that reports
written pages wrongly makes an incremental dumper (CRIU) lose or resend
memory.
"""
import errno
import random

import pytest

import mmemu
from mmemu import constants as C
from mmemu import uffd as U

PAGE = C.PAGE_SIZE
RW = C.PROT_READ | C.PROT_WRITE
PRIV = C.MAP_PRIVATE | C.MAP_ANONYMOUS
WPM = C.PM_SCAN_WP_MATCHING | C.PM_SCAN_CHECK_WPASYNC
W = C.PAGE_IS_WRITTEN
BITS_ALL = (C.PAGE_IS_WPALLOWED | C.PAGE_IS_WRITTEN | C.PAGE_IS_FILE | C.PAGE_IS_PRESENT
            | C.PAGE_IS_SWAPPED | C.PAGE_IS_PFNZERO | C.PAGE_IS_HUGE)
NON_WRITTEN_BITS = BITS_ALL & ~C.PAGE_IS_WRITTEN


@pytest.fixture(params=["engine", pytest.param("host", marks=pytest.mark.host)])
def side(request):
    """A process with an async uffd-wp context (the selftest's init_uffd)."""
    if request.param == "engine":
        yield Side(mmemu.Machine(kernel="6.18", memory=64 << 20))
        return
    from mmemu.host import HostMachine, Unsupported
    try:
        m = HostMachine(timeout=30.0, uffd=True)
    except Exception as e:          # no host oracle here at all
        pytest.skip(f"host oracle unavailable: {e}")
    with m:
        try:
            s = Side(m)
        except Unsupported as e:
            pytest.skip(f"host cannot: {e}")
        except OSError as e:
            pytest.skip(f"userfaultfd with WP_ASYNC is not available here: {e}")
        try:
            s.p.pagemap_scan(0, 0)
        except OSError as e:
            if e.errno == errno.ENOTTY:
                pytest.skip("PAGEMAP_SCAN (6.7+) is not in this kernel")
            raise
        yield s


class Side:
    def __init__(self, m):
        self.m = m
        self.p = m.spawn()
        self.u = self.p.userfaultfd(U.O_CLOEXEC | U.O_NONBLOCK | U.UFFD_USER_MODE_ONLY)
        self.u.api(U.UFFD_FEATURE_WP_UNPOPULATED | U.UFFD_FEATURE_WP_ASYNC
                   | U.UFFD_FEATURE_WP_HUGETLBFS_SHMEM)

    def ioctl(self, start, length, vec_len, flags, max_pages, required, anyof, excluded, ret_mask):
        """The selftest's pagemap_ioc(): (regions, walk_end)."""
        return self.p.pagemap_scan(start, start + length, flags, required, anyof, excluded,
                                   ret_mask, max_pages, vec_len)

    def count(self, *a):
        """The selftest's pagemap_ioctl(): how many regions."""
        return len(self.ioctl(*a)[0])

    def wp_init(self, addr, length):
        self.u.register(addr, length, U.UFFDIO_REGISTER_MODE_WP)
        self.u.writeprotect(addr, length, U.UFFDIO_WRITEPROTECT_MODE_WP)

    def wp_free(self, addr, length):
        self.u.unregister(addr, length)

    def wp_addr_range(self, addr, length):
        """Write-protect the written pages with no output buffer."""
        regions, _ = self.ioctl(addr, length, 0, WPM, 0, W, 0, 0, W)
        assert regions == []

    def anon(self, npages, prot=RW):
        return self.p.mmap(0, npages * PAGE, prot, PRIV)

    def poke(self, addr):
        """mem[i]++ of the selftest: a write fault on the page."""
        self.p.write(addr, bytes([(self.p.read(addr, 1)[0] + 1) & 0xFF]))

    def fill(self, addr, npages, value):
        self.p.write(addr, bytes([value]) * (npages * PAGE))


def pages(r):
    return (r[1] - r[0]) // PAGE


# --- sanity_tests_sd ------------------------------------------------------------

def test_argument_checks(side):
    n = 1000
    mem = side.anon(n)
    side.wp_init(mem, n * PAGE)
    side.wp_addr_range(mem, n * PAGE)
    vec = n // 2
    assert side.count(mem, 0, vec, 0, 0, BITS_ALL, 0, 0, BITS_ALL) == 0, "zero range size is valid"
    assert side.count(mem, n * PAGE, 0, 0, 0, BITS_ALL, 0, 0, BITS_ALL) == 0, "vec_len 0 is valid"
    with pytest.raises(OSError) as e:
        side.count(mem, n * PAGE, vec, -1, 0, W, 0, 0, W)
    assert e.value.errno == errno.EINVAL, "wrong flag"
    with pytest.raises(OSError) as e:
        side.count(mem, n * PAGE, vec, WPM | 0xFF, 0, W, 0, 0, W)
    assert e.value.errno == errno.EINVAL, "flag with extra bits"
    assert side.count(mem, n * PAGE, vec, 0, 0, 0, 0, 0, W) >= 0, "no selection mask"
    assert side.count(mem, n * PAGE, vec, 0, 0, W, W, 0, 0) == 0, "no return mask is valid"
    with pytest.raises(OSError) as e:
        side.count(mem, n * PAGE, vec, 0, 0, W, 0, 0, 0x1000)
    assert e.value.errno == errno.EINVAL, "wrong return mask"
    with pytest.raises(OSError) as e:
        side.count(mem, n * PAGE, vec, WPM, 0, 0xFFF, W, 0, W)
    assert e.value.errno == errno.EINVAL, "mixture of correct and wrong category"
    assert side.count(mem, n * PAGE, vec, WPM, 0, 0, 0, BITS_ALL, W) >= 0, \
        "every category inverted, with WP_MATCHING | CHECK_WPASYNC"
    # pagemap_scan_get_args: start must be aligned; [start, end) must be user memory.
    with pytest.raises(OSError) as e:
        side.p.pagemap_scan(mem + 1, mem + PAGE, 0, W, 0, 0, W)
    assert e.value.errno == errno.EINVAL
    with pytest.raises(OSError) as e:
        side.p.pagemap_scan(mem + PAGE, mem, 0, W, 0, 0, W)
    assert e.value.errno == errno.EFAULT


def test_no_return_mask_reports_regions_without_categories(side):
    """return_mask=0 is no error: the kernel never checks it."""
    mem = side.anon(4)
    side.fill(mem, 4, 1)
    regions, end = side.ioctl(mem, 4 * PAGE, 4, 0, 0, C.PAGE_IS_PRESENT, 0, 0, 0)
    assert regions == [(mem, mem + 4 * PAGE, 0)] and end == mem + 4 * PAGE


def test_written_patterns_max_pages_and_vec_len(side):
    n = 1000
    size = n * PAGE
    vec = n // 2
    mem = side.anon(n)
    side.wp_init(mem, size)
    side.wp_addr_range(mem, size)
    # 2. clear the area with a larger vec
    assert side.count(mem, size, vec, WPM, 0, W, 0, 0, W) >= 0
    # 3. every other page written
    for i in range(0, n, 2):
        side.poke(mem + i * PAGE)
    assert side.count(mem, size, vec, 0, 0, W, 0, 0, W) == n // 2
    # 4. ... read and cleared in parts
    r1 = side.count(mem, size, vec, WPM, n // 2 - 2, W, 0, 0, W)
    r2 = side.count(mem, size, 2, 0, 0, W, 0, 0, W)
    r3 = side.count(mem, size, vec, WPM, 0, W, 0, 0, W)
    assert r1 + r3 == n // 2 and r2 == 2, (r1, r2, r3)
    # 5. max_pages reached exactly: WP_MATCHING clears exactly that many
    for i in range(0, n, 2):
        side.poke(mem + i * PAGE)
    side.poke(mem + (n - 1) * PAGE)
    r1 = side.count(mem, size, vec, WPM, n // 2, W, 0, 0, W)
    r2 = side.count(mem, size, vec, WPM, 0, W, 0, 0, W)
    assert r1 == n // 2 and r2 == 1, (r1, r2)
    # 6. get and clear only the second and third pages
    side.fill(mem, n, 0xFF)
    regions, _ = side.ioctl(mem + PAGE, 2 * PAGE, 1, WPM, 2, W, 0, 0, W)
    after, _ = side.ioctl(mem, size, n, 0, 0, W, 0, 0, W)
    assert len(regions) == 1 and pages(regions[0]) == 2 and regions[0][0] == mem + PAGE
    assert len(after) == 2 and after[0][0] == mem and pages(after[0]) == 1
    assert after[1][0] == mem + 3 * PAGE and pages(after[1]) == n - 3
    side.wp_free(mem, size)
    side.p.munmap(mem, size)


def test_two_regions(side):
    n = 1000
    size = n * PAGE
    a, b = side.anon(n), side.anon(n)
    for m in (a, b):
        side.wp_init(m, size)
        side.wp_addr_range(m, size)
    side.fill(a, n, ord("a"))
    side.fill(b, n, ord("b"))
    side.wp_addr_range(a, size)
    regions, _ = side.ioctl(b, size, 1, 0, 0, W, 0, 0, W)
    assert len(regions) == 1 and pages(regions[0]) == n


def test_smaller_max_pages(side):
    n = 1050
    size = n * PAGE
    vec = n // 2
    mem = side.anon(n)
    side.wp_init(mem, size)
    side.wp_addr_range(mem, size)
    assert side.count(mem, size, vec, WPM, 0, W, 0, 0, W) >= 0
    for i in range(0, n, 2):
        side.poke(mem + i * PAGE)
    total = 0
    for _ in range(3):
        regions, _ = side.ioctl(mem, size, vec, WPM, n // 5, W, 0, 0, W)
        total += len(regions)
    assert total == n // 2


def test_smaller_vec_walks_on_from_walk_end(side):
    n, vec, iterations = 2000, 50, 5
    size = n * PAGE
    mem = side.anon(n)
    side.wp_init(mem, size)
    side.wp_addr_range(mem, size)
    rng = random.Random(1)
    for _ in range(iterations):
        writes = 0
        for i in range(n):
            if rng.random() < 0.5:
                side.poke(mem + i * PAGE)
                writes += 1
        reads, walk_end = 0, mem
        while reads < writes:
            regions, walk_end = side.ioctl(walk_end, size - (walk_end - mem), vec, WPM, 0, W, 0, 0, W)
            assert len(regions) <= vec
            reads += sum(pages(r) for r in regions)
        assert reads == writes


def test_walk_end(side):
    n = 1000
    size = n * PAGE
    mem = side.anon(n)
    side.wp_init(mem, size)
    side.wp_addr_range(mem, size)
    side.fill(mem, n, 0)

    def scan(length, vec, flags, max_pages):
        regions, walk_end = side.ioctl(mem, length, vec, flags, max_pages, W, 0, 0, W)
        return len(regions), walk_end - mem

    assert scan(0, n, 0, 0) == (0, 0), "same start and end"
    assert scan(0, n, WPM, 0) == (0, 0), "same start and end with WP"
    assert scan(0, 0, WPM, 0) == (0, 0), "same start and end with no output buffer"
    assert scan(size, n, 0, 0) == (1, size), "big vec"
    assert scan(size, 1, 0, 0) == (1, size), "vec of minimum length"
    assert scan(size, 1, 0, n) == (1, size), "max pages specified"
    assert scan(size, n, 0, n // 2) == (1, size // 2), "half max pages"
    assert scan(size, n, 0, 1) == (1, PAGE), "1 max page"
    assert scan(size, n, 0, -1) == (1, size), "max pages of all ones"

    side.wp_addr_range(mem, size)
    for i in range(0, n, 2):
        side.poke(mem + i * PAGE)
    assert scan(size, n, 0, 0) == (n // 2, size), "sparse: big vec"
    assert scan(size, 1, 0, 0) == (1, 2 * PAGE), "sparse: vec of minimum length"
    assert scan(size, 1, 0, n) == (1, 2 * PAGE), "sparse: max pages specified"
    assert scan(size, n // 2, 0, n) == (n // 2, size), "sparse: vec fits exactly"
    assert scan(size, n, 0, n) == (n // 2, size), "sparse: max pages above the count"
    assert scan(size, n, 0, n // 2) == (n // 2, size), \
        "sparse: max pages reached exactly on the last match: walk_end is the end"
    assert scan(size, n, 0, 1) == (1, 2 * PAGE), "sparse: 1 max page: walk_end is the next match"


def test_max_pages_reached_exactly_walk_end_is_next_match(side):
    """found_pages == max_pages does not stop the walk: it goes on to the next
    matching page (or the end), and walk_end is there."""
    n = 16
    mem = side.anon(n)
    side.wp_init(mem, n * PAGE)
    for i in (1, 2, 9):
        side.poke(mem + i * PAGE)
    regions, walk_end = side.ioctl(mem, n * PAGE, n, 0, 2, W, 0, 0, W)
    assert [(s - mem, e - mem) for s, e, _ in regions] == [(PAGE, 3 * PAGE)]
    assert walk_end == mem + 9 * PAGE


def test_no_output_buffer_write_protects_the_whole_range(side):
    """vec_len=0 walks the whole range: every written page is protected and
    walk_end is the end, not the first match."""
    n = 12
    mem = side.anon(n)
    side.wp_init(mem, n * PAGE)
    for i in (0, 3, 4, 11):
        side.poke(mem + i * PAGE)
    regions, walk_end = side.ioctl(mem, n * PAGE, 0, WPM, 0, W, 0, 0, W)
    assert regions == [] and walk_end == mem + n * PAGE
    assert all(side.p.pagemap(mem + i * PAGE).uffd_wp for i in range(n))
    assert side.count(mem, n * PAGE, n, 0, 0, W, 0, 0, W) == 0


# --- base_tests -----------------------------------------------------------------

def _base_tests(side, mem, npages):
    size = npages * PAGE
    # 1. all new pages must not be written
    assert side.count(mem, size, 1, WPM, npages - 2, W, 0, 0, W) == 0
    # 2. all pages written
    side.fill(mem, npages, 0xFF)
    regions, _ = side.ioctl(mem, size, 1, 0, 0, W, 0, 0, W)
    assert len(regions) == 1 and pages(regions[0]) == npages
    # 3. all dirty but the first and the last
    side.count(mem, size, 1, WPM, 0, W, 0, 0, W)
    side.fill(mem + PAGE, npages - 2, 0)
    regions, _ = side.ioctl(mem, size, 1, WPM, 0, W, 0, 0, W)
    assert len(regions) == 1 and npages - 2 <= pages(regions[0]) <= npages
    assert side.count(mem, size, 1, 0, 0, W, 0, 0, W) == 0
    # 4. only the middle page
    side.count(mem, size, 1, WPM, 0, W, 0, 0, W)
    side.poke(mem + npages // 2 * PAGE)
    regions, _ = side.ioctl(mem, size, npages, 0, 0, W, 0, 0, W)
    assert len(regions) == 1 and pages(regions[0]) >= 1
    # 5. two middle pages, walking over only them
    side.count(mem, size, 1, WPM, 0, W, 0, 0, W | C.PAGE_IS_HUGE)
    mid = mem + npages // 2 * PAGE
    side.poke(mid)
    side.poke(mid + PAGE)
    regions, _ = side.ioctl(mid, 2 * PAGE, 1, 0, 0, W, 0, 0, W | C.PAGE_IS_HUGE)
    assert len(regions) == 1 and regions[0][0] == mid and pages(regions[0]) == 2


@pytest.mark.parametrize("npages", [10, 512 * 10])
def test_base_anon(side, npages):
    mem = side.anon(npages)
    side.wp_init(mem, npages * PAGE)
    side.wp_addr_range(mem, npages * PAGE)
    _base_tests(side, mem, npages)
    side.wp_free(mem, npages * PAGE)


def test_base_file_private(side):
    """File anonymous memory testing: a private mapping of a memfd."""
    n = 10
    fd = side.p.memfd_create("pagemap-ioctl")
    side.p.ftruncate(fd, n * PAGE)
    mem = side.p.mmap(0, n * PAGE, RW, C.MAP_PRIVATE, fd, 0)
    side.wp_init(mem, n * PAGE)
    side.wp_addr_range(mem, n * PAGE)
    _base_tests(side, mem, n)
    side.wp_free(mem, n * PAGE)


# --- test_simple, mprotect_tests, sanity_tests, unmapped, userfaultfd_tests ----------

def test_simple(side):
    mem = side.anon(1)
    side.wp_init(mem, PAGE)
    side.wp_addr_range(mem, PAGE)
    for i in range(20):
        assert side.count(mem, PAGE, 1, 0, 0, W, 0, 0, W) == 0, f"written bit set (i={i})"
        side.wp_addr_range(mem, PAGE)
        side.poke(mem)
        assert side.count(mem, PAGE, 1, 0, 0, W, 0, 0, W) == 1, f"written bit clear (i={i})"
        side.wp_addr_range(mem, PAGE)


def test_mprotect(side):
    mem = side.anon(2)
    side.wp_init(mem, 2 * PAGE)
    side.wp_addr_range(mem, 2 * PAGE)
    side.fill(mem, 2, 1)
    regions, _ = side.ioctl(mem, 2 * PAGE, 1, 0, 0, W, 0, 0, W)
    assert len(regions) == 1 and pages(regions[0]) == 2, "both pages written"
    side.wp_addr_range(mem, 2 * PAGE)
    assert side.count(mem, 2 * PAGE, 1, 0, 0, W, 0, 0, W) == 0, "both pages clean"
    mem2 = side.p.mmap(mem + PAGE, PAGE, RW, PRIV | C.MAP_FIXED)
    assert mem2 == mem + PAGE
    side.wp_init(mem2, PAGE)
    side.wp_addr_range(mem2, PAGE)
    side.p.mprotect(mem, PAGE, C.PROT_NONE)
    side.p.mprotect(mem, 2 * PAGE, C.PROT_READ)
    side.p.mprotect(mem, 2 * PAGE, RW)
    side.fill(mem, 2, 2)
    side.p.mprotect(mem, PAGE, C.PROT_NONE)
    side.p.mprotect(mem, PAGE, C.PROT_READ)
    side.p.mprotect(mem, PAGE, RW)
    regions, _ = side.ioctl(mem, 2 * PAGE, 1, 0, 0, W, 0, 0, W)
    assert len(regions) == 1 and pages(regions[0]) == 2, "both written after remap and mprotect"
    side.wp_addr_range(mem, 2 * PAGE)
    side.fill(mem, 2, ord("A"))
    regions, _ = side.ioctl(mem, 2 * PAGE, 1, 0, 0, W, 0, 0, W)
    assert len(regions) == 1 and pages(regions[0]) == 2, "clear and make the pages written"


def test_category_combinations(side):
    n = 10
    size = n * PAGE
    mem = side.anon(n)
    side.wp_init(mem, size)
    side.wp_addr_range(mem, size)
    assert side.count(mem, size, n, WPM, 0, BITS_ALL, 0, 0, BITS_ALL) >= 0
    assert side.count(mem, size, n, 0, 0, BITS_ALL, 0, 0, BITS_ALL) >= 0
    assert side.count(mem, size, n, 0, 0, 0, BITS_ALL, 0, BITS_ALL) >= 0
    assert side.count(mem, size, n, 0, 0, 0, 0, BITS_ALL, BITS_ALL) >= 0
    assert side.count(mem, size, n, 0, 0, BITS_ALL, BITS_ALL, 0, BITS_ALL) >= 0
    side.wp_free(mem, size)
    side.p.munmap(mem, size)

    both = C.PAGE_IS_WRITTEN | C.PAGE_IS_PRESENT
    mem = side.anon(n)
    side.wp_init(mem, size)
    side.wp_addr_range(mem, size)
    side.fill(mem, n, 0)
    for req, anyof in ((0, BITS_ALL), (BITS_ALL & ~C.PAGE_IS_HUGE & ~C.PAGE_IS_SWAPPED
                                       & ~C.PAGE_IS_FILE & ~C.PAGE_IS_PFNZERO, 0),
                       (C.PAGE_IS_WRITTEN, C.PAGE_IS_PRESENT)):
        regions, _ = side.ioctl(mem, size, n, 0, 0, req, anyof, 0, BITS_ALL)
        assert regions and regions[0][0] == mem and pages(regions[0]) == n \
            and regions[0][2] & both == both, (req, anyof, regions)
    assert side.count(mem, size, n, 0, 0, W, 0, W, BITS_ALL) == 0, "don't get written pages"
    assert side.count(mem, size, n, 0, 0, C.PAGE_IS_PRESENT, 0, C.PAGE_IS_PRESENT, BITS_ALL) == 0, \
        "don't get present pages"
    side.wp_free(mem, size)
    side.p.munmap(mem, size)

    # 8. written present pages with a return mask, re-armed
    mem = side.anon(n)
    side.wp_init(mem, size)
    side.wp_addr_range(mem, size)
    side.fill(mem, n, 0)
    regions, _ = side.ioctl(mem, size, n, WPM, 0, 0, BITS_ALL, 0, W)
    assert regions == [(mem, mem + size, W)]
    assert all(side.p.pagemap(mem + i * PAGE).uffd_wp for i in range(n))


def test_memfd_private_read_write(side):
    """sanity_tests 10: a written private file mapping reads back WRITTEN."""
    n = 10
    fd = side.p.memfd_create("pagemap-ioctl")
    side.p.ftruncate(fd, n * PAGE)
    mem = side.p.mmap(0, n * PAGE, RW, C.MAP_PRIVATE, fd, 0)
    side.wp_init(mem, n * PAGE)
    side.wp_addr_range(mem, n * PAGE)
    side.fill(mem, n, ord("z"))
    regions, _ = side.ioctl(mem, n * PAGE, n, 0, 0, W,
                            C.PAGE_IS_PRESENT | C.PAGE_IS_SWAPPED | C.PAGE_IS_FILE, 0, BITS_ALL)
    assert regions and regions[0][0] == mem and pages(regions[0]) == n and regions[0][2] & W


def test_memfd_shared_is_file(side):
    """sanity_tests 9: a file mapping's present pages carry PAGE_IS_FILE."""
    n = 3
    fd = side.p.memfd_create("pagemap-ioctl")
    side.p.ftruncate(fd, n * PAGE)
    mem = side.p.mmap(0, n * PAGE, C.PROT_READ, C.MAP_SHARED, fd, 0)
    for i in range(n):
        side.p.read(mem + i * PAGE, 1)
    regions, _ = side.ioctl(mem, n * PAGE, n, 0, 0, 0, NON_WRITTEN_BITS, 0, NON_WRITTEN_BITS)
    assert regions and regions[0][0] == mem and pages(regions[0]) == n and regions[0][2] & C.PAGE_IS_FILE


def test_unmapped_region(side):
    start = 0x10000000
    assert side.count(start, 0x40000, 0x40000 // PAGE, 0, 0, NON_WRITTEN_BITS, 0, 0,
                      NON_WRITTEN_BITS) >= 0


def test_userfaultfd_new_pages_not_written(side):
    n = 16
    size = n * PAGE
    mem = side.anon(n, C.PROT_NONE)
    side.wp_init(mem, size)
    prots = [RW, C.PROT_READ, RW, C.PROT_READ, RW, C.PROT_NONE, RW, C.PROT_READ]
    for i, prot in enumerate(prots):
        side.p.mprotect(mem + i * size // 8, size // 8, prot)
    side.wp_addr_range(mem + size // 16, size - 2 * (size // 8))
    side.wp_addr_range(mem, size)
    assert side.count(mem, size, 1, WPM, n - 2, W, 0, 0, W) == 0


def test_check_wpasync_refuses_a_plain_vma(side):
    """CHECK_WPASYNC: EPERM when the walk reaches a VMA without async
    uffd-wp; under WP_MATCHING alone such a VMA is skipped."""
    n = 4
    mem = side.anon(n)
    side.fill(mem, n, 1)
    with pytest.raises(OSError) as e:
        side.ioctl(mem, n * PAGE, n, WPM, 0, W, 0, 0, W)
    assert e.value.errno == errno.EPERM
    assert side.ioctl(mem, n * PAGE, n, C.PM_SCAN_WP_MATCHING, 0, W, 0, 0, W)[0] == []
    assert side.ioctl(mem, n * PAGE, n, 0, 0, W, 0, 0, W)[0] == [(mem, mem + n * PAGE, W)]
