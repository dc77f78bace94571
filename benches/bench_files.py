"""shmem and swap paths at 10^6 pages, with the host kernel's figure for the
same operation measured in the same run (issue 4). Host figures go into
extra_info (ns/page) and are printed; engine figures are the benchmarks.

Run: pytest benches/bench_files.py --benchmark-only -s
"""
import pytest

import mmemu
from mmemu import (FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, MADV_PAGEOUT, MAP_ANONYMOUS,
                   MAP_PRIVATE, MAP_SHARED, PAGE_SIZE, PROT_READ, PROT_WRITE)

import hostops
from conftest import per_page

N = 10**6
HOST_N = 2 * 10**5          # the host's runs use real memory: 800 MiB per op
ROUNDS = 3
RW = PROT_READ | PROT_WRITE


def _report(benchmark, name, host_seconds, host_n):
    stats = benchmark.stats.stats
    eng = stats.min / N * 1e9
    if host_seconds is None:
        print(f"\n{name}: engine {eng:.1f} ns/page; host: not measured (no swap enabled)")
        return
    host = host_seconds / host_n * 1e9
    benchmark.extra_info["host_ns_per_page_min"] = host
    benchmark.extra_info["host_over_engine"] = host / eng
    print(f"\n{name}: engine {eng:.1f} ns/page, host kernel {host:.1f} ns/page "
          f"(host/engine {host / eng:.1f}x)")


def _cached_file(npages, shared_mapping=True):
    m = mmemu.Machine(memory=(npages + 8192) * PAGE_SIZE, swap=0)
    p = m.spawn()
    fd = p.memfd_create("bench")
    p.ftruncate(fd, npages * PAGE_SIZE)
    p.fallocate(fd, 0, 0, npages * PAGE_SIZE)
    # fallocate'd folios are not uptodate and fault-around skips them: read
    # the file once through a throwaway mapping, as any file read before.
    W = p.mmap(0, npages * PAGE_SIZE, PROT_READ, MAP_SHARED, fd, 0)
    p.touch(W, npages)
    p.munmap(W, npages * PAGE_SIZE)
    S = p.mmap(0, npages * PAGE_SIZE, PROT_READ, MAP_SHARED, fd, 0)
    return m, p, fd, S


def test_shmem_read_fault_with_fault_around(benchmark):
    def run(m, p, fd, S):
        assert p.touch(S, N, write=False) == N
        return m, p, S
    m, p, S = benchmark.pedantic(lambda t: run(*t), setup=lambda: ((_cached_file(N),), {}),
                                 rounds=ROUNDS, iterations=1)
    st = m.stats()
    assert st["fault_around_pages"] >= N * 14 // 16      # most pages came by fault-around
    assert p.pagemap(S + (N - 1) * PAGE_SIZE).file_shared
    per_page(benchmark, N)
    _report(benchmark, "shmem read fault (fault-around)", hostops.shmem_read_fault(HOST_N), HOST_N)


def test_shmem_punch_hole(benchmark):
    def setup():
        m, p, fd, S = _cached_file(N)
        p.touch(S, N, write=False)
        return ((m, p, fd, S),), {}

    def run(m, p, fd, S):
        p.fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, N * PAGE_SIZE)
        return m, p, fd, S
    m, p, fd, S = benchmark.pedantic(lambda t: run(*t), setup=setup, rounds=ROUNDS, iterations=1)
    assert not p.pagemap(S).present and m._engine.file_info(p.fds[fd].fid)["nrpages"] == 0
    per_page(benchmark, N)
    _report(benchmark, "shmem hole punch", hostops.shmem_punch_hole(HOST_N), HOST_N)


def _written_anon(npages):
    m = mmemu.Machine(memory=(npages + 8192) * PAGE_SIZE, swap=(npages + 1024) * PAGE_SIZE)
    p = m.spawn()
    a = p.mmap(0, npages * PAGE_SIZE, RW, MAP_PRIVATE | MAP_ANONYMOUS)
    p.touch(a, npages, write=True, value=9)
    return m, p, a


@pytest.fixture(scope="module")
def host_swap():
    return hostops.anon_swap_out_in(HOST_N)


def test_swap_out(benchmark, host_swap):
    def run(m, p, a):
        p.madvise(a, N * PAGE_SIZE, MADV_PAGEOUT)
        return m, p, a
    m, p, a = benchmark.pedantic(lambda t: run(*t), setup=lambda: ((_written_anon(N),), {}),
                                 rounds=ROUNDS, iterations=1)
    assert p.pagemap(a + (N - 1) * PAGE_SIZE).swapped and m._engine.swap_info()["used"] == N
    per_page(benchmark, N)
    _report(benchmark, "anon swap-out (MADV_PAGEOUT)", host_swap and host_swap[0], HOST_N)


def test_swap_in(benchmark, host_swap):
    def setup():
        m, p, a = _written_anon(N)
        p.madvise(a, N * PAGE_SIZE, MADV_PAGEOUT)
        return ((m, p, a),), {}

    def run(m, p, a):
        assert p.touch(a, N, write=False) == N
        return m, p, a
    m, p, a = benchmark.pedantic(lambda t: run(*t), setup=setup, rounds=ROUNDS, iterations=1)
    assert p.versions(a + (N - 1) * PAGE_SIZE, 1)[0] == 9
    per_page(benchmark, N)
    _report(benchmark, "anon swap-in (read fault)", host_swap and host_swap[1], HOST_N)
