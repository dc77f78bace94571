import pytest

import mmemu
from mmemu import MAP_ANONYMOUS, MAP_PRIVATE, PAGE_SIZE, PROT_READ, PROT_WRITE

RW = PROT_READ | PROT_WRITE
PRIV = MAP_PRIVATE | MAP_ANONYMOUS
SIZES = [10**4, 10**6]


def fresh(npages, populated=False, copies=2):
    """A machine with room for `copies` x npages, and a process mapping npages."""
    m = mmemu.Machine(memory=(copies * npages + 8192) * PAGE_SIZE)
    p = m.spawn()
    a = p.mmap(0, npages * PAGE_SIZE, RW, PRIV)
    if populated:
        p.touch(a, npages, write=True)
    return m, p, a


def per_page(benchmark, npages):
    """Record ns/page in extra_info so the JSON and the table carry it."""
    stats = benchmark.stats.stats
    benchmark.extra_info["ns_per_page_min"] = stats.min / npages * 1e9
    benchmark.extra_info["ns_per_page_median"] = stats.median / npages * 1e9
