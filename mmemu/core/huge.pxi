# Transparent huge pages: PMD-mapped anon THP and the huge zero page
# (mm/huge_memory.c). A PMD leaf is a directory slot with PMD_HUGE over a
# pte page that holds the leaf's expansion (the deposited page table), kept
# uniform, so every reader walks it as ptes. A fault leaves it unexpanded
# (entry 0 and a mark); pmd_leaf_table, the one way to a leaf's entries,
# writes it out on first use, and the MMU walk reads entry 0 plus the
# page's offset (tlb_fill_unexpanded). A large folio is order 9 and
# naturally aligned: references on its head, per-page mapcounts for pte
# mappings, the PMD mappings in entire_map[pfn >> 9].


cdef inline int32_t *entire_mapcount(engine_t *e, int64_t head) noexcept nogil:
    return &e.entire_map[head >> HPAGE_PMD_ORDER]


cdef inline uint8_t *folio_deferred(engine_t *e, int64_t head) noexcept nogil:
    """Whether the large folio is on the deferred split queue: an mTHP's
    flag is a byte of its third page's `index` (the kernel's _deferred_list
    is in the folio's second tail page), any other's dsq_on[head >> 9]."""
    if mthp_order(e, head):
        return <uint8_t *>&e.index[head + 2]
    return &e.dsq_on[head >> HPAGE_PMD_ORDER]


# ---- large-folio frames: an order-9 block of the buddy allocator ---------

cdef int64_t hblock_take(engine_t *e) noexcept nogil:
    """A free, aligned block of HPAGE_PMD_NR frames (its first pfn), or -1:
    a freed THP block first, then never-used frames, the frames skipped to
    align going to the order-0 free list."""
    cdef int64_t start, p
    if e.nhfree > 0:
        e.nhfree -= 1
        return e.hfree[e.nhfree]
    start = (e.next_unused + HPAGE_PMD_NR - 1) & ~(<int64_t>HPAGE_PMD_NR - 1)
    if start + HPAGE_PMD_NR > e.unused_end:
        return -1
    for p in range(e.next_unused, start):
        freelist_push(e, p)         # free already (never used): nr_free stays
    e.next_unused = start + HPAGE_PMD_NR
    return start


cdef int64_t hblock_break(engine_t *e) noexcept nogil:
    """Order-0 allocation with nothing smaller left: split a free block,
    keep its first frame, put the rest on the free list."""
    cdef int64_t head, p
    e.nhfree -= 1
    head = e.hfree[e.nhfree]
    p = head + HPAGE_PMD_NR - 1
    while p > head:
        freelist_push(e, p)
        p -= 1
    return head


cdef void thp_tails_write(engine_t *e, int64_t head, uint16_t flags) noexcept nogil:
    """The tail pages' flags of the folio at head (flags | PG_TAIL each)."""
    cdef uint16_t h = e.fflags[head]
    cdef int64_t p
    # The whole aligned block, then the head back: a fixed-count loop from an
    # aligned start is vectorised whole (1 KiB).
    for p in range(head, head + HPAGE_PMD_NR):
        e.fflags[p] = flags | PG_TAIL
    e.fflags[head] = h


cdef void thp_tails_flush(engine_t *e) noexcept nogil:
    cdef int64_t i, x
    for i in range(e.nthp_lazy):
        x = e.thp_lazy[i]
        thp_tails_write(e, x >> 16, <uint16_t>(x & 0xffff))
    e.nthp_lazy = 0


cdef inline void thp_tails(engine_t *e) noexcept nogil:
    """Write out the tail flags that anon PMD faults of replay/touch left
    unwritten (FAULT_FLAG_BATCH; 1 KiB a THP, a third of such a fault).
    Until then only those loops run, and they reach a fresh THP's tail
    pages in two ways: an access stamps a version (frame_set_version reads
    no flag but PG_BYTES, which a fresh page lacks), and direct reclaim
    walks them. Their faults take free frames or act on what their own
    pte maps, and a fresh THP's PMD is young, dirty and writable: no
    further fault comes to it. So: every Engine entry but those loops and
    plain counters calls this first, and so does reclaim_pages."""
    if e.nthp_lazy:
        thp_tails_flush(e)


cdef int64_t folio_alloc_pmd(engine_t *e, uint16_t flags, bint tails) noexcept nogil:
    """An order-9 anon folio: head refcount 1, zeroed, uptodate; -1 when no
    aligned block is free (the fault falls back to base pages) or the
    frames left are owed to page tables. A zoned machine takes it from
    the per-node, per-zone lists (core/zones.pxi: e.alloc_node,
    alloc_pref_node and alloc_exclude as for base pages).
    A free block's frames are clean already - never used, or cleared by
    folio_free_large - so only the flags are written; the tails' not at
    all without `tails` (the caller lists the folio on thp_lazy)."""
    cdef int64_t head
    if e.zoned:
        head = zone_take(e, HPAGE_PMD_ORDER)
        if head < 0:
            return -1
    else:
        if e.nr_free - HPAGE_PMD_NR < e.nr_pgtable + 1:
            return -1
        head = hblock_take(e)
        if head < 0:
            return -1
    e.nr_free -= HPAGE_PMD_NR
    flags |= PG_USED | PG_UPTODATE
    e.fflags[head] = flags | PG_HEAD
    if tails:
        thp_tails_write(e, head, flags)
    e.refcount[head] = 1
    e.nr_large += 1
    entire_mapcount(e, head)[0] = 0
    return head


cdef void folio_free_large(engine_t *e, int64_t head) noexcept nogil:
    """The last reference to a large folio went: its block back whole."""
    cdef int64_t p
    if shmem_forder(e, head):
        mthp_free(e, head)              # a shmem mTHP (core/shmem.pxi): never on the queue
        return
    folio_deferred(e, head)[0] = 0      # off the deferred split queue
    if mthp_order(e, head):
        mthp_free(e, head)              # core/mthp.pxi
        return
    if pfn_is_hugetlb(e, head):
        hugetlb_folio_free(e, head)     # core/hugetlb.pxi: back to the pool
        return
    for p in range(head, head + HPAGE_PMD_NR):
        if e.fflags[p] & PG_BYTES:
            bytes_release(e, <int64_t>e.version[p])
        e.fflags[p] = 0
        e.refcount[p] = 0
        e.mapcount[p] = 0
        e.version[p] = 0
        e.mapping[p] = 0
        e.index[p] = 0
    entire_mapcount(e, head)[0] = 0
    e.nr_large -= 1
    hblock_put(e, head)


cdef inline void hblock_put(engine_t *e, int64_t head) noexcept nogil:
    """A free order-9 block (its frames clean) back to the page allocator:
    its zone's list on a zoned machine, else the free-block stack."""
    if e.zoned:
        zone_block_put(e, head)         # core/zones.pxi
    else:
        e.hfree[e.nhfree] = head
        e.nhfree += 1
    e.nr_free += HPAGE_PMD_NR


cdef inline void folio_set_flags(engine_t *e, int64_t head, uint16_t set, uint16_t clear) noexcept nogil:
    # Flags a PMD-mapped folio keeps on its head (PageAnonExclusive, anon)
    # are kept on every page, so a pte-level reader sees what a split would.
    cdef int64_t p
    for p in range(head, head + HPAGE_PMD_NR):
        e.fflags[p] = (e.fflags[p] & ~clear) | set


cdef int64_t huge_zero_folio(engine_t *e) noexcept nogil:
    """mm_get_huge_zero_folio(): allocated on first use, then kept (the
    kernel's shrinker frees it when unused; memory pressure is not modelled
    for it). -1 if it cannot be allocated."""
    cdef int64_t head
    if e.huge_zero_pfn >= 0:
        return e.huge_zero_pfn
    # get_huge_zero_page(): GFP_TRANSHUGE & ~__GFP_MOVABLE, a kernel
    # allocation: never ZONE_MOVABLE nor CMA pageblocks.
    e.alloc_exclude |= MM_ZONES_MOVABLE | MM_ZONES_CMA
    head = folio_alloc_pmd(e, PG_ZERO | PG_RESERVED, True)
    e.alloc_exclude &= ~(MM_ZONES_MOVABLE | MM_ZONES_CMA)
    if head < 0:
        return -1
    e.huge_zero_pfn = head
    stat_add(e, MM_STAT_THP_ZERO_ALLOC, 1)
    return head


cdef inline bint is_huge_zero_pfn(engine_t *e, int64_t pfn) noexcept nogil:
    return e.huge_zero_pfn >= 0 and (pfn & ~(<int64_t>HPAGE_PMD_NR - 1)) == e.huge_zero_pfn


# ---- PMD slots ------------------------------------------------------------

cdef int32_t *pmd_slot(engine_t *e, mm_t *mm, uint64_t va, bint alloc) noexcept nogil:
    """The pmd entry covering va (pmd_offset), allocating the upper levels
    if asked; NULL when absent or out of memory."""
    cdef int32_t *d = pmd_dir(e, mm, va)
    cdef int32_t i, nxt
    cdef int level
    if d != NULL:
        return d + ((va >> PMD_SHIFT) & 511)
    d = dir_page(e, mm.pgd)
    for level in range(2):
        i = <int32_t>((va >> (PGDIR_SHIFT - 9 * level)) & 511)
        nxt = d[i]
        if nxt == 0:
            if not alloc:
                return NULL
            nxt = dir_alloc(e)
            if nxt < 0:
                return NULL
            nxt += 1
            d[i] = nxt
        d = dir_page(e, nxt - 1)
    return d + ((va >> PMD_SHIFT) & 511)


cdef inline bint pmd_trans_huge(int32_t ent) noexcept nogil:
    return (ent & PMD_HUGE) != 0


cdef inline uint64_t *pmd_leaf_raw(engine_t *e, int32_t ent) noexcept nogil:
    """A PMD leaf's table as it is: maybe unexpanded (pmd_leaf_unexpanded),
    for the code here that knows the two forms."""
    return pte_page(e, (ent & ~PMD_HUGE) - 1)


cdef inline bint pmd_leaf_unexpanded(const uint64_t *t) noexcept nogil:
    # mm_types.h PMD_LEAF_UNEXPANDED: entry 1 no pte can be.
    return t[1] == PMD_LEAF_UNEXPANDED


cdef inline uint64_t pmd_leaf_expansion(uint64_t pte0, uint64_t i) noexcept nogil:
    """Entry i of a leaf whose entry 0 is pte0: the leaf maps 512 consecutive
    frames (a THP, the huge zero folio) with the same bits."""
    return pte0 + pfn_pte(i)


cdef void pmd_leaf_expand(uint64_t *t) noexcept nogil:
    """Write an unexpanded leaf's entries out from entry 0: the table is
    then what the pte-level code reads and writes."""
    cdef uint64_t first = t[0]
    cdef int64_t i
    for i in range(HPAGE_PMD_NR):      # one plain loop: vectorised
        t[i] = first + pfn_pte(i)


cdef inline uint64_t *pmd_leaf_table(engine_t *e, int32_t ent) noexcept nogil:
    """The leaf's table, expanded: the one accessor through which every
    reader of its entries (walkers, GUP, rmap, uffd, check) gets it, so an
    unexpanded leaf is written out on its first pte-level use. The table
    walks (table_leaf, leaf_or_skip) come here for a PMD_HUGE slot too."""
    cdef uint64_t *t = pte_page(e, (ent & ~PMD_HUGE) - 1)
    if t[1] == PMD_LEAF_UNEXPANDED:
        pmd_leaf_expand(t)
    return t


cdef inline uint64_t pmd_leaf_pte0(engine_t *e, int32_t ent) noexcept nogil:
    """The leaf's entry 0, expanded or not: what it maps (its folio, the
    huge zero page, a hugetlb entry or marker) and the bits all its
    entries share. Read only: a write goes through pmd_leaf_table."""
    return pte_page(e, (ent & ~PMD_HUGE) - 1)[0]


cdef inline bint thp_vma_allowable(engine_t *e, mm_vma_t *vma, uint64_t va) noexcept nogil:
    """thp_vma_allowable_order(PMD_ORDER) for a fault plus
    thp_vma_suitable_order(): private anon only (vma_is_anonymous), sysfs
    enabled (always, or madvise with VM_HUGEPAGE; from 6.8 through the PMD
    size's own setting: thp_anon_orders), not VM_NOHUGEPAGE, and
    the aligned 2 MiB inside the VMA (no pgoff check for anon)."""
    cdef uint64_t haddr = va & ~(<uint64_t>PMD_SPAN - 1)
    if vma.file != 0:
        return False
    if vma.flags & (VM_SHARED | VM_NOHUGEPAGE | VM_HUGETLB | VM_PFNMAP | VM_MIXEDMAP | VM_IO):
        return False
    # The PMD size's own setting (6.8: hugepages-2048kB/enabled, inherit by default).
    if not (thp_anon_orders(e, vma.flags) >> HPAGE_PMD_ORDER) & 1:
        return False
    return haddr >= vma.start and haddr + PMD_SPAN <= vma.end


cdef int set_pmd_leaf(engine_t *e, mm_t *mm, int32_t *slot, uint64_t first) noexcept nogil:
    """Install a PMD leaf mapping 512 frames from first's: deposit a pte page
    and leave it unexpanded (entry 0 = first, entry 1 the mark; writing the
    4 KiB out was most of a PMD fault), mark the slot huge. 0, or -1 when
    no frame is left for the table."""
    cdef int32_t p = ptp_alloc_raw(e)       # entries 0 and 1 are all that count
    cdef uint64_t *t
    if p < 0:
        return -1
    t = pte_page(e, p)
    t[0] = first
    t[1] = PMD_LEAF_UNEXPANDED
    slot[0] = (p + 1) | PMD_HUGE
    mm.nr_ptes += 1                 # mm_inc_nr_ptes with the deposit
    e.nr_huge_pmd += 1
    return 0


cdef void withdraw_pmd_leaf(engine_t *e, mm_t *mm, int32_t *slot) noexcept nogil:
    """The slot empties and its deposited table is freed (zap_deposited_table)."""
    push_free(e, &e.pte_free, &e.npte_free, &e.pte_free_cap, (slot[0] & ~PMD_HUGE) - 1)
    slot[0] = 0
    mm.nr_ptes -= 1
    e.nr_huge_pmd -= 1


# ---- faults ---------------------------------------------------------------

cdef enum:
    THP_DEFRAG_ALWAYS = 0           # the sysfs defrag values, as mmemu.thp._DEFRAG orders them
    THP_DEFRAG_DEFER = 1
    THP_DEFRAG_DEFER_MADVISE = 2
    THP_DEFRAG_MADVISE = 3


cdef inline bint thp_gfp_direct_reclaim(engine_t *e, uint64_t vm_flags) noexcept nogil:
    # vma_thp_gfp_mask() (6.12; the same since 5.5): __GFP_DIRECT_RECLAIM with
    # defrag=always, and with defer+madvise or madvise in a VM_HUGEPAGE VMA.
    if e.thp_defrag == THP_DEFRAG_ALWAYS:
        return True
    if e.thp_defrag == THP_DEFRAG_DEFER_MADVISE or e.thp_defrag == THP_DEFRAG_MADVISE:
        return (vm_flags & VM_HUGEPAGE) != 0
    return False


cdef int64_t thp_fault_alloc(engine_t *e, uint64_t vm_flags, bint tails) noexcept nogil:
    """vma_alloc_folio(HPAGE_PMD_ORDER) under the default policy
    (alloc_pages_mpol, 6.12; 76e654cc91bb, 5.5): the local node only
    (__GFP_THISNODE; mmemu's tasks are local to alloc_pref_node, node 0,
    as base pages are); other nodes only when the THP gfp may reclaim
    directly (thp_gfp_direct_reclaim), else the fault falls back to base
    pages on the local node. An anon THP, exclusive."""
    cdef uint16_t flags = PG_ANON | (PG_ANON_EXCLUSIVE if e.pol.anon_exclusive else 0)
    cdef int64_t head
    if e.nnodes <= 1 or e.alloc_node >= 0:
        return folio_alloc_pmd(e, flags, tails)
    e.alloc_node = e.alloc_pref_node
    head = folio_alloc_pmd(e, flags, tails)
    e.alloc_node = -1
    if head < 0 and thp_gfp_direct_reclaim(e, vm_flags):
        head = folio_alloc_pmd(e, flags, tails)
    return head


cdef int do_huge_pmd_anonymous_page(engine_t *e, mm_t *mm, int cpu, mm_vma_t *vma, uint64_t va,
                                    int32_t *slot, int fflags) noexcept nogil:
    """A fault on an empty pmd of a THP-eligible VMA (do_huge_pmd_anonymous_page,
    6.12): a read maps the huge zero page (use_zero_page), anything else a
    fresh THP mapped dirty and, if the VMA may be written, writable;
    VM_FAULT_FALLBACK sends the fault to the pte path."""
    cdef int64_t head, zero
    cdef uint64_t prot = vma_prot_bits(vma.flags), entry
    cdef bint lazy
    anon_vma_prepare(e, mm, vma)        # vmf_anon_prepare, read faults too
    if not (fflags & FAULT_FLAG_WRITE) and e.thp_use_zero_page:
        zero = huge_zero_folio(e)
        if zero < 0:
            stat_add(e, MM_STAT_THP_FAULT_FALLBACK, 1)
            return VM_FAULT_FALLBACK
        if vma.flags & VM_UFFD_MISSING:
            return handle_userfault(e, mm, vma, va, fflags, UFFD_REASON_MISSING)
        if set_pmd_leaf(e, mm, slot, pfn_pte(zero) | PTE_PRESENT | PTE_SPECIAL | PTE_YOUNG | prot) < 0:
            return table_alloc_failed(e)
        stat_add(e, MM_STAT_ZERO_FAULT, 1)
        return 0
    # An access of replay/touch only stamps a version on the page: the
    # tails' flags can wait on thp_lazy (thp_tails); any other caller may
    # read them before its call returns.
    lazy = (fflags & FAULT_FLAG_BATCH) != 0
    head = thp_fault_alloc(e, vma.flags, not lazy)
    if head < 0:
        stat_add(e, MM_STAT_THP_FAULT_FALLBACK, 1)
        return VM_FAULT_FALLBACK
    if vma.flags & VM_UFFD_MISSING:
        put_page(e, head, 1)            # folio_free_large clears every frame: no tail to write
        return handle_userfault(e, mm, vma, va, fflags, UFFD_REASON_MISSING)
    entry = pfn_pte(head) | PTE_PRESENT | PTE_YOUNG | PTE_DIRTY | PTE_SOFT_DIRTY | prot
    if vma.flags & VM_WRITE:
        entry |= PTE_WRITE
    if set_pmd_leaf(e, mm, slot, entry) < 0:
        put_page(e, head, 1)
        return table_alloc_failed(e)
    if lazy:
        e.thp_lazy[e.nthp_lazy] = (head << 16) | (e.fflags[head] & ~PG_HEAD)
        e.nthp_lazy += 1
    # folio_add_new_anon_rmap(RMAP_EXCLUSIVE): one PMD mapping, exclusive.
    entire_mapcount(e, head)[0] = 1
    lru_add(e, cpu, head)
    mm.rss_anon += HPAGE_PMD_NR
    stat_add(e, MM_STAT_ANON_FAULT, 1)
    stat_add(e, MM_STAT_THP_FAULT_ALLOC, 1)
    return 0


cdef void pmd_flush(engine_t *e, mm_t *mm, uint64_t haddr) noexcept nogil:
    """flush_pmd_tlb_range: one flush of the leaf's translations (the TLB
    here caches 4 KiB entries, so each of them goes)."""
    tlb_flush_pmd_block(e, mm.id, haddr >> MM_PAGE_SHIFT)
    stat_add(e, MM_STAT_TLB_FLUSH, 1)


cdef int huge_pmd_copy_whole(engine_t *e, mm_t *mm, int cpu, mm_vma_t *vma, uint64_t haddr,
                             int32_t *slot, bint zero) noexcept nogil:
    """Before 5.8 (3917c80280c9): a write to the huge zero page or to a
    THP that cannot be reused gets a whole new THP, a copy, mapped
    writable. -1 when none can be allocated (the caller falls back)."""
    cdef uint64_t *t = pmd_leaf_raw(e, slot[0])
    cdef int64_t old = <int64_t>pte_pfn(t[0]), new, i
    cdef uint64_t entry
    new = folio_alloc_pmd(e, PG_ANON | (PG_ANON_EXCLUSIVE if e.pol.anon_exclusive else 0), True)
    if new < 0:
        return -1
    if not zero:
        for i in range(HPAGE_PMD_NR):
            if frame_copy(e, new + i, old + i) < 0:
                put_page(e, new, 1)
                return -1
    anon_vma_prepare(e, mm, vma)
    entire_mapcount(e, new)[0] = 1
    lru_add(e, cpu, new)
    pmd_flush(e, mm, haddr)             # pmdp_huge_clear_flush
    entry = pfn_pte(new) | PTE_PRESENT | PTE_YOUNG | PTE_DIRTY | PTE_SOFT_DIRTY | vma_prot_bits(vma.flags) \
        | (PTE_WRITE if vma.flags & VM_WRITE else 0)
    if pmd_leaf_unexpanded(t):
        t[0] = entry                    # entry 0 speaks for all
    else:
        # Never back to unexpanded: a caller may hold a pointer to an entry.
        for i in range(HPAGE_PMD_NR):
            t[i] = entry + pfn_pte(i)
    if zero:
        mm.rss_anon += HPAGE_PMD_NR
    else:
        entire_mapcount(e, old)[0] -= 1
        put_page(e, old, 1)
    stat_add(e, MM_STAT_THP_FAULT_ALLOC, 1)
    stat_add(e, MM_STAT_COW, 1)
    return 0


cdef void split_huge_pmd_locked(engine_t *e, mm_t *mm, int32_t *slot, uint64_t haddr) noexcept nogil:
    """__split_huge_pmd_locked (6.12): the deposited table becomes the pte
    page. The huge zero page turns into the small zero page; a THP's pages
    each get one pte mapping and one folio reference (folio_ref_add 511),
    PageAnonExclusive from the head, the PMD's write, young, dirty,
    soft-dirty and uffd-wp bits on every pte; the PMD mapping goes."""
    cdef uint64_t *t = pmd_leaf_raw(e, slot[0])
    cdef uint64_t pte0 = t[0], acc = 0, keep, entry, more
    cdef int64_t i, head
    cdef int32_t *mapcount
    cdef bint unexpanded = pmd_leaf_unexpanded(t)
    stat_add(e, MM_STAT_THP_SPLIT_PMD, 1)
    if not (pte0 & PTE_SPECIAL) and e.fflags[pte_pfn(pte0)] & PG_FILE:
        file_pmd_zap(e, mm, slot, haddr)
        return
    slot[0] &= ~PMD_HUGE
    e.nr_huge_pmd -= 1
    if is_migration_entry(pte0):
        # A PMD migration entry (is_pmd_migration_entry): its table already
        # holds each page's migration entry of the same kind, soft-dirty and
        # uffd-wp bits; nothing is mapped, nothing to flush.
        return
    pmd_flush(e, mm, haddr)             # pmdp_invalidate
    if pte0 & PTE_SPECIAL:
        entry = pfn_pte(ZERO_PFN) | PTE_PRESENT | PTE_SPECIAL | PTE_YOUNG | (pte0 & (PTE_PROTNONE | PTE_UFFD_WP))
        for i in range(HPAGE_PMD_NR):
            t[i] = entry
        return
    head = <int64_t>pte_pfn(pte0)
    mapcount = e.mapcount + head
    # The leaf's dirty and young are the OR of what the MMU set on its
    # expansion: one pass writes the ptes with pte0's and ORs the entries
    # read; a second adds what some other entry had (rarely needed: a
    # fault sets both on the whole leaf).
    keep = pte0 & (PTE_PRESENT | PTE_WRITE | PTE_PROTNONE | PTE_SOFT_DIRTY | PTE_UFFD_WP | PTE_YOUNG | PTE_DIRTY)
    entry = pfn_pte(head) | keep
    if unexpanded:
        acc = pte0                      # every entry has pte0's bits
        for i in range(HPAGE_PMD_NR):
            t[i] = entry + pfn_pte(i)
    else:
        for i in range(HPAGE_PMD_NR):
            acc |= t[i]
            t[i] = entry + pfn_pte(i)
    for i in range(HPAGE_PMD_NR):
        mapcount[i] += 1
    more = acc & (PTE_YOUNG | PTE_DIRTY) & ~keep
    if more:
        for i in range(HPAGE_PMD_NR):
            t[i] |= more
    if acc & PTE_DIRTY:
        e.fflags[head] |= PG_DIRTY       # folio_set_dirty
    e.refcount[head] += HPAGE_PMD_NR - 1
    entire_mapcount(e, head)[0] -= 1


cdef void file_pmd_zap(engine_t *e, mm_t *mm, int32_t *slot, uint64_t haddr) noexcept nogil:
    """Splitting a PMD that maps a shmem THP only clears it
    (__split_huge_pmd_locked for !vma_is_anonymous, 6.12): the folio loses
    the mapping and its reference, the pmd is none, and the next fault maps
    ptes of the folio, still whole in the cache."""
    cdef uint64_t *t = pmd_leaf_table(e, slot[0])
    cdef int64_t head = <int64_t>pte_pfn(t[0]), i
    cdef uint64_t acc = 0
    for i in range(HPAGE_PMD_NR):
        acc |= t[i]
    pmd_flush(e, mm, haddr)             # pmdp_huge_clear_flush
    file_pmd_withdraw(e, mm, slot)
    if acc & PTE_DIRTY:
        folio_set_flags(e, head, PG_DIRTY, 0)       # folio_mark_dirty
    entire_mapcount(e, head)[0] -= 1
    put_page(e, head, 1)


cdef inline void file_pmd_withdraw(engine_t *e, mm_t *mm, int32_t *slot) noexcept nogil:
    # A file PMD has no deposited table (arch_needs_pgtable_deposit() is
    # false on x86): the expansion page behind it is the model's, not
    # counted in the mm's page tables (set_file_pmd took it back off).
    withdraw_pmd_leaf(e, mm, slot)
    mm.nr_ptes += 1


cdef void split_huge_pmd(engine_t *e, mm_t *mm, uint64_t va) noexcept nogil:
    """__split_huge_pmd: split the PMD leaf covering va, if there is one."""
    cdef int32_t *slot
    if e.nr_huge_pmd == 0:
        return
    slot = pmd_slot(e, mm, va, False)
    if slot != NULL and pmd_trans_huge(slot[0]) and (pmd_leaf_pte0(e, slot[0]) & PTE_PRESENT
                                                     and not pfn_is_hugetlb(e, <int64_t>pte_pfn(pmd_leaf_pte0(e, slot[0])))
                                                     or pmd_is_thp_migration(e, slot[0])):
        # (hugetlb pages and markers are never split: their VMAs end on
        # huge-page boundaries; a THP leaf is present or a migration entry)
        split_huge_pmd_locked(e, mm, slot, va & ~(<uint64_t>PMD_SPAN - 1))


cdef void split_file_pmds(engine_t *e, mm_t *mm, uint64_t start, uint64_t end) noexcept nogil:
    """Split (clear) every PMD of a shmem THP in [start, end)."""
    cdef uint64_t va = start & ~(<uint64_t>PMD_SPAN - 1)
    cdef int32_t *slot
    cdef uint64_t pte0
    while va < end:
        slot = pmd_slot(e, mm, va, False)
        if slot != NULL and pmd_trans_huge(slot[0]):
            pte0 = pmd_leaf_table(e, slot[0])[0]
            if pte0 & PTE_PRESENT and not (pte0 & PTE_SPECIAL) and e.fflags[pte_pfn(pte0)] & PG_FILE \
                    and not pfn_is_hugetlb(e, <int64_t>pte_pfn(pte0)):
                split_huge_pmd_locked(e, mm, slot, va)
        va += PMD_SPAN


cdef void split_huge_pmd_edges(engine_t *e, mm_t *mm, uint64_t start, uint64_t end) noexcept nogil:
    """vma_adjust_trans_huge / the walkers' partial-PMD case: a PMD leaf the
    range covers only in part is split; ones it covers whole stay."""
    if e.nr_huge_pmd == 0 or end <= start:
        return
    if start & (PMD_SPAN - 1):
        split_huge_pmd(e, mm, start)
    if end & (PMD_SPAN - 1):
        split_huge_pmd(e, mm, end - 1)


cdef void zap_huge_pmd(engine_t *e, mm_t *mm, int32_t *slot, gather_t *g, bint keep_wp) noexcept nogil:
    """zap_huge_pmd (6.12): clear the leaf, free its deposited table; a THP
    loses its PMD mapping and one reference, after the flush. A hugetlb
    entry (a page, or a marker: THP leaves are always present) goes to
    hugetlb_zap_leaf, keep_wp saying whether uffd-wp stays as a marker."""
    cdef uint64_t pte0 = pmd_leaf_pte0(e, slot[0])
    cdef int64_t head
    if pmd_is_thp_migration(e, slot[0]):
        # A PMD migration entry holds no reference (thp_migration_supported
        # branch): the deposited table goes; an anon VMA keeps no uffd-wp
        # marker. Its rss went at the unmap here (mmemu's convention).
        withdraw_pmd_leaf(e, mm, slot)
        return
    if not (pte0 & PTE_PRESENT) or pfn_is_hugetlb(e, <int64_t>pte_pfn(pte0)):
        hugetlb_zap_leaf(e, mm, slot, g, keep_wp)
        return
    g.need_flush = 1
    if pte0 & PTE_SPECIAL:
        withdraw_pmd_leaf(e, mm, slot)
        return
    head = <int64_t>pte_pfn(pte0)
    if e.fflags[head] & PG_FILE:
        # A shmem THP (zap_huge_pmd's file case): no deposited table to
        # free, the file counter down, a dirty PMD dirties the folio.
        if pte0 & PTE_DIRTY:
            folio_set_flags(e, head, PG_DIRTY, 0)
        file_pmd_withdraw(e, mm, slot)
        entire_mapcount(e, head)[0] -= 1
        gather_add(e, g, head)
        return
    withdraw_pmd_leaf(e, mm, slot)
    entire_mapcount(e, head)[0] -= 1
    mm.rss_anon -= HPAGE_PMD_NR
    gather_add(e, g, head)


cdef int copy_huge_pmd(engine_t *e, mm_t *src, mm_t *dst, uint64_t haddr, int32_t *sslot,
                       uint64_t dst_flags, uint64_t wp_side, int64_t *wrprotected) noexcept nogil:
    """copy_huge_pmd (6.12) for a fork: the child shares the leaf, both
    write-protected, the child's old. A maybe-pinned THP is split instead
    and copied per pte (d042035eaf5f 5.9; 5.19+ when the exclusive folio's
    rmap cannot be duplicated): returns 1 then. 0, or -1 out of memory."""
    cdef uint64_t *s = pmd_leaf_raw(e, sslot[0])
    cdef uint64_t pte0 = s[0], clear
    cdef int64_t head, i
    cdef int32_t *dslot = pmd_slot(e, dst, haddr, True)
    cdef uint64_t *d
    if dslot == NULL:
        return -1
    if pmd_is_thp_migration(e, sslot[0]):
        # is_swap_pmd(): a writable (or readable_exclusive) entry becomes
        # readable in parent and child, soft-dirty kept, uffd-wp only for a
        # uffd-wp child VMA; the migration's rmap walk finds the copy.
        if set_pmd_leaf(e, dst, dslot, 0) < 0:
            return -1
        d = pmd_leaf_raw(e, dslot[0])       # every entry written below
        clear = 0 if wp_side & VM_UFFD_WP else PTE_UFFD_WP
        for i in range(HPAGE_PMD_NR):
            if swp_type_of(s[i]) != SWP_MIGRATION_READ:
                s[i] = (s[i] & ~SWP_TYPE_MASK) | (SWP_MIGRATION_READ << SWP_TYPE_SHIFT)
            d[i] = s[i] & ~clear
        e.mig_copies += 1
        return 0
    if not (pte0 & PTE_SPECIAL):
        head = <int64_t>pte_pfn(pte0)
        if e.fflags[head] & PG_FILE:
            return 0        # copy_huge_pmd: a file PMD is not copied, the child faults it in
        if e.pol.fork_early_cow and src.flags & MMF_HAS_PINNED \
                and folio_maybe_dma_pinned(e, head) \
                and ((not e.pol.anon_exclusive) or e.fflags[head] & PG_ANON_EXCLUSIVE):
            split_huge_pmd_locked(e, src, sslot, haddr)
            return 1
    if set_pmd_leaf(e, dst, dslot, 0) < 0:
        return -1
    d = pmd_leaf_raw(e, dslot[0])
    clear = PTE_WRITE | PTE_YOUNG | (0 if wp_side & VM_UFFD_WP else PTE_UFFD_WP)
    if pmd_leaf_unexpanded(s):
        # Uniform: entry 0 speaks for all 512, and the child's stays unexpanded.
        if pte0 & PTE_WRITE:
            s[0] = pte0 & ~PTE_WRITE    # pmdp_set_wrprotect
            wrprotected[0] += HPAGE_PMD_NR
        d[0] = s[0] & ~clear
    else:
        for i in range(HPAGE_PMD_NR):
            if s[i] & PTE_WRITE:
                s[i] &= ~PTE_WRITE      # pmdp_set_wrprotect
                wrprotected[0] += 1
            d[i] = s[i] & ~clear
    if pte0 & PTE_SPECIAL:
        return 0
    get_page(e, head, 1)
    entire_mapcount(e, head)[0] += 1
    folio_set_flags(e, head, 0, PG_ANON_EXCLUSIVE)
    dst.rss_anon += HPAGE_PMD_NR
    return 0


cdef bint thp_can_reuse(engine_t *e, int cpu, int64_t head) noexcept nogil:
    """The era's reuse test for a write-protected PMD-mapped THP."""
    if e.pol.anon_exclusive and e.fflags[head] & PG_ANON_EXCLUSIVE:
        return True
    if e.pol.thp_wp_refcount:
        # 3bff7e3f1f16 (5.18): only a folio nobody else references (the
        # LRU batch never holds a THP); a swapcache copy counts per page.
        return e.refcount[head] == 1
    # Before 5.18: reuse_swap_page() on the compound page, by mapcount:
    # one PMD mapping and no pte mappings (GUP references ignored: B2a).
    cdef int64_t p
    if entire_mapcount(e, head)[0] != 1:
        return False
    for p in range(head, head + HPAGE_PMD_NR):
        if e.mapcount[p] != 0:
            return False
    return True


cdef int do_huge_pmd_wp_page(engine_t *e, mm_t *mm, int cpu, mm_vma_t *vma, uint64_t va,
                             int32_t *slot, int fflags) noexcept nogil:
    """wp_huge_pmd / do_huge_pmd_wp_page: a write (or unshare) on a
    write-protected PMD leaf. uffd-wp first; the huge zero page and a THP
    that cannot be reused are split, and the fault retried on ptes."""
    cdef uint64_t *t = pmd_leaf_raw(e, slot[0])
    cdef uint64_t pte0 = t[0]
    cdef bint unshare = (fflags & FAULT_FLAG_UNSHARE) != 0 and not (fflags & FAULT_FLAG_WRITE)
    cdef uint64_t haddr = va & ~(<uint64_t>PMD_SPAN - 1), set
    cdef int64_t head, i
    stat_add(e, MM_STAT_WP_FAULT, 1)
    if not (pte0 & PTE_SPECIAL) and e.fflags[pte_pfn(pte0)] & PG_FILE:
        split_huge_pmd_locked(e, mm, slot, haddr)       # wp_huge_pmd: not anon, split
        return VM_FAULT_FALLBACK
    if not unshare and pte0 & PTE_UFFD_WP and vma.flags & VM_UFFD_WP:
        if vma.uffd > 0 and vma.uffd < e.nuffd and e.uffd_feat[vma.uffd] & UFFD_FEATURE_WP_ASYNC:
            split_huge_pmd_locked(e, mm, slot, haddr)      # resolved on ptes (6.7+)
            return VM_FAULT_FALLBACK
        return handle_userfault(e, mm, vma, va, fflags, UFFD_REASON_WP)
    if pte0 & PTE_SPECIAL:
        # The huge zero page: a whole THP before 5.8 and again from 6.13
        # (do_huge_zero_wp_pmd); else split into small zero ptes.
        if e.pol.thp_zero_wp_thp and not unshare and huge_pmd_copy_whole(e, mm, cpu, vma, haddr, slot, True) == 0:
            return VM_FAULT_WRITE
        split_huge_pmd_locked(e, mm, slot, haddr)
        return VM_FAULT_FALLBACK
    head = <int64_t>pte_pfn(pte0)
    if e.fflags[head] & PG_FILE:
        # wp_huge_pmd (6.12): shmem has no ->huge_fault, so a write to a
        # read-only file PMD - a private mapping's COW, or write-notify in a
        # shared one - splits it (file_pmd_zap) and the pte level handles it.
        split_huge_pmd_locked(e, mm, slot, haddr)
        return VM_FAULT_FALLBACK
    if not thp_can_reuse(e, cpu, head):
        # 5.7 copied the THP whole (and, with no THP to be had, 512 small
        # pages: do_huge_pmd_wp_page_fallback; here the PMD is split and
        # only the page written is copied). 5.8+ split and copy 4 KiB.
        if e.pol.thp_cow_whole and not unshare and huge_pmd_copy_whole(e, mm, cpu, vma, haddr, slot, False) == 0:
            return VM_FAULT_WRITE
        split_huge_pmd_locked(e, mm, slot, haddr)
        return VM_FAULT_FALLBACK
    if e.pol.anon_exclusive:
        folio_set_flags(e, head, PG_ANON_EXCLUSIVE, 0)
    if unshare:
        return 0
    set = PTE_YOUNG | PTE_DIRTY | PTE_SOFT_DIRTY | (PTE_WRITE if vma.flags & VM_WRITE else 0)
    if pmd_leaf_unexpanded(t):
        t[0] |= set                     # uniform: entry 0 speaks for all
    else:
        for i in range(HPAGE_PMD_NR):
            t[i] |= set
    stat_add(e, MM_STAT_REUSE, 1)
    return VM_FAULT_WRITE


cdef int huge_pmd_fault(engine_t *e, mm_t *mm, int cpu, mm_vma_t *vma, uint64_t va, int fflags) noexcept nogil:
    """__handle_mm_fault's PMD level: create a PMD leaf on an empty pmd of a
    THP-eligible VMA, or handle a fault on an existing one. Returns
    VM_FAULT_FALLBACK when the pte level is to handle it."""
    cdef int32_t *slot
    cdef uint64_t pte, new, i
    cdef uint64_t *t
    cdef int ret
    cdef bint allowed = thp_vma_allowable(e, vma, va)
    # A shmem VMA: a PMD maps a THP of the cache (do_file_huge_fault).
    cdef bint file = vma.file != 0 and (e.shmem_thp_on or e.nr_large)
    if e.nr_huge_pmd == 0 and not allowed and not file:
        return VM_FAULT_FALLBACK
    slot = pmd_slot(e, mm, va, allowed or file)
    if slot == NULL:
        return VM_FAULT_FALLBACK
    if slot[0] == 0:
        if file:
            return do_file_huge_fault(e, mm, cpu, vma, va, slot, fflags)
        if not allowed:
            return VM_FAULT_FALLBACK
        return do_huge_pmd_anonymous_page(e, mm, cpu, vma, va, slot, fflags)
    if not pmd_trans_huge(slot[0]):
        return VM_FAULT_FALLBACK
    t = pmd_leaf_raw(e, slot[0])
    i = (va >> MM_PAGE_SHIFT) & 511
    pte = pmd_leaf_expansion(t[0], i) if pmd_leaf_unexpanded(t) else t[i]
    if is_migration_entry(pte):
        # pmd_migration_entry_wait(): sleep until the entry is gone, retry.
        sched_point(e, SP_MIGRATION_WAIT, mm.id, va, <uint64_t>swp_offset(pte))
        return 0
    if pte & PTE_PROTNONE and vma.flags & (VM_READ | VM_WRITE | VM_EXEC):
        return do_huge_pmd_numa_page(e, mm, cpu, vma, va, slot)     # core/migrate.pxi
    if fflags & (FAULT_FLAG_WRITE | FAULT_FLAG_UNSHARE) and not (pte & PTE_WRITE):
        ret = do_huge_pmd_wp_page(e, mm, cpu, vma, va, slot, fflags)
        return ret
    # huge_pmd_set_accessed: young (and dirty for a write) on the leaf
    # (an entry of its expansion: one that changes is written out first).
    new = pte | PTE_YOUNG | ((PTE_DIRTY | PTE_SOFT_DIRTY) if fflags & FAULT_FLAG_WRITE else 0)
    if new != pte:
        pmd_leaf_table(e, slot[0])[i] = new
    return 0


# ---- COW of a PTE-mapped large folio --------------------------------------

cdef int64_t folio_mapcount_total(engine_t *e, int64_t head) noexcept nogil:
    """folio_large_mapcount(): every pte and every PMD mapping of the folio."""
    cdef int64_t p, n = entire_mapcount(e, head)[0]
    for p in range(head, head + folio_nr(e, head)):
        n += e.mapcount[p]
    return n


cdef int64_t mm_folio_mappings(engine_t *e, mm_t *mm, int64_t head, uint64_t va, int64_t want) noexcept nogil:
    """How many of this mm's page-table entries map the folio (what the
    kernel's _mm_id tracking answers): the 2 MiB around va first, where a
    folio's pages usually are, then the whole mm if that fell short."""
    cdef uint64_t a, end
    cdef int64_t n
    cdef int32_t vi
    a = va & ~(<uint64_t>PMD_SPAN - 1)
    n = folio_mappings_in(e, mm, head, a, a + PMD_SPAN)
    if n >= want:
        return n
    n = 0
    for vi in range(mm.nvma):
        if mm.vmas[vi].anon_vma:
            n += folio_mappings_in(e, mm, head, mm.vmas[vi].start, mm.vmas[vi].end)
    return n


cdef int64_t folio_mappings_in(engine_t *e, mm_t *mm, int64_t head, uint64_t a, uint64_t end) noexcept nogil:
    """Entries of [a, end) mapping the folio: a PMD leaf counts once."""
    cdef uint64_t stop
    cdef uint64_t *t
    cdef int64_t n = 0, i, i0, nr = folio_nr(e, head)
    while a < end:
        t = leaf_or_skip(e, mm.pgd, a, &stop)
        if t == NULL:
            a = stop
            continue
        stop = block_end(a, end)
        if pmd_trans_huge(pmd_slot(e, mm, a, False)[0]):
            n += <int64_t>pte_pfn(t[0]) == head
        else:
            i0 = <int64_t>((a >> MM_PAGE_SHIFT) & 511)
            for i in range(i0, i0 + <int64_t>((stop - a) >> MM_PAGE_SHIFT)):
                if t[i] & PTE_PRESENT and not (t[i] & PTE_SPECIAL):
                    n += in_folio(<int64_t>pte_pfn(t[i]), head, nr)
        a = stop
    return n


cdef bint wp_can_reuse_large(engine_t *e, mm_t *mm, int cpu, int64_t pfn, uint64_t va) noexcept nogil:
    """The reuse decision for a page of a PTE-mapped large anon folio that
    is not PageAnonExclusive, per era:
    - up to 5.8, reuse_swap_page(): the most any of its pages is mapped,
      pte and PMD mappings together, is 1;
    - 5.9-5.17: the folio's refcount is 1 and the page is mapped once;
    - 5.18-6.8: the folio's refcount is 1 (the last pte of the folio);
    - 6.9 (781a3ca5c345): never, the large folio goes back instead;
    - 6.15 (1da190f4d0a6): if all its references are mappings, more than
      one, and all in this mm (CONFIG_MM_ID)."""
    cdef int64_t head = folio_of(e, pfn), p, n, worst = 0, nr = folio_nr(e, head)
    cdef int32_t ent = entire_mapcount(e, head)[0] if nr == HPAGE_PMD_NR else 0
    if e.pol.large_reuse == 1:
        return False
    if e.pol.large_reuse == 2:
        n = folio_mapcount_total(e, head)
        if n <= 1 or e.refcount[head] != n:
            return False
        # A page is mapped at most once per mm, and a folio by one PMD at
        # most (a split or a move turns it into ptes): a page mapped twice,
        # or a PMD mapping while this one is a pte, is another mm's.
        if ent > 0:
            return False
        for p in range(head, head + nr):
            if e.mapcount[p] > 1:
                return False
        return mm_folio_mappings(e, mm, head, va, n) == n
    if e.pol.wp_reuse == WP_REUSE_MAPCOUNT:
        for p in range(head, head + nr):
            if e.mapcount[p] + ent > worst:
                worst = e.mapcount[p] + ent
        return worst <= 1
    if e.pol.wp_reuse == WP_REUSE_REFCOUNT:
        return e.refcount[head] == 1 and e.mapcount[pfn] + ent == 1
    return e.refcount[head] == 1


# ---- splitting a large folio (split_folio) --------------------------------

cdef int split_folio_here(engine_t *e, mm_t *mm, int64_t head, uint64_t va, bint remap_zero,
                          bint isolated) noexcept nogil:
    """split_folio() of an anon large folio that only this mm maps, all of
    it inside the 2 MiB around va (the callers' layout: a PMD THP and what
    splitting and partial unmaps leave of it). Its PMD mapping, if any, is
    split first (try_to_unmap with TTU_SPLIT_HUGE_PMD); then each page is a
    folio of its own holding its pte mappings' references, the unmapped
    ones are freed, and from b1f202060afe (6.12) a mapped page that is all
    zeros is remapped to the shared zero page (remap_page with
    RMP_USE_SHARED_ZEROPAGE) unless the VMA is mlocked. 0, or -1 when the
    folio stays large: mapped elsewhere too, or referenced beyond its
    mappings (a pin, a pipe: can_split_folio).

    `isolated`: reclaim's split (split_folio_to_list onto shrink_folio_list's
    list): the folio was taken off the LRU, so no page is PG_LRU, and a page
    left unmapped is not freed here but stays on the list with one reference
    (the caller's to drop: pageout_putback)."""
    cdef uint64_t haddr = va & ~(<uint64_t>PMD_SPAN - 1), stop, pte, zero
    cdef int32_t *slot = pmd_slot(e, mm, haddr, False)
    cdef uint64_t *t
    cdef int64_t n, i, p, nr, cache = 0, slot0 = 0
    cdef int32_t vi
    cdef uint16_t keep
    if not (e.fflags[head] & PG_HEAD) or is_huge_zero_pfn(e, head) or not (e.fflags[head] & PG_ANON):
        return -1
    nr = folio_nr(e, head)
    n = folio_mapcount_total(e, head)
    if e.fflags[head] & PG_SWAPCACHE:
        # In the swapcache (core/swap.pxi swapcache_slot): its references
        # there, one a page, are expected too (can_split_folio), and each
        # page keeps its own slot (__split_huge_page).
        cache, slot0 = 1, <int64_t>e.index[head]
    if e.refcount[head] != n + cache * nr or mm_folio_mappings(e, mm, head, haddr, n) != n:
        return -1
    t = leaf_or_skip(e, mm.pgd, haddr, &stop)
    if t == NULL:
        return -1
    # All of it must be in this window (mm_folio_mappings counted it there or not).
    p = 0
    if pmd_trans_huge(slot[0]):
        split_huge_pmd_locked(e, mm, slot, haddr)
        n = folio_mapcount_total(e, head)       # one pte mapping per page now
    for i in range(HPAGE_PMD_NR):
        if t[i] & PTE_PRESENT and not (t[i] & PTE_SPECIAL) and in_folio(<int64_t>pte_pfn(t[i]), head, nr):
            p += 1
    if p != n:
        return -1
    keep = e.fflags[head] & (PG_DIRTY | PG_LRU)
    for p in range(head, head + nr):
        e.fflags[p] = (e.fflags[p] & ~(PG_HEAD | PG_TAIL)) | keep
        e.refcount[p] = e.mapcount[p] + <int32_t>cache
        if nr != HPAGE_PMD_NR:
            e.mapping[p] = 0            # an mTHP's pages: order 0 now (mthp_order)
            e.index[p] = 0              # its pincount and deferred-split flag
        if cache:
            e.index[p] = <uint32_t>(slot0 + (p - head))
    if nr == HPAGE_PMD_NR:
        entire_mapcount(e, head)[0] = 0
    folio_deferred(e, head)[0] = 0
    e.nr_large -= 1
    stat_add(e, MM_STAT_THP_SPLIT_PAGE, 1)
    vi = find_vma(mm, haddr)
    if remap_zero and e.pol.split_remap_zero and vi >= 0 and not (mm.vmas[vi].flags & VM_LOCKED):
        for i in range(HPAGE_PMD_NR):
            pte = t[i]
            if not (pte & PTE_PRESENT) or pte & PTE_SPECIAL:
                continue
            p = <int64_t>pte_pfn(pte)
            if not in_folio(p, head, nr) or not frame_is_zero(e, p):
                continue
            vi = find_vma(mm, haddr + (<uint64_t>i << MM_PAGE_SHIFT))
            zero = pfn_pte(ZERO_PFN) | PTE_PRESENT | PTE_SPECIAL | PTE_YOUNG \
                | vma_prot_bits(mm.vmas[vi].flags) | (pte & (PTE_SOFT_DIRTY | PTE_UFFD_WP))
            t[i] = zero
            tlb_flush_page(e, mm.id, haddr + (<uint64_t>i << MM_PAGE_SHIFT))
            e.mapcount[p] -= 1
            e.refcount[p] -= 1
            mm.rss_anon -= 1
    for p in range(head, head + nr):
        if cache and e.mapcount[p] == 0 and not (e.swap_map[slot0 + (p - head)] & SWAP_COUNT_MASK):
            # free_page_and_swap_cache() at the split's end: an unmapped page
            # no swap pte needs leaves the swapcache (reclaim's list keeps
            # its page with one reference).
            if isolated:
                e.refcount[p] += 1
            swapcache_delete(e, p)
            if not isolated:
                continue
        if isolated:
            e.fflags[p] &= ~PG_LRU
            if e.refcount[p] == 0:
                e.refcount[p] = 1
        elif e.refcount[p] == 0:
            frame_free(e, p)
    return 0


cdef void split_folios_partly_in(engine_t *e, mm_t *mm, uint64_t start, uint64_t end) noexcept nogil:
    """The madvise walkers' rule for large folios (madvise_free_pte_range,
    madvise_cold_or_pageout_pte_range, 6.12): one the range covers only in
    part is split, if this mm alone maps it; one it covers whole stays."""
    cdef uint64_t va = start & ~(<uint64_t>PMD_SPAN - 1), stop, a
    cdef uint64_t *t
    cdef int64_t i, pfn, head, last = -1
    if e.nr_large == 0:
        return
    while va < end:
        t = leaf_or_skip(e, mm.pgd, va, &stop)
        if t == NULL:
            va = stop
            continue
        for i in range(HPAGE_PMD_NR):
            if not (t[i] & PTE_PRESENT) or t[i] & PTE_SPECIAL:
                continue
            pfn = <int64_t>pte_pfn(t[i])
            if not (e.fflags[pfn] & (PG_HEAD | PG_TAIL)):
                continue
            head = folio_of(e, pfn)
            if head == last:
                continue                # looked at already (split or not)
            last = head
            a = va + (<uint64_t>i << MM_PAGE_SHIFT)
            # Covered whole: every page the window maps of it lies in [start, end).
            if folio_in_range(e, t, va, head, start, end):
                continue
            split_folio_here(e, mm, head, a, True, False)
        va += PMD_SPAN


cdef int64_t split_folios_in(engine_t *e, mm_t *mm, uint64_t start, uint64_t end,
                            int64_t *heads, int64_t cap, bint free_now, int64_t *budget) noexcept nogil:
    """Swap-out of the large folios in [start, end) that this mm alone maps
    (shrink_folio_list). One the era and the swap area let go whole goes
    whole (swapout_large_whole, core/swap.pxi): a PMD-mapped THP in every
    era (THP_SWAP), a PTE-mapped one and an mTHP from 6.10 (845982eb264b,
    5ed890ce5147; before, shrink_folio_list splits a folio without a PMD
    mapping first). Otherwise, or when the swap area has no cluster for it
    (a swap file never has: the 6.18.44 host's case), the folio is split
    and its pages go out one by one, counted as THP_SWPOUT_FALLBACK (and
    stats/swpout_fallback) when a whole swap-out was tried; from 6.12 its
    all-zero pages go to the zero page instead. The split is reclaim's
    (isolated): the heads of the folios split go to heads[] (at most cap;
    a folio beyond that is left large), in address order, for
    pageout_putback. Returns how many.

    `budget` (direct reclaim; NULL for MADV_PAGEOUT): stop once it is
    spent, each whole swap-out taking its pages from it, and leave
    mlocked VMAs alone (their folios are unevictable)."""
    cdef uint64_t va = start & ~(<uint64_t>PMD_SPAN - 1), stop, a
    cdef uint64_t *t
    cdef int64_t i, pfn, head, last = -1, n = 0, nr
    cdef int32_t *slot
    cdef int32_t vi
    cdef int order
    cdef int64_t total
    cdef bint tried, cached
    if e.nr_large == 0:
        return 0
    while va < end and n < cap and (budget == NULL or budget[0] > 0):
        t = leaf_or_skip(e, mm.pgd, va, &stop)
        if t == NULL:
            va = stop
            continue
        for i in range(HPAGE_PMD_NR):
            if budget != NULL and budget[0] <= 0:
                break
            if t[i] & PTE_PRESENT and not (t[i] & PTE_SPECIAL):
                pfn = <int64_t>pte_pfn(t[i])
                if e.fflags[pfn] & (PG_HEAD | PG_TAIL) and not is_huge_zero_pfn(e, pfn):
                    head = folio_of(e, pfn)
                    if head != last and n < cap:    # once per folio: a failed split stays failed
                        last = head
                        a = va + (<uint64_t>i << MM_PAGE_SHIFT)
                        nr = folio_nr(e, head)
                        if budget != NULL:
                            vi = find_vma(mm, a)
                            if vi < 0 or mm.vmas[vi].flags & VM_LOCKED or not (e.fflags[head] & PG_ANON):
                                continue
                        # A folio still in the swapcache (written whole, mapped
                        # again) is not split by shrink_folio_list in any era:
                        # add_to_swap is behind it, try_to_unmap takes it whole.
                        cached = (e.fflags[head] & PG_SWAPCACHE) != 0
                        if folio_ptes_in(e, t, head) < nr and not (cached and budget != NULL):
                            # Not mapped whole (6.12 madvise_cold_or_pageout_pte_range:
                            # fewer ptes than pages): the walker's own split_folio, the
                            # unmapped pages freed, the rest reclaimed as small pages.
                            split_folio_here(e, mm, head, a, True, False)
                            continue
                        order = HPAGE_PMD_ORDER if nr == HPAGE_PMD_NR else mthp_order(e, head)
                        tried = False
                        slot = pmd_slot(e, mm, va, False)
                        vi = find_vma(mm, a)
                        total = folio_mapcount_total(e, head)
                        if (pmd_trans_huge(slot[0]) or e.pol.swapout_large_ptes or cached) and e.nswap > 0 \
                                and vi >= 0 and not (mm.vmas[vi].flags & VM_LOCKED) \
                                and e.fflags[head] & PG_ANON and e.refcount[head] == total + (nr if cached else 0) \
                                and mm_folio_mappings(e, mm, head, va, total) == total:
                            if swapout_large_whole(e, mm, head, va, free_now) > 0:
                                if budget != NULL:
                                    budget[0] -= nr
                                continue
                            tried = True
                        if split_folio_here(e, mm, head, a, True, True) == 0:
                            heads[n] = head
                            n += 1
                            if tried:
                                e.swpout_fallback[order] += 1   # THP_SWPOUT_FALLBACK, MTHP_STAT_SWPOUT_FALLBACK
        va += PMD_SPAN
    return n


cdef int64_t folio_ptes_in(engine_t *e, uint64_t *t, int64_t head) noexcept nogil:
    """How many entries of the table t map a page of the folio at head."""
    cdef int64_t i, n = 0, nr = folio_nr(e, head)
    for i in range(HPAGE_PMD_NR):
        if t[i] & PTE_PRESENT and not (t[i] & PTE_SPECIAL) and in_folio(<int64_t>pte_pfn(t[i]), head, nr):
            n += 1
    return n


cdef bint folio_in_range(engine_t *e, uint64_t *t, uint64_t base, int64_t head,
                         uint64_t start, uint64_t end) noexcept nogil:
    cdef int64_t i, nr = folio_nr(e, head)
    cdef uint64_t a
    for i in range(HPAGE_PMD_NR):
        if t[i] & PTE_PRESENT and not (t[i] & PTE_SPECIAL) and in_folio(<int64_t>pte_pfn(t[i]), head, nr):
            a = base + (<uint64_t>i << MM_PAGE_SHIFT)
            if a < start or a >= end:
                return False
    return True


# ---- MADV_COLLAPSE (7d8faaf15545, 6.1) --------------------------------------

cdef enum:
    # hpage_collapse_scan_pmd's results the engine tells apart; madvise_collapse
    # (mmemu.process) maps them to its errno and decides whether to go on.
    COLLAPSE_OK = 0
    COLLAPSE_PMD_MAPPED = 1        # already a PMD THP: counts as done
    COLLAPSE_PMD_NONE = 2          # no page table here: stops the walk, EINVAL
    COLLAPSE_EXCEED_NONE = 3       # an empty pte in a uffd-armed VMA: stops, EBUSY (6.12)
    COLLAPSE_PTE_UFFD_WP = 4       # a uffd-wp pte or swap entry: next block, EINVAL
    COLLAPSE_NON_PRESENT = 5       # a marker or migration entry: next block, EINVAL
    COLLAPSE_PAGE_RO = 6           # no writable pte: next block, EINVAL
    COLLAPSE_PAGE_COUNT = 7        # a folio referenced beyond its mappings: next block, EAGAIN
    COLLAPSE_ALLOC_FAIL = 8        # no THP to be had: stops, ENOMEM
    COLLAPSE_PAGE_ANON = 9         # a page that is not anon: stops, EINVAL
    # khugepaged only (its max_ptes_* limits and the young-page test):
    COLLAPSE_EXCEED_SWAP = 10      # more swap entries than max_ptes_swap
    COLLAPSE_EXCEED_SHARED = 11    # more pages mapped elsewhere too than max_ptes_shared
    COLLAPSE_LACK_REFERENCED = 12  # no young pte, or swap entries and fewer than half young


cdef int collapse_pmd(engine_t *e, mm_t *mm, int cpu, uint64_t haddr, bint khugepaged,
                      int max_none, int max_swap, int max_shared) noexcept nogil:
    """hpage_collapse_scan_pmd + collapse_huge_page for one aligned 2 MiB
    of a private anon VMA (6.12), as MADV_COLLAPSE runs them or, with
    `khugepaged`, as khugepaged does: the scan first - empty and zero-page
    ptes become zeros (none allowed while the VMA is uffd-armed; khugepaged
    at most max_ptes_none), swap entries are swapped in (khugepaged: at most
    max_ptes_swap), pages mapped elsewhere too count against khugepaged's
    max_ptes_shared, any uffd-wp entry refuses, one writable pte is needed
    (until b9f85966d1be, 6.18), khugepaged wants a young pte (half of them
    if it must swap in); then each folio's references must all be its
    mappings.
    The new THP is a copy, always PageAnonExclusive, mapped dirty (and
    writable if the VMA is) by the deposited table the ptes were in; the
    old pages lose these mappings."""
    cdef int32_t *slot = pmd_slot(e, mm, haddr, False)
    cdef int32_t vi = find_vma(mm, haddr)
    cdef mm_vma_t *vma
    cdef uint64_t *t
    cdef uint64_t pte, entry
    cdef int64_t i, pfn, head, new, n_anon = 0
    cdef int64_t none_or_zero = 0, unmapped = 0, shared = 0, referenced = 0
    cdef bint writable = False, armed
    cdef int ret, c
    if slot == NULL or vi < 0:
        return COLLAPSE_PMD_NONE
    if slot[0] == 0:
        return COLLAPSE_PMD_NONE
    if pmd_trans_huge(slot[0]):
        return COLLAPSE_PMD_MAPPED
    vma = &mm.vmas[vi]
    armed = (vma.flags & (VM_UFFD_MISSING | VM_UFFD_WP | VM_UFFD_MINOR)) != 0
    t = pmd_leaf_table(e, slot[0])
    for c in range(e.ncpus):
        lru_drain(e, c)                 # lru_add_drain_all() (madvise_collapse, khugepaged_do_scan)
    # The scan (hpage_collapse_scan_pmd), nothing changed yet.
    for i in range(HPAGE_PMD_NR):
        pte = t[i]
        if is_swap_pte(pte):
            unmapped += 1
            if khugepaged and unmapped > max_swap:
                return COLLAPSE_EXCEED_SWAP
            if pte & PTE_UFFD_WP:
                return COLLAPSE_PTE_UFFD_WP
            continue
        if pte == 0 or (pte & PTE_PRESENT and pte & PTE_SPECIAL):
            none_or_zero += 1
            if armed or (khugepaged and none_or_zero > max_none):
                return COLLAPSE_EXCEED_NONE
            continue
        if not (pte & PTE_PRESENT):
            if is_marker(pte) and marker_bits(pte) & PTE_MARKER_UFFD_WP or pte & PTE_UFFD_WP:
                return COLLAPSE_PTE_UFFD_WP
            return COLLAPSE_NON_PRESENT
        if pte & PTE_UFFD_WP:
            return COLLAPSE_PTE_UFFD_WP
        if pte & PTE_WRITE:
            writable = True
        pfn = <int64_t>pte_pfn(pte)
        if not (e.fflags[pfn] & PG_ANON):
            return COLLAPSE_PAGE_ANON
        head = folio_of(e, pfn)
        # folio_likely_mapped_shared(): a small folio mapped more than once;
        # a large one whose first page is (the 6.12 estimate).
        if e.mapcount[head] + (entire_mapcount(e, head)[0] if e.fflags[head] & PG_HEAD else 0) > 1:
            shared += 1
            if khugepaged and shared > max_shared:
                return COLLAPSE_EXCEED_SHARED
        # is_refcount_suitable(): every reference is a mapping (a swapcache
        # folio also holds one per page).
        if e.fflags[head] & PG_HEAD:
            if e.refcount[head] != folio_mapcount_total(e, head) \
                    + (folio_nr(e, head) if e.fflags[head] & PG_SWAPCACHE else 0):
                return COLLAPSE_PAGE_COUNT
        elif e.refcount[pfn] != e.mapcount[pfn] + (1 if e.fflags[pfn] & PG_SWAPCACHE else 0):
            return COLLAPSE_PAGE_COUNT
        if pte & PTE_YOUNG:
            referenced += 1
    if not writable and not e.pol.collapse_ro:
        return COLLAPSE_PAGE_RO
    if khugepaged and (referenced == 0 or (unmapped and referenced < HPAGE_PMD_NR // 2)):
        return COLLAPSE_LACK_REFERENCED
    writable = False
    for i in range(HPAGE_PMD_NR):
        # __collapse_huge_page_swapin: every swapped page comes back.
        if is_swap_pte(t[i]):
            ret = handle_mm_fault(e, mm, cpu, haddr + (<uint64_t>i << MM_PAGE_SHIFT), 0)
            if ret & VM_FAULT_ERROR:
                return COLLAPSE_ALLOC_FAIL if ret & (VM_FAULT_OOM | VM_FAULT_NOMEM) else COLLAPSE_NON_PRESENT
            vi = find_vma(mm, haddr)
            vma = &mm.vmas[vi]
    # __collapse_huge_page_isolate: the same checks on what is mapped now.
    for i in range(HPAGE_PMD_NR):
        pte = t[i]
        if pte == 0 or (pte & PTE_PRESENT and pte & PTE_SPECIAL):
            if armed:
                return COLLAPSE_EXCEED_NONE
            continue
        if not (pte & PTE_PRESENT):
            if is_marker(pte) and marker_bits(pte) & PTE_MARKER_UFFD_WP or pte & PTE_UFFD_WP:
                return COLLAPSE_PTE_UFFD_WP
            return COLLAPSE_NON_PRESENT
        if pte & PTE_UFFD_WP:
            return COLLAPSE_PTE_UFFD_WP
        if pte & PTE_WRITE:
            writable = True
        pfn = <int64_t>pte_pfn(pte)
        if not (e.fflags[pfn] & PG_ANON):
            return COLLAPSE_PAGE_ANON
        head = folio_of(e, pfn)
        # is_refcount_suitable(): every reference is a mapping (a swapcache
        # folio also holds one per page).
        if e.fflags[head] & (PG_HEAD):
            if e.refcount[head] != folio_mapcount_total(e, head) \
                    + (folio_nr(e, head) if e.fflags[head] & PG_SWAPCACHE else 0):
                return COLLAPSE_PAGE_COUNT
        elif e.refcount[pfn] != e.mapcount[pfn] + (1 if e.fflags[pfn] & PG_SWAPCACHE else 0):
            return COLLAPSE_PAGE_COUNT
    if not writable and not e.pol.collapse_ro:
        return COLLAPSE_PAGE_RO
    new = folio_alloc_pmd(e, PG_ANON | (PG_ANON_EXCLUSIVE if e.pol.anon_exclusive else 0), True)
    if new < 0:
        return COLLAPSE_ALLOC_FAIL
    for i in range(HPAGE_PMD_NR):
        pte = t[i]
        if pte & PTE_PRESENT and not (pte & PTE_SPECIAL):
            if frame_copy(e, new + i, <int64_t>pte_pfn(pte)) < 0:
                put_page(e, new, 1)
                return COLLAPSE_ALLOC_FAIL
    # The old mappings go, the pages with them unless mapped elsewhere.
    pmd_flush(e, mm, haddr)
    for i in range(HPAGE_PMD_NR):
        pte = t[i]
        if pte & PTE_PRESENT and not (pte & PTE_SPECIAL):
            pfn = <int64_t>pte_pfn(pte)
            e.mapcount[pfn] -= 1
            n_anon += 1
            # free_page_and_swap_cache(): an unmapped swapcache folio whose
            # slots nobody needs leaves the swapcache (6.12
            # __collapse_huge_page_copy_succeeded).
            if e.fflags[pfn] & PG_SWAPCACHE and swapcache_unmapped(e, pfn):
                try_to_free_swap(e, pfn)
            put_page(e, pfn, 1)
    anon_vma_prepare(e, mm, vma)
    entry = pfn_pte(new) | PTE_PRESENT | PTE_YOUNG | PTE_DIRTY | PTE_SOFT_DIRTY | vma_prot_bits(vma.flags) \
        | (PTE_WRITE if vma.flags & VM_WRITE else 0)
    for i in range(HPAGE_PMD_NR):
        t[i] = entry + pfn_pte(i)
    slot[0] |= PMD_HUGE
    e.nr_huge_pmd += 1
    entire_mapcount(e, new)[0] = 1
    lru_add(e, cpu, new)
    mm.rss_anon += HPAGE_PMD_NR - n_anon
    return COLLAPSE_OK


# ---- the deferred split queue ----------------------------------------------

cdef void deferred_split_folio(engine_t *e, mm_t *mm, int64_t pfn, uint64_t va) noexcept nogil:
    """__folio_remove_rmap() (6.12): a pte unmap that leaves an anon large
    folio mapped only in part queues it (once) for the deferred split
    shrinker; the pages it no longer maps stay allocated until then. pfn is
    the page just unmapped at va."""
    cdef int64_t head = folio_of(e, pfn), p
    cdef int64_t *q
    # (Still PMD-mapped somewhere, the folio counts as entirely mapped: not partially.)
    if folio_deferred(e, head)[0] or not (e.fflags[head] & PG_ANON) or entire_mapcount(e, head)[0] \
            or pfn_is_hugetlb(e, head) or is_huge_zero_pfn(e, head):
        return
    # Partially mapped: some other page is still mapped (the first found will do).
    p = head
    while p < head + folio_nr(e, head) and e.mapcount[p] == 0:
        p += 1
    if p == head + folio_nr(e, head):
        return
    if e.ndsq * 3 + 3 > e.dsq_cap:
        if grow_i64(&e.dsq, &e.dsq_cap, e.ndsq * 3 + 3) < 0:
            return                      # (the host is out of memory: the folio is just not queued)
    q = e.dsq + e.ndsq * 3
    q[0], q[1], q[2] = head, mm.id, <int64_t>(va - (<uint64_t>(pfn - head) << MM_PAGE_SHIFT))
    e.ndsq += 1
    folio_deferred(e, head)[0] = 1


cdef int64_t deferred_split_scan(engine_t *e) noexcept nogil:
    """The deferred split shrinker (deferred_split_scan): each queued folio
    still partially mapped is split (split_folio, with 6.12's zero-page
    remap) and the pages nobody maps are freed; one that cannot be split now
    (mapped by several mms, pinned) stays queued. Returns frames freed."""
    cdef int64_t before = e.nr_free, i, j = 0, head
    cdef int32_t k, mmi
    cdef mm_t *mm
    for i in range(e.ndsq):
        head = e.dsq[3 * i]
        if not folio_deferred(e, head)[0]:
            continue                    # freed or split since
        # split_folio() finds the mappings by rmap; here: the mm that queued
        # it first, then any other mapping it at the same address (fork).
        for k in range(e.nmm + 1):
            mmi = <int32_t>e.dsq[3 * i + 1] if k == 0 else k - 1
            if mmi >= e.nmm or (k and mmi == e.dsq[3 * i + 1]):
                continue
            mm = &e.mms[mmi]
            if mm.alive and split_folio_here(e, mm, head, <uint64_t>e.dsq[3 * i + 2], True, False) == 0:
                break
        if not folio_deferred(e, head)[0]:
            continue
        e.dsq[3 * j], e.dsq[3 * j + 1], e.dsq[3 * j + 2] = e.dsq[3 * i], e.dsq[3 * i + 1], e.dsq[3 * i + 2]
        j += 1
    e.ndsq = j
    return e.nr_free - before
