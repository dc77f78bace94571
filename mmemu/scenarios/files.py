"""File-backed (shmem) and swapped memory scenarios.

Catalogue ids and per-era outcomes are ../shared/reference/scenarios.md's:
S20-S22 on memfd, S45(a), S48 (B8), S49 (B9), S64 without uffd, S78
(B19, swapcache part), S83; plus probes of hole punching, truncation and
fault-around (semantics.md 10, 11).
"""
from .. import constants as C
from ..errors import Sigbus
from . import ScenarioSkip, check, scenario
from .cow import nonanon_ro_pin

PAGE = C.PAGE_SIZE
RW = C.PROT_READ | C.PROT_WRITE
RO = C.PROT_READ
PRIV = C.MAP_PRIVATE | C.MAP_ANONYMOUS
ONES = b"\x01" * PAGE
FFS = b"\xff" * PAGE


def _needs_soft_dirty(policy):
    # A kernel config (a host built without it), not a version: a skip, not n/a.
    return None if policy.soft_dirty else "CONFIG_MEM_SOFT_DIRTY is off: clear_refs 4 does nothing"


def _memfd(p, pages, fill=None):
    fd = p.memfd_create("scenario")
    p.ftruncate(fd, pages * PAGE)
    if fill is not None:
        p.pwrite(fd, fill * (PAGE // len(fill)) * pages, 0)
    return fd


def _swapped(p, addr, npages=1):
    p.madvise(addr, npages * PAGE, C.MADV_PAGEOUT)
    if not all(p.pagemap(addr + i * PAGE).swapped for i in range(npages)):
        raise ScenarioSkip("MADV_PAGEOUT did not swap the pages out (no swap?)")


# ---- Part C on memfd --------------------------------------------------------

def _memfd_pair(p):
    fd = _memfd(p, 1)
    mem = p.mmap(0, PAGE, RW, C.MAP_PRIVATE, fd, 0)
    smem = p.mmap(0, PAGE, RO, C.MAP_SHARED, fd, 0)
    p.read(mem, 1)
    p.read(smem, 1)
    return mem, smem


@scenario("S20m", "cow-nonanon-basic", "Basic COW", backing="memfd")
def memfd_basic(m):
    """A write to a private file mapping must COW into anon: the file and its
    shared mapping stay untouched."""
    p = m.spawn()
    mem, smem = _memfd_pair(p)
    check(p.pagemap(mem).pfn == p.pagemap(smem).pfn, "both mappings should map the cache page")
    p.write(mem, FFS)
    check(p.read(smem, PAGE) == bytes(PAGE), "Other mapping modified")
    check(not p.pagemap(mem).file_shared, "the written private page should be anon now")
    m.check()


@scenario("S21m", "cow-nonanon-ro-pin", "R/O longterm GUP pin", backing="memfd",
          bug="B20", fails="5.7,5.9-6.1")
def memfd_ro_pin(m):
    """If the long-term pin takes the page-cache page, the private write COWs away from it."""
    nonanon_ro_pin(m, False, _memfd_pair)


@scenario("S22m", "cow-nonanon-ro-pin-fast", "R/O longterm GUP-fast pin", backing="memfd",
          bug="B20", fails="5.7,5.9-6.1")
def memfd_ro_pin_fast(m):
    """As S21 through GUP-fast (which has no VMA and falls back to unshare)."""
    nonanon_ro_pin(m, True, _memfd_pair)


@scenario("S45a", "forced-cow-populates-pagecache",
          "read-GUP (O_DIRECT write) of a R/O private file mapping must not COW", bug="B4", fails="5.8")
def forced_cow_pagecache(m):
    """5.8 turns the read GUP into a write: the file page is replaced by an anon copy
    even though the VMA is PROT_READ (FOLL_COW)."""
    p = m.spawn()
    fd = _memfd(p, 1, b"A")
    F = p.mmap(0, PAGE, RO, C.MAP_PRIVATE, fd, 0)
    p.read(F, 1)
    pfn, rss = p.pagemap(F).pfn, p.rss_anon
    ref = p.get_user_pages(F, 1, 0)              # the GUP of O_DIRECT write(2) from F
    check(ref.read(0, 4) == b"AAAA", "GUP must see the file's bytes")
    ref.release()
    m.check()
    e = p.pagemap(F)
    check(e.file_shared and e.pfn == pfn and p.rss_anon == rss,
          "the read GUP replaced the page-cache page by a private anon copy")


# ---- swap ------------------------------------------------------------------

@scenario("S48", "odirect-read-lost-update", "O_DIRECT read + concurrent write + clear_refs",
          bug="B8", fails="5.9-5.18", needs=_needs_soft_dirty)
def odirect_lost_update(m):
    """The critical interleaving of Andrea Arcangeli's reproducer, in order: if
    the write fault copies the page GUP handed to the DMA, the read data is lost."""
    p = m.spawn()
    B = p.mmap(0, PAGE, RW, PRIV)
    p.write(B, bytes(PAGE))
    dma = p.get_user_pages(B, 1, C.FOLL_WRITE)   # O_DIRECT read: FOLL_WRITE|FOLL_GET
    p.clear_refs(C.CLEAR_REFS_SOFT_DIRTY)        # T3 write-protects B
    # T2, on another CPU, writes another byte of the page (on T1's CPU a
    # writable TLB entry could skip the fault: clear_refs flushed none before 5.12, B10).
    p.thread(cpu=1 % m.ncpus).write(B + PAGE - 1, b"x")
    dma.write(0, b"A" * 512)                      # the DMA completes into the GUP page
    dma.release()
    m.check()
    check(p.read(B, 512) == b"A" * 512, "the O_DIRECT read data was lost")


@scenario("S49", "pinned-page-swap-roundtrip", "Pinned page swapped out and back in",
          bug="B9", fails="5.9-5.10")
def pinned_swap_roundtrip(m):
    """If PAGEOUT unmaps a pinned page, the next write after swap-in copies it away from the pin."""
    p = m.spawn()
    P = p.mmap(0, PAGE, RW, PRIV)
    p.write(P, ONES)
    pin = p.pin_user_pages(P, 1, C.FOLL_WRITE | C.FOLL_LONGTERM)
    p.madvise(P, PAGE, C.MADV_PAGEOUT)
    unmapped = p.pagemap(P).swapped
    check(unmapped == (not m.policy.swapout_skip_pinned and not m.policy.anon_exclusive),
          "a pinned page is unmapped for swap-out only before 5.11")
    p.read(P, 1)
    p.write(P, FFS)
    m.check()
    check(pin.read(0, PAGE) == p.read(P, PAGE), "Longterm R/W pin is not reliable")
    pin.release()


@scenario("S78", "swapin-exclusive-reuse", "Swap-in exclusivity and spurious copies",
          bug="B19", fails="5.9-5.17")
def swapin_reuse(m):
    """If the swapcache reference counts as a user, the owner's own page is copied on write."""
    p = m.spawn()
    P = p.mmap(0, PAGE, RW, PRIV)
    p.write(P, ONES)
    _swapped(p, P)
    check(p.read(P, 1) == b"\x01", "swap-in lost the contents")
    pfn = p.pagemap(P).pfn
    f0 = p.minflt
    p.write(P, b"\x02")
    m.check()
    check(p.pagemap(P).pfn == pfn, "the write after swap-in copied the process's own page")
    if m.policy.swapin_read_writable:
        # c18160dba5ff (6.11): the exclusive swap pte maps the page writable at
        # a read swap-in. 5.19-6.10 (1493a1913e34) keep exclusivity but map
        # R/O on a read fault, so the write faults once and reuses the page.
        check(p.minflt == f0, "6.11+: the write after an exclusive swap-in should not fault")
    elif m.policy.anon_exclusive:
        check(p.minflt == f0 + 1, "5.19-6.10: the write after a read swap-in faults once")


@scenario("S78f", "swapin-after-fork-copies", "Swap entry shared by fork: swap-in is not exclusive")
def swapin_after_fork(m):
    """A swap entry duplicated by fork is no longer exclusive: the write must copy."""
    p = m.spawn()
    P = p.mmap(0, PAGE, RW, PRIV)
    p.write(P, ONES)
    _swapped(p, P)
    c = p.fork()
    check(c.read(P, PAGE) == ONES and p.read(P, 1) == b"\x01", "both must read the swapped data")
    pfn = p.pagemap(P).pfn
    p.write(P, FFS)
    m.check()
    check(c.read(P, PAGE) == ONES, "Leak from parent into child")
    check(p.pagemap(P).pfn != pfn, "the parent's write must copy the page the child maps")


# ---- soft-dirty --------------------------------------------------------------

@scenario("S83", "soft-dirty-basics", "Soft-dirty basics", needs=_needs_soft_dirty)
def soft_dirty_basics(m):
    """clear_refs(4) cleans; writes re-dirty; new VMAs and moved ptes read dirty."""
    p = m.spawn()
    P = p.mmap(0, 2 * PAGE, RW, PRIV)
    check(p.pagemap(P).soft_dirty, "a new VMA reads soft-dirty (VM_SOFTDIRTY)")
    p.clear_refs(C.CLEAR_REFS_SOFT_DIRTY)
    check(not p.pagemap(P).soft_dirty, "clear_refs must clean the VMA")
    p.write(P, b"x")
    p.read(P + PAGE, 1)
    check(p.pagemap(P).soft_dirty, "a write must set soft-dirty")
    check(not p.pagemap(P + PAGE).soft_dirty, "a read (zero page) must not")
    fd = _memfd(p, 1)
    S = p.mmap(0, PAGE, RW, C.MAP_SHARED, fd, 0)
    p.clear_refs(C.CLEAR_REFS_SOFT_DIRTY)
    p.read(S, 1)
    p.write(S, b"y")
    check(p.pagemap(S).soft_dirty, "writenotify (64e455079e1b) must catch the first write")
    p.clear_refs(C.CLEAR_REFS_SOFT_DIRTY)
    Q = p.mremap(P, 2 * PAGE, 2 * PAGE, C.MREMAP_MAYMOVE | C.MREMAP_FIXED, P + 64 * PAGE)
    check(p.pagemap(Q).soft_dirty and p.pagemap(Q + PAGE).soft_dirty,
          "mremap to a new place reads soft-dirty")
    check(p.read(Q, 1) == b"x", "mremap must move the page, not copy or drop it")
    m.check()


@scenario("S83p", "soft-dirty-pinned-skip", "clear_refs keeps maybe-pinned ptes writable (5.11+)",
          needs=_needs_soft_dirty)
def soft_dirty_pinned(m):
    """9348b73c2e1b: pinned ptes are skipped, so they always read soft-dirty."""
    p = m.spawn()
    P = p.mmap(0, PAGE, RW, PRIV)
    p.write(P, b"x")
    pin = p.pin_user_pages(P, 1, C.FOLL_WRITE | C.FOLL_LONGTERM)
    p.clear_refs(C.CLEAR_REFS_SOFT_DIRTY)
    check(p.pagemap(P).soft_dirty == bool(m.policy.clear_refs_skip_pinned),
          "clear_refs and pinned ptes: wrong soft-dirty state for the era")
    pin.release()
    m.check()


# ---- shmem page cache --------------------------------------------------------

@scenario("S64n", "shmem-cache-semantics", "shmem: DONTNEED keeps the cache, REMOVE empties it")
def shmem_cache(m):
    """For shmem, data lives in the page cache: zapping ptes loses nothing; a hole loses it."""
    p = m.spawn()
    fd = _memfd(p, 2)
    S = p.mmap(0, 2 * PAGE, RW, C.MAP_SHARED, fd, 0)
    p.pwrite(fd, b"a", 0)
    check(p.read(S, 1) == b"a", "the syscall write must be visible through the mapping")
    p.write(S + PAGE, b"b")
    p.madvise(S, 2 * PAGE, C.MADV_DONTNEED)
    check(p.read(S + PAGE, 1) == b"b", "DONTNEED of a shared mapping must keep the cache data")
    p.madvise(S + PAGE, PAGE, C.MADV_REMOVE)
    check(p.read(S + PAGE, 1) == b"\0" and p.pread(fd, 1, PAGE) == b"\0",
          "MADV_REMOVE must punch the page out of the file")
    check(p.read(S, 1) == b"a", "MADV_REMOVE of one page must leave the other")
    m.check()


@scenario("S58n", "shmem-punch-hole", "Hole punch: shared sees the hole, private COW copies survive")
def punch_hole(m):
    """unmap_mapping_range(even_cows=false) then truncation: the private data is not the file's."""
    p = m.spawn()
    fd = _memfd(p, 4, b"F")
    S = p.mmap(0, 4 * PAGE, RW, C.MAP_SHARED, fd, 0)
    V = p.mmap(0, 4 * PAGE, RW, C.MAP_PRIVATE, fd, 0)
    p.write(V + PAGE, b"P")                     # a private COW copy
    check(p.read(V + 2 * PAGE, 1) == b"F", "the private mapping reads the file")
    c = p.fork()
    p.fallocate(fd, C.FALLOC_FL_PUNCH_HOLE | C.FALLOC_FL_KEEP_SIZE, PAGE, 2 * PAGE)
    check(p.read(S + PAGE, 1) == b"\0" and c.read(S + 2 * PAGE, 1) == b"\0",
          "every shared mapping must read the hole as zeros")
    check(p.read(V + PAGE, 1) == b"P" and c.read(V + PAGE, 1) == b"P",
          "private COW copies must survive a hole punch")
    check(p.read(V + 2 * PAGE, 1) == b"\0", "a not-yet-COWed private page reads the hole")
    check(p.read(S, 1) == b"F" and p.read(S + 3 * PAGE, 1) == b"F", "pages outside the hole stay")
    m.check()


@scenario("S11t", "shmem-truncate", "Truncation: SIGBUS past EOF, private copies past EOF go too")
def truncate(m):
    """Truncate zaps even private COW copies past the new EOF (even_cows)."""
    p = m.spawn()
    fd = _memfd(p, 3, b"T")
    S = p.mmap(0, 3 * PAGE, RW, C.MAP_SHARED, fd, 0)
    V = p.mmap(0, 3 * PAGE, RW, C.MAP_PRIVATE, fd, 0)
    p.write(V + 2 * PAGE, b"P")
    p.ftruncate(fd, PAGE + 100)
    check(p.read(S + PAGE + 99, 2) == b"T\0", "bytes past a non-aligned EOF read zero")
    for addr in (S + 2 * PAGE, V + 2 * PAGE):
        try:
            p.read(addr, 1)
        except Sigbus:
            continue
        raise AssertionError("an access past EOF must raise SIGBUS")
    check(p.read(V, 1) == b"T", "the part below EOF stays")
    m.check()


@scenario("S10f", "fault-around-window", "Fault-around maps cached neighbours, only into empty slots")
def fault_around(m):
    """do_fault_around: the aligned window of fault_around_pages around the
    fault, clipped to the VMA and the page table, maps only cached pages."""
    n = m.policy.fault_around_pages
    p = m.spawn()
    npages = 3 * n
    fd = _memfd(p, npages)
    hole = n + 2
    for i in range(npages):
        if i != hole:
            p.pwrite(fd, b"c", i * PAGE)          # cached, except one hole
    S = p.mmap(0, npages * PAGE, RO, C.MAP_SHARED, fd, 0)
    fault = S + (n + 4) * PAGE
    p.read(fault, 1)
    span = n * PAGE
    lo = max(S, fault // span * span, fault // (512 * PAGE) * (512 * PAGE))
    hi = min(S + npages * PAGE, fault // span * span + span, (fault // (512 * PAGE) + 1) * 512 * PAGE)
    for i in range(npages):
        va = S + i * PAGE
        want = va == fault or (lo <= va < hi and i != hole)
        check(p.pagemap(va).present == want,
              f"page {i}: fault-around window [{(lo - S) // PAGE}, {(hi - S) // PAGE}) "
              f"expected {'mapped' if want else 'not mapped'}")
    m.check()


@scenario("S6f", "madv-free-lazy", "MADV_FREE: clean pages go at reclaim, re-written ones stay")
def madv_free(m):
    """A page written after MADV_FREE must keep its data through reclaim; the
    others read zeros after reclaim (semantics.md 6.4: reclaim is explicit)."""
    p = m.spawn()
    b = p.mmap(0, 4 * PAGE, RW, PRIV)
    p.write(b, b"x" * 4 * PAGE)
    p.madvise(b, 4 * PAGE, C.MADV_FREE)
    check(all(p.pagemap(b + i * PAGE).present for i in range(4)), "MADV_FREE keeps pages until reclaim")
    p.write(b + PAGE, b"y")
    m.reclaim()
    check(p.read(b + PAGE, 2) == b"yx", "a page written after MADV_FREE lost its data")
    check(p.read(b, 1) == b"\0" and p.read(b + 3 * PAGE, 1) == b"\0", "clean lazy-free pages must be dropped")
    m.check()


@scenario("S12p", "memory-pressure-swap", "Memory pressure: faults reclaim to swap, contents survive")
def memory_pressure(m):
    """When frames run out, direct reclaim swaps pages mapped once and the fault proceeds."""
    if m.swap == 0:
        raise ScenarioSkip("no swap device")
    p = m.spawn()
    npages = m.memory // PAGE + 256
    a = p.mmap(0, npages * PAGE, RW, PRIV)
    for i in range(npages):
        p.touch(a + i * PAGE, 1, write=True, value=i + 1)
    check(sum(1 for i in range(0, npages, 7) if p.pagemap(a + i * PAGE).swapped) > 0,
          "nothing reached swap although the working set exceeds memory")
    for i in range(0, npages, 7):
        p.read(a + i * PAGE, 1)                   # back in (other pages go out)
        check(p.versions(a + i * PAGE, 1)[0] == i + 1, f"page {i} changed across swap")
    m.check()
