"""hugetlb on the host oracle: HostMachine(hugepages=) sets the host's pool
for its lifetime; MAP_HUGETLB and MFD_HUGETLB run for real; the counters,
HugetlbPages and the pagemap of 1 GiB pages read as the engine shows them.

Skipped, with the reason, where the pool cannot be set (not root, another
process uses it, no contiguous memory for the pages asked).
"""
import mmap as _mmap

import pytest

import mmemu
from mmemu import constants as C
from mmemu.errors import Sigbus
from mmemu.host import HostMachine, Unsupported
from mmemu.host import hugetlb as host_hugetlb

pytestmark = pytest.mark.host

H2M, H1G = 2 << 20, 1 << 30
RW = C.PROT_READ | C.PROT_WRITE
HUGE = C.MAP_PRIVATE | C.MAP_ANONYMOUS | C.MAP_HUGETLB


def _machine(**kw):
    try:
        return HostMachine(timeout=20.0, **kw)
    except Unsupported as e:
        pytest.skip(str(e))


def _pool(m, size=H2M):
    c = m.hugepages[size]
    return (c["nr_hugepages"], c["free_hugepages"], c["resv_hugepages"], c["surplus_hugepages"])


def _story(m):
    """Reservations at mmap, a page per fault (reads too: no zero page),
    HugetlbPages per process, ENOMEM past the pool, SIGBUS for a
    MAP_NORESERVE fault with no page free, all given back at exit."""
    seen = []
    p = m.spawn()
    a = p.mmap(0, 2 * H2M, RW, HUGE | C.MAP_HUGE_2MB)
    seen.append(("mmap", _pool(m), p.hugetlb_usage))
    p.write(a, b"x")
    p.read(a + H2M, 1)
    seen.append(("faults", _pool(m), p.hugetlb_usage))
    try:
        p.mmap(0, 2 * H2M, RW, HUGE)
        seen.append(("second mmap", "mapped"))
    except OSError as e:
        seen.append(("second mmap", e.errno))
    b = p.mmap(0, 2 * H2M, RW, HUGE | C.MAP_NORESERVE)
    p.write(b, b"y")                            # the pool's last page
    try:
        p.write(b + H2M, b"z")
        seen.append(("noreserve fault", "ok"))
    except Sigbus as e:
        seen.append(("noreserve fault", "SIGBUS", e.si_code, e.addr - b))
    seen.append(("before exit", _pool(m), p.hugetlb_usage))
    p.exit()
    seen.append(("exit", _pool(m)))
    return seen


def test_pool_is_set_and_given_back():
    """The pool is the machine's while it lives and the old values come
    back after; if not, a run would leave the host's memory in huge pages
    (or take a pool another user set up)."""
    before = host_hugetlb.counters(H2M)
    with _machine(hugepages={H2M: 3}) as m:
        assert _pool(m) == (3, 3, 0, 0)
        with pytest.raises(Unsupported, match="already holds"):
            HostMachine(hugepages={H2M: 4})
        with HostMachine(hugepages={H2M: 3}) as same:      # the same pool is shared
            assert _pool(same) == (3, 3, 0, 0)
        assert _pool(m) == (3, 3, 0, 0)
    assert host_hugetlb.counters(H2M) == before


def test_bad_pool_arguments_are_the_engines():
    with pytest.raises(ValueError):
        HostMachine(hugepages={4096: 1})
    with pytest.raises(ValueError):
        HostMachine(hugepages={H2M: -1})
    with pytest.raises(TypeError):
        HostMachine(hugepages=[H2M])


def test_counters_and_faults_agree_with_the_engine():
    """The same story on the host and on the engine: reservations, faults,
    HugetlbPages, ENOMEM and SIGBUS. A difference is an engine divergence
    in hugetlb's accounting (hugetlb_reserve_pages, alloc_hugetlb_folio)."""
    with _machine(hugepages={H2M: 3}) as m:
        host = _story(m)
    engine = _story(mmemu.Machine(kernel="host", hugepages={H2M: 3}))
    assert host == engine
    assert host[0] == ("mmap", (3, 3, 2, 0), 0)
    assert host[1] == ("faults", (3, 1, 0, 0), 2 * H2M)


def test_memfd_hugetlb_shared_and_private():
    """An MFD_HUGETLB memfd mapped shared and private: the shared mapping's
    page is the file's, the private one's first write copies it."""
    out = []
    for m in (_machine(hugepages={H2M: 4}), mmemu.Machine(kernel="host", hugepages={H2M: 4})):
        with m if isinstance(m, HostMachine) else _Null():
            p = m.spawn()
            fd = p.memfd_create("h", C.MFD_HUGETLB)
            p.ftruncate(fd, H2M)
            s = p.mmap(0, H2M, RW, C.MAP_SHARED, fd, 0)
            q = p.mmap(0, H2M, RW, C.MAP_PRIVATE, fd, 0)
            p.write(s, b"shared")
            got = [p.read(q, 6), _pool(m)]
            p.write(q, b"PRIVATE")
            got += [p.read(s, 7), p.read(q, 7), _pool(m),
                    p.pagemap(s).pfn == p.pagemap(q).pfn, p.hugetlb_usage]
            try:
                p.ftruncate(fd, 4096)
                got.append("truncated")
            except OSError as e:
                got.append(e.errno)
            out.append(got)
    assert out[0] == out[1]
    assert out[0][0] == b"shared" and out[0][3] == b"PRIVATE"


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def test_gigantic_page_exclusive_bit_follows_its_mapcount():
    """Pagemap bit 56 of a 1 GiB page: set while mapped once, clear while
    fork shares it, set again for both after the COW (cow.c's S1/S2 check
    it). The host's pagemap_hugetlb_range reads an uninitialised word for
    it (server._pud_hugetlb_exclusive); the oracle must report the mapcount,
    or S1/S2's 1 GiB rows flip from run to run."""
    with _machine(hugepages={H1G: 2}) as m:
        p = m.spawn()
        for _ in range(4):
            a = p.mmap(0, H1G, RW, HUGE | C.MAP_HUGE_1GB)
            p.write(a, b"1")
            assert p.pagemap(a).exclusive and p.pagemap_range(a + (5 << 12), 1)[0] >> 56 & 1
            c = p.fork()
            assert not p.pagemap(a).exclusive and not c.pagemap(a).exclusive
            assert m.frame(p.pagemap(a).pfn).kpagecount == 2
            p.write(a, b"2")
            assert p.pagemap(a).exclusive and c.pagemap(a).exclusive
            assert p.pagemap(a).pfn != c.pagemap(a).pfn
            c.exit()
            p.munmap(a, H1G)


def test_hugetlb_placement_is_aligned():
    """mmap(0) of hugetlb memory on the host gets a hint aligned to its page
    size, so it lands in the program range (an unaligned hint would send
    the kernel's search next to the server's runtime)."""
    from mmemu.host.machine import PROGRAM_SPACE_BASE, PROGRAM_SPACE_END
    with _machine(hugepages={H2M: 2}) as m:
        p = m.spawn()
        x = p.mmap(0, 4096, RW, C.MAP_PRIVATE | C.MAP_ANONYMOUS)
        a = p.mmap(0, 4096, RW, HUGE)                     # rounds up to 2 MiB
        assert a % H2M == 0 and PROGRAM_SPACE_BASE <= a < PROGRAM_SPACE_END
        assert a + H2M <= x
        p.write(a + H2M - 1, b"e")
        with pytest.raises(OSError):
            p.munmap(a, _mmap.PAGESIZE)                     # cuts the huge page: EINVAL
