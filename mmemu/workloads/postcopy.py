"""Postcopy live migration of a guest, on the engine: the destination QEMU's
guest RAM is one private anonymous mapping registered MISSING; its pages
come from the source over a modelled link (mmemu.cost.Link), by a
background stream in page order and by page requests when a vCPU faults on
a page not yet arrived. Everything runs in the core: the vCPUs' accesses
(Thread.replay), the faults, the in-core UFFDIO_COPY of the source's page and
the request's latency on the faulting vCPU's emulated clock (core/uffd.pxi
link_request). vCPUs advance in emulated-time order, a quantum at a time
(sched.TimedRun).

The phases, as QEMU runs them: optional precopy rounds (all pages, then the
pages the guest dirtied during the previous round) while the guest runs on
the source; switchover (the guest stops, the dirty set of the last round is
what postcopy must still move); then the destination's vCPUs run while the
stream sends that set. Metrics are QEMU's: remote faults (postcopy-requests),
the latency distribution in postcopy-latency-dist's log2 microsecond
buckets, blocktime per vCPU and for the whole guest (time all vCPUs were
blocked at once, postcopy-blocktime), migration time and pages/s.

A modelling shortcut, invisible in the metrics: pages the stream delivers
are installed when first touched rather than when they arrive (a fault on an
arrived page counts as no fault), which keeps untouched pages of a huge
guest out of the host's memory."""
from __future__ import annotations

import time

import numpy as np

from .. import constants as C
from ..cost import DEFAULT, CostModel, Link
from ..machine import Machine
from ..sched import TimedRun
from ..uffd import UFFDIO_REGISTER_MODE_MISSING
from . import patterns, peak_rss_kib
from .faultlog import FaultLog

GUEST_BASE = 0x7F0000000000 - (1 << 40)       # guest RAM: 1 TiB below the mmap area
SOURCE_TAG = np.uint64(1 << 48)               # source contents: version SOURCE_TAG + page
CHUNK = 1 << 21                               # accesses generated (and replayed) at a time
PATTERNS = ("uniform", "zipf", "hot_cold", "sequential")


def _accesses(pattern, npages, count, write_share, seed, vcpu, chunk):
    """Chunk `chunk` of vCPU `vcpu`'s accesses: the same seed, the same pages."""
    s = [seed, vcpu, chunk]
    if pattern == "uniform":
        return patterns.uniform(npages, count, base=GUEST_BASE, write_share=write_share, seed=s)
    if pattern == "zipf":
        return patterns.zipf(npages, count, base=GUEST_BASE, write_share=write_share, seed=s)
    if pattern == "hot_cold":
        return patterns.hot_cold(npages, count, base=GUEST_BASE, write_share=write_share, seed=s)
    if pattern == "sequential":
        start = (vcpu * npages // 8 + chunk * CHUNK) % npages
        t = patterns.sequential(npages, count, base=GUEST_BASE, write_share=write_share, seed=s)
        t.addrs = (t.addrs - np.uint64(GUEST_BASE) + np.uint64(start * C.PAGE_SIZE)) \
            % np.uint64(npages * C.PAGE_SIZE) + np.uint64(GUEST_BASE)
        return t
    raise ValueError(f"pattern must be one of {', '.join(PATTERNS)}, not {pattern!r}")


def _precopy(npages, rounds, dirty_rate, link, pattern, seed):
    """(precopy time ns, pages sent in precopy, the pages dirty at
    switchover as a bool array). Round 0 sends every page; each later round
    the pages dirtied during the one before, at dirty_rate writes/s drawn
    from the workload's pattern."""
    if rounds == 0:
        return 0, 0, np.ones(npages, bool)
    t, sent, todo = 0, 0, npages
    dirty = np.zeros(npages, bool)
    for r in range(rounds):
        dur = todo * link.page_ns + link.latency_ns
        t += dur
        sent += todo
        writes = int(dirty_rate * dur / 1e9)
        dirty[:] = False
        for c in range(0, writes, CHUNK):             # a chunk at a time: writes may be many
            tr = _accesses(pattern, npages, min(CHUNK, writes - c), 0.0, seed + 7919, 10_000 + r, c // CHUNK)
            dirty[((tr.addrs - np.uint64(GUEST_BASE)) >> np.uint64(C.PAGE_SHIFT)).astype(np.int64)] = True
        todo = int(dirty.sum())
    return t, sent, dirty


def _all_blocked(intervals, nvcpu):
    """Time during which every vCPU was blocked at once (QEMU's
    postcopy-blocktime): intervals is (vcpu, start, end, ...) rows."""
    if nvcpu == 0 or not len(intervals):
        return 0
    ev = np.concatenate([np.stack([intervals[:, 1], np.ones(len(intervals), np.int64)], 1),
                         np.stack([intervals[:, 2], -np.ones(len(intervals), np.int64)], 1)])
    ev = ev[np.lexsort((ev[:, 1], ev[:, 0]))]        # ends before starts at one instant
    depth = np.cumsum(ev[:, 1])
    full = depth == nvcpu
    if not full.any():
        return 0
    return int((ev[1:, 0] - ev[:-1, 0])[full[:-1]].sum())


def run(*, pages: int = 1 << 20, accesses: int = 10_000_000, vcpus: int = 1, pattern: str = "uniform",
        write_share: float = 0.2, seed: int = 0, kernel: str = "6.18", link: Link | None = None,
        precopy_rounds: int = 0, dirty_rate: float = 50_000.0, costs: CostModel | None = None,
        quantum_us: float = 100.0, trace=None, progress=None) -> dict:
    """Migrate a guest of `pages` pages whose `vcpus` vCPUs make `accesses`
    accesses in all after switchover (or replay `trace` on one vCPU).
    Returns emulated, deterministic metrics, and wall-clock ones under
    "wall". progress(n) is called with accesses done, when given."""
    t0 = time.perf_counter()
    link = link or Link()
    costs = costs or DEFAULT
    if not 1 <= vcpus <= 255:
        raise ValueError("vcpus must be in 1..255")
    if pages < 1 or accesses < 0 or precopy_rounds < 0 or not 0 <= dirty_rate < 1e12 \
            or not 0 <= write_share <= 1 or not 0 < quantum_us < 1e9:
        raise ValueError("pages must be >= 1; accesses and precopy_rounds >= 0; dirty_rate in "
                         "[0, 10^12); write_share in [0, 1]; quantum_us in (0, 10^9)")
    if trace is not None:
        # A recorded trace runs on one vCPU over a guest of exactly the
        # pages it touches: the k-th distinct page becomes guest page k.
        from ..trace import Trace, user_part
        trace, _ = user_part(trace)
        if accesses:
            trace = trace.head(accesses)
        distinct = trace.pages()
        mask = np.uint64(C.PAGE_SIZE - 1)
        rank = np.searchsorted(distinct, trace.addrs & ~mask).astype(np.uint64)
        trace = Trace(np.uint64(GUEST_BASE) + rank * np.uint64(C.PAGE_SIZE) + (trace.addrs & mask),
                      trace.writes, trace.source)
        pages, vcpus = max(len(distinct), 1), 1
    m = Machine(kernel=kernel, ncpus=vcpus + 1, memory=(pages + pages // 256 + 4096) * C.PAGE_SIZE)
    m.costs = costs
    p = m.spawn()
    guest = p.mmap(GUEST_BASE, pages * C.PAGE_SIZE, C.PROT_READ | C.PROT_WRITE,
                   C.MAP_PRIVATE | C.MAP_ANONYMOUS | C.MAP_FIXED | C.MAP_NORESERVE)
    u = p.userfaultfd()
    u.api()
    u.register(guest, pages * C.PAGE_SIZE, UFFDIO_REGISTER_MODE_MISSING)

    pre_ns, pre_pages, dirty = _precopy(pages, precopy_rounds, dirty_rate, link, pattern, seed)
    downtime = 2 * link.latency_ns                   # stop, last handshake, start on the destination
    switch = pre_ns + downtime
    # The stream sends the dirty set in page order from the switchover on;
    # the rest is at the destination already (arrival 0). Built in place:
    # a 64 GiB guest has 16M pages, and each temporary would cost 128 MiB.
    n_dirty = int(dirty.sum())
    arrival = np.cumsum(dirty, dtype=np.int64)              # rank + 1 of each dirty page
    arrival *= link.page_ns
    arrival += switch + link.latency_ns
    arrival[~dirty] = 0
    del dirty
    stream_ns = int(arrival.max()) - switch if n_dirty else 0
    source = np.arange(pages, dtype=np.uint64)
    source += SOURCE_TAG
    u.serve_core("copy", base=guest, versions=source, link=link, arrival=arrival)
    arrival = u._arrival                     # the resolver's own (updated by page requests)

    threads = [p.thread(cpu=v) for v in range(vcpus)]
    for v in range(vcpus):
        m.set_clock(v, switch)
    per = [accesses // vcpus + (1 if v < accesses % vcpus else 0) for v in range(vcpus)]
    log = FaultLog(u, vcpus, progress)
    written = np.zeros(pages, bool)
    fed = [0] * vcpus                               # chunks handed out per vCPU
    last = [None] * vcpus

    def feed(v):
        # A chunk is done when the next is asked for: its stores are in.
        if last[v] is not None:
            tr = last[v]
            written[((tr.addrs[tr.writes] - np.uint64(GUEST_BASE)) >> np.uint64(C.PAGE_SHIFT)).astype(np.int64)] = True
        if trace is not None:
            nxt = trace if fed[v] == 0 else None
        else:
            n = min(CHUNK, per[v] - fed[v] * CHUNK)
            nxt = _accesses(pattern, pages, n, write_share, seed, v, fed[v]) if n > 0 else None
        fed[v] += 1
        last[v] = nxt
        return nxt

    total = TimedRun(threads, feed, quantum_ns=int(quantum_us * 1000), on_slice=log.on_slice).run()
    for k in ("accesses", "tlb_hits", "tlb_misses", "faults", "uffd_faults"):
        total.setdefault(k, 0)
    t1 = time.perf_counter()

    ls = u.core_stats(since=log.seen)
    iv = log.intervals()
    block = log.wait
    lat = iv[:, 2] - iv[:, 1]
    last_arrival = int(arrival.max()) if n_dirty else switch
    end = max(last_arrival, max(m.clock(v) for v in range(vcpus)))
    migration_ns = max(last_arrival, switch)
    sent = pre_pages + n_dirty
    # The destination's memory is the source's image, but for what its own
    # vCPUs wrote since: every page present holds one or the other (checked
    # a slice at a time, again to keep a huge guest's temporaries small).
    ok = True
    for s in range(0, pages, 1 << 20):
        e = min(s + (1 << 20), pages)
        got = m._engine.versions(p.mm, guest + s * C.PAGE_SIZE, e - s)
        present = got != 0
        ok &= bool(np.all((got[present] == source[s:e][present])
                          | (written[s:e][present] & (got[present] < SOURCE_TAG))))
    m.check()
    return {
        "kernel": m.policy.version,
        "pages": pages, "vcpus": vcpus, "pattern": trace.source if trace is not None else pattern,
        "accesses": total["accesses"], "seed": seed,
        "link": {"gbps": link.gbps, "latency_us": link.latency_us, "queue_bytes": link.queue_bytes,
                 "preempt": link.preempt},
        "costs": {"source": costs.source, "ns": dict(costs.ns)},
        "precopy": {"rounds": precopy_rounds, "time_ms": pre_ns / 1e6, "pages_sent": pre_pages,
                    "dirty_at_switchover": n_dirty},
        "downtime_ms": downtime / 1e6,
        "faults": {"remote": ls["faults"], "missing": total["uffd_faults"], "total": total["faults"],
                   "arrived_before_touch": ls["arrived"]},
        "latency_us": {"mean": round(float(lat.mean()) / 1e3, 3) if len(lat) else 0.0,
                       "p50": round(float(np.percentile(lat, 50)) / 1e3, 3) if len(lat) else 0.0,
                       "p99": round(float(np.percentile(lat, 99)) / 1e3, 3) if len(lat) else 0.0,
                       "max": round(float(lat.max()) / 1e3, 3) if len(lat) else 0.0},
        "latency_dist": [int(x) for x in ls["hist"]],
        "blocktime_ms": {"total": _all_blocked(iv, vcpus) / 1e6, "per_vcpu": [b / 1e6 for b in block]},
        "migration_ms": migration_ns / 1e6, "postcopy_stream_ms": stream_ns / 1e6,
        "guest_ms": (end - switch) / 1e6,
        "pages_per_s": round(sent / (migration_ns / 1e9), 1) if migration_ns else 0.0,
        "tlb": {"hits": total["tlb_hits"], "misses": total["tlb_misses"]},
        "memory_matches_source": ok,
        "_faults": iv,                       # (vcpu, start, end, page) per remote fault: for plots
        "wall": {"run_s": round(t1 - t0, 3), "ns_per_access": round((t1 - t0) / max(total["accesses"], 1) * 1e9, 1),
                 "peak_rss_mib": peak_rss_kib() // 1024},
    }
