"""Replay a memory-access trace the way postcopy serves a guest: the trace's
own pages are mapped (one private anonymous VMA per run of contiguous
pages), registered MISSING, and every first touch is a userfault resolved in
the core (a copy of the page from its source image), so each distinct page
takes exactly one fault."""
from __future__ import annotations

import time

import numpy as np

from .. import constants as C
from ..cost import DEFAULT, CostModel
from ..machine import Machine
from ..trace import Trace, user_part
from ..uffd import UFFDIO_REGISTER_MODE_MISSING
from . import peak_rss_kib


def run(trace: Trace, *, kernel: str = "6.18", pages: int | None = None, accesses: int | None = None,
        serve: str | None = "copy", costs: CostModel | None = None) -> dict:
    """Replay `trace` on a fresh Machine; returns emulated metrics (time by
    the cost model, mmemu.cost), and the wall-clock ones under "wall"."""
    t0 = time.perf_counter()
    if accesses is not None:
        trace = trace.head(accesses)
    trace, dropped = user_part(trace)
    runs = trace.runs()
    distinct = sum((e - s) // C.PAGE_SIZE for s, e in runs)
    if pages is not None and distinct > pages:
        raise ValueError(f"the trace touches {distinct} distinct pages, more than --pages {pages}")
    m = Machine(kernel=kernel, memory=((pages or distinct) + 4096) * C.PAGE_SIZE, ncpus=1)
    costs = costs or DEFAULT
    m.costs = costs
    p = m.spawn()
    ctxs = []
    stamp = 0
    for s, e in runs:
        p.mmap(s, e - s, C.PROT_READ | C.PROT_WRITE,
               C.MAP_PRIVATE | C.MAP_ANONYMOUS | C.MAP_FIXED | C.MAP_NORESERVE)
        # One context per run, as a postcopy destination registers guest
        # RAM blocks: "copy" fills each page from its source image (content
        # versions), like UFFDIO_COPY of the page the source sends.
        u = p.userfaultfd()
        u.api()
        u.register(s, e - s, UFFDIO_REGISTER_MODE_MISSING)
        n = (e - s) // C.PAGE_SIZE
        ctxs.append((u, stamp))
        if serve == "copy":
            u.serve_core("copy", base=s, versions=np.arange(stamp + 1, stamp + n + 1, dtype=np.uint64),
                         log=True)
        elif serve is not None:
            u.serve_core(serve)
        stamp += n
    t1 = time.perf_counter()
    c = p.thread(cpu=0).replay(trace)
    t2 = time.perf_counter()
    m.check()
    # Each context's faults: page indices made global over the runs.
    rows = []
    for u, first in ctxs:
        ev = u.core_stats()["events"]
        if len(ev):
            rows.append(np.stack([np.zeros(len(ev), np.int64), ev[:, 0], ev[:, 0] + ev[:, 1], ev[:, 2] + first], 1))
    faults = np.concatenate(rows) if rows else np.zeros((0, 4), np.int64)
    return {
        "kernel": m.policy.version,
        "trace": trace.source,
        "accesses": c["accesses"],
        "writes": int(trace.writes.sum()),
        "dropped_kernel_addresses": dropped,
        "pages": distinct,
        "vmas": len(runs),
        "faults": {"missing": c["uffd_faults"], "total": c["faults"], "wp": c["wp_faults"],
                   "cow": c["cow"], "anon": c["anon_faults"], "zero": c["zero_faults"]},
        "tlb": {"hits": c["tlb_hits"], "misses": c["tlb_misses"]},
        "emulated_ms": c["clock"] / 1e6,
        "costs": {"source": costs.source, "ns": dict(costs.ns)},
        "_faults": faults,
        "wall": {"setup_s": round(t1 - t0, 4), "replay_s": round(t2 - t1, 4),
                 "ns_per_access": round((t2 - t1) / max(c["accesses"], 1) * 1e9, 1),
                 "peak_rss_kib": peak_rss_kib()},
    }
