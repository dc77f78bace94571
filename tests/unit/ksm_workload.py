"""Seeded random KSM workloads and a digest of everything they leave behind
(test_ksm_equivalence.py). The expected digests there come from KSM cores
before the scan was batched and prefetched and before its tables shrank
(issue 13): a change in which page is merged, which becomes the KSM page, the
order of merges, or any table or counter shows as a different digest.

Regenerate (only with a core whose merge behaviour is known good; when the
digest itself changes, with the old core and the new digest):
    PYTHONPATH=. python tests/unit/ksm_workload.py
"""
import hashlib
import random

import numpy as np

from mmemu import Machine
from mmemu import constants as C

PAGE = C.PAGE_SIZE
RW = C.PROT_READ | C.PROT_WRITE
PRIV = C.MAP_PRIVATE | C.MAP_ANONYMOUS

# (seed, kernel): 6.18 gates on the checksum before the stable tree search
# and breaks with an unshare fault; 6.1 does neither.
# Seeds from 100 on add a region of 20000 pages: tables large enough for the
# scan's prefetching to be on.
CASES = [(s, k) for s in (0, 1, 2, 3, 4, 5, 100, 101) for k in ("6.18", "6.1")]


def _content(rng, palette):
    """A page's contents: mostly one of a few repeated ones, so pages merge,
    share a KSM page past max_page_sharing, and collide in the trees."""
    kind = rng.random()
    if kind < 0.15:
        return None                                     # a fresh version: distinct
    v = rng.choice(palette)
    if kind < 0.75:
        return ("touch", v)                              # a whole-page pattern
    return ("bytes", bytes([v & 0xFF]) * 100 + bytes([(v >> 8) & 0xFF]) * (PAGE - 100))


def _write(p, a, rng, palette):
    c = _content(rng, palette)
    if c is None:
        p.touch(a, 1, write=True)
    elif c[0] == "touch":
        p.touch(a, 1, write=True, value=c[1])
    else:
        p.write(a, c[1])


# The state a merge decision shows in: the KSM trees and items, the frame
# table and the page tables. (Not the rest of get_state, whose layout other
# features change: a digest of it would fail on every new table.)
DIGESTED = ("refcount", "mapcount", "version", "fflags", "mapping", "index", "pte", "dir")


def _unstable_entries(st):
    """The unstable tree as (capacity, [(slot, content hash, item)]) of its
    live entries, from either layout of the table: 24-byte entries (hash,
    item, gen == seqnr + 1; the core before 8-byte entries) or 8-byte ones
    (item: u32, tag: u16, gen: u16 == seqnr % 65535 + 1; the hash is the
    item's checksum). Stale entries are no state: the table's generation
    hides them."""
    raw = np.ascontiguousarray(st["ksm_unstable"]).view(np.uint8)
    seqnr = int(st["ksm_scalars"][2])
    checksum = np.ascontiguousarray(st["ksm_cur"]).view(np.uint8).reshape(-1, 32)[:, 8:16].copy().view(np.uint64)[:, 0]
    n8 = len(raw) // 8
    if n8 and n8 & (n8 - 1) == 0:               # a power-of-two count of 8-byte entries
        t = raw.reshape(-1, 8)
        item = t[:, 0:4].copy().view(np.uint32)[:, 0].astype(np.int64)
        tag = t[:, 4:6].copy().view(np.uint16)[:, 0]
        gen = t[:, 6:8].copy().view(np.uint16)[:, 0]
        slots = np.flatnonzero(gen == seqnr % 65535 + 1)
        hashes = checksum[item[slots]]
        assert (tag[slots] == hashes >> np.uint64(48)).all()
    else:
        t = raw.reshape(-1, 24).copy()
        hashes_all = t[:, 0:8].copy().view(np.uint64)[:, 0]
        item = t[:, 8:16].copy().view(np.int64)[:, 0]
        gen = t[:, 16:24].copy().view(np.int64)[:, 0]
        slots = np.flatnonzero(gen == seqnr + 1)
        hashes = hashes_all[slots]
        assert (checksum[item[slots]] == hashes).all()   # what the 8-byte layout relies on
    entries = np.stack([slots.astype(np.uint64), hashes.astype(np.uint64), item[slots].astype(np.uint64)], 1)
    return len(t), entries


def _digest_state(m, h):
    """The KSM part of Machine._digest_into's feed, with the rmap_items'
    padding zeroed (never written, so not part of the state), and the
    unstable tree as its live entries (_unstable_entries)."""
    st = m._engine.get_state()
    for k in sorted(st):
        if not (k.startswith("ksm_") or k in DIGESTED):
            continue
        v = st[k]
        if k in ("ksm_prev", "ksm_cur"):
            v = v.reshape(-1, 32).copy()        # ksm_item_t: key, checksum, serial, node, pad
            v[:, 28:] = 0
        if k == "ksm_unstable":
            cap, v = _unstable_entries(st)
            h.update(repr(cap).encode())
        h.update(k.encode())
        h.update(v.tobytes() if isinstance(v, np.ndarray) else repr(v).encode())
    for p in m._procs.values():
        h.update(repr((p.pid, p.alive, [(v.start, v.end, v.flags, v.uffd) for v in p.vmas])).encode())


def run(seed, kernel):
    """Run one workload; return (sha256 hex of the final state, scan log)."""
    rng = random.Random(seed * 7919 + (0 if kernel == "6.18" else 1))
    big = seed >= 100
    m = Machine(kernel=kernel, memory=(400 if big else 96) << 20)
    palette = [rng.randrange(1, 1 << 16) for _ in range(4)]
    procs = []                              # (process, [(addr, npages, mergeable)])
    log = []

    def spawn():
        p = m.spawn()
        regions = []
        for _ in range(rng.randrange(1, 4)):
            n = rng.choice([1, 7, 64, 300, 700, 2500] + [20000] * big)
            a = p.mmap(0, n * PAGE, RW, PRIV)
            merge = rng.random() < 0.8
            if merge:
                p.madvise(a, n * PAGE, C.MADV_MERGEABLE)
            if rng.random() < 0.5:
                p.touch(a, n, write=True, value=rng.choice(palette))    # a run of one content
            for i in range(n):
                if rng.random() < 0.7:
                    _write(p, a + i * PAGE, rng, palette)
            regions.append((a, n, merge))
        procs.append((p, regions))

    for _ in range(3):
        spawn()
    for step in range(40):
        r = rng.random()
        live = [(p, rg) for p, rg in procs if p.alive]
        if not live:
            spawn()
            continue
        p, regions = rng.choice(live)
        a, n, merge = rng.choice(regions)
        if r < 0.35:
            pages = rng.choice([None, None, 1, 5, 100, 333, 2000])
            log.append(m.ksm_scan(pages=pages))
        elif r < 0.55:
            for _ in range(rng.randrange(1, 20)):
                _write(p, a + rng.randrange(n) * PAGE, rng, palette)
        elif r < 0.65 and len(procs) < 8:
            c = p.fork()
            procs.append((c, list(regions)))
        elif r < 0.72:
            i = rng.randrange(n)
            k = rng.randrange(1, n - i + 1)
            p.madvise(a + i * PAGE, k * PAGE, C.MADV_UNMERGEABLE)
        elif r < 0.77:
            i = rng.randrange(n)
            p.madvise(a + i * PAGE, (n - i) * PAGE, C.MADV_MERGEABLE)
        elif r < 0.82:
            p.exit()
            if rng.random() < 0.7:
                spawn()                     # may reuse the mm id
        elif r < 0.88:
            k = rng.randrange(1, n + 1)
            p.read(a + rng.randrange(k) * PAGE, 8)
            p.touch(a, k, write=False)
        else:
            log.append(m.ksm_scan())
            log.append(m.ksm_scan())
    log.append(m.ksm_scan())
    m.check()
    h = hashlib.sha256()
    _digest_state(m, h)
    h.update(repr(sorted(m.ksm_stats().items())).encode())
    h.update(repr(log).encode())
    for p, regions in procs:
        if not p.alive:
            continue
        for a, n, _ in regions:
            for i in range(n):
                pm = p.pagemap(a + i * PAGE)
                h.update(repr(pm).encode())
                if pm.pfn:
                    h.update(repr(m.frame(pm.pfn)).encode())
    return h.hexdigest(), log


if __name__ == "__main__":
    for seed, kernel in CASES:
        d, log = run(seed, kernel)
        print(f"    ({seed}, {kernel!r}): {d!r},   # merges {sum(log)}")
