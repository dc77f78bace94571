"""hugetlb on the host oracle: HostMachine(hugepages=) sets the host's pool
for its lifetime; MAP_HUGETLB and MFD_HUGETLB run for real; the counters,
HugetlbPages and the pagemap of 1 GiB pages read as the engine shows them.

Skipped, with the reason, where the pool cannot be set (not root, another
process uses it, no contiguous memory for the pages asked).
"""
import mmap as _mmap

import pytest

import mmemu
import mmemu.program
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


# ---- programs (mmemu diff) --------------------------------------------------

HUGE2M = "MAP_PRIVATE|MAP_ANONYMOUS|MAP_HUGETLB|MAP_HUGE_2MB"
SHARED2M = "MAP_SHARED|MAP_ANONYMOUS|MAP_HUGETLB|MAP_HUGE_2MB"
RWS = "PROT_READ|PROT_WRITE"
PROGRAMS = {
    # fork shares the private page; the parent's write copies it whole, the
    # child keeps the old bytes; DONTNEED gives the owner's reservation back.
    "cow-fork-dontneed": [
        {"op": "mmap", "name": "a", "pages": 1024, "prot": RWS, "flags": HUGE2M, "align": 512},
        {"op": "write", "at": ["a", 0], "data": "old"},
        {"op": "fork", "name": "c", "body": [{"op": "read", "at": ["a", 0], "len": 3}]},
        {"op": "write", "at": ["a", 0], "data": "new"},
        {"op": "read", "at": ["a", 0], "len": 3, "proc": "c"},
        {"op": "madvise", "at": ["a", 0], "pages": 512, "advice": "MADV_DONTNEED"},
        {"op": "madvise", "at": ["a", 256], "pages": 256, "advice": "MADV_DONTNEED"},
        {"op": "exit", "proc": "c"},
        {"op": "read", "at": ["a", 511, 4000], "len": 4}],
    # cuts inside a huge page are EINVAL; whole pages go; the pool runs out
    # (ENOMEM at mmap) and a MAP_NORESERVE fault with no page is SIGBUS.
    "cuts-enomem-sigbus": [
        {"op": "mmap", "name": "a", "pages": 1024, "prot": RWS, "flags": SHARED2M, "align": 512},
        {"op": "mmap", "name": "b", "pages": 1024, "prot": RWS, "flags": HUGE2M, "align": 512},
        {"op": "munmap", "at": ["a", 0], "pages": 256},
        {"op": "mprotect", "at": ["a", 256], "pages": 512, "prot": "PROT_READ"},
        {"op": "mmap", "name": "c", "pages": 512, "prot": RWS, "flags": HUGE2M, "align": 512},
        {"op": "mmap", "name": "d", "pages": 512, "prot": RWS,
         "flags": HUGE2M + "|MAP_NORESERVE", "align": 512},
        {"op": "write", "at": ["a", 0], "data": "x"},
        {"op": "write", "at": ["a", 512], "data": "y"},
        {"op": "write", "at": ["b", 0], "data": "z"},
        {"op": "write", "at": ["b", 600], "data": "w"},
        {"op": "write", "at": ["d", 3], "data": "v"},
        {"op": "munmap", "at": ["b", 0], "pages": 512},
        {"op": "write", "at": ["d", 3], "data": "v"}],
    # an MFD_HUGETLB memfd mapped shared and private; truncation drops its
    # pages (SIGBUS past EOF), a hole punch of part of a page, pread/pwrite.
    "memfd": [
        {"op": "memfd_create", "name": "h", "flags": "MFD_HUGETLB"},
        {"op": "ftruncate", "fd": "h", "len": 4 << 20},
        {"op": "mmap", "name": "s", "pages": 1024, "prot": RWS, "flags": "MAP_SHARED", "fd": "h",
         "align": 512},
        {"op": "mmap", "name": "p", "pages": 512, "prot": RWS, "flags": "MAP_PRIVATE", "fd": "h",
         "off": 2 << 20, "align": 512},
        {"op": "write", "at": ["s", 512], "data": "file"},
        {"op": "read", "at": ["p", 0], "len": 4},
        {"op": "write", "at": ["p", 0], "data": "mine"},
        {"op": "pread", "fd": "h", "off": 2 << 20, "len": 4},
        {"op": "pwrite", "fd": "h", "off": 0, "data": "nope"},
        {"op": "fallocate", "fd": "h", "mode": "FALLOC_FL_PUNCH_HOLE|FALLOC_FL_KEEP_SIZE",
         "off": 4096, "len": 2 << 20},
        {"op": "read", "at": ["s", 512], "len": 4},
        {"op": "ftruncate", "fd": "h", "len": 2 << 20},
        {"op": "read", "at": ["s", 512], "len": 4},
        {"op": "read", "at": ["p", 0], "len": 4},
        {"op": "ftruncate", "fd": "h", "len": 4096}],
    # mremap moves a whole private mapping (its reservations with it) and
    # shrinks one in place; growing is EINVAL; vmsplice and an io_uring pin
    # hold the page across the parent's COW.
    # Moving part of a private mapping: what stays of the VMA loses the
    # reservation map (clear_vma_resv_huge_pages on the whole VMA), so its
    # write takes an unreserved page, a write with every free page reserved
    # is SIGBUS, and its reservation leaks for good (HostMachine sets the
    # leak aside between programs).
    "mremap-part": [
        {"op": "mmap", "name": "a", "pages": 2048, "prot": RWS, "flags": HUGE2M, "align": 512},
        {"op": "mmap", "name": "b", "pages": 512, "prot": "PROT_NONE", "flags": "MAP_PRIVATE|MAP_ANONYMOUS",
         "align": 512},
        {"op": "mremap", "at": ["a", 1536], "pages": 512, "new_pages": 512, "to": ["b", 0]},
        {"op": "write", "at": ["a", 0], "data": "stays"},
        {"op": "write", "at": ["b", 0], "data": "moved"},
        {"op": "munmap", "at": ["a", 0], "pages": 512},
        {"op": "write", "at": ["a", 512], "data": "x"}],
    "mremap-gup": [
        {"op": "mmap", "name": "a", "pages": 1024, "prot": RWS, "flags": HUGE2M, "align": 512},
        {"op": "mmap", "name": "b", "pages": 1024, "prot": RWS, "flags": HUGE2M, "align": 512},
        {"op": "write", "at": ["a", 512], "data": "moved"},
        {"op": "mremap", "at": ["a", 0], "pages": 1024, "new_pages": 1536},
        {"op": "mremap", "at": ["a", 0], "pages": 1024, "new_pages": 1024, "to": ["b", 0]},
        {"op": "read", "at": ["b", 512], "len": 5},
        {"op": "vmsplice", "at": ["b", 512], "pages": 1, "name": "pp"},
        {"op": "fork", "name": "c"},
        {"op": "write", "at": ["b", 512], "data": "after"},
        {"op": "pipe_read", "pipe": "pp", "len": 5},
        {"op": "pin_user_pages", "at": ["b", 513], "pages": 1,
         "gup_flags": "FOLL_WRITE|FOLL_PIN|FOLL_LONGTERM", "name": "u"},
        {"op": "pin_write", "pin": "u", "off": 0, "data": "dev"},
        {"op": "read", "at": ["b", 513], "len": 3},
        {"op": "exit", "proc": "c"},
        {"op": "mremap", "at": ["b", 512], "pages": 512, "new_pages": 256}],
}


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_hugetlb_programs_agree(name, need):
    """Hand-written hugetlb programs, as `mmemu diff` runs them: the host
    with a pool of 4 x 2 MiB and the engine with the same. Compared: every
    outcome (errnos, SIGBUS), pagemap, frames, kpageflags, the pool's
    counters and HugetlbPages after each step."""
    need("pfns", "kpage")
    from mmemu.host.compare import compare
    from mmemu.host.diff import HUGETLB_POOL
    prog = PROGRAMS[name]
    if name == "mremap-gup":
        need("io_uring")
    with _machine(hugepages={H2M: HUGETLB_POOL}) as host:
        obs_h = mmemu.program.run(prog, host)
    obs_e = mmemu.program.run(prog, mmemu.Machine(kernel="host", hugepages={H2M: HUGETLB_POOL}))
    assert all("hugetlb" in r for r in obs_h)
    d = compare(obs_h, obs_e, prog)
    assert d is None, str(d)


def test_generated_programs_map_hugetlb_memory():
    """diff.programs(hugetlb=True) makes valid programs, a good part of them
    with hugetlb regions (if none, `mmemu diff` would test nothing of it)."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hseed
    from mmemu.host import diff
    got = []

    @settings(max_examples=200, phases=[Phase.generate], database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @hseed(51)
    @given(diff.programs(hugetlb=True))
    def one(p):
        mmemu.program.check(p)
        got.append(p)
    one()
    huge = [p for p in got if mmemu.program.uses_hugetlb(p)]
    assert len(huge) > len(got) // 5
    ops = {s["op"] for p in huge for s in p}
    assert {"mremap", "fork", "madvise", "fallocate"} <= ops
    # moves of a tail of a hugetlb region (what stays loses its reservations)
    assert any(s["op"] == "mremap" and s["at"][1] > 0 and "to" in s for p in huge for s in p)
