# Page caches of shmem files (memfd, shared anon) and the faults on file VMAs
# (mm/memory.c do_fault / do_read_fault / do_cow_fault / do_shared_fault,
# do_fault_around; mm/shmem.c shmem_get_folio; mm/truncate.c).

cdef inline mm_file_t *file_of(engine_t *e, int32_t id) noexcept nogil:
    return &e.files[id]


cdef inline uint64_t *cache_slot(engine_t *e, mm_file_t *f, uint64_t index, bint alloc) noexcept nogil:
    cdef uint64_t *t = table_leaf(e, f.root, index << MM_PAGE_SHIFT, alloc, &f.nr_leaves)
    if t == NULL:
        return NULL
    return t + (index & 511)


cdef inline uint64_t file_pages(mm_file_t *f) noexcept nogil:
    return (<uint64_t>f.size + MM_PAGE_SIZE - 1) >> MM_PAGE_SHIFT


cdef inline uint64_t vma_index(mm_vma_t *vma, uint64_t va) noexcept nogil:
    return vma.pgoff + ((va - vma.start) >> MM_PAGE_SHIFT)


cdef inline bint vma_wants_writenotify(engine_t *e, mm_vma_t *vma) noexcept nogil:
    # Shared writable VMAs map read faults writable unless something must see
    # the first write: soft-dirty tracking (64e455079e1b) or, 6.2+, uffd-wp.
    # shmem has no dirty accounting and no page_mkwrite.
    return flags_want_writenotify(e, vma.flags)


cdef inline uint64_t file_pte(engine_t *e, mm_vma_t *vma, int64_t pfn, bint write) noexcept nogil:
    """set_pte_range(): a pte mapping page-cache folio pfn in vma."""
    cdef uint64_t entry = pfn_pte(pfn) | PTE_PRESENT | PTE_YOUNG | vma_prot_bits(vma.flags)
    if write:
        entry |= PTE_DIRTY | PTE_SOFT_DIRTY
        if vma.flags & VM_WRITE:
            entry |= PTE_WRITE
    elif vma.flags & VM_SHARED and vma.flags & VM_WRITE and not vma_wants_writenotify(e, vma):
        entry |= PTE_WRITE          # vm_page_prot of a shared writable VMA has write
        if e.fflags[pfn] & PG_DIRTY:
            entry |= PTE_DIRTY
    return entry


# ---- huge pages in shmem (mm/shmem.c, 6.12) ---------------------------------

cdef enum:
    SHMEM_HUGE_NEVER = 0
    SHMEM_HUGE_ALWAYS = 1
    SHMEM_HUGE_WITHIN_SIZE = 2
    SHMEM_HUGE_ADVISE = 3
    SHMEM_HUGE_DENY = -1
    SHMEM_HUGE_FORCE = -2
    SHMEM_PMD_INHERIT = 4          # hugepages-2048kB/shmem_enabled "inherit" (6.11)


cdef inline bint shmem_within_size(mm_file_t *f, uint64_t index, int64_t write_end) noexcept nogil:
    # within_size: the whole aligned 2 MiB holding index lies inside i_size,
    # or inside the write in progress (shmem_huge_global_enabled).
    cdef int64_t size = f.size if f.size > write_end else write_end
    cdef uint64_t need = (index + HPAGE_PMD_NR) & ~(<uint64_t>HPAGE_PMD_NR - 1)
    return ((<uint64_t>size + MM_PAGE_SIZE - 1) >> MM_PAGE_SHIFT) >= need


cdef inline bint shmem_huge_mode(int32_t mode, mm_file_t *f, uint64_t index, int64_t write_end,
                                 uint64_t vm_flags) noexcept nogil:
    """One huge= setting applied (the switch of shmem_huge_global_enabled,
    6.12; shmem_is_huge before): always; within_size, falling through to
    advise (VM_HUGEPAGE: MADV_HUGEPAGE on the mapping); never."""
    if mode == SHMEM_HUGE_ALWAYS:
        return True
    if mode == SHMEM_HUGE_WITHIN_SIZE and shmem_within_size(f, index, write_end):
        return True
    if mode == SHMEM_HUGE_WITHIN_SIZE or mode == SHMEM_HUGE_ADVISE:
        return (vm_flags & VM_HUGEPAGE) != 0
    return False


cdef bint shmem_huge_allowed(engine_t *e, mm_file_t *f, mm_vma_t *vma, uint64_t index,
                             int64_t write_end) noexcept nogil:
    """Whether a new folio at index may be PMD-sized
    (shmem_allowable_huge_orders(), 6.12, for the PMD order; shmem_is_huge()
    before). vma is NULL for write(2) and fallocate(2). deny and force
    override every mount; otherwise shm_mnt's huge=, which is shmem_enabled
    (every shmem file here lives on shm_mnt: memfd, MAP_SHARED anon).
    From e7a2ab7b3bb5 (6.11) an anon shmem mapping follows the size's own
    hugepages-2048kB/shmem_enabled instead, "inherit" meaning the above."""
    cdef uint64_t vm_flags = vma.flags if vma != NULL else 0
    cdef bint top
    if f.hstate or not f.shmem:
        return False
    if vm_flags & VM_NOHUGEPAGE:
        return False                    # vma_thp_disabled
    if e.shmem_huge == SHMEM_HUGE_DENY:
        return False
    if e.shmem_huge == SHMEM_HUGE_FORCE:
        top = True
    else:
        top = shmem_huge_mode(e.shmem_huge, f, index, write_end, vm_flags)
    if not e.pol.shmem_mthp or vma == NULL or f.shmem != 2:
        return top
    if e.shmem_huge == SHMEM_HUGE_FORCE:
        return e.shmem_pmd == SHMEM_PMD_INHERIT
    if e.shmem_pmd == SHMEM_PMD_INHERIT:
        return top
    # The size's own always / within_size / advise (no fall-through to
    # advise for within_size here: huge_shmem_orders_madvise is its own mask).
    if e.shmem_pmd == SHMEM_HUGE_WITHIN_SIZE:
        return shmem_within_size(f, index, write_end)
    if e.shmem_pmd == SHMEM_HUGE_ADVISE:
        return (vm_flags & VM_HUGEPAGE) != 0
    return e.shmem_pmd == SHMEM_HUGE_ALWAYS


cdef inline bint file_vma_suitable_order(mm_vma_t *vma, uint64_t va, int order) noexcept nogil:
    """thp_vma_suitable_order() for a file VMA (6.12 huge_mm.h): the file
    offset and the address agree modulo the folio size, and the aligned
    range around va lies inside the VMA."""
    cdef uint64_t span = MM_PAGE_SIZE << order
    cdef uint64_t haddr = va & ~(span - 1)
    if ((vma.start >> MM_PAGE_SHIFT) - vma.pgoff) & ((<uint64_t>1 << order) - 1):
        return False
    return haddr >= vma.start and haddr + span <= vma.end


cdef inline bint thp_file_vma_suitable(mm_vma_t *vma, uint64_t va) noexcept nogil:
    return file_vma_suitable_order(vma, va, HPAGE_PMD_ORDER)


cdef inline bint is_file_thp(engine_t *e, int64_t head) noexcept nogil:
    """head is a large shmem folio (PMD-sized, or a shmem mTHP: folio_nr)
    still in its file's cache."""
    return (e.fflags[head] & (PG_HEAD | PG_FILE)) == (PG_HEAD | PG_FILE) and not pfn_is_hugetlb(e, head)


cdef int64_t shmem_alloc_huge(engine_t *e, mm_file_t *f, uint64_t *slot, uint64_t index,
                              int cpu) noexcept nogil:
    """shmem_alloc_and_add_folio() at the PMD order: a zeroed 2 MiB folio
    for the aligned range around index, if nothing of that range is in the
    cache (or swapped) yet: shmem_suitable_orders' xa_find. The cache holds
    a reference per page (__filemap_add_folio's folio_ref_add(nr)). The
    pfn of index's page, or -1 (the caller falls back to a small page)."""
    cdef uint64_t *t = slot - (index & (HPAGE_PMD_NR - 1))
    cdef uint64_t aligned = index & ~(<uint64_t>HPAGE_PMD_NR - 1)
    cdef int64_t head, i
    for i in range(HPAGE_PMD_NR):
        if t[i] != 0:
            return -1
    head = folio_alloc_pmd(e, PG_FILE, True)
    if head < 0:
        return -1
    for i in range(HPAGE_PMD_NR):
        e.mapping[head + i] = <uint16_t>f.id
        e.index[head + i] = <uint32_t>(aligned + <uint64_t>i)
        t[i] = pfn_pte(head + i) | PTE_PRESENT
    e.refcount[head] = HPAGE_PMD_NR
    f.nrpages += HPAGE_PMD_NR
    lru_add(e, cpu, head)
    stat_add(e, MM_STAT_THP_FILE_ALLOC, 1)
    e.shmem_alloc[HPAGE_PMD_ORDER] += 1             # the PMD size's stats/shmem_alloc (6.11)
    return head + <int64_t>(index - aligned)


cdef uint32_t shmem_mthp_orders(engine_t *e, mm_file_t *f, mm_vma_t *vma, uint64_t index) noexcept nogil:
    """shmem_allowable_huge_orders() (6.12) for the orders below the PMD's
    (shmem_huge_allowed decides the PMD's): only for an anon shmem fault
    (a VMA of a MAP_SHARED|MAP_ANONYMOUS file; write(2), fallocate(2) and
    memfd/tmpfs get the PMD size or nothing). deny: none; force: the
    "inherit" ones; else "always", "advise" in a VM_HUGEPAGE VMA,
    "inherit" where shmem_enabled would allow the PMD size there, and
    every "within_size" one as soon as one of them, from the highest,
    ends inside i_size."""
    cdef uint32_t mask = 0, within = 0
    cdef int order
    cdef int32_t mode
    cdef bint top
    cdef uint64_t pages, aligned = index
    if vma == NULL or f.shmem != 2 or f.hstate or vma.flags & VM_NOHUGEPAGE \
            or e.shmem_huge == SHMEM_HUGE_DENY:
        return 0
    top = e.shmem_huge == SHMEM_HUGE_FORCE or shmem_huge_mode(e.shmem_huge, f, index, 0, vma.flags)
    for order in range(SHMEM_MIN_ORDER, HPAGE_PMD_ORDER):
        mode = e.shmem_orders[order]
        if mode == SHMEM_PMD_INHERIT:
            if top:
                mask |= 1u << order
        elif e.shmem_huge == SHMEM_HUGE_FORCE:
            continue                    # force: non-PMD sizes may not override huge=
        elif mode == SHMEM_HUGE_ALWAYS or (mode == SHMEM_HUGE_ADVISE and vma.flags & VM_HUGEPAGE):
            mask |= 1u << order
        elif mode == SHMEM_HUGE_WITHIN_SIZE:
            within |= 1u << order
    if within:
        pages = file_pages(f)
        order = HPAGE_PMD_ORDER - 1
        while order >= SHMEM_MIN_ORDER:
            if within >> order & 1:
                if e.pol.shmem_within_size_fix:
                    aligned = (index + (<uint64_t>1 << order)) & ~((<uint64_t>1 << order) - 1)
                else:
                    # 6.11 - 6.12.8 (fixed by d0e6983a6d17): index itself
                    # rounded up, by round_up()'s mask arithmetic, to `order`
                    # rather than 1 << order, try after try.
                    aligned = (aligned | <uint64_t>(order - 1)) + 1
                if pages >= aligned:
                    mask |= within
                    break
            order -= 1
    return mask


cdef int shmem_mthp_tables(engine_t *e) noexcept nogil:
    """The per-frame order (forder) and per-folio pin count (file_pincount)
    of shmem mTHPs, made when the first one is: until then a machine keeps
    no byte per frame for them. 0, or -1 when the host has no memory."""
    if e.forder != NULL:
        return 0
    e.forder = <uint8_t *>calloc(e.nframes, 1)
    e.file_pincount = <int32_t *>calloc((e.nframes >> SHMEM_MIN_ORDER) + 1, sizeof(int32_t))
    if e.forder == NULL or e.file_pincount == NULL:
        free(e.forder)
        free(e.file_pincount)
        e.forder, e.file_pincount = NULL, NULL
        return -1
    return 0


cdef int64_t shmem_alloc_mthp(engine_t *e, mm_file_t *f, uint64_t *slot, uint64_t index, int cpu,
                              mm_vma_t *vma, uint64_t va) noexcept nogil:
    """shmem_suitable_orders() + shmem_alloc_and_add_folio() (6.12) below
    the PMD order: the highest allowed order whose aligned range the VMA
    could map (thp_vma_suitable_orders) and of which nothing is in the
    cache or swapped yet (xa_find), allocated or falling back order by
    order (stats/shmem_fallback). The folio's order goes on each page
    (forder); the cache holds a reference per page. The pfn of index's
    page, or -1 for a small folio."""
    cdef uint32_t orders = shmem_mthp_orders(e, f, vma, index)
    cdef int order = HPAGE_PMD_ORDER - 1
    cdef int64_t nr, head = -1, i
    cdef uint64_t aligned = 0
    if orders and shmem_mthp_tables(e) < 0:
        return -1                                   # no host memory for the tables: a small folio
    cdef uint64_t *t = NULL
    while order >= SHMEM_MIN_ORDER and orders:
        if orders >> order & 1 and file_vma_suitable_order(vma, va, order):
            nr = <int64_t>1 << order
            aligned = index & ~(<uint64_t>nr - 1)
            t = slot - (index - aligned)
            for i in range(nr):
                if t[i] != 0:
                    break
            else:
                head = folio_alloc_mthp(e, order, PG_FILE)
                if head >= 0:
                    break
                e.shmem_fallback[order] += 1        # MTHP_STAT_SHMEM_FALLBACK
        order -= 1
    if head < 0:
        return -1
    for i in range(nr):
        e.mapping[head + i] = <uint16_t>f.id
        e.forder[head + i] = <uint8_t>order
        e.index[head + i] = <uint32_t>(aligned + <uint64_t>i)
        t[i] = pfn_pte(head + i) | PTE_PRESENT
    e.refcount[head] = <int32_t>nr
    f.nrpages += nr
    lru_add(e, cpu, head)
    e.shmem_alloc[order] += 1                       # MTHP_STAT_SHMEM_ALLOC
    return head + <int64_t>(index - aligned)


cdef int64_t shmem_get_folio_huge(engine_t *e, mm_file_t *f, uint64_t *slot, uint64_t index, int cpu,
                                  mm_vma_t *vma, uint64_t va, int64_t write_end) noexcept nogil:
    """shmem_get_folio's THP attempt, kept out of its small-page path: a new
    folio at index is PMD-sized if shmem_huge_allowed() and, for a fault,
    the VMA could map it whole (shmem_suitable_orders). -1: a small one."""
    if not shmem_huge_allowed(e, f, vma, index, write_end):
        return -1
    if vma != NULL and not thp_file_vma_suitable(vma, va):
        return -1
    return shmem_alloc_huge(e, f, slot, index, cpu)


cdef inline void file_folio_set(engine_t *e, int64_t pfn, uint16_t set) noexcept nogil:
    """Folio flags (dirty, uptodate) of a cache page: a shmem THP's go on
    every page of it, as the kernel keeps them on the folio."""
    if e.fflags[pfn] & (PG_HEAD | PG_TAIL) and e.fflags[pfn] & PG_FILE and not pfn_is_hugetlb(e, pfn):
        folio_set_flags(e, folio_of(e, pfn), set, 0)
    else:
        e.fflags[pfn] |= set


cdef int64_t shmem_get_folio(engine_t *e, mm_file_t *f, uint64_t index, bint alloc, int cpu,
                             int *ret, mm_vma_t *vma, uint64_t va, int64_t write_end) noexcept nogil:
    """The cache folio at index, read back from swap or allocated (zeroed)
    if asked; -1 with *ret = 0 when absent and not allocated, or the fault
    code on failure. A hugetlbfs file's base page is looked up in its huge
    page (read(2) only: nothing allocates one here). A new folio is
    PMD-sized where shmem_huge_allowed() says so and, for a fault, the VMA
    could map it by a PMD (shmem_suitable_orders); vma/va name the fault,
    write_end the end of a write(2) or fallocate(2)."""
    cdef uint64_t *slot
    cdef int64_t pfn, per
    ret[0] = 0
    if f.hstate:
        per = hstate_pages(f.hstate - 1)
        slot = cache_slot(e, f, index & ~(<uint64_t>per - 1), False)
        if slot == NULL or not (slot[0] & PTE_PRESENT):
            return -1
        return <int64_t>pte_pfn(slot[0]) + <int64_t>(index & (<uint64_t>per - 1))
    slot = cache_slot(e, f, index, alloc)
    if slot == NULL:
        if alloc:
            ret[0] = table_alloc_failed(e)
        return -1
    if slot[0] & PTE_PRESENT:
        return <int64_t>pte_pfn(slot[0])
    if slot[0] != 0:
        return shmem_swapin(e, f, index, slot, cpu, ret)
    if not alloc:
        return -1
    if e.shmem_thp_on:
        pfn = shmem_get_folio_huge(e, f, slot, index, cpu, vma, va, write_end)
        if pfn >= 0:
            return pfn
        if e.shmem_mthp_on and vma != NULL:
            pfn = shmem_alloc_mthp(e, f, slot, index, cpu, vma, va)
            if pfn >= 0:
                return pfn
    pfn = frame_alloc(e)
    if pfn < 0:
        ret[0] = VM_FAULT_OOM
        return -1
    e.fflags[pfn] |= PG_FILE
    e.mapping[pfn] = <uint16_t>f.id
    e.index[pfn] = <uint32_t>index
    slot[0] = pfn_pte(pfn) | PTE_PRESENT     # the cache's reference is the alloc's
    f.nrpages += 1
    lru_add(e, cpu, pfn)
    return pfn


cdef int64_t file_map_pages(engine_t *e, mm_t *mm, mm_vma_t *vma, mm_file_t *f, uint64_t *table,
                            int64_t first, int64_t last, uint64_t va0) noexcept nogil:
    """filemap_map_pages(): map the cached, in-size folios of pte slots
    [first, last] of this pte page that are pte_none. Never allocates, never
    touches markers or present ptes."""
    cdef int64_t i, pfn, mapped = 0
    cdef uint64_t va, index, npages = file_pages(f)
    cdef uint64_t *cs
    for i in range(first, last + 1):
        if table[i] != 0:
            continue
        va = va0 + (<uint64_t>(i - first) << MM_PAGE_SHIFT)
        index = vma_index(vma, va)
        if index >= npages:
            continue
        cs = cache_slot(e, f, index, False)
        if cs == NULL or not (cs[0] & PTE_PRESENT):
            continue
        pfn = <int64_t>pte_pfn(cs[0])
        if not (e.fflags[pfn] & PG_UPTODATE):
            continue                            # next_uptodate_folio(): fallocate'd, never read
        get_page(e, pfn, 1)                     # the folio's reference (a THP's head)
        e.mapcount[pfn] += 1
        table[i] = file_pte(e, vma, pfn, False)
        mapped += 1
    stat_add(e, MM_STAT_FAULT_AROUND, mapped)
    return mapped


cdef bint should_fault_around(engine_t *e, mm_vma_t *vma) noexcept nogil:
    # Only file VMAs with ->map_pages; not uffd-armed in the era's sense:
    # 5.14-5.18 skipped MINOR (c949b097ef2e), 5.19+ WP or MINOR
    # (uffd_disable_fault_around, 9c28a205c061).
    if e.pol.fault_around_pages <= 1:
        return False
    if e.pol.fault_around_uffd >= 2 and vma.flags & (VM_UFFD_WP | VM_UFFD_MINOR):
        return False
    if e.pol.fault_around_uffd >= 1 and vma.flags & VM_UFFD_MINOR:
        return False
    return True


cdef void do_fault_around(engine_t *e, mm_t *mm, mm_vma_t *vma, mm_file_t *f, uint64_t va,
                          uint64_t *ptep) noexcept nogil:
    """The aligned window of fault_around_pages around va, clipped to the
    VMA and to this pte page."""
    cdef int64_t n = e.pol.fault_around_pages
    cdef int64_t pte_off = <int64_t>((va >> MM_PAGE_SHIFT) & 511)
    cdef int64_t vma_off = <int64_t>((va - vma.start) >> MM_PAGE_SHIFT)
    cdef int64_t vma_left = <int64_t>((vma.end - va) >> MM_PAGE_SHIFT)
    cdef int64_t from_pte = (pte_off // n) * n
    cdef int64_t to_pte
    if pte_off - from_pte > vma_off:
        from_pte = pte_off - vma_off
    to_pte = from_pte + n
    if to_pte > MM_PTRS:
        to_pte = MM_PTRS
    if to_pte > pte_off + vma_left:
        to_pte = pte_off + vma_left
    file_map_pages(e, mm, vma, f, ptep - pte_off, from_pte, to_pte - 1,
                   va - (<uint64_t>(pte_off - from_pte) << MM_PAGE_SHIFT))


cdef int do_file_fault(engine_t *e, mm_t *mm, int cpu, mm_vma_t *vma, uint64_t va,
                       uint64_t *ptep, int fflags, bint wp_marker) noexcept nogil:
    """Empty slot (or uffd-wp marker) of a file VMA (do_fault)."""
    cdef mm_file_t *f = file_of(e, vma.file)
    cdef uint64_t index = vma_index(vma, va)
    cdef int64_t pfn, new
    cdef int ret = 0
    cdef bint write = (fflags & FAULT_FLAG_WRITE) != 0
    cdef uint64_t *cs
    cdef uint64_t entry
    stat_add(e, MM_STAT_FILE_FAULT, 1)
    # do_read_fault(): fault-around runs before ->fault, which finds EOF.
    if not write and not wp_marker and should_fault_around(e, vma):
        do_fault_around(e, mm, vma, f, va, ptep)
        if ptep[0] != 0:
            return 0
    if f.falloc_start < f.falloc_end and f.falloc_start <= <int64_t>index < f.falloc_end \
            and e.sched_hook != NULL:
        # shmem_falloc_wait(): a fault on a hole being punched sleeps until
        # the punch is over, then retries (VM_FAULT_RETRY). Fault-around
        # above does not look (B23's alias interleaving).
        sched_point(e, SP_FALLOC_WAIT, mm.id, va, <uint64_t>f.id)
        return 0
    if write and not (vma.flags & VM_SHARED):
        anon_vma_prepare(e, mm, vma)                # do_cow_fault: vmf_anon_prepare() before ->fault
    if index >= file_pages(f):
        return VM_FAULT_SIGBUS                  # beyond i_size
    # shmem_get_folio(): "missing" means missing from the file; a cached (or
    # swapped) folio is a MINOR fault in a MINOR-registered VMA.
    cs = cache_slot(e, f, index, False)
    if cs == NULL or cs[0] == 0:
        if vma.flags & VM_UFFD_MISSING:
            return handle_userfault(e, mm, vma, va, fflags, UFFD_REASON_MISSING)
    elif vma.flags & VM_UFFD_MINOR:
        return handle_userfault(e, mm, vma, va, fflags, UFFD_REASON_MINOR)
    pfn = shmem_get_folio(e, f, index, True, cpu, &ret, vma, va, 0)
    if pfn < 0:
        return ret
    file_folio_set(e, pfn, PG_UPTODATE)         # shmem_fault zeroes it if needed
    if write and not (vma.flags & VM_SHARED):
        # do_cow_fault: a private copy; the cache is untouched.
        new = frame_alloc(e)
        if new < 0:
            return VM_FAULT_OOM
        if frame_copy(e, new, pfn) < 0:
            frame_free(e, new)
            return VM_FAULT_NOMEM
        e.fflags[new] |= PG_ANON | (PG_ANON_EXCLUSIVE if e.pol.anon_exclusive else 0)
        e.mapcount[new] = 1
        lru_add(e, cpu, new)
        anon_vma_prepare(e, mm, vma)
        entry = pfn_pte(new) | PTE_PRESENT | PTE_YOUNG | PTE_DIRTY | PTE_SOFT_DIRTY \
            | vma_prot_bits(vma.flags)
        # maybe_mkwrite() (set_pte_range, do_set_pte before 6.2): writable only
        # under VM_WRITE; a FOLL_FORCE COW of a read-only mapping stays R/O.
        if vma.flags & VM_WRITE:
            entry |= PTE_WRITE
        ptep[0] = mkuffd_wp(entry) if wp_marker else entry
        mm.rss_anon += 1
        return 0
    if write:
        file_folio_set(e, pfn, PG_DIRTY)        # do_shared_fault
    if e.pol.finish_fault_large and f.shmem == 2 and not wp_marker \
            and e.fflags[pfn] & (PG_HEAD | PG_TAIL) and finish_fault_folio(e, vma, ptep, pfn, index, va, write):
        return 0
    get_page(e, pfn, 1)
    e.mapcount[pfn] += 1
    entry = file_pte(e, vma, pfn, write)
    ptep[0] = mkuffd_wp(entry) if wp_marker else entry
    return 0


cdef bint finish_fault_folio(engine_t *e, mm_vma_t *vma, uint64_t *ptep, int64_t pfn, uint64_t index,
                             uint64_t va, bint write) noexcept nogil:
    """finish_fault()'s large-folio case (43e027e41423, 6.11), anon shmem
    only: the whole folio is mapped by one set_pte_range where it lies
    inside the VMA and this pte table and all its ptes are empty; not in a
    userfaultfd-armed VMA (per-page faults keep uffd's semantics). Each pte
    as the faulting one (young; dirty and writable for a write), a folio
    reference and a mapcount per page. False: one pte, as before 6.11."""
    cdef int64_t head = folio_of(e, pfn), nr, idx, i
    cdef uint64_t vma_off = index - vma.pgoff
    cdef uint64_t pte_off = (va >> MM_PAGE_SHIFT) & 511
    cdef uint64_t *base
    if vma.flags & (VM_UFFD_MISSING | VM_UFFD_WP | VM_UFFD_MINOR):
        return False
    nr = folio_nr(e, head)
    idx = pfn - head
    if vma_off < <uint64_t>idx or vma_off + <uint64_t>(nr - idx) > ((vma.end - vma.start) >> MM_PAGE_SHIFT) \
            or pte_off < <uint64_t>idx or pte_off + <uint64_t>(nr - idx) > MM_PTRS:
        return False
    base = ptep - idx
    if not pte_range_none(base, nr):
        return False
    get_page(e, head, <int32_t>nr)              # folio_ref_add(nr - 1) and the fault's own
    for i in range(nr):
        e.mapcount[head + i] += 1
        base[i] = file_pte(e, vma, head + i, write)
    return True


cdef int do_file_huge_fault(engine_t *e, mm_t *mm, int cpu, mm_vma_t *vma, uint64_t va,
                            int32_t *slot, int fflags) noexcept nogil:
    """A fault on an empty pmd of a shmem VMA: do_read_fault (fault-around's
    filemap_map_pmd) or do_shared_fault, ->fault = shmem_fault, then
    finish_fault -> do_set_pmd (6.12). Where the folio at the index is - or
    is now allocated as - a PMD-sized THP and the VMA can map it whole, one
    PMD maps it. Anything else (a private write: do_cow_fault copies to an
    anon pte; a small folio; a userfault to raise; a hole being punched; a
    swapped page) is VM_FAULT_FALLBACK, for the pte level, with nothing
    allocated here."""
    cdef mm_file_t *f = file_of(e, vma.file)
    cdef uint64_t index = vma_index(vma, va)
    cdef bint write = (fflags & FAULT_FLAG_WRITE) != 0
    cdef uint64_t *cs
    cdef uint64_t entry
    cdef int64_t pfn, head
    if f.hstate or not f.shmem or (write and not (vma.flags & VM_SHARED)):
        return VM_FAULT_FALLBACK
    if vma.flags & VM_NOHUGEPAGE or not thp_file_vma_suitable(vma, va) or index >= file_pages(f):
        return VM_FAULT_FALLBACK            # do_set_pmd: vma_thp_disabled, thp_vma_suitable_order
    if f.falloc_start < f.falloc_end and f.falloc_start <= <int64_t>index < f.falloc_end:
        return VM_FAULT_FALLBACK
    cs = cache_slot(e, f, index, False)
    if cs == NULL or cs[0] == 0:
        if vma.flags & VM_UFFD_MISSING or not e.shmem_thp_on \
                or not shmem_huge_allowed(e, f, vma, index, 0):
            return VM_FAULT_FALLBACK
        cs = cache_slot(e, f, index, True)
        if cs == NULL:
            return table_alloc_failed(e)
        pfn = shmem_alloc_huge(e, f, cs, index, cpu)
        if pfn < 0:
            return VM_FAULT_FALLBACK        # the pte level allocates a small folio
    elif vma.flags & VM_UFFD_MINOR or not (cs[0] & PTE_PRESENT):
        return VM_FAULT_FALLBACK
    else:
        pfn = <int64_t>pte_pfn(cs[0])
    head = folio_of(e, pfn)
    if not is_file_thp(e, head) or folio_nr(e, head) != HPAGE_PMD_NR:
        return VM_FAULT_FALLBACK            # a small folio or a shmem mTHP: ptes
    stat_add(e, MM_STAT_FILE_FAULT, 1)
    folio_set_flags(e, head, PG_UPTODATE | (PG_DIRTY if write else 0), 0)
    # mk_huge_pmd(vm_page_prot), dirty and maybe writable for a write: the
    # same bits as a pte of it would have (file_pte).
    entry = file_pte(e, vma, head, write)
    if set_pmd_leaf(e, mm, slot, entry) < 0:
        return table_alloc_failed(e)
    mm.nr_ptes -= 1                         # no deposited table for a file PMD (file_pmd_withdraw)
    get_page(e, head, 1)
    entire_mapcount(e, head)[0] += 1        # folio_add_file_rmap_pmd
    stat_add(e, MM_STAT_THP_FILE_MAPPED, 1)
    return 0


cdef int wp_page_shared(engine_t *e, mm_vma_t *vma, uint64_t *ptep, int64_t pfn) noexcept nogil:
    """Write fault on a R/O pte of a shared mapping: no COW, ever."""
    ptep[0] |= PTE_WRITE | PTE_DIRTY | PTE_SOFT_DIRTY | PTE_YOUNG
    if pfn != ZERO_PFN:
        file_folio_set(e, pfn, PG_DIRTY)
    return VM_FAULT_WRITE


# ---- unmap_mapping_range / truncation --------------------------------------

cdef void unmap_file_range(engine_t *e, mm_t *mm, mm_vma_t *vma, uint64_t first, uint64_t last,
                           bint even_cows, bint drop_markers, gather_t *g) noexcept nogil:
    """Zap the ptes of vma that map file indices [first, last): cache folios
    always; a private VMA's anon COW copies only with even_cows (truncate),
    not for a hole punch."""
    cdef uint64_t lo = vma.pgoff, hi = vma.pgoff + ((vma.end - vma.start) >> MM_PAGE_SHIFT)
    cdef uint64_t start, end, va, stop, pte
    cdef uint64_t *t
    cdef int64_t i, i0, i1, pfn
    cdef int32_t *slot
    if first > lo:
        lo = first
    if last < hi:
        hi = last
    if lo >= hi:
        return
    start = vma.start + ((lo - vma.pgoff) << MM_PAGE_SHIFT)
    end = vma.start + ((hi - vma.pgoff) << MM_PAGE_SHIFT)
    va = start
    while va < end:
        t = leaf_or_skip(e, mm.pgd, va, &stop)
        if t == NULL:
            va = stop
            continue
        stop = block_end(va, end)
        if e.nr_huge_pmd:
            # zap_pmd_range: a shmem THP's PMD goes whole, whether the
            # range covers it whole (zap_huge_pmd) or in part (split: for
            # a file PMD, the same clearing).
            slot = pmd_slot(e, mm, va, False)
            if pmd_trans_huge(slot[0]):
                zap_huge_pmd(e, mm, slot, g, False)
                va = stop
                continue
        i0 = <int64_t>((va >> MM_PAGE_SHIFT) & 511)
        i1 = i0 + <int64_t>((stop - va) >> MM_PAGE_SHIFT)
        for i in range(i0, i1):
            pte = t[i]
            if not (pte & PTE_PRESENT):
                if is_marker(pte):
                    if drop_markers:
                        t[i] = 0                    # ZAP_FLAG_DROP_MARKER
                elif pte != 0 and even_cows and not (vma.flags & VM_SHARED):
                    zap_swap_entry(e, mm, pte)      # a private copy that went to swap
                    t[i] = 0
                continue
            pfn = <int64_t>pte_pfn(pte)
            if pte & PTE_SPECIAL:
                if not even_cows:
                    continue
            elif e.fflags[pfn] & PG_ANON and not even_cows:
                continue
            # 999dad824c39: in a file-backed uffd-wp VMA the racy first pass
            # keeps the protection as a marker; truncation drops it.
            if pte & PTE_UFFD_WP and vma.flags & VM_UFFD_WP and not drop_markers \
                    and e.pol.uffd_wp_file:
                t[i] = make_marker(PTE_MARKER_UFFD_WP)
            else:
                t[i] = 0
            g.need_flush = 1
            if not (pte & PTE_SPECIAL):
                e.mapcount[pfn] -= 1
                if e.fflags[pfn] & PG_ANON:
                    mm.rss_anon -= 1
                if pte & PTE_DIRTY and not (e.fflags[pfn] & PG_ANON):
                    file_folio_set(e, pfn, PG_DIRTY)
                gather_add(e, g, pfn)
        va = stop


cdef bint file_folio_split(engine_t *e, mm_file_t *f, int64_t head) noexcept nogil:
    """split_folio() of a shmem THP (truncate_inode_partial_folio, 6.12).
    can_split_folio first: only the cache, its mappings and the LRU batches
    may hold it (a pin or any other reference keeps it whole: False). Then
    unmap_folio: a file folio is simply unmapped (try_to_unmap with
    TTU_SPLIT_HUGE_PMD, no migration entries, no remap): every PMD and pte
    of it goes, in every mm (a uffd-wp pte leaves its marker); private COW
    copies stay. Each page is then a small folio with the cache's one
    reference. A shmem mTHP splits the same way, to order 0 (split_huge_page
    of a shmem folio never to a non-zero order, 6.12)."""
    cdef uint64_t aligned = e.index[head], lo, hi
    cdef int64_t nr = folio_nr(e, head)
    cdef int64_t p, mapped = 0 if shmem_forder(e, head) else entire_mapcount(e, head)[0]
    cdef int32_t m, vi
    cdef mm_t *mm
    cdef mm_vma_t *vma
    cdef gather_t g
    for p in range(head, head + nr):
        mapped += e.mapcount[p]
    if e.refcount[head] != nr + mapped + lru_batch_refs(e, head):
        return False
    for m in range(e.nmm):
        mm = &e.mms[m]
        if not mm.alive:
            continue
        for vi in range(mm.nvma):
            vma = &mm.vmas[vi]
            if vma.file != f.id:
                continue
            lo = vma.pgoff
            hi = vma.pgoff + ((vma.end - vma.start) >> MM_PAGE_SHIFT)
            if hi <= aligned or lo >= aligned + <uint64_t>nr:
                continue
            gather_init(&g, mm.id, vma.start, vma.end)
            unmap_file_range(e, mm, vma, aligned, aligned + <uint64_t>nr, False, False, &g)
            gather_finish(e, &g)
    for p in range(head, head + nr):
        e.fflags[p] &= ~(PG_HEAD | PG_TAIL)
        if e.forder != NULL:
            e.forder[p] = 0
        e.refcount[p] = 1                       # the cache's
    e.refcount[head] += lru_batch_refs(e, head)
    if nr == HPAGE_PMD_NR:
        entire_mapcount(e, head)[0] = 0
        stat_add(e, MM_STAT_THP_SPLIT_PAGE, 1)
    e.nr_large -= 1
    return True


cdef uint64_t cache_split_edge(engine_t *e, mm_file_t *f, uint64_t index, uint64_t first, uint64_t last,
                               bint at_end) noexcept nogil:
    """A shmem THP straddling an edge of [first, last) is split (above).
    If it cannot be, the part of it inside the range reads zero and it
    stays whole in the cache (shmem_undo_range keeps a folio
    truncate_inode_partial_folio could not split): the edge moves past it.
    Returns the edge to use."""
    cdef uint64_t *cs = cache_slot(e, f, index, False)
    cdef int64_t pfn, head, p
    cdef uint64_t a, b
    if cs == NULL or not (cs[0] & PTE_PRESENT):
        return last if at_end else first
    pfn = <int64_t>pte_pfn(cs[0])
    head = folio_of(e, pfn)
    if not is_file_thp(e, head):
        return last if at_end else first
    a = e.index[head]
    b = a + <uint64_t>folio_nr(e, head)
    if a >= first and b <= last:
        return last if at_end else first        # inside whole: removed whole
    if file_folio_split(e, f, head):
        return last if at_end else first
    for p in range(head, head + <int64_t>(b - a)):
        if first <= e.index[p] < last:
            frame_set_version(e, p, 0)          # folio_zero_range
    if at_end:
        return a if a > first else first
    return b if b < last else last


cdef int64_t cache_truncate(engine_t *e, mm_file_t *f, uint64_t first, uint64_t last) noexcept nogil:
    """Remove [first, last) from the cache (shmem_undo_range): folios lose the
    cache's reference and their file identity; swap slots are freed. Returns
    folios still mapped (the caller unmapped them first; a re-fault races)."""
    cdef uint64_t index = first, stop, ent
    cdef uint64_t *t
    cdef int64_t i, i0, i1, pfn, still_mapped = 0
    if e.nr_large and not f.hstate and first < last:
        first = cache_split_edge(e, f, first, first, last, False)
        if first < last:
            last = cache_split_edge(e, f, last - 1, first, last, True)
        index = first
    while index < last:
        t = leaf_or_skip(e, f.root, index << MM_PAGE_SHIFT, &stop)
        if t == NULL:
            index = stop >> MM_PAGE_SHIFT
            continue
        stop = ((index >> 9) + 1) << 9
        if stop > last:
            stop = last
        i0 = <int64_t>(index & 511)
        i1 = i0 + <int64_t>(stop - index)
        for i in range(i0, i1):
            ent = t[i]
            if ent == 0:
                continue
            t[i] = 0
            if f.hstate and ent == hugetlb_resv_entry():
                hugetlb_acct_memory(e, f.hstate - 1, -1)   # hugetlb_unreserve_pages: a reservation with no page
                continue
            if ent & PTE_PRESENT:
                pfn = <int64_t>pte_pfn(ent)
                if e.mapcount[pfn] > 0 or ((f.hstate or e.fflags[pfn] & PG_HEAD)
                                           and entire_mapcount(e, pfn)[0] > 0):
                    still_mapped += 1
                e.fflags[pfn] &= ~(PG_FILE | PG_DIRTY)
                e.mapping[pfn] = 0
                f.nrpages -= 1
                put_page(e, pfn, 1)
            else:
                swap_entry_free(e, <int64_t>(ent >> SWP_OFFSET_SHIFT))
        index = stop
    return still_mapped


cdef void cache_zero_tail(engine_t *e, mm_file_t *f, int64_t size) noexcept nogil:
    """truncate_inode_partial_folio(): bytes past a non-aligned EOF read zero."""
    cdef uint64_t off = <uint64_t>size & (MM_PAGE_SIZE - 1)
    cdef uint64_t *cs
    cdef int64_t pfn
    if off == 0:
        return
    cs = cache_slot(e, f, <uint64_t>size >> MM_PAGE_SHIFT, False)
    if cs == NULL or not (cs[0] & PTE_PRESENT):
        return
    pfn = <int64_t>pte_pfn(cs[0])
    if frame_materialize(e, pfn) == 0:
        memset(bytes_ptr(e, <int64_t>e.version[pfn]) + off, 0, MM_PAGE_SIZE - off)


cdef int64_t file_rw(engine_t *e, mm_file_t *f, int64_t off, int64_t n, uint8_t *buf, bint write,
                     int cpu, int *ret) noexcept nogil:
    """pread/pwrite on a shmem file: bytes done, or -1 with *ret set. Reads of
    holes return zeros without allocating; writes allocate (shmem_write_begin)."""
    cdef int64_t done = 0, k, pfn, pos
    ret[0] = 0
    if not write:
        if off >= f.size:
            return 0
        if n > f.size - off:
            n = f.size - off
    while done < n:
        pos = off + done
        k = <int64_t>MM_PAGE_SIZE - (pos & (<int64_t>MM_PAGE_SIZE - 1))
        if k > n - done:
            k = n - done
        pfn = shmem_get_folio(e, f, <uint64_t>pos >> MM_PAGE_SHIFT, write, cpu, ret, NULL, 0,
                              off + n if write else 0)
        if ret[0]:
            return -1
        if write:
            if frame_write(e, pfn, pos & (<int64_t>MM_PAGE_SIZE - 1), k, buf + done) < 0:
                ret[0] = VM_FAULT_NOMEM
                return -1
            file_folio_set(e, pfn, PG_DIRTY | PG_UPTODATE)
        elif pfn < 0:
            memset(buf + done, 0, k)
        else:
            frame_read(e, pfn, pos & (<int64_t>MM_PAGE_SIZE - 1), k, buf + done)
        done += k
    if write and off + n > f.size:
        f.size = off + n
    return done
