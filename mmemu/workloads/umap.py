"""A user-level pager as LLNL's umap runs one, on the engine: a region of
`store_pages` pages backed by a store file (a memfd here), of which at most
`buffer_pages` are resident. The application's accesses fault MISSING; the
pager's service thread fills the page from the store (UFFDIO_COPY) and
write-protects it (clean-page tracking: a later store takes a WP fault that
marks it dirty and unprotects it). When the buffer is full it evicts the
oldest page first: write-protect, write back to the store if dirty (an
O_DIRECT pwrite from the page - a read GUP of it), MADV_DONTNEED.

On 5.8 (17839856fd58, GUP breaking COW on reads) the write-back's read GUP
takes a write fault on the uffd-wp pte, whose message only the pager itself
would read: the pager deadlocks on itself (B3, umapsort). The run reports
the deadlock instead of hanging; on 5.7 and 5.9+ (a308c71bf1e6) it
completes, and the store then holds every page's last contents.

in_core=True runs the same pager as an in-core resolver (serve_core
"pager": FIFO eviction, write-back of pages whose contents changed,
MADV_DONTNEED) over a replayed trace, for millions of accesses; it takes no
GUP, so it never meets 5.8's deadlock. Its result is checked against the
same trace run with every page resident."""
from __future__ import annotations

import time
from collections import OrderedDict

import numpy as np

from .. import constants as C
from ..errors import Deadlock
from ..machine import Machine
from ..uffd import (UFFD_FEATURE_PAGEFAULT_FLAG_WP, UFFD_PAGEFAULT_FLAG_WP, UFFDIO_REGISTER_MODE_MISSING,
                    UFFDIO_REGISTER_MODE_WP)
from .postcopy import CHUNK, GUEST_BASE, _accesses
from . import peak_rss_kib

PAGE = C.PAGE_SIZE


def _stamp(i, gen):
    """What the application's gen-th store to page i writes (8 bytes; the
    store starts as zeros, generation 0)."""
    return 0 if gen == 0 else (i << 20) | gen


def _chunks(pattern, pages, accesses, write_share, seed):
    """The application's accesses, CHUNK at a time (a huge count never sizes
    one array)."""
    for c in range(0, accesses, CHUNK):
        yield _accesses(pattern, pages, min(CHUNK, accesses - c), write_share, seed, 0, c // CHUNK)


def _in_core(pages, buffer_pages, accesses, pattern, write_share, seed, kernel, progress):
    t0 = time.perf_counter()
    store0 = np.arange(pages, dtype=np.uint64)
    store0 += np.uint64(1 << 48)

    def machine(resident):
        m = Machine(kernel=kernel, ncpus=1, memory=((resident or pages) + pages // 256 + 4096) * PAGE)
        p = m.spawn()
        a = p.mmap(GUEST_BASE, pages * PAGE, C.PROT_READ | C.PROT_WRITE,
                   C.MAP_PRIVATE | C.MAP_ANONYMOUS | C.MAP_FIXED | C.MAP_NORESERVE)
        u = p.userfaultfd()
        u.api()
        u.register(a, pages * PAGE, UFFDIO_REGISTER_MODE_MISSING)
        store = store0.copy()
        if resident:
            u.serve_core("pager", base=a, versions=store, resident=resident, log=True)
        else:
            u.serve_core("copy", base=a, versions=store)
        c = {"accesses": 0, "uffd_faults": 0}
        for tr in _chunks(pattern, pages, accesses, write_share, seed):
            got = p.thread(cpu=0).replay(tr)
            c = {k: c[k] + got[k] for k in c}
            if progress:
                progress(got["accesses"] // (2 if resident else 1))
        now = m._engine.versions(p.mm, a, pages)
        m.check()
        return m.policy.version, c, u.core_stats(), np.where(now != 0, now, store)
    version, c, st, got = machine(buffer_pages)
    _, _, _, want = machine(None)                  # every page resident: the reference
    t1 = time.perf_counter()
    return {
        "kernel": version, "pages": pages,
        "buffer_pages": buffer_pages, "pattern": pattern, "accesses": c["accesses"], "seed": seed,
        "in_core": True, "outcome": "completed", "deadlock": None,
        "faults": {"missing": c["uffd_faults"], "wp": 0},
        "evictions": st["evictions"], "writebacks": st["writebacks"],
        "store_matches": bool(np.array_equal(got, want)),
        "_faults": np.stack([np.zeros(len(st["events"]), np.int64), st["events"][:, 0],
                             st["events"][:, 0] + st["events"][:, 1], st["events"][:, 2]], 1),
        "wall": {"run_s": round(t1 - t0, 3),
                 "peak_rss_mib": peak_rss_kib() // 1024},
    }


def run(*, pages: int = 4096, buffer_pages: int = 512, accesses: int = 100_000, pattern: str = "zipf",
        write_share: float = 0.3, seed: int = 0, kernel: str = "6.18", in_core: bool = False,
        progress=None) -> dict:
    if not 1 <= buffer_pages <= pages or accesses < 0:
        raise ValueError("buffer_pages must be in 1..pages and accesses >= 0")
    if in_core:
        return _in_core(pages, buffer_pages, accesses, pattern, write_share, seed, kernel, progress)
    t0 = time.perf_counter()
    m = Machine(kernel=kernel, ncpus=2, memory=(buffer_pages + 8192) * PAGE + pages * PAGE)
    p = m.spawn()
    store = p.memfd_create("umap-store")
    p.ftruncate(store, pages * PAGE)
    gen = np.zeros(pages, np.int64)                  # what the application last stored per page
    region = p.mmap(0, pages * PAGE, C.PROT_READ | C.PROT_WRITE, C.MAP_PRIVATE | C.MAP_ANONYMOUS)
    u = p.userfaultfd()
    u.api(UFFD_FEATURE_PAGEFAULT_FLAG_WP)
    u.register(region, pages * PAGE, UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_WP)
    resident = OrderedDict()                         # page -> dirty, oldest first
    counts = {"fills": 0, "wp_faults": 0, "evictions": 0, "writebacks": 0}
    faults = []                                      # (kind: 0 MISSING / 1 WP, access, access, page)
    at = [0]                                         # the access being made

    def evict():
        j, dirty = resident.popitem(last=False)
        a = region + j * PAGE
        u.writeprotect(a, PAGE, True)                # no store may slip in during write-back
        if dirty:
            p.pwrite_from(store, a, PAGE, j * PAGE, direct=True)
            counts["writebacks"] += 1
        p.madvise(a, PAGE, C.MADV_DONTNEED)
        counts["evictions"] += 1

    def handler(ctx, msg):
        j = (msg.address - region) // PAGE
        a = region + j * PAGE
        faults.append((1 if msg.flags & UFFD_PAGEFAULT_FLAG_WP else 0, at[0], at[0], j))
        if msg.flags & UFFD_PAGEFAULT_FLAG_WP:
            resident[j] = True                       # the first store since the fill: dirty
            counts["wp_faults"] += 1
            ctx.writeprotect(a, PAGE, False)
            return
        if len(resident) >= buffer_pages:
            evict()
        ctx.copy(a, p.pread(store, PAGE, j * PAGE), PAGE, C.UFFDIO_COPY_MODE_WP)
        resident[j] = False
        counts["fills"] += 1
    u.serve(handler, cpu=1)

    t = p.thread(cpu=0)
    deadlock = None
    done = 0
    try:
        for tr in _chunks(pattern, pages, accesses, write_share, seed):
            # Stores write a page's next generation, through the same
            # userfault path as any access (bytes, so the store can check).
            # One Python call per access: the pager under test is Python.
            idx = ((tr.addrs - np.uint64(GUEST_BASE)) >> np.uint64(C.PAGE_SHIFT)).astype(np.int64)
            for k in range(len(tr)):
                at[0] = done + k
                j = int(idx[k])
                a = region + j * PAGE
                if tr.writes[k]:
                    gen[j] += 1
                    t.write(a, int(_stamp(j, int(gen[j]))).to_bytes(8, "little"))
                else:
                    t.read(a, 8)
            done += len(tr)
            if progress:
                progress(len(tr))
    except Deadlock as ex:
        done = at[0]
        deadlock = str(ex)
    t1 = time.perf_counter()
    ok = None
    if deadlock is None:
        while resident:                               # flush: every dirty page goes back
            evict()
        want = np.where(gen == 0, 0, (np.arange(pages, dtype=np.int64) << 20) | gen).astype(np.uint64)
        ok = True
        for s in range(0, pages, 1024):               # the first 8 bytes of each page, 1024 pages a read
            n = min(1024, pages - s)
            got = np.frombuffer(p.pread(store, n * PAGE, s * PAGE), np.uint64)[::PAGE // 8]
            ok &= bool(np.array_equal(got, want[s:s + n]))
        m.check()
    return {
        "kernel": m.policy.version, "pages": pages, "buffer_pages": buffer_pages, "pattern": pattern,
        "accesses": done, "seed": seed, "in_core": False,
        "outcome": "deadlock" if deadlock else "completed",
        "deadlock": deadlock,
        "faults": {"missing": counts["fills"], "wp": counts["wp_faults"]},
        "evictions": counts["evictions"], "writebacks": counts["writebacks"],
        "store_matches": ok,
        "_faults": np.array(faults, np.int64).reshape(-1, 4),
        "wall": {"run_s": round(t1 - t0, 3),
                 "peak_rss_mib": peak_rss_kib() // 1024},
    }
