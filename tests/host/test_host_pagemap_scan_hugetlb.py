"""PAGEMAP_SCAN over hugetlb memory on the host and on Machine(kernel="host"):
the categories of hugetlb entries, WP_MATCHING of whole huge pages, the
backout of a huge page cut by the range or by max_pages (and the walk_end
it leaves), none entries, markers and WP_ASYNC writes; a 1 GiB page where
the host can allocate one.

A difference is an engine divergence in pagemap_scan_hugetlb_entry,
pagemap_hugetlb_category or make_uffd_wp_huge_pte (fs/proc/task_mmu.c).
A huge page without a page table is left out on purpose: before the
May 2026 self-deadlock fix a matching write-protect of one never returns.

Skipped, with the reason, where the hugetlb pool cannot be set or the host
lacks userfaultfd with WP_ASYNC or PAGEMAP_SCAN.
"""
import errno

import pytest

import mmemu
from mmemu import constants as C
from mmemu import uffd as U
from mmemu.host import HostMachine, Unsupported

pytestmark = pytest.mark.host

PAGE = C.PAGE_SIZE
H2M, H1G = 2 << 20, 1 << 30
RW = C.PROT_READ | C.PROT_WRITE
HUGE = C.MAP_PRIVATE | C.MAP_ANONYMOUS | C.MAP_HUGETLB
WPM = C.PM_SCAN_WP_MATCHING
W = C.PAGE_IS_WRITTEN
ALL = 0xFF


def _ctx(p, *ranges):
    u = p.userfaultfd(U.O_NONBLOCK | U.O_CLOEXEC)
    u.api(U.UFFD_FEATURE_WP_ASYNC | U.UFFD_FEATURE_WP_UNPOPULATED | U.UFFD_FEATURE_WP_HUGETLBFS_SHMEM)
    for a, n in ranges:
        u.register(a, n, U.UFFDIO_REGISTER_MODE_WP)
    return u


def _two_mib(m):
    out = []
    p = m.spawn()
    a = p.mmap(0, 3 * H2M, RW, HUGE)
    fd = p.memfd_create("h", C.MFD_HUGETLB)
    p.ftruncate(fd, H2M)
    b = p.mmap(a - H2M, H2M, RW, C.MAP_SHARED | C.MAP_FIXED_NOREPLACE, fd, 0)

    def scan(tag, start, end, *args, **kw):
        regions, walk_end = p.pagemap_scan(start, end, *args, **kw)
        out.append((tag, [(s - a, e - a, c) for s, e, c in regions], walk_end - a))

    p.write(a, b"x")
    p.read(a + H2M, 1)
    u = _ctx(p, (a, 3 * H2M), (b, H2M))
    p.write(b, b"s")
    scan("categories", b, a + 3 * H2M, 0, 0, 0, 0, ALL)

    def unprotect():
        u.writeprotect(a, 2 * H2M, 0)
        u.writeprotect(b, H2M, 0)

    cases = [("cut by start", a + PAGE, a + 2 * H2M, {}),
             ("cut by end", a, a + H2M + PAGE, {}),
             ("cut at both ends, a region before", b, a + H2M + PAGE, {}),
             ("max_pages 100", a, a + 2 * H2M, {"max_pages": 100}),
             ("max_pages 600", a, a + 2 * H2M, {"max_pages": 600}),
             ("max_pages 512", a, a + 2 * H2M, {"max_pages": 512}),
             ("vec_len 1", a, a + 2 * H2M, {"vec_len": 1}),
             ("vec_len 0, cut by end", a, a + H2M + PAGE, {"vec_len": 0}),
             ("whole", b, a + 2 * H2M, {})]
    for tag, start, end, kw in cases:
        unprotect()
        scan(tag, start, end, WPM, W, 0, 0, W, **kw)
        scan(tag + ": after", b, a + 2 * H2M, 0, 0, 0, 0, ALL)
    scan("no WP, cut", a + PAGE, a + H2M + PAGE, 0, W, 0, 0, ALL)
    scan("no WP, max_pages", a, a + 2 * H2M, 0, W, 0, 0, ALL, max_pages=100)
    p.write(a + 5, b"y")
    p.write(b + 5, b"t")
    scan("WP_ASYNC writes", b, a + 2 * H2M, 0, 0, 0, 0, ALL)
    scan("none entry", a + 2 * H2M, a + 3 * H2M, 0, 0, 0, 0, ALL)
    scan("WP of a none entry", a + 2 * H2M, a + 3 * H2M, WPM, 0, 0, 0, ALL)
    scan("none entry after", a + 2 * H2M, a + 3 * H2M, 0, 0, 0, 0, ALL)
    u.writeprotect(a + 2 * H2M, H2M, U.UFFDIO_WRITEPROTECT_MODE_WP)
    scan("marker", a + 2 * H2M, a + 3 * H2M, 0, 0, 0, 0, ALL)
    scan("WP over a marker", a, a + 3 * H2M, WPM, 0, C.PAGE_IS_HUGE, 0, ALL)
    p.write(a + 2 * H2M, b"m")
    scan("write over a marker", a, a + 3 * H2M, 0, 0, 0, 0, ALL)
    return out


def _one_gib(m):
    out = []
    p = m.spawn()
    a = p.mmap(0, H1G, RW, HUGE | C.MAP_HUGE_1GB)

    def scan(tag, start, end, *args):
        regions, walk_end = p.pagemap_scan(start, end, *args)
        out.append((tag, [(s - a, e - a, c) for s, e, c in regions], walk_end - a))

    p.write(a, b"x")
    u = _ctx(p, (a, H1G))
    scan("categories", a, a + H1G, 0, 0, 0, 0, ALL)
    scan("its last 2 MiB", a + H1G - H2M, a + H1G, WPM, W, 0, 0, W)
    scan("after", a, a + H1G, 0, 0, 0, 0, ALL)
    u.writeprotect(a, H1G, 0)
    scan("whole", a, a + H1G, WPM, W, 0, 0, W)
    scan("after", a, a + H1G, 0, 0, 0, 0, ALL)
    return out


def _host(program, pool):
    try:
        m = HostMachine(timeout=60.0, uffd=True, hugepages=pool)
    except Unsupported as e:
        pytest.skip(str(e))
    with m:
        try:
            return program(m)
        except Unsupported as e:
            pytest.skip(f"host cannot: {e}")
        except OSError as e:
            if e.errno in (errno.ENOTTY, errno.EINVAL, errno.ENOSYS):
                pytest.skip(f"no PAGEMAP_SCAN or WP_ASYNC on hugetlb here: {e}")
            raise


def test_two_mib_pages_agree_with_the_engine():
    host = _host(_two_mib, {H2M: 4})
    assert _two_mib(mmemu.Machine(kernel="host", memory=256 << 20, hugepages={H2M: 4})) == host


def test_a_one_gib_page_agrees_with_the_engine():
    host = _host(_one_gib, {H1G: 1})
    assert _one_gib(mmemu.Machine(kernel="host", memory=3 << 30, hugepages={H1G: 1})) == host
