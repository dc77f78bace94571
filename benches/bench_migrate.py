"""Page migration per page: move_pages(2) of a populated anon range to the
other node (unmap into migration entries, move the contents, remap), and a
NUMA-hinting scan plus the faults it causes. No target was set (issue 13);
the note reports the figure. Each benchmark asserts what moved. Run:
pytest benches/bench_migrate.py --benchmark-only --benchmark-columns=min,median
"""
import numpy as np
import pytest

import mmemu
from mmemu import FOLL_LONGTERM, FOLL_WRITE, MPOL_MF_MOVE, PAGE_SIZE

from conftest import PRIV, RW, per_page

ROUNDS = 5
SIZES = [10**4, 10**5]


def two_nodes(npages):
    """A two-node machine, npages written on node 0, room for them on node 1."""
    m = mmemu.Machine(memory=2 * (npages + 4096) * PAGE_SIZE, nodes=2)
    p = m.spawn()
    a = p.mmap(0, npages * PAGE_SIZE, RW, PRIV)
    p.touch(a, npages, write=True, value=5)
    addrs = np.arange(a, a + npages * PAGE_SIZE, PAGE_SIZE, dtype=np.uint64)
    return m, p, a, addrs


@pytest.mark.parametrize("npages", SIZES)
def test_move_pages(benchmark, npages):
    nodes = np.ones(npages, np.int32)

    def run(m, p, a, addrs):
        st = p.move_pages(addrs, nodes, MPOL_MF_MOVE)
        return m, p, a, st
    m, p, a, st = benchmark.pedantic(lambda t: run(*t), setup=lambda: ((two_nodes(npages),), {}),
                                     rounds=ROUNDS, iterations=1)
    assert st.not_migrated == 0 and st[0] == 1 and st[-1] == 1
    last = a + (npages - 1) * PAGE_SIZE
    assert m.node_of(p.pagemap(last).pfn) == 1 and p.versions(last, 1)[0] == 5
    per_page(benchmark, npages)


@pytest.mark.parametrize("npages", SIZES)
def test_numa_hint_scan_and_migrating_faults(benchmark, npages):
    def setup():
        m, p, a, addrs = two_nodes(npages)
        return ((m, p, a, p.thread(cpu=1)),), {}

    def run(m, p, a, t):
        assert m.numa_scan(p, a, npages * PAGE_SIZE) == npages
        t.touch(a, npages, write=False)         # hinting faults on node 1: every page moves
        return m, p, a
    m, p, a = benchmark.pedantic(lambda t: run(*t), setup=setup, rounds=ROUNDS, iterations=1)
    # (the last few pages may still sit in CPU 0's LRU add batch: they stay)
    assert m.node_of(p.pagemap(a).pfn) == 1 and p.versions(a, 1)[0] == 5
    per_page(benchmark, npages)


def movable_range(npages):
    """npages written in ZONE_MOVABLE, room for them in ZONE_NORMAL."""
    m = mmemu.Machine(memory=2 * (npages + 4096) * PAGE_SIZE, movablecore=(npages + 4096) * PAGE_SIZE)
    p = m.spawn()
    a = p.mmap(0, npages * PAGE_SIZE, RW, PRIV)
    p.touch(a, npages, write=True, value=5)
    return m, p, a


@pytest.mark.parametrize("npages", SIZES)
def test_longterm_pin_migrates_out_of_zone_movable(benchmark, npages):
    """pin_user_pages(FOLL_LONGTERM) of a ZONE_MOVABLE range (6.18): pin,
    check, unpin, migrate every page, pin again."""
    def run(m, p, a):
        return m, p, a, p.pin_user_pages(a, npages, FOLL_WRITE | FOLL_LONGTERM)
    m, p, a, pin = benchmark.pedantic(lambda t: run(*t), setup=lambda: ((movable_range(npages),), {}),
                                      rounds=ROUNDS, iterations=1)
    last = a + (npages - 1) * PAGE_SIZE
    assert m.zone_of(int(pin.pfns[-1])) == "Normal" and p.versions(last, 1)[0] == 5
    per_page(benchmark, npages)


HUGE_SIZES = [16, 256]


@pytest.mark.parametrize("nhuge", HUGE_SIZES)
def test_move_pages_hugetlb(benchmark, nhuge):
    """move_pages of nhuge private 2 MiB hugetlb pages to the other node's
    share of the pool: one status per huge page (the rmap walk visits the
    VMAs of the page's file at its index, not every hugetlb VMA)."""
    H = 2 << 20

    def setup():
        m = mmemu.Machine(memory=(2 * nhuge * H) + (64 << 20), nodes=2, hugepages={H: 2 * nhuge})
        p = m.spawn()
        a = p.mmap(0, nhuge * H, RW, PRIV | mmemu.MAP_HUGETLB)
        for i in range(nhuge):
            p.write(a + i * H, b"h")
        # the pool is spread over the nodes in turn; faults fill node 0's share first
        return ((m, p, a, np.arange(a, a + nhuge * H, H, dtype=np.uint64)),), {}

    def run(m, p, a, addrs):
        return m, p, a, p.move_pages(addrs, np.ones(nhuge, np.int32), MPOL_MF_MOVE)
    m, p, a, st = benchmark.pedantic(lambda t: run(*t), setup=setup, rounds=ROUNDS, iterations=1)
    assert st.not_migrated == 0 and list(st) == [1] * nhuge
    assert m.node_of(p.pagemap(a).pfn) == 1 and p.read(a, 1) == b"h"
    benchmark.extra_info["per_huge_page_us"] = round(benchmark.stats.stats.min / nhuge * 1e6, 2)
