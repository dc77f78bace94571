"""KSM: ksmd's full scan, per scanned page (target <= 50 ns, issue 13).

Three passes over npages anonymous pages of a MADV_MERGEABLE VMA, each timed
alone after the scans that lead to it: distinct pages on the scan that
inserts them all into the unstable tree; identical pages on the scan that
merges them (max_page_sharing 256 per KSM page); the same pages once merged
(the steady state: every page already on its KSM page). Each asserts what the
scan did, and prints ksmd's time for the same scan on the host (hostops:
root only; the kernel hashes 4 KiB contents). Run:
pytest benches/bench_ksm.py --benchmark-only -s
"""
import pytest

import hostops
from mmemu import MADV_MERGEABLE, PAGE_SIZE

from conftest import SIZES, fresh, per_page


def host_line(benchmark, name, npages, identical, scan):
    """The engine's ns per page and ksmd's for the same scan, measured now
    (on at most hostops.KSM_HOST_PAGES real pages)."""
    eng = benchmark.stats.stats.min / npages * 1e9
    n = min(npages, hostops.KSM_HOST_PAGES)
    host = hostops.ksm_full_scan(n, identical, scan)
    if host is None:
        print(f"\n{name}: engine {eng:.1f} ns per page; host: not measured (no root or no KSM)")
        return
    benchmark.extra_info["host_ns_per_page_min"] = host / n * 1e9
    print(f"\n{name}: engine {eng:.1f} ns per page, host ksmd {host / n * 1e9:.0f} ns per page ({n} pages)")

ROUNDS = 5


def _mergeable(npages, value):
    m, p, a = fresh(npages, copies=1)
    p.madvise(a, npages * PAGE_SIZE, MADV_MERGEABLE)
    p.touch(a, npages, write=True, value=value)     # value 0: a distinct version per page
    m.ksm_scan()                                    # checksums recorded
    return m, p, a


@pytest.mark.parametrize("npages", SIZES)
def test_ksm_scan_distinct_pages(benchmark, npages):
    m = benchmark.pedantic(lambda m: (m.ksm_scan(), m)[1],
                           setup=lambda: ((_mergeable(npages, 0)[0],), {}), rounds=ROUNDS, iterations=1)
    st = m.ksm_stats()
    assert st["pages_shared"] == 0 and st["pages_scanned"] == 2 * npages and st["full_scans"] == 2
    per_page(benchmark, npages)
    host_line(benchmark, "KSM scan of distinct pages", npages, False, 2)


@pytest.mark.parametrize("npages", SIZES)
def test_ksm_scan_merging_identical_pages(benchmark, npages):
    merged = benchmark.pedantic(lambda m: m.ksm_scan(), setup=lambda: ((_mergeable(npages, 7)[0],), {}),
                                rounds=ROUNDS, iterations=1)
    shared = -(-npages // 256)
    assert merged == npages - shared
    per_page(benchmark, npages)
    host_line(benchmark, "KSM merging scan", npages, True, 2)


@pytest.mark.parametrize("npages", SIZES)
def test_ksm_scan_steady_state(benchmark, npages):
    def setup():
        m, p, a = _mergeable(npages, 7)
        m.ksm_scan()
        return (m,), {}
    m = benchmark.pedantic(lambda m: (m.ksm_scan(), m)[1], setup=setup, rounds=ROUNDS, iterations=1)
    st = m.ksm_stats()
    assert st["pages_shared"] + st["pages_sharing"] == npages and st["full_scans"] == 3
    per_page(benchmark, npages)
    host_line(benchmark, "KSM steady scan", npages, True, 3)
