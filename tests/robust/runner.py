"""The random-sequence runner: seeded sequences of legal operations (valid
types, ranges near real mappings; errnos are fine) on small machines of
every kernel version, with check() and the VMA-table comparison after each
step. A plain loop, fast enough for 10^7 operations in a long run.

An operation is recorded as (name, args) with objects named by index into
the run's lists (P: processes, PIN, PIPE, FD, U), so a failing run is
replayed from its record and shrunk: first the prefix up to the failing
step, then operations removed while the same defect stays (delta
debugging, bounded). The shrunk sequence is printed as Python.
Determinism: a digest of every outcome; the same seed twice must give the
same digest.
"""
import hashlib
import random
import time

import mmemu
from mmemu import (FOLL_LONGTERM, FOLL_WRITE, MAP_ANONYMOUS, MAP_FIXED, MAP_PRIVATE, MAP_SHARED,
                   PAGE_SIZE as PAGE, PROT_NONE, PROT_READ, PROT_WRITE)
from mmemu import constants as C
from mmemu.uffd import (UFFD_FEATURE_PAGEFAULT_FLAG_WP, UFFDIO_REGISTER_MODE_MISSING,
                        UFFDIO_REGISTER_MODE_WP)

from .harness import Defect, classify, verify

RW = PROT_READ | PROT_WRITE
PROTS = [RW, PROT_READ, PROT_NONE, RW, RW]
ADVICE = [C.MADV_DONTNEED, C.MADV_FREE, C.MADV_PAGEOUT, C.MADV_COLD, C.MADV_DONTFORK, C.MADV_DOFORK,
          C.MADV_WIPEONFORK, C.MADV_KEEPONFORK, C.MADV_REMOVE, C.MADV_POPULATE_READ,
          C.MADV_POPULATE_WRITE, C.MADV_NORMAL]
MAX_PROCS = 6


class State:
    """The run's objects, named by index (an op naming a missing one is skipped)."""

    def __init__(self, kernel, memory_pages, swap_pages, seed):
        self.kernel = kernel
        self.m = mmemu.Machine(kernel=kernel, memory=memory_pages * PAGE, swap=swap_pages * PAGE,
                               seed=seed)
        self.P = [self.m.spawn()]
        self.R = []          # regions: (addr, npages) - addresses any process may use
        self.PIN, self.PIPE, self.FD, self.U = [], [], [], []

    def live(self):
        return [i for i, p in enumerate(self.P) if p.alive]


# ---- operations ------------------------------------------------------------------

class _Skip(Exception):
    """An op names an object that does not exist (in a shrunk replay)."""


def _get(lst, i):
    if i >= len(lst):
        raise _Skip()
    return lst[i]


def _reg(st, ri, first, count):
    addr, npages = _get(st.R, ri)
    return addr + first * PAGE, max(count, 1)


def op_mmap(st, pi, npages, prot, kind, fdi):
    p = _get(st.P, pi)
    if kind == 0:
        a = p.mmap(0, npages * PAGE, prot, MAP_PRIVATE | MAP_ANONYMOUS)
    elif kind == 1:
        a = p.mmap(0, npages * PAGE, prot, MAP_SHARED | MAP_ANONYMOUS)
    else:
        fpi, fd = _get(st.FD, fdi)
        if fpi != pi:
            return "skip"
        a = p.mmap(0, npages * PAGE, prot, MAP_SHARED if kind == 2 else MAP_PRIVATE, fd, 0)
    st.R.append((a, npages))
    return a


def op_mmap_fixed(st, pi, ri, first, count, prot):
    a, n = _reg(st, ri, first, count)
    return _get(st.P, pi).mmap(a, n * PAGE, prot, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED)


def op_munmap(st, pi, ri, first, count):
    a, n = _reg(st, ri, first, count)
    return _get(st.P, pi).munmap(a, n * PAGE)


def op_mprotect(st, pi, ri, first, count, prot):
    a, n = _reg(st, ri, first, count)
    return _get(st.P, pi).mprotect(a, n * PAGE, prot)


def op_madvise(st, pi, ri, first, count, advice):
    a, n = _reg(st, ri, first, count)
    return _get(st.P, pi).madvise(a, n * PAGE, advice)


def op_mremap(st, pi, ri, first, count, newpages, flags):
    a, n = _reg(st, ri, first, count)
    r = _get(st.P, pi).mremap(a, n * PAGE, newpages * PAGE, flags)
    if isinstance(r, int) and r != a:
        st.R.append((r, newpages))
    return r


def op_fork(st, pi):
    if len(st.live()) >= MAX_PROCS:
        return "skip"
    c = _get(st.P, pi).fork()
    st.P.append(c)
    return c.pid


def op_exit(st, pi):
    if pi == 0:
        return "skip"                   # keep one process
    return _get(st.P, pi).exit()


def op_write(st, pi, ri, first, off, length, byte):
    a, _ = _reg(st, ri, first, 1)
    return _get(st.P, pi).write(a + off, bytes([byte]) * length)


def op_read(st, pi, ri, first, off, length):
    a, _ = _reg(st, ri, first, 1)
    return _get(st.P, pi).read(a + off, length)


def op_touch(st, pi, ri, first, count, write):
    a, n = _reg(st, ri, first, count)
    return _get(st.P, pi).touch(a, n, write=bool(write))


def op_gup(st, pi, ri, first, count, flags, pin):
    a, n = _reg(st, ri, first, count)
    p = _get(st.P, pi)
    h = p.pin_user_pages(a, n, flags) if pin else p.get_user_pages(a, n, flags)
    st.PIN.append(h)
    return h.npages


def op_release(st, k):
    return _get(st.PIN, k).release()


def op_pin_write(st, k, byte):
    h = _get(st.PIN, k)
    if h.released or not h.gup_flags & FOLL_WRITE:
        return "skip"
    return h.write(0, bytes([byte]) * 8)


def op_pin_read(st, k):
    h = _get(st.PIN, k)
    if h.released:
        return "skip"
    return h.read(0, 8)


def op_vmsplice(st, pi, ri, first, length):
    a, _ = _reg(st, ri, first, 1)
    pp = _get(st.P, pi).vmsplice(a, length)
    st.PIPE.append(pp)
    return pp.nbytes


def op_pipe_read(st, k, n):
    return _get(st.PIPE, k).read(n)


def op_pipe_close(st, k):
    return _get(st.PIPE, k).close()


def op_memfd(st, pi, pages):
    p = _get(st.P, pi)
    fd = p.memfd_create("f")
    p.ftruncate(fd, pages * PAGE)
    st.FD.append((pi, fd))
    return fd


def _fd(st, fdi):
    pi, fd = _get(st.FD, fdi)
    return _get(st.P, pi), fd


def op_ftruncate(st, fdi, size):
    p, fd = _fd(st, fdi)
    return p.ftruncate(fd, size)


def op_fallocate(st, fdi, mode, off, length):
    p, fd = _fd(st, fdi)
    return p.fallocate(fd, mode, off, length)


def op_pwrite(st, fdi, off, length, byte):
    p, fd = _fd(st, fdi)
    return p.pwrite(fd, bytes([byte]) * length, off)


def op_pread(st, fdi, off, n):
    p, fd = _fd(st, fdi)
    return p.pread(fd, n, off)


def op_pwrite_from(st, fdi, ri, first, n, off, direct):
    p, fd = _fd(st, fdi)
    a, _ = _reg(st, ri, first, 1)
    return p.pwrite_from(fd, a, n, off, direct=bool(direct))


def op_pread_into(st, fdi, ri, first, n, off):
    p, fd = _fd(st, fdi)
    a, _ = _reg(st, ri, first, 1)
    return p.pread_into(fd, a, n, off)


def op_uffd(st, pi, ri, wp, missing):
    p = _get(st.P, pi)
    u = p.userfaultfd()
    feats = u.api(0)
    mode = UFFDIO_REGISTER_MODE_MISSING if missing or not feats & UFFD_FEATURE_PAGEFAULT_FLAG_WP else 0
    if wp and feats & UFFD_FEATURE_PAGEFAULT_FLAG_WP:
        mode |= UFFDIO_REGISTER_MODE_WP
    st.U.append(u)
    u.serve(mmemu.Resolver("copy" if missing else "zeropage", fill=7))
    a, n = _get(st.R, ri)
    return u.register(a, n * PAGE, mode)


def op_uffd_copy(st, k, ri, first):
    a, _ = _reg(st, ri, first, 1)
    return _get(st.U, k).copy(a, b"u" * PAGE)


def op_uffd_zeropage(st, k, ri, first, count):
    a, n = _reg(st, ri, first, count)
    return _get(st.U, k).zeropage(a, n * PAGE)


def op_uffd_wp(st, k, ri, first, count, protect):
    a, n = _reg(st, ri, first, count)
    return _get(st.U, k).writeprotect(a, n * PAGE, 1 if protect else 0)


def op_uffd_unregister(st, k, ri):
    a, n = _get(st.R, ri)
    return _get(st.U, k).unregister(a, n * PAGE)


def op_uffd_close(st, k):
    return _get(st.U, k).close()


def op_reclaim(st, n):
    return st.m.reclaim(n)


def op_clear_refs(st, pi, value):
    return _get(st.P, pi).clear_refs(value)


def op_pagemap(st, pi, ri, first, count):
    a, n = _reg(st, ri, first, count)
    return [int(x) & ~C.PM_PFRAME_MASK for x in _get(st.P, pi).pagemap_range(a, n)]


def op_proc_mem_write(st, pi, ri, first, off, length, byte):
    a, _ = _reg(st, ri, first, 1)
    return _get(st.P, pi).proc_mem_write(a + off, bytes([byte]) * length)


def op_proc_mem_read(st, pi, ri, first, off, length):
    a, _ = _reg(st, ri, first, 1)
    return _get(st.P, pi).proc_mem_read(a + off, length)


OPS = {name[3:]: fn for name, fn in globals().items() if name.startswith("op_")}

# Which list each op's first index argument names (for skipping and rendering).
_TARGET = {"release": "PIN", "pin_write": "PIN", "pin_read": "PIN", "pipe_read": "PIPE",
           "pipe_close": "PIPE", "ftruncate": "FD", "fallocate": "FD", "pwrite": "FD", "pread": "FD",
           "pwrite_from": "FD", "pread_into": "FD", "uffd_copy": "U", "uffd_zeropage": "U",
           "uffd_wp": "U", "uffd_unregister": "U", "uffd_close": "U", "reclaim": None}


def render(name, args):
    return f"{name}({', '.join(repr(a) for a in args)})"


# ---- generation -------------------------------------------------------------------

WEIGHTS = {"mmap": 6, "mmap_fixed": 1, "munmap": 3, "mprotect": 3, "madvise": 4, "mremap": 2, "fork": 2,
           "exit": 1, "write": 10, "read": 6, "touch": 5, "gup": 3, "release": 2, "pin_write": 1,
           "pin_read": 1, "vmsplice": 2, "pipe_read": 2, "pipe_close": 1, "memfd": 1, "ftruncate": 1,
           "fallocate": 2, "pwrite": 2, "pread": 1, "pwrite_from": 1, "pread_into": 1, "uffd": 1,
           "uffd_copy": 1, "uffd_zeropage": 1, "uffd_wp": 2, "uffd_unregister": 1, "uffd_close": 1,
           "reclaim": 1, "clear_refs": 1, "pagemap": 2, "proc_mem_write": 1, "proc_mem_read": 1}
_NAMES = list(WEIGHTS)
_CUM = []
_acc = 0
for _n in _NAMES:
    _acc += WEIGHTS[_n]
    _CUM.append(_acc)


def generate(rng, st):
    """One op (name, args) legal for the state; None if none applies."""
    import bisect
    name = _NAMES[bisect.bisect_right(_CUM, rng.randrange(_acc))]
    live = st.live()
    pi = live[rng.randrange(len(live))]
    ri = rng.randrange(len(st.R)) if st.R else None
    r = rng.randrange
    first = r(8)
    if name == "mmap":
        kind = r(4) if st.FD else r(2)
        return name, (pi, 1 + r(8), PROTS[r(5)], kind, r(len(st.FD)) if st.FD else 0)
    if name in ("reclaim",):
        return name, (1 + r(64),)
    if name == "memfd":
        return name, (pi, r(9))
    if name == "fork":
        return name, (pi,)
    if name == "exit":
        return name, (pi,)
    if name == "clear_refs":
        return name, (pi, (C.CLEAR_REFS_SOFT_DIRTY, C.CLEAR_REFS_ALL)[r(2)])
    target = _TARGET.get(name, "R")
    if target == "PIN":
        if not st.PIN:
            return None
        k = r(len(st.PIN))
        return name, (k, r(256)) if name == "pin_write" else (k,)
    if target == "PIPE":
        if not st.PIPE:
            return None
        return name, (r(len(st.PIPE)), r(2 * PAGE)) if name == "pipe_read" else (r(len(st.PIPE)),)
    if target == "FD":
        if not st.FD:
            return None
        fdi = r(len(st.FD))
        off = r(10) * PAGE + (r(PAGE) if r(4) == 0 else 0)
        if name == "ftruncate":
            return name, (fdi, r(12) * PAGE + (r(PAGE) if r(3) == 0 else 0))
        if name == "fallocate":
            mode = (0, C.FALLOC_FL_KEEP_SIZE, C.FALLOC_FL_PUNCH_HOLE | C.FALLOC_FL_KEEP_SIZE)[r(3)]
            return name, (fdi, mode, off, 1 + r(4 * PAGE))
        if name == "pwrite":
            return name, (fdi, off, 1 + r(2 * PAGE), r(256))
        if name == "pread":
            return name, (fdi, off, r(2 * PAGE))
        if ri is None:
            return None
        if name == "pwrite_from":
            return name, (fdi, ri, first, 1 + r(2 * PAGE), off, r(2))
        return name, (fdi, ri, first, 1 + r(2 * PAGE), off)
    if target == "U":
        if not st.U or ri is None:
            return None
        k = r(len(st.U))
        if name == "uffd_copy":
            return name, (k, ri, first)
        if name == "uffd_zeropage":
            return name, (k, ri, first, 1 + r(3))
        if name == "uffd_wp":
            return name, (k, ri, first, 1 + r(3), r(2))
        if name == "uffd_unregister":
            return name, (k, ri)
        return name, (k,)
    if ri is None:
        return None
    count = 1 + r(4)
    if name == "mmap_fixed":
        return name, (pi, ri, first, count, PROTS[r(5)])
    if name in ("munmap", "touch", "pagemap"):
        return name, (pi, ri, first, count) + ((r(2),) if name == "touch" else ())
    if name == "mprotect":
        return name, (pi, ri, first, count, PROTS[r(5)])
    if name == "madvise":
        return name, (pi, ri, first, count, ADVICE[r(len(ADVICE))])
    if name == "mremap":
        flags = (0, C.MREMAP_MAYMOVE, C.MREMAP_MAYMOVE)[r(3)]
        return name, (pi, ri, first, count, 1 + r(6), flags)
    if name in ("write", "proc_mem_write"):
        return name, (pi, ri, first, r(PAGE), 1 + r(PAGE + 64), r(256))
    if name in ("read", "proc_mem_read"):
        return name, (pi, ri, first, r(PAGE), 1 + r(PAGE + 64))
    if name == "gup":
        flags = (0, FOLL_WRITE, FOLL_LONGTERM, FOLL_WRITE | FOLL_LONGTERM)[r(4)]
        return name, (pi, ri, first, count, flags, r(2))
    if name == "vmsplice":
        return name, (pi, ri, first, 1 + r(2 * PAGE))
    if name == "uffd":
        return name, (pi, ri, r(2), r(2))
    raise AssertionError(name)


def _outcome(ret):
    if isinstance(ret, (bytes, bytearray)):
        return hashlib.blake2b(bytes(ret), digest_size=8).hexdigest()
    return repr(ret)


def step(st, name, args):
    """Apply one op; returns its outcome text or raises Defect."""
    try:
        out = _outcome(OPS[name](st, *args))
    except _Skip:
        out = "skip"
    except BaseException as e:
        if isinstance(e, KeyboardInterrupt):
            raise
        d = classify(e, name, wrong_type=False)
        if d is not None:
            raise d from None
        out = f"{type(e).__name__}:{getattr(e, 'errno', '')}"
    verify(st.m, name)
    return out


def config(seed, versions=None):
    """Version and machine size of a seed (deterministic)."""
    versions = versions or mmemu.VERSIONS
    rng = random.Random(seed * 7919 + 1)
    kernel = versions[seed % len(versions)]
    memory = rng.choice((64, 96, 128, 256))
    swap = rng.choice((0, 0, 32, 128))
    return kernel, memory, swap


def run_seed(seed, nops, versions=None, record=False):
    """Run nops generated ops. Returns (digest, ops made, record); raises
    Defect with .seed, .index, .record (the ops up to the failing one)."""
    kernel, memory, swap = config(seed, versions)
    rng = random.Random(seed)
    st = State(kernel, memory, swap, seed)
    h = hashlib.blake2b(digest_size=16)
    rec = []
    done = 0
    while done < nops:
        op = generate(rng, st)
        if op is None:
            continue
        name, args = op
        rec.append(op)
        try:
            out = step(st, name, args)
        except Defect as e:
            e.seed, e.index, e.record, e.config = seed, done, rec, (kernel, memory, swap)
            raise
        h.update(f"{name}{args}{out};".encode())
        done += 1
        if not record and len(rec) > 4096:
            rec = rec[-1:]          # keep memory flat in long runs; replay uses the seed then
    return h.hexdigest(), done, rec


def replay(cfg, seed, ops):
    """Run a recorded op list on a fresh state; the Defect it raises, or None."""
    kernel, memory, swap = cfg
    st = State(kernel, memory, swap, seed)
    for name, args in ops:
        try:
            step(st, name, args)
        except Defect as e:
            return e
    return None


def shrink(seed, nops_failed, versions=None, budget=20.0):
    """The failing prefix of `seed`, then delta-debugged within `budget`
    seconds: the shortest op list that still raises the same defect."""
    try:
        run_seed(seed, nops_failed + 1, versions, record=True)
        return None
    except Defect as e:
        cfg, ops, key = e.config, e.record, e.key
    same = lambda d: d is not None and d.key == key   # noqa: E731
    deadline = time.time() + budget
    n = 2
    while len(ops) >= 2 and time.time() < deadline:
        chunk = max(1, len(ops) // n)
        removed = False
        for i in range(0, len(ops), chunk):
            trial = ops[:i] + ops[i + chunk:]
            if trial and same(replay(cfg, seed, trial)):
                ops, removed = trial, True
                n = max(n - 1, 2)
                break
            if time.time() > deadline:
                break
        if not removed:
            if chunk == 1:
                break
            n = min(len(ops), n * 2)
    d = replay(cfg, seed, ops)
    return cfg, ops, d


def repro_text(seed, cfg, ops):
    kernel, memory, swap = cfg
    lines = ["from tests.robust.runner import State, step",
             f"st = State({kernel!r}, {memory}, {swap}, {seed})"]
    lines += [f"step(st, {name!r}, {args!r})" for name, args in ops]
    return "\n".join(lines)


def run_many(seeds, nops, versions=None, on_defect=None, shrink_budget=20.0):
    """Run each seed for nops ops. Returns stats with per-version op counts
    and the defects (deduplicated) with their shrunk reproductions."""
    stats = {"ops": 0, "runs": 0, "violations": 0, "errors": 0, "per_version": {}, "defects": {}}
    for seed in seeds:
        kernel = config(seed, versions)[0]
        try:
            _, done, _ = run_seed(seed, nops, versions)
        except Defect as e:
            done = e.index + 1
            stats["violations" if e.kind == "corrupted" else "errors"] += 1
            if e.key not in stats["defects"]:
                res = shrink(seed, e.index, versions, shrink_budget)
                text = repro_text(seed, res[0], res[1]) if res else f"run_seed({seed}, {e.index + 1})"
                stats["defects"][e.key] = {"kind": e.kind, "method": e.method, "detail": e.detail,
                                           "frame": e.frame, "kernel": kernel, "seed": seed,
                                           "index": e.index, "repro": text,
                                           "nops": len(res[1]) if res else e.index + 1}
                if on_defect:
                    on_defect(stats["defects"][e.key])
        stats["ops"] += done
        stats["runs"] += 1
        stats["per_version"][kernel] = stats["per_version"].get(kernel, 0) + done
    return stats
