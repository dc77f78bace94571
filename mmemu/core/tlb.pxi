# Per-CPU TLBs: direct-mapped caches of (mm, virtual page) -> pfn | write | dirty.
# Entries are tagged with the mm id (PCID-like), so switching mm never
# flushes. A pte change that removes rights reaches a CPU only through an
# explicit flush; callers flush at the point the kernel does (ptep_clear_flush,
# the end of an mmu_gather, flush_tlb_mm after fork), which for now is always
# at the end of the operation. Between a walk and its flush, other threads
# may run (core/sched.pxi): their CPUs still use the stale entries.

cdef enum:
    TLB_VALID_SHIFT = 63
    TLB_MM_WORDS = 1024         # words of a CPU's tlb_mm_seen: a bit per mm id (MM_MAX_MM 65535)


cdef inline void tlb_mm_mark(engine_t *e, int64_t slot, uint64_t tag) noexcept nogil:
    """An entry of mm (tag's low 16 bits) is being put in TLB slot `slot`:
    that CPU may now hold translations of it (the kernel's mm_cpumask). A
    bit is cleared only when a flush leaves the mm nothing there."""
    e.tlb_mm_seen[(slot // MM_TLB_ENTRIES) * TLB_MM_WORDS + <int64_t>((tag & 0xFFFF) >> 6)] |= 1ULL << (tag & 63)


cdef inline bint tlb_mm_maybe(engine_t *e, int cpu, int32_t mm) noexcept nogil:
    return (e.tlb_mm_seen[<int64_t>cpu * TLB_MM_WORDS + (mm >> 6)] >> (mm & 63)) & 1


cdef inline uint64_t tlb_tag_of(int32_t mm, uint64_t vpn) noexcept nogil:
    return (vpn << 16) | <uint64_t>mm | (1ULL << TLB_VALID_SHIFT)


cdef inline int64_t tlb_slot(int cpu, int32_t mm, uint64_t vpn) noexcept nogil:
    cdef uint64_t h = vpn ^ (vpn >> 10) ^ (<uint64_t>mm * 0x9E37ULL)
    return <int64_t>cpu * MM_TLB_ENTRIES + <int64_t>(h & (MM_TLB_ENTRIES - 1))


cdef void tlb_flush_page(engine_t *e, int32_t mm, uint64_t va) noexcept nogil:
    cdef uint64_t vpn = va >> MM_PAGE_SHIFT
    cdef uint64_t tag = tlb_tag_of(mm, vpn)
    cdef int cpu
    cdef int64_t s
    for cpu in range(e.ncpus):
        s = tlb_slot(cpu, mm, vpn)
        if e.tlb_tag[s] == tag:
            e.tlb_tag[s] = 0
    stat_add(e, MM_STAT_TLB_FLUSH, 1)


cdef void tlb_flush_pmd_block(engine_t *e, int32_t mm, uint64_t vpn0) noexcept nogil:
    """Drop every CPU's entries for the HPAGE_PMD_NR pages from vpn0
    (PMD-aligned), exactly what tlb_flush_page on each would drop, without
    counting flushes. With tlb_slot's hash and 1024 entries, such a block's
    pages share vpn >> 10, so they all fall in one half of each CPU's TLB,
    and an entry only ever sits at its own page's slot: an entry of that
    half tagged with mm and a page of the block is one of theirs. One
    sequential pass of 512 masked compares per CPU instead of 512 hashed
    probes (the probes were most of a PMD split)."""
    cdef uint64_t key, tag0, block_mask = ~(<uint64_t>(HPAGE_PMD_NR - 1) << 16)
    cdef uint64_t *tags
    cdef int64_t j, s
    cdef int cpu
    if MM_TLB_ENTRIES != 1024 or HPAGE_PMD_NR != 512 or vpn0 & 511:
        for j in range(HPAGE_PMD_NR):
            tag0 = tlb_tag_of(mm, vpn0 + <uint64_t>j)
            for cpu in range(e.ncpus):
                s = tlb_slot(cpu, mm, vpn0 + <uint64_t>j)
                if e.tlb_tag[s] == tag0:
                    e.tlb_tag[s] = 0
        return
    key = (vpn0 >> 10) ^ (<uint64_t>mm * 0x9E37ULL)     # tlb_slot's hash, less the page's low 10 bits
    tag0 = tlb_tag_of(mm, vpn0)
    for cpu in range(e.ncpus):
        if not tlb_mm_maybe(e, cpu, mm):
            continue                    # no entry of the mm on that CPU
        tags = e.tlb_tag + <int64_t>cpu * MM_TLB_ENTRIES + <int64_t>((vpn0 ^ key) & 512)
        for j in range(0, 512, 4):      # unrolled: the loop's own instructions were half of it
            if (tags[j] & block_mask) == tag0:
                tags[j] = 0
            if (tags[j + 1] & block_mask) == tag0:
                tags[j + 1] = 0
            if (tags[j + 2] & block_mask) == tag0:
                tags[j + 2] = 0
            if (tags[j + 3] & block_mask) == tag0:
                tags[j + 3] = 0


cdef void tlb_flush_range(engine_t *e, int32_t mm, uint64_t start, uint64_t end) noexcept nogil:
    cdef uint64_t va, vpn, t
    cdef int64_t s, total
    if end <= start:
        return
    if ((end - start) >> MM_PAGE_SHIFT) <= MM_TLB_ENTRIES:
        va = start
        while va < end:
            tlb_flush_page(e, mm, va)
            va += MM_PAGE_SIZE
        return
    # A large range: scan every entry instead (flush_tlb_range's full-flush fallback).
    total = <int64_t>e.ncpus * MM_TLB_ENTRIES
    for s in range(total):
        t = e.tlb_tag[s]
        if t != 0 and <int32_t>(t & 0xFFFF) == mm:
            vpn = (t & ~(1ULL << TLB_VALID_SHIFT)) >> 16
            if (vpn << MM_PAGE_SHIFT) >= start and (vpn << MM_PAGE_SHIFT) < end:
                e.tlb_tag[s] = 0
    stat_add(e, MM_STAT_TLB_FLUSH, 1)


cdef void tlb_flush_mm(engine_t *e, int32_t mm) noexcept nogil:
    cdef int64_t s, total = <int64_t>e.ncpus * MM_TLB_ENTRIES
    cdef uint64_t t
    cdef int cpu
    e.mms[mm].flags &= ~MMF_TLB_STALE
    for s in range(total):
        t = e.tlb_tag[s]
        if t != 0 and <int32_t>(t & 0xFFFF) == mm:
            e.tlb_tag[s] = 0
    for cpu in range(e.ncpus):          # no CPU holds an entry of it now
        e.tlb_mm_seen[<int64_t>cpu * TLB_MM_WORDS + (mm >> 6)] &= ~(1ULL << (mm & 63))
    stat_add(e, MM_STAT_TLB_FLUSH, 1)


# ---- mmu_gather: flush first, then release the pages ---------------------

cdef inline void gather_init(gather_t *g, int32_t mm, uint64_t start, uint64_t end) noexcept nogil:
    g.pfns = NULL
    g.n = 0
    g.cap = 0
    g.start = start
    g.end = end
    g.mm = mm
    g.need_flush = 0
    g.failed = 0


cdef inline int gather_add(engine_t *e, gather_t *g, int64_t pfn) noexcept nogil:
    # Inline: zap's per-page loop calls it; growing is the rare, outlined case.
    if g.n == g.cap and gather_grow(e, g, pfn) < 0:
        return -1
    g.pfns[g.n] = pfn
    g.n += 1
    return 0


cdef int gather_grow(engine_t *e, gather_t *g, int64_t pfn) noexcept nogil:
    if grow_i64(&g.pfns, &g.cap, g.n + 1) < 0:
        # No room to defer: flush now and drop this page at once.
        tlb_flush_range(e, g.mm, g.start, g.end)
        put_page(e, pfn, 1)
        g.failed = 1
        return -1
    return 0


cdef void gather_finish(engine_t *e, gather_t *g) noexcept nogil:
    cdef int64_t i
    if g.need_flush:
        tlb_flush_range(e, g.mm, g.start, g.end)
    for i in range(g.n):
        # free_pages_and_swap_cache(): an unmapped swapcache folio leaves the
        # swapcache when no swap entry still needs it.
        if e.fflags[g.pfns[i]] & PG_SWAPCACHE and swapcache_unmapped(e, g.pfns[i]):
            try_to_free_swap(e, g.pfns[i])
        put_page(e, g.pfns[i], 1)
    free(g.pfns)
    g.pfns = NULL
    g.n = 0
