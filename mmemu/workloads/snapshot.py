"""A live snapshot of a running guest, on the engine, two ways.

sync (QEMU's background-snapshot, uffd-wp): at the snapshot point every
page is write-protected (UFFDIO_WRITEPROTECT); a saver walks the pages in
order, saving each still protected one and unprotecting it; a vCPU write to
a page not saved yet takes a WP userfault whose handler saves the page first
and then unprotects it (the core's unprotect-and-record resolver), so the
image is memory as it was at the snapshot point. The vCPU stalls for the
round trip of each such fault.

async (6.7+: UFFD_FEATURE_WP_ASYNC with PAGEMAP_SCAN, as CRIU's iterative
dumps use it): writes never stall (the kernel unprotects the page itself
and the pte says it was written); the saver copies every page, then
repeatedly asks PAGEMAP_SCAN for the pages written since, re-protecting them
as it reads (PM_SCAN_WP_MATCHING), until few are left; the guest then stops
for the last copy. The image is memory at that stop.

Either way the image is checked against the memory it must equal. Time is
emulated (mmemu.cost): the saver moves pages at `save_gbps`, the vCPUs run
between its steps in emulated-time order."""
from __future__ import annotations

import time

import numpy as np

from .. import constants as C
from ..cost import DEFAULT, CostModel
from ..machine import Machine
from ..uffd import UFFD_FEATURE_WP_ASYNC, UFFDIO_REGISTER_MODE_WP
from ..sched import TimedRun
from .faultlog import FaultLog
from .postcopy import CHUNK, GUEST_BASE, _accesses
from . import peak_rss_kib

STEP = 256                      # pages the saver moves per step (1 ms at 8 Gbps)


def run(*, pages: int = 1 << 18, accesses: int = 4_000_000, vcpus: int = 1, pattern: str = "uniform",
        write_share: float = 0.3, seed: int = 0, kernel: str = "6.18", mode: str = "sync",
        save_gbps: float = 8.0, stop_pages: int = 1024, max_rounds: int = 8,
        costs: CostModel | None = None, progress=None) -> dict:
    t0 = time.perf_counter()
    costs = costs or DEFAULT
    if mode not in ("sync", "async"):
        raise ValueError(f"mode must be sync or async, not {mode!r}")
    if pages < 1 or accesses < 0 or not 1 <= vcpus <= 255 or not 0 < save_gbps < 1e6 \
            or stop_pages < 0 or max_rounds < 1 or not 0 <= write_share <= 1:
        raise ValueError("pages >= 1, accesses >= 0, vcpus in 1..255, 0 < save_gbps < 10^6, "
                         "stop_pages >= 0, max_rounds >= 1 and write_share in [0, 1]")
    m = Machine(kernel=kernel, ncpus=vcpus + 1, memory=(pages + pages // 256 + 4096) * C.PAGE_SIZE)
    p = m.spawn()
    guest = p.mmap(GUEST_BASE, pages * C.PAGE_SIZE, C.PROT_READ | C.PROT_WRITE,
                   C.MAP_PRIVATE | C.MAP_ANONYMOUS | C.MAP_FIXED | C.MAP_NORESERVE)
    p.touch(guest, pages, write=True)                 # the guest's memory, each page its own content
    u = p.userfaultfd()
    if mode == "async":
        if not m.policy.uffd_features & UFFD_FEATURE_WP_ASYNC:
            raise ValueError(f"kernel {m.policy.version} has no UFFD_FEATURE_WP_ASYNC (6.7+)")
        u.api(UFFD_FEATURE_WP_ASYNC | C.UFFD_FEATURE_WP_UNPOPULATED)
    else:
        u.api()
    u.register(guest, pages * C.PAGE_SIZE, UFFDIO_REGISTER_MODE_WP)
    eng = m._engine
    image = np.zeros(pages, np.uint64)
    if mode == "sync":
        u.serve_core("unprotect", base=guest, versions=image, log=True)
        u.writeprotect(guest, pages * C.PAGE_SIZE, True)
        at_snapshot = eng.versions(p.mm, guest, pages).copy()      # what the image must hold
    else:
        p.pagemap_scan(guest, guest + pages * C.PAGE_SIZE, C.PM_SCAN_WP_MATCHING | C.PM_SCAN_CHECK_WPASYNC,
                       C.PAGE_IS_WRITTEN, 0, 0, C.PAGE_IS_WRITTEN, vec_len=0)
    m.costs = costs
    page_ns = int(round(C.PAGE_SIZE * 8 / save_gbps))
    threads = [p.thread(cpu=v) for v in range(vcpus)]
    per = [accesses // vcpus + (1 if v < accesses % vcpus else 0) for v in range(vcpus)]
    fed = [0] * vcpus

    def feed(v):
        n = min(CHUNK, per[v] - fed[v] * CHUNK)
        fed[v] += 1
        return _accesses(pattern, pages, n, write_share, seed, v, fed[v] - 1) if n > 0 else None
    log = FaultLog(u, vcpus, progress)
    vcpu_run = TimedRun(threads, feed, on_slice=log.on_slice)
    now = 0
    saved_pages = 0
    rounds = 0

    def run_vcpus(until):
        vcpu_run.run(None if until >= 1 << 62 else until)

    def vcpus_done():
        return vcpu_run.done

    if mode == "sync":
        for first in range(0, pages, STEP):
            n = min(STEP, pages - first)
            run_vcpus(now)
            # The saver: pages the fault path has not saved yet are saved,
            # then the step is unprotected. (It keeps its own record, as
            # QEMU does: the pagemap's uffd-wp bit is 5.13+. Every page holds
            # a content version, never 0: 0 in the image means not saved.)
            todo = image[first:first + n] == 0
            image[first:first + n][todo] = eng.versions(p.mm, guest + first * C.PAGE_SIZE, n)[todo]
            u.writeprotect(guest + first * C.PAGE_SIZE, n * C.PAGE_SIZE, False)
            saved_pages += int(todo.sum())
            now += int(todo.sum()) * page_ns
        run_vcpus(1 << 62)
        expect = at_snapshot
        stop_ns = 0
    else:
        # Round 0 copies everything; each later round what was written
        # since, found and re-protected by PAGEMAP_SCAN.
        todo = np.arange(pages)
        while True:
            run_vcpus(now)
            image[todo] = eng.versions(p.mm, guest, pages)[todo]
            saved_pages += len(todo)
            now += len(todo) * page_ns
            rounds += 1
            run_vcpus(now)
            regions, _ = p.pagemap_scan(guest, guest + pages * C.PAGE_SIZE,
                                        C.PM_SCAN_WP_MATCHING | C.PM_SCAN_CHECK_WPASYNC, C.PAGE_IS_WRITTEN,
                                        0, 0, C.PAGE_IS_WRITTEN)
            todo = np.concatenate([np.arange((s - guest) // C.PAGE_SIZE, (e - guest) // C.PAGE_SIZE)
                                   for s, e, _ in regions]) if regions else np.zeros(0, np.int64)
            if len(todo) <= stop_pages or rounds >= max_rounds or vcpus_done():
                break
        # Stop the guest, copy the rest: the image is memory at this point.
        image[todo] = eng.versions(p.mm, guest, pages)[todo]
        saved_pages += len(todo)
        stop_ns = len(todo) * page_ns
        expect = eng.versions(p.mm, guest, pages).copy()
        now += stop_ns
        for v in range(vcpus):                        # the guest resumes after the stop
            m.set_clock(v, max(m.clock(v), now))
        run_vcpus(1 << 62)
    t1 = time.perf_counter()
    m.check()
    total = {k: vcpu_run.totals.get(k, 0) for k in ("accesses", "wp_faults", "uffd_faults")}
    # A vCPU stalls for each userfault: the fault and the handler's round
    # trip (saving the page, unprotecting it), as the cost model charges them.
    stall = costs.ns.get("faults", 0) + costs.ns.get("wp_faults", 0) + costs.ns.get("uffd_faults", 0)
    by_fault = total["uffd_faults"] if mode == "sync" else 0     # each saved its page first
    return {
        "kernel": m.policy.version, "mode": mode, "pages": pages, "vcpus": vcpus, "pattern": pattern,
        "accesses": total["accesses"], "seed": seed,
        "costs": {"source": costs.source, "ns": dict(costs.ns)},
        "faults": {"wp": total["wp_faults"], "uffd": total["uffd_faults"]},
        "stall_us": {"per_fault": stall / 1e3 if total["uffd_faults"] else 0.0,
                     "total": round(total["uffd_faults"] * stall / 1e3, 3)},
        "saved": {"pages": saved_pages + by_fault, "by_saver": saved_pages, "by_fault": by_fault,
                  "bytes": (saved_pages + by_fault) * C.PAGE_SIZE, "rounds": rounds or 1},
        "stop_ms": stop_ns / 1e6, "snapshot_ms": now / 1e6,
        "guest_ms": max(m.clock(v) for v in range(vcpus)) / 1e6,
        "image_matches": bool(np.array_equal(image, expect)),
        "_faults": log.intervals(),          # (vcpu, start, end, page) per userfault: for plots
        "wall": {"run_s": round(t1 - t0, 3),
                 "peak_rss_mib": peak_rss_kib() // 1024},
    }
