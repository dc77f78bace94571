"""Per-page cost of the core's batch paths, and of single calls from Python.

Targets at 10^6 pages (issue 2): first-touch write fault <= 30 ns, read
(zero-page) fault <= 20, fork <= 10, COW write fault after fork <= 40,
mprotect <= 3, MADV_DONTNEED <= 10 ns per page; <= 1 us per single
read/write call. Each benchmark asserts what it did, so a fast wrong answer
fails. Run: pytest benches --benchmark-only --benchmark-columns=min,median
"""
import pytest

from mmemu import MADV_DONTNEED, PAGE_SIZE, PROT_READ, PROT_WRITE

from conftest import PRIV, RW, SIZES, fresh, per_page

ROUNDS = 5


@pytest.mark.parametrize("npages", SIZES)
def test_first_touch_write_fault(benchmark, npages):
    def setup():
        return fresh(npages), {}

    def run(m, p, a):
        assert p.touch(a, npages, write=True) == npages
        return p
    p = benchmark.pedantic(lambda mpa: run(*mpa), setup=lambda: ((fresh(npages),), {}),
                           rounds=ROUNDS, iterations=1)
    assert p.rss_anon == npages * PAGE_SIZE
    per_page(benchmark, npages)


@pytest.mark.parametrize("npages", SIZES)
def test_read_fault_zero_page(benchmark, npages):
    def run(m, p, a):
        assert p.touch(a, npages, write=False) == npages
        return p
    p = benchmark.pedantic(lambda mpa: run(*mpa), setup=lambda: ((fresh(npages),), {}),
                           rounds=ROUNDS, iterations=1)
    assert p.rss_anon == 0 and p.pagemap(0).pfn is None
    per_page(benchmark, npages)


@pytest.mark.parametrize("npages", SIZES)
def test_fork(benchmark, npages):
    def run(m, p, a):
        return p.fork(), a
    c, a = benchmark.pedantic(lambda mpa: run(*mpa), setup=lambda: ((fresh(npages, True),), {}),
                              rounds=ROUNDS, iterations=1)
    assert c.pagemap(a + (npages - 1) * PAGE_SIZE).present
    per_page(benchmark, npages)


@pytest.mark.parametrize("npages", SIZES)
def test_cow_write_fault_after_fork(benchmark, npages):
    def setup():
        m, p, a = fresh(npages, True, copies=2)
        c = p.fork()
        return ((m, p, a, c),), {}

    def run(m, p, a, c):
        p.touch(a, npages, write=True, value=7)
        return p, a, c
    p, a, c = benchmark.pedantic(lambda t: run(*t), setup=setup, rounds=ROUNDS, iterations=1)
    assert p.versions(a, 1)[0] == 7 and c.versions(a, 1)[0] != 7
    per_page(benchmark, npages)


@pytest.mark.parametrize("npages", SIZES)
@pytest.mark.parametrize("prot", ["RO", "RW"])
def test_mprotect(benchmark, npages, prot):
    def setup():
        m, p, a = fresh(npages, True)
        if prot == "RW":
            p.mprotect(a, npages * PAGE_SIZE, PROT_READ)
        return ((m, p, a),), {}

    def run(m, p, a):
        p.mprotect(a, npages * PAGE_SIZE, PROT_READ if prot == "RO" else RW)
        return p, a
    p, a = benchmark.pedantic(lambda t: run(*t), setup=setup, rounds=ROUNDS, iterations=1)
    writable = bool(p._engine.pte(p.mm, a) & 2)
    assert writable == (prot == "RW")           # 6.0+ upgrades exclusive anon ptes
    per_page(benchmark, npages)


@pytest.mark.parametrize("npages", SIZES)
def test_madv_dontneed(benchmark, npages):
    def run(m, p, a):
        p.madvise(a, npages * PAGE_SIZE, MADV_DONTNEED)
        return m, p, a
    m, p, a = benchmark.pedantic(lambda t: run(*t), setup=lambda: ((fresh(npages, True),), {}),
                                 rounds=ROUNDS, iterations=1)
    assert p.rss_anon == 0
    per_page(benchmark, npages)


def test_single_write_call(benchmark):
    m, p, a = fresh(16)
    p.write(a, b"x")
    benchmark(p.write, a, b"abcdefgh")
    assert p.read(a, 8) == b"abcdefgh"


def test_single_read_call(benchmark):
    m, p, a = fresh(16)
    p.write(a, b"abcdefgh")
    assert benchmark(p.read, a, 8) == b"abcdefgh"


def test_engine_state_bytes_per_resident_page():
    # Measured, not timed: frame table + page tables per resident page.
    # A machine whose memory is exactly the resident pages (pfn 0 is the zero
    # page) and their page tables, which take frames too.
    import mmemu
    npages = 10**6
    m = mmemu.Machine(memory=(npages + 1 + npages // 512 + 8) * PAGE_SIZE)
    p = m.spawn()
    a = p.mmap(0, npages * PAGE_SIZE, RW, PRIV)
    assert p.touch(a, npages, write=True) == npages
    use = m.memory_usage()
    per_page_bytes = (use["frames"] + use["page_tables"]) / npages
    # The page-table pages are resident frames too (each with its 24 bytes).
    per_frame_bytes = (use["frames"] + use["page_tables"]) / (use["frames_used"] + use["pgtable_pages"])
    print(f"\nengine state: {per_page_bytes:.2f} bytes per resident user page "
          f"(frames {use['frames'] / npages:.2f}, page tables {use['page_tables'] / npages:.2f}); "
          f"{per_frame_bytes:.2f} per resident frame, page-table pages included")
    assert per_page_bytes <= 32.1
