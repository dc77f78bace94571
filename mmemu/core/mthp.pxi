# Multi-size THP for anonymous memory ("mTHP", large anon folios):
# 19eaf44954df (6.8) lets do_anonymous_page allocate a folio of any order
# the per-size sysfs files enable (hugepages-<size>kB/enabled), mapped by
# ptes. The folio is naturally aligned; its order is on every page of it
# (mthp_order: `mapping`, unused by anon pages), so folio_of and folio_nr find the head and the size
# from any page. Everything after the fault - COW, fork, partial unmaps and
# the deferred split queue, split_folio, pins - is the PTE-mapped large
# folio code of core/huge.pxi, which takes the folio's size from folio_nr.

cdef enum:
    MTHP_PTE_ORDERS = (1 << 9) - 1      # BIT(PMD_ORDER) - 1: the orders the pte fault path allocates


cdef inline uint32_t thp_anon_orders(engine_t *e, uint64_t vm_flags) noexcept nogil:
    """thp_vma_allowable_orders()'s sysfs part for an anon VMA (6.12
    include/linux/huge_mm.h): the orders set "always", the "madvise" ones
    in a VM_HUGEPAGE VMA, the "inherit" ones when the top-level enabled
    allows (always, or madvise in a VM_HUGEPAGE VMA). Bit 9 is the PMD
    size, "inherit" by default, which keeps the pre-6.8 rule."""
    cdef uint32_t mask = e.mthp_always
    if vm_flags & VM_HUGEPAGE:
        mask |= e.mthp_madvise
    if e.thp_enabled == 2 or (e.thp_enabled == 1 and vm_flags & VM_HUGEPAGE):
        mask |= e.mthp_inherit
    return mask


cdef int64_t folio_alloc_mthp(engine_t *e, int order, uint16_t flags) noexcept nogil:
    """An anon folio of 2^order pages (2 <= order < 9; a shmem mTHP's from
    order 1, core/shmem.pxi shmem_alloc_mthp, flags PG_FILE), naturally aligned,
    refcount 1 on its head, zeroed: carved from the current 2 MiB block (the
    frames skipped to align go to the order-0 list), a fresh block when it
    has no room left. -1 when no block is free (the fault tries a smaller
    order: no compaction here) or the frames left are owed to page tables.
    A zoned machine carves from a block of the zone list the zonelist walk
    picks (core/zones.pxi zone_mthp_carve; any node, as vma_alloc_folio
    for an order below the PMD's falls back like a base page)."""
    cdef int64_t nr = <int64_t>1 << order, start, p, blk
    if e.zoned:
        start = zone_take(e, order)
        if start < 0:
            return -1
    else:
        if e.nr_free - nr < e.nr_pgtable + 1:
            return -1
        start = (e.mcarve + nr - 1) & ~(nr - 1)
        if e.mcarve_end == 0 or start + nr > e.mcarve_end:
            blk = hblock_take(e)            # core/huge.pxi
            if blk < 0:
                return -1
            for p in range(e.mcarve, e.mcarve_end):
                freelist_push(e, p)         # the old block's rest: free already, nr_free stays
            e.mcarve, e.mcarve_end = blk, blk + HPAGE_PMD_NR
            start = blk
        for p in range(e.mcarve, start):
            freelist_push(e, p)
        e.mcarve = start + nr
    e.nr_free -= nr
    flags |= PG_USED | PG_UPTODATE
    # A block's frames are clean (never used, or cleared when freed): only
    # the flags and the order are written.
    for p in range(start, start + nr):
        e.fflags[p] = flags | PG_TAIL
        e.mapping[p] = <uint16_t>order
        e.index[p] = 0
        e.refcount[p] = 0
        e.mapcount[p] = 0
        e.version[p] = 0
    e.fflags[start] = flags | PG_HEAD
    e.refcount[start] = 1
    e.nr_large += 1
    return start


cdef void mthp_free(engine_t *e, int64_t head) noexcept nogil:
    """The last reference to an mTHP (anon, or a shmem one) went
    (free_unref_folios): its pages go
    to the order-0 free list (no buddy merging here, so a later mTHP fault
    carves a fresh block)."""
    cdef int64_t nr = folio_nr(e, head), p
    p = head + nr - 1
    while p >= head:
        if e.fflags[p] & PG_BYTES:
            bytes_release(e, <int64_t>e.version[p])
        e.fflags[p] = 0
        e.refcount[p] = 0
        e.mapcount[p] = 0
        e.mapping[p] = 0
        e.index[p] = 0
        if e.forder != NULL:
            e.forder[p] = 0
        if e.zoned:
            zone_frame_put(e, p)        # core/zones.pxi
        else:
            freelist_push(e, p)
        p -= 1
    e.nr_large -= 1
    e.nr_free += nr


cdef inline bint pte_range_none(uint64_t *t, int64_t nr) noexcept nogil:
    """pte_range_none(): every entry empty (a marker is not)."""
    cdef int64_t i
    for i in range(nr):
        if t[i] != 0:
            return False
    return True


cdef int do_anonymous_mthp(engine_t *e, mm_t *mm, int cpu, mm_vma_t *vma, uint64_t va,
                           uint64_t *ptep, bint wp_marker) noexcept nogil:
    """alloc_anon_folio() and the large-folio half of do_anonymous_page()
    (6.12) for a write fault on an empty pte: the highest order below the
    PMD's that the per-size settings allow for this VMA (thp_anon_orders),
    whose naturally aligned range lies inside the VMA
    (thp_vma_suitable_orders) and whose ptes are all empty
    (pte_range_none), and that can be allocated, falling back order by
    order. Not in a userfaultfd-armed VMA (per-page fault fidelity). The
    folio is mapped by set_ptes: every pte young, dirty and writable if the
    VMA may be written, each page mapped once and PageAnonExclusive
    (folio_add_new_anon_rmap, RMAP_EXCLUSIVE), a folio reference per page,
    rss by the folio's size. Returns 0, or -1 for the order-0 path."""
    cdef uint32_t orders
    cdef int order
    cdef int64_t nr, head, i
    cdef uint64_t addr, entry
    cdef uint64_t *base = ptep - ((va >> MM_PAGE_SHIFT) & 511)
    if wp_marker or vma.flags & (VM_UFFD_MISSING | VM_UFFD_WP | VM_UFFD_MINOR):
        return -1                       # userfaultfd_armed()
    if vma.file != 0 or vma.flags & (VM_SHARED | VM_NOHUGEPAGE | VM_HUGETLB | VM_PFNMAP | VM_MIXEDMAP | VM_IO):
        return -1
    orders = thp_anon_orders(e, vma.flags) & MTHP_PTE_ORDERS & ~(<uint32_t>(1 << MTHP_MIN_ORDER) - 1)
    if orders == 0:
        return -1
    head = -1
    order = HPAGE_PMD_ORDER - 1
    while order >= MTHP_MIN_ORDER:
        if (orders >> order) & 1:
            nr = <int64_t>1 << order
            addr = va & ~((<uint64_t>nr << MM_PAGE_SHIFT) - 1)
            if addr >= vma.start and addr + (<uint64_t>nr << MM_PAGE_SHIFT) <= vma.end \
                    and pte_range_none(base + ((addr >> MM_PAGE_SHIFT) & 511), nr):
                head = folio_alloc_mthp(e, order, PG_ANON | (PG_ANON_EXCLUSIVE if e.pol.anon_exclusive else 0))
                if head >= 0:
                    break
                e.mthp_fallback[order] += 1     # MTHP_STAT_ANON_FAULT_FALLBACK
        order -= 1
    if head < 0:
        return -1
    anon_vma_prepare(e, mm, vma)        # vmf_anon_prepare
    entry = pfn_pte(head) | PTE_PRESENT | PTE_YOUNG | vma_prot_bits(vma.flags)
    if vma.flags & VM_WRITE:
        entry |= PTE_WRITE | PTE_DIRTY | PTE_SOFT_DIRTY
    base += (addr >> MM_PAGE_SHIFT) & 511
    for i in range(nr):
        base[i] = entry + pfn_pte(i)
        e.mapcount[head + i] = 1
    e.refcount[head] += nr - 1          # folio_ref_add(nr - 1)
    lru_add(e, cpu, head)
    mm.rss_anon += nr
    e.mthp_alloc[order] += 1            # MTHP_STAT_ANON_FAULT_ALLOC
    stat_add(e, MM_STAT_ANON_FAULT, 1)
    return 0
