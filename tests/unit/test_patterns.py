"""Synthetic access patterns (mmemu.workloads.patterns): deterministic, the
shape each promises, and replayable."""
import numpy as np
import pytest

import mmemu
from mmemu import MAP_ANONYMOUS, MAP_NORESERVE, MAP_PRIVATE, PAGE_SIZE as PAGE
from mmemu.workloads import patterns as P


def pages_of(t, base=0):
    return ((t.addrs - np.uint64(base)) // np.uint64(PAGE)).astype(np.int64)


@pytest.mark.parametrize("make", [
    lambda s: P.sequential(100, 1000, stride=3, write_share=0.2, seed=s),
    lambda s: P.uniform(100, 1000, write_share=0.5, seed=s),
    lambda s: P.zipf(100, 1000, 1.2, seed=s),
    lambda s: P.hot_cold(100, 1000, seed=s),
    lambda s: P.phases([(500, [P.Region(0, 10, 0.7), P.Region(50, 20, 0.3, stride=0, write=1.0)])], seed=s),
])
def test_the_same_seed_gives_the_same_trace(make):
    a, b, c = make(7), make(7), make(8)
    assert (a.addrs == b.addrs).all() and (a.writes == b.writes).all()
    assert not ((a.addrs == c.addrs).all() and (a.writes == c.writes).all())
    assert (pages_of(a) < 100).all()


def test_each_pattern_has_its_shape():
    s = P.sequential(10, 25, stride=3)
    assert pages_of(s).tolist()[:5] == [0, 3, 6, 9, 2]
    u = P.uniform(1000, 200_000, write_share=0.25, seed=1)
    counts = np.bincount(pages_of(u), minlength=1000)
    assert counts.min() > 100 and abs(u.writes.mean() - 0.25) < 0.01
    z = P.zipf(10_000, 200_000, 1.1, seed=2)
    top = np.sort(np.bincount(pages_of(z), minlength=10_000))[::-1]
    assert top[:100].sum() > 0.5 * 200_000           # the 1% hottest take most accesses
    assert top[0] > 10 * top[99]
    h = P.hot_cold(1000, 100_000, hot_fraction=0.1, hot_share=0.9, seed=3)
    assert abs((pages_of(h) < 100).mean() - 0.9) < 0.01
    ph = P.phases([(1000, [P.Region(0, 10, 1.0)]), (1000, [P.Region(500, 10, 1.0, write=1.0)])])
    pg = pages_of(ph)
    assert (pg[:1000] < 10).all() and (pg[1000:] >= 500).all() and ph.writes[1000:].all()
    with pytest.raises(ValueError):
        P.phases([(10, [P.Region(0, 10, 0.5)])])
    with pytest.raises(ValueError):
        P.zipf(10, 10, 0)


def test_a_pattern_replays_with_one_fault_per_distinct_page():
    n = 4096
    m = mmemu.Machine(memory=(n + 1024) * PAGE)
    p = m.spawn()
    a = p.mmap(0, n * PAGE, 3, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE)
    t = P.zipf(n, 50_000, 1.0, base=a, write_share=1.0, seed=4)
    c = p.thread().replay(t)
    assert c["accesses"] == 50_000
    assert c["anon_faults"] == len(np.unique(pages_of(t, a)))
    m.check()
