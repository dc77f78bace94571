"""Synthetic access patterns as Traces: sequential, uniform, zipf(s),
hot/cold sets and phases of regions (DAMON masim-like). Every generator is
a pure function of its arguments and `seed`: the same call gives the same
trace, bit for bit.

Addresses are `base` + page * PAGE_SIZE (+ a byte offset inside the page);
`write_share` is the fraction of accesses that are stores.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..constants import PAGE_SIZE
from ..trace import Trace

__all__ = ["sequential", "uniform", "zipf", "hot_cold", "Region", "phases"]


def _check(npages, accesses, write_share):
    if npages <= 0 or accesses < 0:
        raise ValueError("npages must be positive and accesses non-negative")
    if not 0.0 <= write_share <= 1.0:
        raise ValueError("write_share must be in [0, 1]")


def _trace(pages, rng, base, write_share, name):
    offs = rng.integers(0, PAGE_SIZE // 8, len(pages), dtype=np.uint64) * np.uint64(8)
    addrs = np.uint64(base) + pages.astype(np.uint64) * np.uint64(PAGE_SIZE) + offs
    writes = rng.random(len(pages)) < write_share if write_share else np.zeros(len(pages), bool)
    return Trace(addrs, writes, name)


def sequential(npages: int, accesses: int, *, base: int = 0, stride: int = 1, write_share: float = 0.0,
               seed: int = 0) -> Trace:
    """Pages 0, stride, 2*stride, ... modulo npages."""
    _check(npages, accesses, write_share)
    rng = np.random.default_rng(seed)
    pages = (np.arange(accesses, dtype=np.int64) * stride) % npages
    return _trace(pages, rng, base, write_share, f"sequential({npages}, stride={stride})")


def uniform(npages: int, accesses: int, *, base: int = 0, write_share: float = 0.0, seed: int = 0) -> Trace:
    """Each access to a page drawn uniformly."""
    _check(npages, accesses, write_share)
    rng = np.random.default_rng(seed)
    return _trace(rng.integers(0, npages, accesses), rng, base, write_share, f"uniform({npages})")


def zipf(npages: int, accesses: int, s: float = 1.1, *, base: int = 0, write_share: float = 0.0,
         seed: int = 0) -> Trace:
    """Page of rank k (1..npages) drawn with probability proportional to
    1/k^s; ranks are spread over the pages by a seeded permutation, so hot
    pages are not neighbours."""
    _check(npages, accesses, write_share)
    if s <= 0:
        raise ValueError("zipf needs s > 0")
    rng = np.random.default_rng(seed)
    cdf = np.cumsum(np.arange(1, npages + 1, dtype=np.float64) ** -s)
    cdf /= cdf[-1]
    ranks = np.searchsorted(cdf, rng.random(accesses), side="right")
    ranks = np.minimum(ranks, npages - 1)
    perm = rng.permutation(npages)
    return _trace(perm[ranks], rng, base, write_share, f"zipf({npages}, s={s})")


def hot_cold(npages: int, accesses: int, *, hot_fraction: float = 0.1, hot_share: float = 0.9,
             base: int = 0, write_share: float = 0.0, seed: int = 0) -> Trace:
    """A hot set (the first hot_fraction of the pages) takes hot_share of
    the accesses, uniformly; the rest go uniformly to the cold pages."""
    _check(npages, accesses, write_share)
    if not 0 < hot_fraction < 1 or not 0 <= hot_share <= 1:
        raise ValueError("hot_fraction must be in (0, 1) and hot_share in [0, 1]")
    rng = np.random.default_rng(seed)
    nhot = max(1, int(npages * hot_fraction))
    hot = rng.random(accesses) < hot_share
    pages = np.where(hot, rng.integers(0, nhot, accesses), rng.integers(nhot, max(npages, nhot + 1), accesses))
    pages = np.minimum(pages, npages - 1)
    return _trace(pages, rng, base, write_share, f"hot_cold({npages}, {hot_fraction}, {hot_share})")


@dataclass
class Region:
    """A region of a phase: `pages` pages from page `start`, taking a share
    `prob` of the phase's accesses, walked with `stride` pages (0: random),
    a `write` share of them stores."""
    start: int
    pages: int
    prob: float
    stride: int = 1
    write: float = 0.0


def phases(spec: list[tuple[int, list[Region]]], *, base: int = 0, seed: int = 0) -> Trace:
    """Phases run one after the other: (accesses, [Region, ...]) each, the
    regions' probabilities summing to 1 (masim's configurations)."""
    rng = np.random.default_rng(seed)
    parts_a, parts_w = [], []
    for n, regions in spec:
        if n < 0 or not regions:
            raise ValueError("a phase needs a non-negative access count and at least one region")
        probs = np.array([r.prob for r in regions], np.float64)
        if (probs < 0).any() or abs(probs.sum() - 1.0) > 1e-9:
            raise ValueError("a phase's region probabilities must be >= 0 and sum to 1")
        for r in regions:
            if r.pages <= 0 or r.start < 0 or not 0 <= r.write <= 1:
                raise ValueError(f"bad region {r}")
        which = rng.choice(len(regions), size=n, p=probs)
        pages = np.empty(n, np.int64)
        writes = np.empty(n, bool)
        for i, r in enumerate(regions):
            idx = np.flatnonzero(which == i)
            k = len(idx)
            if r.stride:
                pages[idx] = r.start + (np.arange(k, dtype=np.int64) * r.stride) % r.pages
            else:
                pages[idx] = r.start + rng.integers(0, r.pages, k)
            writes[idx] = rng.random(k) < r.write
        t = _trace(pages, rng, base, 0.0, "phase")
        parts_a.append(t.addrs)
        parts_w.append(writes)
    addrs = np.concatenate(parts_a) if parts_a else np.zeros(0, np.uint64)
    writes = np.concatenate(parts_w) if parts_w else np.zeros(0, bool)
    return Trace(addrs, writes, f"phases({len(spec)})")
